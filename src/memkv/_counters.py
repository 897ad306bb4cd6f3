"""The named results of ``LocalCore.counters()`` and ``LocalCore.operations()``.

Defined once here and built by both local cores, so the store reads fields by name.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CoreCounters", "CoreOperations"]


class CoreCounters(NamedTuple):
    """What a core has done to entries (the fields of ``StoreStats`` before ``operations``)."""

    gets: int
    hits: int
    misses: int
    sets: int
    deletes: int
    expired: int
    evictions: int
    #: Entries held, expired ones not yet purged included.
    entries: int


class CoreOperations(NamedTuple):
    """Calls by outcome: each field is ``<operation>_<result>``. Scans and failed calls
    are counted by the store, not the core."""

    get_hit: int
    get_miss: int
    set_ok: int
    delete_hit: int
    delete_miss: int
    exists_hit: int
    exists_miss: int
    clear_ok: int
    get_many_ok: int
    set_many_ok: int
    delete_many_ok: int

    def by_outcome(self) -> dict[tuple[str, str], int]:
        """The counts keyed by ``(operation, result)``, as ``StoreStats.operations`` is."""
        return {_OUTCOMES[name]: count for name, count in self._asdict().items()}


def _outcome(field: str) -> tuple[str, str]:
    operation, _, result = field.rpartition("_")
    return operation, result


#: ``"get_many_ok"`` -> ``("get_many", "ok")``: the result is the last word.
_OUTCOMES = {field: _outcome(field) for field in CoreOperations._fields}
