"""Shared fixtures: a private switch instance per test (its own socket and
shm prefix), and helpers to query it.  Nothing here skips: a test that
needs QEMU or DPDK finds it through tests/helpers, which install or fail."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.helpers.switch import switch  # noqa: E402,F401  (fixture)
