"""Build only: compiles the Cython local core; the metadata lives in pyproject.toml.

``MEMKV_NO_EXTENSIONS=1`` builds the pure-Python package. Otherwise a failed compile
fails the build: there is no silent fallback to the slower core.
"""

import os

from setuptools import Extension, setup

if os.environ.get("MEMKV_NO_EXTENSIONS"):
    ext_modules = []
else:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(
                "memkv._core_c",
                ["src/memkv/_core_c.pyx"],
                include_dirs=["src/memkv"],
                depends=["src/memkv/_core_c.h"],
            )
        ],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
