"""A griffe extension: ``#:`` comments above a module or class attribute document it.

memkv documents its constants the Sphinx way, with ``#:`` comment lines right above the
assignment (``OPERATIONS``, ``TTL``, ``REDIS_SCHEMES``, ``DEFAULT_OPTIONS``, …). Griffe
reads only string docstrings below an attribute, so without this extension those
constants would reach the API reference with no description. An attribute that has a
docstring keeps it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import griffe


class CommentDocstrings(griffe.Extension):
    """Turns the ``#:`` lines right above an attribute into its docstring."""

    def on_attribute_instance(
        self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute, **kwargs: Any
    ) -> None:
        filepath = attr.filepath
        if attr.docstring is not None or attr.lineno is None or not isinstance(filepath, Path):
            return
        if filepath not in attr.lines_collection:
            return
        lines = attr.lines_collection[filepath]
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the assignment, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].removeprefix(" "))
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment), lineno=index + 2, endlineno=attr.lineno - 1, parent=attr
            )
