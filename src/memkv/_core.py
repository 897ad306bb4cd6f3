"""Chooses the local core: the Cython extension unless MEMKV_NO_EXTENSIONS is set."""

from __future__ import annotations

__all__ = ["IMPLEMENTATION", "LocalCore", "MemoryEntry", "make_entry"]

# The Cython core lands in its own change; until then the reference core is used.
from memkv._core_py import LocalCore, MemoryEntry, make_entry

IMPLEMENTATION = "python"
