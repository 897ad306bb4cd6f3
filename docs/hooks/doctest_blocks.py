"""Render the ``>>>`` examples of memkv's docstrings as Python console code blocks.

memkv's docstrings are prose with doctest examples (``tests/test_docstrings.py`` runs
them) and no ``Examples:`` section, so Markdown would read ``>>>`` as nested block
quotes. This hook adds a Markdown preprocessor, to the pages and to the Markdown that
mkdocstrings renders docstrings with, that fences each run of doctest lines (a ``>>>``
line, its ``...`` continuations and the expected output, up to a blank line) as a
``pycon`` block.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

_PROMPT = re.compile(r"^(?P<indent>\s*)>>> ")
_FENCE = re.compile(r"^\s*(```|~~~)")


class _DoctestPreprocessor(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        in_fence = False
        index = 0
        while index < len(lines):
            line = lines[index]
            if _FENCE.match(line):
                in_fence = not in_fence
            match = None if in_fence else _PROMPT.match(line)
            if match is None:
                out.append(line)
                index += 1
                continue
            indent = match.group("indent")
            block: list[str] = []
            while index < len(lines) and lines[index].strip():
                block.append(lines[index].removeprefix(indent))
                index += 1
            if out and out[-1].strip():
                out.append("")
            out.extend([f"{indent}```pycon", *(indent + row for row in block), f"{indent}```"])
            out.append("")
        return out


class DoctestBlocks(Extension):
    """Fences doctest examples before any other block parsing."""

    def extendMarkdown(self, md: Markdown) -> None:
        # Above the fenced-code preprocessor (priority 25 in pymdownx.superfences).
        md.preprocessors.register(_DoctestPreprocessor(md), "memkv_doctest_blocks", 40)


@event_priority(100)  # before mkdocstrings reads the extension list
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(DoctestBlocks())
    return config
