"""Only here because cffi's build hook (cffi_modules) needs setup();
everything else is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["sv3/_native/build.py:ffibuilder"])
