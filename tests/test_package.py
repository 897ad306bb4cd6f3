"""The package surface: exports, the error tree, and importing without the Redis extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import memkv
from memkv import errors


def test_public_names_are_exported() -> None:
    for name in memkv.__all__:
        assert getattr(memkv, name) is not None
    assert memkv.IMPLEMENTATION in {"cython", "python"}


def test_every_error_has_the_root_and_a_builtin_parent() -> None:
    expected = {
        errors.StoreNotFoundError: ValueError,
        errors.InvalidTTLError: ValueError,
        errors.InvalidArgumentError: ValueError,
        errors.InvalidKeyError: TypeError,
        errors.InvalidMetadataError: TypeError,
        errors.CodecError: TypeError,
        errors.BackendUnavailableError: ConnectionError,
        errors.AccessDeniedError: PermissionError,
        errors.BackendError: RuntimeError,
        errors.ReentrantCallError: RuntimeError,
        errors.FrozenEntryError: AttributeError,
    }
    for error, builtin in expected.items():
        assert issubclass(error, errors.MemKVError)
        assert issubclass(error, builtin)


def test_import_works_without_the_redis_extra() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # as if the extra were not installed
        import memkv
        assert memkv.LocalMemoryStore is not None
        for touch in (lambda: memkv.RedisMemoryStore, lambda: memkv.open_store("redis://x")):
            try:
                touch()
            except ImportError as err:
                assert 'pip install "memkv[redis]"' in str(err), err
            else:
                raise AssertionError("expected ImportError")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


#: Run first in a subprocess: makes click and rich unimportable, as without the cli extra.
_WITHOUT_CLI_EXTRA = textwrap.dedent(
    """
    import sys

    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("click", "rich"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Missing())
    """
)


def test_import_works_without_the_cli_extra() -> None:
    script = _WITHOUT_CLI_EXTRA + textwrap.dedent(
        """
        import asyncio
        import memkv
        import memkv.benchmark

        async def main():
            async with memkv.open_store("memory://") as store:
                await store.set("k", 1)
                assert (await store.get("k")).value == 1
                await memkv.benchmark.run_baseline(keys=100, calls=100)

        asyncio.run(main())
        assert not any(name.partition(".")[0] in ("click", "rich") for name in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_command_without_the_cli_extra_prints_the_pip_command() -> None:
    # What the console script runs (memkv.__main__:main), and python -m memkv.
    for entry in (
        "from memkv.__main__ import main; sys.exit(main(['bench']))",
        "import runpy; runpy.run_module('memkv', run_name='__main__')",
    ):
        result = subprocess.run(
            [sys.executable, "-c", _WITHOUT_CLI_EXTRA + entry],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert 'pip install "memkv[cli]"' in result.stderr
        assert "Traceback" not in result.stderr
