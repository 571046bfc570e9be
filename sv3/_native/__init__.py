"""The compiled C core: the only importer of the cffi extension.

`ffi` and `lib` are built from sv3.h at install time (build.py)."""
from ._sv3 import ffi, lib  # noqa: F401

BUILD_MODE = "cffi-api -O2"
