"""The ``memkv`` command (console script and ``python -m memkv``), without its extra too.

The command line runs on click and rich, which the ``cli`` extra installs; ``import
memkv`` needs neither. Without them this prints the pip command to run and exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

#: The command that installs what ``memkv.cli`` imports.
INSTALL_HINT = 'pip install "memkv[cli]"'


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``memkv.cli.main(argv)``; exit status 1, with the pip command, without click/rich."""
    try:
        from memkv.cli import main as run
    except ImportError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in ("click", "rich"):
            raise
        print(
            f"memkv: the command line needs the cli extra ({missing} is missing): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
