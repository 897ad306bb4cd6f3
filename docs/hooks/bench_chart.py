"""Draw the benchmark charts of ``benchmarks.md`` from ``docs/data/bench.json``.

The JSON is the output of one real ``memkv bench --json`` run (``docs/data/README.md``
says which). At build time this hook adds two SVG files to the site, generated from it
with no plotting library:

- ``assets/bench-local.svg``: keys per second (calls per second times the keys one
  call reads: 100 for ``get_many`` and ``scan``, so that every bar is on one scale) of
  each operation on the local store's
  two cores and on the bare ``dict`` behind ``async def`` that ``memkv bench`` measures
  in the same run, each bar labelled with its figure and its ratio to the dict;
- ``assets/bench-redis.svg`` (when the run had ``--redis``): the Redis store and, with
  ``--near-cache``, the same store with a near cache, on a logarithmic axis (labelled
  as such: the figures span four orders of magnitude).

It also replaces ``<!-- bench:table -->`` in a page with a table of every row of the
JSON, and ``<!-- bench:run -->`` with one line on what was measured.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mkdocs.structure.files import Files

_DATA = Path(__file__).resolve().parent.parent / "data" / "bench.json"

_STORE_LABELS = {
    "baseline": "dict behind async def (baseline)",
    "local-cython": "LocalMemoryStore, Cython core",
    "local-python": "LocalMemoryStore, pure-Python core",
    "redis": "RedisMemoryStore",
    "redis-near-cache": "RedisMemoryStore with near_cache",
}
_COLOURS = {
    "baseline": "#9e9e9e",
    "local-cython": "#3f51b5",
    "local-python": "#ff9800",
    "redis": "#d32f2f",
    "redis-near-cache": "#388e3c",
}
_OPERATION_LABELS = {
    "get_hit": "get (hit)",
    "get_miss": "get (miss)",
    "exists": "exists",
    "get_many": "get_many (100 keys)",
    "scan_prefix": "scan (prefix, 100 keys)",
    "set": "set",
    "set_ttl": "set (with TTL)",
    "mixed_50_tasks": "50 tasks, 90 % get",
    "mixed_200_tasks": "200 tasks, 90 % get",
}

#: The multiplication sign of ratios ("0.45\u00d7").
_TIMES = "\u00d7"

_WIDTH = 900
_LABEL_WIDTH = 190
_BAR_HEIGHT = 16
_BAR_GAP = 3
_GROUP_GAP = 14
_TOP = 58
_VALUE_ROOM = 270  # right of the longest bar, for its label


def load(path: Path = _DATA) -> dict[str, Any]:
    """The report in ``path`` (``docs/data/bench.json``), checked to be schema 1."""
    with path.open(encoding="utf-8") as file:
        report: dict[str, Any] = json.load(file)
    if report.get("schema_version") != 1:
        raise ValueError(f"{path}: expected schema_version 1 (memkv.benchmark.BenchReport)")
    return report


def _rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def _chart(report: dict[str, Any], stores: list[str], title: str, subtitle: str, log: bool) -> str:
    rows = [row for row in report["results"] if row["store"] in stores]
    operations = list(dict.fromkeys(row["operation"] for row in rows))
    by_key = {(row["store"], row["operation"]): row for row in rows}
    top = max(row["keys_per_second"] for row in rows)
    bottom = min(row["keys_per_second"] for row in rows)
    low = 10 ** math.floor(math.log10(bottom)) if log else 0.0
    high = 10 ** math.ceil(math.log10(top)) if log else top
    plot_width = _WIDTH - _LABEL_WIDTH - _VALUE_ROOM

    def length(value: float) -> float:
        if log:
            return (
                plot_width
                * (math.log10(value) - math.log10(low))
                / (math.log10(high) - math.log10(low))
            )
        return plot_width * value / high

    out: list[str] = []
    y = _TOP
    for operation in operations:
        present = [store for store in stores if (store, operation) in by_key]
        group_height = len(present) * (_BAR_HEIGHT + _BAR_GAP)
        label = _OPERATION_LABELS.get(operation, operation)
        out.append(
            f'<text x="{_LABEL_WIDTH - 8}" y="{y + group_height / 2 + 4:.1f}" '
            f'text-anchor="end" class="op">{escape(label)}</text>'
        )
        for store in present:
            row = by_key[(store, operation)]
            width = max(length(row["keys_per_second"]), 1.0)
            text = f"{_rate(row['keys_per_second'])} keys/s"
            if row.get("vs_baseline") is not None:
                text += f"  ({row['vs_baseline']:.2f}{_TIMES} the dict)"
            text += f"  p50 {row['p50_us']:.1f} µs/call"
            out.append(
                f'<rect x="{_LABEL_WIDTH}" y="{y}" width="{width:.1f}" '
                f'height="{_BAR_HEIGHT}" fill="{_COLOURS.get(store, "#607d8b")}">'
                f"<title>{escape(_STORE_LABELS.get(store, store))}: {escape(text)}</title>"
                "</rect>"
            )
            out.append(
                f'<text x="{_LABEL_WIDTH + width + 5:.1f}" y="{y + _BAR_HEIGHT - 4}" '
                f'class="value">{escape(text)}</text>'
            )
            y += _BAR_HEIGHT + _BAR_GAP
        y += _GROUP_GAP

    axis_y = y
    axis = [
        f'<line x1="{_LABEL_WIDTH}" y1="{_TOP - 6}" x2="{_LABEL_WIDTH}" y2="{axis_y}" '
        'class="axis"/>',
        f'<line x1="{_LABEL_WIDTH}" y1="{axis_y}" x2="{_LABEL_WIDTH + plot_width}" '
        f'y2="{axis_y}" class="axis"/>',
    ]
    ticks = (
        [10**power for power in range(round(math.log10(low)), round(math.log10(high)) + 1)]
        if log
        else [high * fraction for fraction in (0, 0.25, 0.5, 0.75, 1.0)]
    )
    for tick in ticks:
        x = _LABEL_WIDTH + (length(tick) if tick > 0 else 0.0)
        axis.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" class="axis"/>'
        )
        axis.append(
            f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle" class="tick">'
            f"{escape(_rate(tick) if tick else '0')}</text>"
        )
    scale = "logarithmic axis" if log else "linear axis"
    axis.append(
        f'<text x="{_LABEL_WIDTH + plot_width / 2:.1f}" y="{axis_y + 34}" '
        f'text-anchor="middle" class="tick">keys per second = calls per second {_TIMES} '
        f"keys per call ({scale}; longer is faster)</text>"
    )

    legend: list[str] = []
    x = 8.0
    for store in stores:
        if not any(row["store"] == store for row in rows):
            continue
        name = _STORE_LABELS.get(store, store)
        colour = _COLOURS.get(store, "#607d8b")
        legend.append(
            f'<rect x="{x}" y="36" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="45" class="legend">{escape(name)}</text>'
        )
        x += 24 + 6.2 * len(name)

    height = axis_y + 46
    style = (
        "<style>text{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;fill:#333}"
        ".title{font-size:15px;font-weight:600}.sub,.tick,.legend{font-size:11px}"
        ".op{font-size:12px}.value{font-size:11px}.axis{stroke:#888;stroke-width:1}"
        "</style>"
    )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
            f'width="{_WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">',
            style,
            f'<rect width="{_WIDTH}" height="{height}" fill="#fff"/>',
            f'<text x="8" y="18" class="title">{escape(title)}</text>',
            f'<text x="8" y="31" class="sub">{escape(subtitle)}</text>',
            *legend,
            *out,
            *axis,
            "</svg>",
        ]
    )


def _subtitle(report: dict[str, Any]) -> str:
    return (
        f"memkv {report['memkv_version']}, Python {report['python']}, "
        f"{report['keys']:,} entries preloaded; one run of memkv bench --json "
        "(docs/data/bench.json)"
    )


def charts(report: dict[str, Any]) -> dict[str, str]:
    """The SVG charts drawn from ``report``, by site path."""
    subtitle = _subtitle(report)
    drawn = {
        "assets/bench-local.svg": _chart(
            report,
            ["baseline", "local-cython", "local-python"],
            "Local store: keys per second, and the ratio to a dict measured in the same run",
            subtitle,
            log=False,
        )
    }
    if any(row["store"].startswith("redis") for row in report["results"]):
        drawn["assets/bench-redis.svg"] = _chart(
            report,
            ["redis", "redis-near-cache"],
            "Redis store (one server on loopback), with and without a near cache",
            subtitle,
            log=True,
        )
    return drawn


def table(report: dict[str, Any]) -> str:
    """Every result row of ``report`` as a Markdown table."""
    lines = [
        "| store | operation | calls/s | keys/s | p50 µs | p99 µs | vs the dict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["results"]:
        ratio = "" if row.get("vs_baseline") is None else f"{row['vs_baseline']:.2f}{_TIMES}"
        lines.append(
            f"| {row['store']} | {row['operation']} | {row['ops_per_second']:,.0f} | "
            f"{row['keys_per_second']:,.0f} | {row['p50_us']:.2f} | {row['p99_us']:.2f} | "
            f"{ratio} |"
        )
    speedup = report.get("speedup") or {}
    if speedup:
        lines += [
            "",
            "Cython core ÷ pure-Python core, calls per second: "
            + ", ".join(f"`{name}` {value:.2f}{_TIMES}" for name, value in speedup.items())
            + ".",
        ]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    # Imported here: tests/test_docs_site.py draws the charts without mkdocs installed.
    from mkdocs.structure.files import File

    for path, svg in charts(load()).items():
        files.append(File.generated(config, path, content=svg))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if "<!-- bench:" not in markdown:
        return markdown
    report = load()
    run = (
        f"memkv {report['memkv_version']} ({report['implementation']} core), "
        f"Python {report['python']}, {report['keys']:,} entries"
        + (f", Redis: `{report['redis']}`" if report.get("redis") else "")
    )
    return markdown.replace("<!-- bench:table -->", table(report)).replace(
        "<!-- bench:run -->", run
    )
