"""Issue 13, part 2: executors and pools opened inside mapped functions (local backend).

A ``ProcessPoolExecutor`` inside a ``ProcessPoolExecutor`` works; the same nesting with
cloudpool must give the same results, while the number of processes stays bounded
(``cloudpool.compute.local``: an executor inside a worker gets that worker's share of
the CPUs; one nested deeper runs its calls on threads of the worker) and inner workers
die with their parent.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time
import unittest

from cloudpool import CloudPoolExecutor
from cloudpool.compute import local
from cloudpool.multiprocessing import Pool

OUTER = 2
BOUND = 60


def inner_square(x):
    return x * x, os.getpid(), os.getppid()


def outer_cloudpool(n):
    with CloudPoolExecutor(8) as ex:  # asks for more than its share: capped
        out = list(ex.map(inner_square, range(n)))
    return sum(v for v, _pid, _ppid in out), os.getpid(), sorted({pid for _v, pid, _pp in out})


def outer_pool(n):
    with Pool(8) as p:
        out = p.map(inner_square, range(n))
    return sum(v for v, _pid, _ppid in out), os.getpid(), sorted({pid for _v, pid, _pp in out})


def outer_stdlib(n):
    with cf.ProcessPoolExecutor(2) as ex:
        out = list(ex.map(inner_square, range(n)))
    return sum(v for v, _pid, _ppid in out), os.getpid(), sorted({pid for _v, pid, _pp in out})


def middle(n):
    """Two levels down: its inner executor runs at depth 2."""
    with CloudPoolExecutor(4) as ex:
        out = list(ex.map(outer_cloudpool, [n, n]))
    return [total for total, _pid, _inner in out], os.getpid(), out


def outer_keeps_inner_open(n):
    ex = CloudPoolExecutor(2)  # left open on purpose: must not outlive the outer worker
    out = list(ex.map(inner_square, range(n)))
    return sorted({pid for _v, pid, _pp in out})


def open_inner_and_report(n):
    ex = CloudPoolExecutor(2)  # left open: its workers must notice when we are killed
    out = list(ex.map(inner_square, range(n)))
    return os.getpid(), sorted({pid for _v, pid, _pp in out})


def depth_here(_=None):
    return os.environ.get(local.DEPTH_ENV)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


class NestedTest(unittest.TestCase):
    def setUp(self):
        self.share = max(1, (os.cpu_count() or 1) // OUTER)

    def test_nested_executor_like_stdlib(self):
        with cf.ProcessPoolExecutor(OUTER) as ex:
            expected = [total for total, _pid, _inner in ex.map(outer_stdlib, [3, 4, 5])]
        with CloudPoolExecutor(OUTER) as ex:
            got = list(ex.map(outer_cloudpool, [3, 4, 5], timeout=BOUND))
        self.assertEqual([total for total, _pid, _inner in got], expected)
        for _total, outer_pid, inner_pids in got:
            self.assertNotIn(outer_pid, inner_pids)  # the inner calls ran in processes of their own
            self.assertLessEqual(len(inner_pids), self.share)  # ... at most the worker's share

    def test_nested_pool_like_stdlib(self):
        with cf.ProcessPoolExecutor(OUTER) as ex:
            expected = [total for total, _pid, _inner in ex.map(outer_stdlib, [3, 4])]
        with Pool(OUTER) as p:
            got = p.map(outer_pool, [3, 4])
        self.assertEqual([total for total, _pid, _inner in got], expected)
        for _total, outer_pid, inner_pids in got:
            self.assertLessEqual(len(inner_pids), self.share)

    def test_stdlib_executor_inside_a_worker(self):
        # Code that already nests the stdlib's pool keeps working when the outer one is ours.
        with cf.ProcessPoolExecutor(OUTER) as ex:
            expected = [total for total, _pid, _inner in ex.map(outer_stdlib, [3, 4])]
        with CloudPoolExecutor(OUTER) as ex:
            got = [total for total, _pid, _inner in ex.map(outer_stdlib, [3, 4], timeout=BOUND)]
        self.assertEqual(got, expected)

    def test_deeper_nesting_runs_on_threads(self):
        with CloudPoolExecutor(OUTER) as ex:
            totals, _top_pid, out = ex.submit(middle, 3).result(BOUND)
        self.assertEqual(totals, [5, 5])
        # Depth 2 starts no processes: its calls ran in the depth-1 worker itself.
        for _total, depth1_pid, depth2_pids in out:
            self.assertEqual(depth2_pids, [depth1_pid])

    def test_inner_workers_die_with_their_parent(self):
        with CloudPoolExecutor(1) as ex:
            inner_pids = ex.submit(outer_keeps_inner_open, 3).result(BOUND)
            self.assertTrue(inner_pids)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in inner_pids):
            time.sleep(0.1)
        self.assertFalse([pid for pid in inner_pids if _alive(pid)])

    def test_inner_workers_die_when_their_parent_is_killed(self):
        with CloudPoolExecutor(1) as ex:
            outer_pid, inner_pids = ex.submit(open_inner_and_report, 3).result(BOUND)
            os.kill(outer_pid, signal.SIGKILL)
            # Idle inner workers check their parent every _PARENT_CHECK_SECONDS.
            deadline = time.monotonic() + 5 * local._PARENT_CHECK_SECONDS + 5
            while time.monotonic() < deadline and any(_alive(pid) for pid in inner_pids):
                time.sleep(0.1)
            self.assertFalse([pid for pid in inner_pids if _alive(pid)])

    def test_depth_is_marked_in_the_environment(self):
        with CloudPoolExecutor(1) as ex:
            depth = ex.submit(depth_here).result(BOUND)
        self.assertEqual(depth, "1")
        self.assertIsNone(os.environ.get(local.DEPTH_ENV))


if __name__ == "__main__":
    unittest.main()
