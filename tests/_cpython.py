"""Loads CPython's own test modules, which the test setup downloads (never copied here).

``scripts/install-test-deps.sh`` extracts ``test_concurrent_futures.py`` from Debian's
``libpython3.11-testsuite`` into ``.cache/cpython-tests``; ``_test_multiprocessing``
ships with this Python. A missing file is an error, not a skip: CI must run them.
"""
from __future__ import annotations

import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "cpython-tests")


def load_concurrent_futures_tests():
    path = os.path.join(CACHE, "test_concurrent_futures.py")
    if not os.path.exists(path):
        raise RuntimeError(
            f"{path} is missing: run scripts/install-test-deps.sh, which extracts it from "
            f"Debian's libpython3.11-testsuite package"
        )
    if CACHE not in sys.path:
        # On sys.path, so worker processes can import the test functions by reference.
        sys.path.insert(0, CACHE)
    return importlib.import_module("test_concurrent_futures")
