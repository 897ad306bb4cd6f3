"""LangGraph over any memkv store: ``MemkvCache``, a node cache for compiled graphs.

Needs the ``langgraph`` extra: ``pip install "memkv[langgraph]"``.
"""

from __future__ import annotations

from memkv.integrations.langgraph.cache import MemkvCache

__all__ = ["MemkvCache"]
