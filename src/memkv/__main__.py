"""``python -m memkv``: the ``memkv`` command line (see ``memkv.cli``)."""

from __future__ import annotations

import sys

from memkv.cli import main

if __name__ == "__main__":
    sys.exit(main())
