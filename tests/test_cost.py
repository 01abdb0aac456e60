"""cloudpool.cost: the arithmetic on hand-computed records, the price sheets, and the errors.

Most cases build ``ExecutorStats`` from records whose times were chosen so that every
expected figure below is worked out by hand in the comment next to it. One class runs a
real job on the local backend to check what a local run costs (nothing, with the reason)
and that it can be priced as if it had run on Lambda.
"""
from __future__ import annotations

import math
import tempfile
import time
import unittest

from cloudpool import CloudPoolExecutor
from cloudpool.cost import PRICES, PRICES_TAKEN_ON, CostEstimate, estimate_cost
from cloudpool.stats import CallRecord, ExecutorStats

LAMBDA_GB_S = 0.0000166667
LAMBDA_REQUEST = 0.20 / 1_000_000


def record(batch, started, finished, *, index=0, job="j00000", ok=True):
    return CallRecord(job, batch, index, started - 1.0, started - 0.5, started, finished, finished + 0.1,
                      "w1", 30_000, ok)


def three_invocations(backend="aws_lambda", memory_mb=1024, region="us-east-1"):
    """Three invocations whose billed Lambda durations are 501 ms, 1200 ms and 1 ms."""
    calls = [
        # Invocation j00000.0: two calls run back to back, 100.0 -> 100.5004 = 500.4 ms -> 501 ms.
        record(0, 100.0, 100.25, index=0),
        record(0, 100.25, 100.5004, index=1),
        # Invocation j00000.1: 200.0 -> 201.2 = 1200 ms exactly (the float difference is 1199.99999...).
        record(1, 200.0, 201.2),
        # Invocation j00000.2: 0.1 ms -> billed 1 ms.
        record(2, 300.0, 300.0001),
    ]
    return ExecutorStats(calls, backend=backend, memory_mb=memory_mb, region=region)


def nap(seconds):
    time.sleep(seconds)
    return seconds


class LambdaArithmeticTest(unittest.TestCase):
    def test_three_invocations_at_1024_mb(self):
        est = three_invocations().cost()
        self.assertIsInstance(est, CostEstimate)
        self.assertEqual(est.platform, "aws_lambda")
        self.assertEqual((est.calls, est.requests, est.untimed_requests), (4, 3, 0))
        # 501 + 1200 + 1 = 1702 ms at 1 GiB.
        self.assertAlmostEqual(est.billed_seconds, 1.702, places=12)
        self.assertAlmostEqual(est.gb_seconds, 1.702, places=12)
        self.assertAlmostEqual(est.compute_usd, 1.702 * 0.0000166667, places=15)
        self.assertAlmostEqual(est.request_usd, 3 * 0.0000002, places=15)
        self.assertAlmostEqual(est.total_usd, 0.0000283667234 + 0.0000006, places=15)
        self.assertEqual(est.price_per_gb_second, LAMBDA_GB_S)
        self.assertEqual(est.region, "us-east-1")
        self.assertIn("aws.amazon.com/lambda/pricing", est.source)
        self.assertIn(PRICES_TAKEN_ON, est.source)
        self.assertAlmostEqual(est.usd_per_call, est.total_usd / 4, places=18)
        self.assertIn("$0.000029 for 4 calls in 3 requests on aws_lambda", str(est))

    def test_memory_scales_gb_seconds(self):
        est = three_invocations(memory_mb=512).cost()
        self.assertAlmostEqual(est.gb_seconds, 0.851, places=12)          # 1.702 s x 0.5 GiB
        est = three_invocations(memory_mb=1769).cost()
        self.assertAlmostEqual(est.gb_seconds, 1.702 * 1769 / 1024, places=12)

    def test_duration_is_rounded_up_to_the_millisecond(self):
        epoch = 1_700_000_000.1  # real records carry epoch seconds: ~0.2 us of float noise
        cases = [
            (0.1, 100),           # (epoch + 0.1) - epoch = 0.10000014 s: noise must not add 1 ms
            (0.7, 700),
            (0.25, 250),
            (0.0012, 2),          # 1.2 ms -> 2 ms
            (0.00001, 1),         # anything that ran is at least 1 ms
            (2.0, 2000),
            (0.0, 0),
        ]
        for seconds, billed_ms in cases:
            with self.subTest(seconds=seconds):
                stats = ExecutorStats([record(0, epoch, epoch + seconds)], backend="aws_lambda", memory_mb=1024)
                self.assertAlmostEqual(stats.cost().billed_seconds, billed_ms / 1000, places=12)

    def test_a_batch_is_billed_once_from_first_start_to_last_finish(self):
        # Calls of one batch: 10.0-10.1 and 10.3-10.4 (a 0.2 s gap, e.g. argument loading,
        # is inside the invocation and billed): one request of 400 ms, not two of 100 ms.
        stats = ExecutorStats([record(5, 10.0, 10.1, index=0), record(5, 10.3, 10.4, index=1)],
                              backend="aws_lambda", memory_mb=2048)
        est = stats.cost()
        self.assertEqual(est.requests, 1)
        self.assertAlmostEqual(est.gb_seconds, 0.4 * 2, places=12)
        # The same batch numbers in two jobs are two invocations.
        stats = ExecutorStats([record(0, 10.0, 10.1, job="j00000"), record(0, 10.0, 10.1, job="j00001")],
                              backend="aws_lambda", memory_mb=1024)
        self.assertEqual(stats.cost().requests, 2)

    def test_untimed_invocation_costs_a_request_and_no_duration(self):
        lost = CallRecord("j00000", 9, 0, 1.0, 1.5, None, None, 9.0, None, None, False)
        stats = ExecutorStats([record(0, 100.0, 100.5), lost], backend="aws_lambda", memory_mb=1024)
        est = stats.cost()
        self.assertEqual((est.requests, est.untimed_requests), (2, 1))
        self.assertAlmostEqual(est.gb_seconds, 0.5, places=12)
        self.assertAlmostEqual(est.request_usd, 2 * LAMBDA_REQUEST, places=18)

    def test_empty_stats_cost_nothing(self):
        est = ExecutorStats([], backend="aws_lambda", memory_mb=1024).cost()
        self.assertEqual((est.requests, est.total_usd), (0, 0.0))


class OverridesTest(unittest.TestCase):
    def test_price_overrides_replace_only_what_is_given(self):
        est = three_invocations().cost(price_per_gb_second=1.0)
        self.assertAlmostEqual(est.compute_usd, 1.702, places=12)
        self.assertAlmostEqual(est.request_usd, 3 * LAMBDA_REQUEST, places=18)   # still Lambda's
        self.assertIn("prices given by the caller (price_per_gb_second=1.0)", est.source)
        self.assertIn("aws.amazon.com/lambda/pricing", est.source)
        est = three_invocations().cost(price_per_request=0.01)
        self.assertAlmostEqual(est.request_usd, 0.03, places=15)
        self.assertAlmostEqual(est.compute_usd, 1.702 * LAMBDA_GB_S, places=15)

    def test_memory_and_region_overrides(self):
        est = estimate_cost(three_invocations(), memory_mb=256, region="eu-west-1")
        self.assertAlmostEqual(est.gb_seconds, 1.702 / 4, places=12)
        self.assertEqual(est.memory_mb, 256)
        self.assertEqual(est.region, "eu-west-1")

    def test_other_platforms_round_and_price_their_own_way(self):
        stats = three_invocations(backend="knative", memory_mb=1024)
        # Cloud Run: 100 ms steps -> 600 + 1200 + 100 = 1900 ms; 1 vCPU and 1 GiB each.
        est = stats.cost(platform="cloud_run", vcpus=1)
        self.assertAlmostEqual(est.billed_seconds, 1.9, places=12)
        self.assertAlmostEqual(est.vcpu_seconds, 1.9, places=12)
        self.assertAlmostEqual(est.compute_usd, 1.9 * 0.000024 + 1.9 * 0.0000025, places=15)
        self.assertAlmostEqual(est.request_usd, 3 * 0.40 / 1e6, places=18)
        # Container Apps: whole seconds -> 1 + 2 + 1 = 4 s, 2 vCPU, 1 GiB.
        est = stats.cost(platform="container_apps", vcpus=2)
        self.assertAlmostEqual(est.billed_seconds, 4.0, places=12)
        self.assertAlmostEqual(est.compute_usd, 4 * 2 * 0.000024 + 4 * 0.000003, places=15)
        # Azure Functions: 100 ms minimum (the 1 ms call is billed 100 ms), memory rounded
        # up to 128 MB steps (200 MB -> 256 MB).
        est = stats.cost(platform="azure_functions", memory_mb=200)
        self.assertAlmostEqual(est.billed_seconds, (501 + 1200 + 100) / 1000, places=12)
        self.assertEqual(est.memory_mb, 256)
        self.assertAlmostEqual(est.gb_seconds, 1.801 / 4, places=12)
        # Code Engine: 1 ms steps, vCPU and GB prices.
        est = stats.cost(platform="code_engine", vcpus=0.5)
        self.assertAlmostEqual(est.compute_usd, 1.702 * 0.5 * 0.00003431 + 1.702 * 0.00000356, places=15)
        # Lambda Arm.
        est = stats.cost(platform="aws_lambda_arm64")
        self.assertAlmostEqual(est.compute_usd, 1.702 * 0.0000133334, places=15)

    def test_every_price_sheet_names_its_source_and_date(self):
        for name, sheet in PRICES.items():
            with self.subTest(platform=name):
                self.assertEqual(sheet.platform, name)
                self.assertRegex(sheet.source, r"\(\S+\.(com|net)/\S+.*read \d{4}-\d{2}-\d{2}\)")
                self.assertGreater(sheet.per_gb_second, 0)
                # Batch-style platforms (aws_batch_fargate) charge no per-job request fee.
                self.assertGreaterEqual(sheet.per_request, 0)


class ErrorsTest(unittest.TestCase):
    def test_self_deployed_backends_need_a_price(self):
        for backend in ("knative", "kubernetes"):
            stats = three_invocations(backend=backend)
            with self.subTest(backend=backend):
                with self.assertRaisesRegex(ValueError, rf"no price for the '{backend}' backend.*platform=.*"
                                                        rf"price_per_gb_second="):
                    stats.cost()
        # With a price of one's own it works; no request price given means requests count $0.
        est = three_invocations(backend="kubernetes").cost(price_per_gb_second=0.00001)
        self.assertEqual(est.platform, "custom")
        self.assertAlmostEqual(est.total_usd, 1.702 * 0.00001, places=15)
        self.assertIn("no request price given", est.source)

    def test_unknown_memory(self):
        stats = three_invocations(memory_mb=None)
        with self.assertRaisesRegex(ValueError, r"memory per worker is not known.*memory_mb="):
            stats.cost()
        self.assertAlmostEqual(stats.cost(memory_mb=2048).gb_seconds, 3.404, places=12)

    def test_vcpu_priced_platform_needs_vcpus(self):
        with self.assertRaisesRegex(ValueError, r"cloud_run charges per vCPU-second: pass vcpus="):
            three_invocations().cost(platform="cloud_run")
        with self.assertRaisesRegex(ValueError, r"charges per vCPU-second: pass vcpus="):
            three_invocations(backend="knative").cost(price_per_vcpu_second=0.00002)

    def test_bad_arguments(self):
        stats = three_invocations()
        with self.assertRaisesRegex(ValueError, r"unknown platform 'lambda'.*aws_lambda.*cloud_run"):
            stats.cost(platform="lambda")
        with self.assertRaisesRegex(ValueError, r"price_per_gb_second must be >= 0"):
            stats.cost(price_per_gb_second=-1)
        with self.assertRaisesRegex(ValueError, r"memory_mb must be > 0"):
            stats.cost(memory_mb=0)
        with self.assertRaisesRegex(TypeError, r"price_per_request must be a number, not str"):
            stats.cost(price_per_request="0.2")
        with self.assertRaisesRegex(TypeError, r"takes an ExecutorStats"):
            estimate_cost(stats.calls)


class LocalJobTest(unittest.TestCase):
    """A real job on local worker processes."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="cloudpool-cost-")
        with CloudPoolExecutor(2, storage="file://" + cls._tmp.name) as ex:
            results = list(ex.map(nap, [0.01, 0.03, 0.05, 0.02] * 3))
            cls.stats = ex.stats()
        assert len(results) == 12

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_local_costs_nothing_and_says_why(self):
        est = self.stats.cost()
        self.assertEqual(est.total_usd, 0.0)
        self.assertEqual(est.platform, "local")
        self.assertEqual(est.calls, 12)
        self.assertIn("this machine's own processes: no platform charge", est.source)
        self.assertIn("$0 for 12 calls", str(est))

    def test_local_run_priced_as_if_on_lambda(self):
        with self.assertRaisesRegex(ValueError, "memory_mb="):
            self.stats.cost(platform="aws_lambda")
        est = self.stats.cost(platform="aws_lambda", memory_mb=1024)
        # Worked out independently from the records: per invocation, first start to last
        # finish, whole milliseconds rounded up.
        spans = {}
        for c in self.stats.calls:
            lo, hi = spans.get(c.invocation, (c.started, c.finished))
            spans[c.invocation] = (min(lo, c.started), max(hi, c.finished))
        billed_ms = sum(math.ceil(round((hi - lo) * 1000, 3)) for lo, hi in spans.values())
        self.assertEqual(est.requests, len(spans))
        self.assertAlmostEqual(est.billed_seconds, billed_ms / 1000, places=9)
        # Each call slept at least its argument: 0.33 s in all.
        self.assertGreaterEqual(est.billed_seconds, 0.33)
        self.assertAlmostEqual(est.total_usd, billed_ms / 1000 * LAMBDA_GB_S + len(spans) * LAMBDA_REQUEST,
                               places=15)


if __name__ == "__main__":
    unittest.main()
