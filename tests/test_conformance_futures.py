"""CPython's ``concurrent.futures`` test mixins, run against ``CloudPoolExecutor`` (local backend).

The mixins come from CPython's own ``test_concurrent_futures`` (see ``tests/_cpython.py``);
only the executor mixin below is ours. Generated classes:

- ``ExecutorTest``, ``WaitTests``, ``AsCompletedTests``, ``InitializerMixin``,
  ``FailingInitializerMixin``, ``ExecutorShutdownTest``: run in full, except --

Exclusions (each replaced by an equivalent test of ours in this file):
- ``ExecutorShutdownTest.test_interpreter_shutdown``,
  ``test_submit_after_interpreter_shutdown`` and ``test_hang_gh83386`` start a child
  interpreter that does ``from concurrent.futures import <executor class name>``, which
  cannot name a class from another package. ``CloudPoolInterpreterExitTest`` runs the
  same scenarios with ``from cloudpool import CloudPoolExecutor``.

Not generated at all: ``ProcessPoolShutdownTest``, ``ProcessPoolExecutorTest`` and
``ExecutorDeadlockTest`` read the stdlib's private ``_processes``/``_executor_manager_thread``
attributes; their behaviours (killed workers, tracebacks, chunksize) are covered by
``tests/test_executor.py``.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import unittest

from cloudpool import CloudPoolExecutor

from tests._cpython import CACHE, ROOT, load_concurrent_futures_tests

cft = load_concurrent_futures_tests()


class CloudPoolMixin(cft.ExecutorMixin):
    executor_type = CloudPoolExecutor


_EXCLUDED = {
    "test_interpreter_shutdown": "imports the executor class from concurrent.futures in a child; see CloudPoolInterpreterExitTest",
    "test_submit_after_interpreter_shutdown": "imports the executor class from concurrent.futures in a child; see CloudPoolInterpreterExitTest",
    "test_hang_gh83386": "imports the executor class from concurrent.futures in a child; see CloudPoolInterpreterExitTest",
}


def _make(name: str, mixin: type) -> type:
    attrs = {}
    for test_name, why in _EXCLUDED.items():
        if hasattr(mixin, test_name):
            attrs[test_name] = unittest.skip(why)(lambda self: None)
    return type(name, (mixin, CloudPoolMixin, cft.BaseTestCase), attrs)


CloudPoolExecutorTest = _make("CloudPoolExecutorTest", cft.ExecutorTest)
CloudPoolWaitTest = _make("CloudPoolWaitTest", cft.WaitTests)
CloudPoolAsCompletedTest = _make("CloudPoolAsCompletedTest", cft.AsCompletedTests)
CloudPoolInitializerTest = _make("CloudPoolInitializerTest", cft.InitializerMixin)
CloudPoolFailingInitializerTest = _make("CloudPoolFailingInitializerTest", cft.FailingInitializerMixin)
CloudPoolShutdownTest = _make("CloudPoolShutdownTest", cft.ExecutorShutdownTest)


def _run_child(code: str) -> subprocess.CompletedProcess:
    env_path = f"{ROOT}:{CACHE}"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": env_path})


class CloudPoolInterpreterExitTest(unittest.TestCase):
    """The three interpreter-exit scenarios of ExecutorShutdownTest, with our import."""

    def test_interpreter_shutdown(self):
        # An executor never shut down still finishes its work when the interpreter exits.
        proc = _run_child("""
            from cloudpool import CloudPoolExecutor
            from time import sleep
            from test_concurrent_futures import sleep_and_print
            if __name__ == "__main__":
                t = CloudPoolExecutor(5)
                t.submit(sleep_and_print, 1.0, "apple")
        """)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode())
        self.assertEqual(proc.stdout.strip(), b"apple")

    def test_submit_after_interpreter_shutdown(self):
        # Submitting from an atexit hook fails cleanly with the stdlib's message.
        proc = _run_child("""
            import atexit
            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise
            from cloudpool import CloudPoolExecutor
            if __name__ == "__main__":
                t = CloudPoolExecutor(5)
                t.submit(id, 42).result()
        """)
        self.assertIn("RuntimeError: cannot schedule new futures", proc.stderr.decode())
        self.assertEqual(proc.stdout.strip(), b"runtime-error")

    def test_hang_gh83386(self):
        # shutdown(wait=False) with a running call: the call still completes, exit does not hang.
        proc = _run_child("""
            from cloudpool import CloudPoolExecutor
            from test_concurrent_futures import sleep_and_print
            if __name__ == "__main__":
                t = CloudPoolExecutor(max_workers=3)
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
        """)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode())
        self.assertFalse(proc.stderr, proc.stderr.decode())
        self.assertEqual(proc.stdout.strip(), b"apple")


if __name__ == "__main__":
    unittest.main()
