"""LangGraph integrations: ``MemkvStore``, a LangGraph ``BaseStore`` over any memkv store.

Needs the ``langgraph`` extra: ``pip install "memkv[langgraph]"``.
"""

from __future__ import annotations

from memkv.integrations.langgraph.store import KEY_PREFIX, MemkvStore

__all__ = ["KEY_PREFIX", "MemkvStore"]
