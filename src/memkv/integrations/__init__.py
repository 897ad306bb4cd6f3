"""Adapters that plug memkv stores into other frameworks, one module per framework.

Each module needs its framework's extra and names it when that is missing:
``memkv.integrations.langchain`` needs ``pip install "memkv[langchain]"``,
``memkv.integrations.langgraph`` needs ``pip install "memkv[langgraph]"``.
"""

from __future__ import annotations

__all__: list[str] = []
