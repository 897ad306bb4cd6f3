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
