"""LangGraph over any memkv store: ``MemkvStore``, a LangGraph ``BaseStore`` (long-term
memory by namespace, with TTLs and semantic search), and ``MemkvCache``, a node cache for
compiled graphs.

Needs the ``langgraph`` extra: ``pip install "memkv[langgraph]"``.
"""

from __future__ import annotations

from memkv.integrations.langgraph.cache import MemkvCache
from memkv.integrations.langgraph.store import KEY_PREFIX, MemkvStore

__all__ = ["KEY_PREFIX", "MemkvCache", "MemkvStore"]
