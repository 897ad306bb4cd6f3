"""Chooses the local core: the Cython extension unless MEMKV_NO_EXTENSIONS is set.

The extension is used on CPython whenever ``MEMKV_NO_EXTENSIONS`` is unset or empty. If
it was not built, importing memkv fails loudly instead of falling back to the slower
pure-Python core; set ``MEMKV_NO_EXTENSIONS=1`` to choose that core on purpose.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

__all__ = ["IMPLEMENTATION", "LocalCore", "MemoryEntry", "make_entry"]

#: The local core ``LocalMemoryStore`` uses unless told otherwise: ``"cython"`` (the
#: compiled extension), or ``"python"`` (its pure-Python twin) when the environment
#: variable ``MEMKV_NO_EXTENSIONS`` is set or the interpreter is not CPython.
IMPLEMENTATION: str

if TYPE_CHECKING:
    from memkv._core_py import LocalCore, MemoryEntry, make_entry
elif os.environ.get("MEMKV_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
    from memkv._core_py import LocalCore, MemoryEntry, make_entry

    IMPLEMENTATION = "python"
else:
    from memkv._core_c import LocalCore, MemoryEntry, make_entry

    IMPLEMENTATION = "cython"
