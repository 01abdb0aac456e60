"""CloudFuture stays a faithful concurrent.futures.Future while costing little per pending call."""
from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
import tracemalloc
import unittest

from cloudpool import CloudPoolExecutor
from cloudpool.executor import CloudFuture


def _square(x):
    return x * x


class CloudFutureShapeTest(unittest.TestCase):
    def test_has_every_attribute_a_stdlib_future_has(self):
        # CloudFuture does not call Future.__init__ (it defers the condition); if a new
        # Python adds an attribute there, this fails instead of a Future method later.
        stdlib = set(vars(cf.Future()))
        ours = set(vars(CloudFuture())) | {"_condition"}
        self.assertLessEqual(stdlib, ours, f"missing: {stdlib - ours}")
        f = CloudFuture()
        for name in stdlib - {"_condition"}:
            self.assertEqual(type(getattr(f, name)), type(getattr(cf.Future(), name)), name)

    def test_condition_is_made_once_on_first_use_even_under_a_race(self):
        f = CloudFuture()
        self.assertNotIn("_lazy_condition", vars(f))
        seen = []
        barrier = threading.Barrier(8)

        def grab():
            barrier.wait()
            seen.append(f._condition)

        threads = [threading.Thread(target=grab) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len({id(c) for c in seen}), 1)
        self.assertIs(f._condition, seen[0])

    def test_stdlib_waiting_functions_work_with_lazy_conditions(self):
        with CloudPoolExecutor(2) as ex:
            futures = [ex.submit(_square, i) for i in range(20)]
            done, not_done = cf.wait(futures, timeout=60)
            self.assertFalse(not_done)
            self.assertEqual(sorted(f.result() for f in cf.as_completed(futures, timeout=60)),
                             sorted(i * i for i in range(20)))
            f = ex.submit(_square, 3)
            got = []
            f.add_done_callback(lambda fut: got.append(fut.result()))
            self.assertEqual(f.result(timeout=60), 9)
            self.assertEqual(got, [9])

    def test_a_pending_future_costs_well_under_half_a_stdlib_one(self):
        def bytes_per(factory, n=2000):
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                keep = [factory() for _ in range(n)]
                after = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            del keep
            return (after - before) / n

        stdlib, ours = bytes_per(cf.Future), bytes_per(CloudFuture)
        self.assertLess(ours, stdlib * 0.5, f"CloudFuture {ours:.0f} B vs Future {stdlib:.0f} B")


if __name__ == "__main__":
    unittest.main()
