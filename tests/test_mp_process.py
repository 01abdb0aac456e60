"""``cloudpool.multiprocessing.Process`` on the local backend: one call per process.

Lifecycle and exit codes as the stdlib's, ``terminate`` stopping the call for real,
results handed back through a Redis ``Queue`` (from ``tests.servers``), and the
interpreter-exit rules (daemons terminated, others waited for).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
import unittest
from contextlib import redirect_stderr

import cloudpool.multiprocessing as cmp
from cloudpool.multiprocessing import Process
from tests._cpython import ROOT
from tests.servers import redis_server

BOUND = 30.0


def setUpModule() -> None:
    global REDIS
    REDIS = redis_server()
    cmp.set_redis_url(REDIS.url)


def tearDownModule() -> None:
    cmp.set_redis_url(None)


def put_square(q, x):
    q.put((os.getpid(), x * x))


def fail():
    raise KeyError("process body failed")  # process-marker


def exit_with(code):
    sys.exit(code)


class Worker(Process):
    """The subclass idiom: ``run()`` overridden, state on the instance."""

    def __init__(self, q, n):
        super().__init__(name="subclassed")
        self.q = q
        self.n = n

    def run(self):
        for i in range(self.n):
            self.q.put(i)


class ProcessTest(unittest.TestCase):
    def test_target_runs_in_another_process(self):
        q = cmp.Queue()
        p = Process(target=put_square, args=(q, 7))
        self.assertIsNone(p.exitcode)
        self.assertFalse(p.is_alive())
        p.start()
        worker_pid, value = q.get(timeout=BOUND)
        p.join(BOUND)
        self.assertEqual(value, 49)
        self.assertNotEqual(worker_pid, os.getpid())
        self.assertEqual(p.exitcode, 0)
        self.assertFalse(p.is_alive())
        self.assertIn("exitcode=0", repr(p))
        self.assertIsNone(p.pid)
        p.close()
        with self.assertRaisesRegex(ValueError, "closed"):
            p.is_alive()

    def test_exception_gives_exitcode_1_and_prints_the_traceback(self):
        p = Process(target=fail, name="failing")
        err = io.StringIO()
        with redirect_stderr(err):
            p.start()
            p.join(BOUND)
            self.assertEqual(p.exitcode, 1)
        self.assertIn("Process failing:", err.getvalue())
        self.assertIn("process-marker", err.getvalue())

    def test_system_exit_codes(self):
        for code, expected in ((0, 0), (3, 3), (None, 0)):
            p = Process(target=exit_with, args=(code,))
            p.start()
            p.join(BOUND)
            self.assertEqual(p.exitcode, expected, code)

    def test_terminate_stops_the_call(self):
        p = Process(target=time.sleep, args=(60,))
        p.start()
        time.sleep(0.5)
        self.assertTrue(p.is_alive())
        self.assertIn(p, cmp.active_children())
        p.join(timeout=0.2)  # times out, returns
        self.assertIsNone(p.exitcode)
        t0 = time.monotonic()
        p.terminate()
        p.join(BOUND)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertFalse(p.is_alive())
        self.assertEqual(p.exitcode, -15)
        self.assertNotIn(p, cmp.active_children())
        k = Process(target=time.sleep, args=(60,))
        k.start()
        k.kill()
        self.assertEqual(k.exitcode, -9)

    def test_misuse(self):
        p = Process(target=time.sleep, args=(0.5,))
        with self.assertRaisesRegex(AssertionError, "can only join a started process"):
            p.join()
        p.start()
        with self.assertRaisesRegex(AssertionError, "cannot start a process twice"):
            p.start()
        with self.assertRaisesRegex(AssertionError, "already started"):
            p.daemon = True
        with self.assertRaisesRegex(ValueError, "still running"):
            p.close()
        p.join(BOUND)
        p.close()
        with self.assertRaises(AssertionError):
            Process(group=1)

    def test_subclass_with_run(self):
        q = cmp.Queue()
        w = Worker(q, 3)
        w.start()
        w.join(BOUND)
        self.assertEqual(w.exitcode, 0)
        self.assertEqual([q.get(timeout=BOUND) for _ in range(3)], [0, 1, 2])
        self.assertEqual(w.name, "subclassed")

    def test_context_process_class(self):
        ctx = cmp.get_context("fork")
        self.assertTrue(issubclass(ctx.Process, Process))
        q = cmp.Queue()
        p = ctx.Process(target=put_square, args=(q, 3))
        p.start()
        p.join(BOUND)
        self.assertEqual(q.get(timeout=BOUND)[1], 9)


def _run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=90, env={**os.environ, "PYTHONPATH": ROOT})


class ProcessExitTest(unittest.TestCase):
    def test_daemons_are_terminated_and_others_awaited_at_exit(self):
        marker = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cloudpool-proc-{os.getpid()}")
        self.addCleanup(lambda: os.path.exists(marker) and os.remove(marker))
        t0 = time.monotonic()
        proc = _run_child(f"""
            import time
            from cloudpool.multiprocessing import Process
            def touch(path):
                time.sleep(1.0)
                open(path, "w").close()
            if __name__ == "__main__":
                Process(target=time.sleep, args=(120,), daemon=True).start()
                Process(target=touch, args=({marker!r},)).start()
        """)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(os.path.exists(marker))  # the non-daemon one was waited for
        self.assertLess(time.monotonic() - t0, 60)  # the daemon one was not


if __name__ == "__main__":
    unittest.main()
