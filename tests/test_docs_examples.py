"""Every Python example of the user guide runs against the current API.

Each ```` ```python ```` block of a guide page (``docs/*.md`` but the design notes) is a
whole program, run as ``__main__``. Examples that talk to Redis say
``redis://localhost:6379/0`` (or ``redis+cluster://localhost:7000`` for a cluster); here
those URLs point at the test session's servers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: Implementer-facing notes, linked from the site under "Design notes": their code
#: blocks are fragments that illustrate a design, not programs.
DESIGN_NOTES = frozenset(
    {"contract.md", "redis-format.md", "redis-transport.md", "redis-cluster.md", "near-cache.md"}
)
EXAMPLE_REDIS_URL = "redis://localhost:6379/0"
EXAMPLE_CLUSTER_URL = "redis+cluster://localhost:7000"

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name in DESIGN_NOTES:
            continue
        for number, code in enumerate(_BLOCK.findall(page.read_text(encoding="utf-8")), 1):
            found.append((f"{page.name}#{number}", code))
    return found


EXAMPLES = examples()


def _params() -> list[object]:
    return [
        pytest.param(
            name,
            code,
            id=name,
            marks=[pytest.mark.redis]
            if EXAMPLE_REDIS_URL in code or EXAMPLE_CLUSTER_URL in code
            else [],
        )
        for name, code in EXAMPLES
    ]


def test_the_guide_has_examples() -> None:
    pages = {name.partition("#")[0] for name, _ in EXAMPLES}
    assert {"quickstart.md", "stores.md", "caching.md", "metrics.md"} <= pages


@pytest.mark.parametrize(("name", "code"), _params())
def test_guide_example_runs(name: str, code: str, request: pytest.FixtureRequest) -> None:
    if EXAMPLE_REDIS_URL in code:
        code = code.replace(EXAMPLE_REDIS_URL, request.getfixturevalue("redis_url"))
    if EXAMPLE_CLUSTER_URL in code:
        code = code.replace(EXAMPLE_CLUSTER_URL, request.getfixturevalue("cluster_url"))
    exec(compile(code, name, "exec"), {"__name__": "__main__"})
