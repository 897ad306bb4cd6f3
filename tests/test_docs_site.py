"""The documentation site covers the public API and lists every page (no mkdocs needed).

Every name in the ``__all__`` of a public module must have a ``::: identifier`` entry in
``docs/reference/*.md`` (mkdocstrings renders it from the docstring), either under its
own module's name or under another name for the same object (``memkv.LocalMemoryStore``
covers ``memkv.local.LocalMemoryStore``). ``mkdocs.yml``'s nav must list every page of
``docs/`` except what ``exclude_docs`` leaves out. ``.ci/run`` builds the site itself
with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import memkv

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Modules that are not public API, though their names do not start with ``_``: the
#: command line (documented on the CLI page), the shared validation helpers, the
#: single-flight machinery behind ``get_or_set``, and the Redis store's internals
#: (``memkv.redis`` re-exports what users need from them), and the LangGraph classes'
#: modules (``memkv.integrations.langgraph`` re-exports them).
INTERNAL_MODULES = frozenset(
    {
        "memkv.__main__",
        "memkv.cli",
        "memkv.validation",
        "memkv.singleflight",
        "memkv.integrations",
        "memkv.integrations.langgraph.cache",
        "memkv.integrations.langgraph.store",
        "memkv.redis.client",
        "memkv.redis.cluster",
        "memkv.redis.commands",
        "memkv.redis.envelope",
        "memkv.redis.errors",
        "memkv.redis.lease",
        "memkv.redis.near_cache",
        "memkv.redis.retry",
        "memkv.redis.store",
        "memkv.redis.transport",
    }
)

_IDENTIFIER = re.compile(r"^:::\s+(\S+)", re.MULTILINE)


def public_modules() -> list[str]:
    """``memkv`` and every module under it that is neither private nor internal."""
    names = ["memkv"]
    for module in pkgutil.walk_packages(memkv.__path__, "memkv."):
        parts = module.name.split(".")
        if any(part.startswith("_") for part in parts) or module.name in INTERNAL_MODULES:
            continue
        names.append(module.name)
    return names


def reference_identifiers() -> list[str]:
    """The ``::: identifier`` entries of every reference page."""
    identifiers: list[str] = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        identifiers += _IDENTIFIER.findall(page.read_text(encoding="utf-8"))
    return identifiers


def resolve(identifier: str) -> object:
    """The object a ``::: a.b.c`` identifier names: the longest importable module
    prefix, then attributes."""
    parts = identifier.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(identifier)


def test_the_public_modules_are_the_documented_ones() -> None:
    modules = public_modules()
    for expected in ("memkv.errors", "memkv.urls", "memkv.redis", "memkv.metrics.otel"):
        assert expected in modules
    assert "memkv.redis.transport" not in modules


@pytest.mark.parametrize("module_name", public_modules())
def test_every_public_name_has_a_reference_entry(module_name: str) -> None:
    module = importlib.import_module(module_name)
    identifiers = set(reference_identifiers())
    documented_objects = []
    for identifier in identifiers:
        try:
            documented_objects.append(resolve(identifier))
        except (ImportError, AttributeError):
            continue  # a page not built yet: test_every_reference_identifier_resolves
    missing = []
    for name in getattr(module, "__all__", ()):
        if f"{module_name}.{name}" in identifiers:
            continue
        value = getattr(module, name)
        # Another path to the same object (a re-export); strings and numbers are too
        # easily equal by accident, so constants must be listed under their own name.
        if not isinstance(value, (str, int, float, tuple, frozenset)) and any(
            value is other for other in documented_objects
        ):
            continue
        missing.append(name)
    assert missing == [], f"{module_name}: no '::: ...' entry in docs/reference for {missing}"


def test_every_reference_identifier_resolves() -> None:
    unresolved = []
    for page in sorted((DOCS / "reference").glob("*.md")):
        if _excluded(f"reference/{page.name}"):
            continue
        for identifier in _IDENTIFIER.findall(page.read_text(encoding="utf-8")):
            try:
                resolve(identifier)
            except (ImportError, AttributeError):
                unresolved.append(identifier)
    assert unresolved == []


def _mkdocs_yml() -> str:
    return (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def _nav_pages() -> set[str]:
    text = _mkdocs_yml()
    nav = text[text.index("\nnav:") :]
    return set(re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?(\S+\.md)\s*$", nav, re.MULTILINE))


def _exclusions() -> list[str]:
    text = _mkdocs_yml()
    match = re.search(r"^exclude_docs:\s*\|\n((?:[ \t]+.*\n)+)", text, re.MULTILINE)
    if match is None:
        return []
    lines = (line.strip() for line in match.group(1).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _excluded(page: str) -> bool:
    """Whether a gitignore-style ``exclude_docs`` pattern (as this site uses them: a
    ``/folder/`` or a ``/file.md``) leaves ``page`` out."""
    return any(
        f"/{page}".startswith(pattern) if pattern.endswith("/") else f"/{page}" == pattern
        for pattern in _exclusions()
    )


def test_the_nav_lists_every_page() -> None:
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    built = {page for page in pages if not _excluded(page)}
    nav = _nav_pages()
    assert built - nav == set(), "pages missing from mkdocs.yml's nav"
    assert nav - built == set(), "nav entries with no page"


def test_the_reference_pages_include_langgraph() -> None:
    importlib.import_module("memkv.integrations.langgraph")
    assert not _excluded("reference/langgraph.md")
    assert "reference/langgraph.md" in _nav_pages()


def _bench_chart_hook() -> ModuleType:
    """``docs/hooks/bench_chart.py``, the mkdocs hook that draws the benchmark charts
    (its drawing code needs no mkdocs)."""
    spec = importlib.util.spec_from_file_location(
        "memkv_docs_bench_chart", DOCS / "hooks" / "bench_chart.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_bench_report_is_consistent() -> None:
    """``docs/data/bench.json`` is a ``memkv bench --json`` report whose ratios are the
    quotients of its own rates (not figures edited by hand)."""
    report = _bench_chart_hook().load()
    rows = {(row["store"], row["operation"]): row for row in report["results"]}
    assert {"baseline", "local-cython", "local-python"} <= {store for store, _ in rows}
    for (store, operation), row in rows.items():
        assert row["keys_per_second"] == pytest.approx(
            row["ops_per_second"] * row["keys_per_call"]
        )
        baseline = rows.get(("baseline", operation))
        if store.startswith("local-") and baseline is not None:
            assert row["vs_baseline"] == pytest.approx(
                row["ops_per_second"] / baseline["ops_per_second"]
            )
    for operation, speedup in report["speedup"].items():
        assert speedup == pytest.approx(
            rows["local-cython", operation]["ops_per_second"]
            / rows["local-python", operation]["ops_per_second"]
        )


def test_the_bench_chart_draws_each_measured_row_to_scale_with_its_ratio() -> None:
    hook = _bench_chart_hook()
    report = hook.load()
    svg = hook.charts(report)["assets/bench-local.svg"]
    local = [row for row in report["results"] if not row["store"].startswith("redis")]
    bars = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="16"', svg)
    assert len(bars) == len(local)
    # The local chart's axis is linear: bar lengths keep the measured proportions.
    # Bars follow the rows grouped by operation, stores in the legend's order.
    order = ["baseline", "local-cython", "local-python"]
    operations = list(dict.fromkeys(row["operation"] for row in local))
    drawn = sorted(
        local, key=lambda row: (operations.index(row["operation"]), order.index(row["store"]))
    )
    widest = max(row["keys_per_second"] for row in local)
    plot_width = hook._WIDTH - hook._LABEL_WIDTH - hook._VALUE_ROOM
    for row, width in zip(drawn, bars, strict=True):
        assert float(width) == pytest.approx(
            max(plot_width * row["keys_per_second"] / widest, 1.0), abs=0.06
        )
        if row["vs_baseline"] is not None:
            assert f"({row['vs_baseline']:.2f}\u00d7 the dict)" in svg
    assert "linear axis" in svg
    if any(row["store"].startswith("redis") for row in report["results"]):
        assert "logarithmic axis" in hook.charts(report)["assets/bench-redis.svg"]
    table = hook.table(report)
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == (
        len(report["results"]) + 2  # the header and its rule
    )
