"""Retry policies, checksums on payloads and results, and clean-up of consumed job data.

Real worker processes and real local storage throughout. Faults are injected by the
functions themselves (they fail or die on their first attempt, remembered in a marker
file) and by a local storage subclass that corrupts or refuses reads of chosen keys,
registered under a test-only scheme, so the executor's own code paths see them.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
import unittest

import cloudpool
from cloudpool import CloudPoolExecutor, RetryPolicy, objects, protocol, retry, worker
from cloudpool.errors import CallTimeoutError, IntegrityError, WorkerLostError
from cloudpool.storage import storages
from cloudpool.storage.local import LocalStorage

BOUND = 60


def _attempt(marker_dir: str, name: str) -> int:
    """Count this attempt in a marker file; returns the attempt number (1 = first)."""
    path = os.path.join(marker_dir, f"{name}.attempts")
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        return len(f.read())


def flaky_value_error(marker_dir, x, failures):
    if _attempt(marker_dir, f"v{x}") <= failures:
        raise ValueError(f"transient trouble with {x}")
    return x * 10


def dies_first_time(marker_dir, x):
    if _attempt(marker_dir, f"d{x}") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1


def hangs_first_time(marker_dir, x):
    if _attempt(marker_dir, f"h{x}") == 1:
        time.sleep(3600)
    return x - 1


def odd_inputs_fail_once(marker_dir, x):
    if x % 2 and _attempt(marker_dir, f"o{x}") == 1:
        raise ConnectionError(f"reset while handling {x}")
    return x * x


def part_length_failing_once(marker_dir, part):
    if part.part == 1 and _attempt(marker_dir, "part1") == 1:
        raise OSError("storage hiccup")
    return part.part, len(part.read())


def attempts_of(marker_dir: str, name: str) -> int:
    try:
        with open(os.path.join(marker_dir, f"{name}.attempts")) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


class TempDirMixin:
    def setUp(self):
        super().setUp()
        self._tmp = tempfile.TemporaryDirectory(prefix="cloudpool-retry-")
        self.addCleanup(self._tmp.cleanup)
        self.dir = self._tmp.name
        self.storage = "file://" + os.path.join(self.dir, "bucket")


class RetryPolicyTest(TempDirMixin, unittest.TestCase):
    def test_listed_exception_is_retried_until_success(self):
        with CloudPoolExecutor(2, storage=self.storage) as ex:
            fn = retry(flaky_value_error, retries=2, backoff=0.01, on=ValueError)
            fut = ex.submit(fn, self.dir, 7, 2)
            self.assertEqual(fut.result(BOUND), 70)
        self.assertEqual(attempts_of(self.dir, "v7"), 3)

    def test_retries_are_bounded_and_the_last_error_says_so(self):
        with CloudPoolExecutor(2, storage=self.storage) as ex:
            fn = retry(flaky_value_error, retries=1, backoff=0.01, on=(ValueError,))
            fut = ex.submit(fn, self.dir, 3, 5)
            with self.assertRaises(ValueError) as cm:
                fut.result(BOUND)
        self.assertIn("transient trouble with 3", str(cm.exception))
        self.assertTrue(any("each of its 2 attempts" in n for n in getattr(cm.exception, "__notes__", [])))
        self.assertEqual(attempts_of(self.dir, "v3"), 2)

    def test_unlisted_exception_is_not_retried(self):
        with CloudPoolExecutor(2, storage=self.storage) as ex:
            fn = retry(flaky_value_error, retries=3, backoff=0.01, on=KeyError)
            with self.assertRaises(ValueError):
                ex.submit(fn, self.dir, 4, 1).result(BOUND)
        self.assertEqual(attempts_of(self.dir, "v4"), 1)

    def test_executor_policy_applies_to_plain_functions(self):
        policy = RetryPolicy(retries=1, backoff=0.01, on=(ConnectionError,))
        with CloudPoolExecutor(2, storage=self.storage, retry=policy) as ex:
            results = list(ex.map(odd_inputs_fail_once, [self.dir] * 20, range(20), timeout=BOUND))
        # Retried calls keep their place: map still lines up with its inputs.
        self.assertEqual(results, [x * x for x in range(20)])
        self.assertEqual([attempts_of(self.dir, f"o{x}") for x in range(1, 20, 2)], [2] * 10)

    def test_worker_loss_is_not_retried_by_default(self):
        with CloudPoolExecutor(2, storage=self.storage) as ex:
            fut = ex.submit(dies_first_time, self.dir, 1)
            with self.assertRaises(WorkerLostError):
                fut.result(BOUND)
        self.assertEqual(attempts_of(self.dir, "d1"), 1)

    def test_worker_loss_is_retried_when_asked(self):
        policy = RetryPolicy(retries=1, backoff=0.01, worker_lost=True)
        start = time.monotonic()
        with CloudPoolExecutor(2, storage=self.storage, retry=policy) as ex:
            futs = [ex.submit(dies_first_time, self.dir, x) for x in range(4)]
            self.assertEqual([f.result(BOUND) for f in futs], [1, 2, 3, 4])
        self.assertLess(time.monotonic() - start, BOUND)
        self.assertEqual([attempts_of(self.dir, f"d{x}") for x in range(4)], [2] * 4)

    def test_timeouts_are_retried_when_asked(self):
        policy = RetryPolicy(retries=1, backoff=0.01, timeouts=True)
        with CloudPoolExecutor(1, storage=self.storage, retry=policy, config={"timeout": 1}) as ex:
            self.assertEqual(ex.submit(hangs_first_time, self.dir, 5).result(BOUND), 4)
        self.assertEqual(attempts_of(self.dir, "h5"), 2)

    def test_timeouts_are_not_retried_by_default(self):
        with CloudPoolExecutor(1, storage=self.storage, config={"timeout": 1}) as ex:
            with self.assertRaises(CallTimeoutError):
                ex.submit(hangs_first_time, self.dir, 6).result(BOUND)
        self.assertEqual(attempts_of(self.dir, "h6"), 1)

    def test_object_partitions_keep_their_identity_when_retried(self):
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        with open(os.path.join(data, "a.txt"), "wb") as f:
            f.write(b"".join(b"line %d\n" % i for i in range(5000)))
        policy = RetryPolicy(retries=2, backoff=0.01, on=OSError)
        with CloudPoolExecutor(2, storage=self.storage, retry=policy) as ex:
            got = list(ex.map(part_length_failing_once, [self.dir] * 4,
                              objects(data + "/", chunks=4), timeout=BOUND))
        expected = [(p.part, len(p.read())) for p in objects(data + "/", chunks=4)]
        self.assertEqual(got, expected)
        self.assertEqual(attempts_of(self.dir, "part1"), 2)

    def test_bad_policies_are_refused_early(self):
        with self.assertRaisesRegex(ValueError, "retries must be an integer >= 0"):
            RetryPolicy(retries=-1)
        with self.assertRaisesRegex(TypeError, "exception class"):
            retry(abs, on="ValueError")
        with self.assertRaisesRegex(TypeError, "retry must be a cloudpool.RetryPolicy"):
            CloudPoolExecutor(1, storage=self.storage, retry="3")
        with self.assertRaisesRegex(ValueError, "retries must be an integer >= 0"):
            CloudPoolExecutor(1, storage=self.storage, config={"retries": -2})

    def test_retry_wrapper_is_public(self):
        self.assertIs(cloudpool.retry, retry)
        self.assertIs(cloudpool.RetryPolicy, RetryPolicy)


class FaultyStorage(LocalStorage):
    """Local disk whose reads of some keys go wrong, a set number of times.

    ``corrupt[substring] = n`` flips a byte in the next n reads of matching keys;
    ``refuse[substring] = n`` raises ConnectionResetError for the next n reads. The
    counters live in files so that forked workers and the client share them.
    """

    scheme = "faultyfile"
    state_dir = ""

    @classmethod
    def arm(cls, kind: str, pattern: str, times: int) -> None:
        with open(os.path.join(cls.state_dir, f"{kind}-{pattern.encode().hex()}"), "w") as f:
            f.write(str(times))

    def _take(self, kind: str, key: str) -> bool:
        for name in os.listdir(self.state_dir):
            k, _, pattern = name.partition("-")
            if k != kind or bytes.fromhex(pattern).decode() not in key:
                continue
            path = os.path.join(self.state_dir, name)
            with open(path) as f:
                left = int(f.read() or 0)
            if left > 0:
                with open(path, "w") as f:
                    f.write(str(left - 1))
                return True
        return False

    def get(self, key, start=None, end=None):
        if self._take("refuse", key):
            raise ConnectionResetError(f"{self.url(key)}: connection reset (injected)")
        data = super().get(key, start, end)
        if data and self._take("corrupt", key):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data


storages.register("faultyfile", FaultyStorage, replace=True)


class DeleteCountingStorage(LocalStorage):
    """Local disk that counts the bulk deletes the client makes (only the client deletes)."""

    scheme = "countingfile"
    deletes = 0

    def delete(self, keys):
        type(self).deletes += 1
        return super().delete(keys)


storages.register("countingfile", DeleteCountingStorage, replace=True)


def triple(x):
    return 3 * x


class ChecksumTest(TempDirMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        FaultyStorage.state_dir = os.path.join(self.dir, "faults")
        os.makedirs(FaultyStorage.state_dir)
        self.url = "faultyfile://local" + os.path.join(self.dir, "bucket")

    def test_status_and_event_carry_checksums(self):
        with CloudPoolExecutor(1, storage="file://" + os.path.join(self.dir, "b2"),
                               config={"keep_data": True}) as ex:
            self.assertEqual(ex.submit(triple, 2).result(BOUND), 6)
            prefix = ex.storage_url[len("file://"):]
        statuses = []
        for root, _dirs, files in os.walk(prefix):
            statuses += [os.path.join(root, f) for f in files if f.endswith(".json") and "/status/" in root + "/"]
        self.assertTrue(statuses)
        import json
        with open(statuses[0]) as f:
            status = json.load(f)
        with open("/" + status["result_key"], "rb") as f:
            self.assertEqual(status["result_sum"], protocol.checksum(f.read()))

    def test_a_torn_result_read_is_read_again(self):
        FaultyStorage.arm("corrupt", "/results/", 1)
        with CloudPoolExecutor(1, storage=self.url) as ex:
            self.assertEqual(ex.submit(triple, 5).result(BOUND), 15)

    def test_a_result_corrupt_in_storage_reruns_then_fails_clearly(self):
        FaultyStorage.arm("corrupt", "/results/", 100)
        with CloudPoolExecutor(1, storage=self.url, retry=RetryPolicy(retries=1, backoff=0.01)) as ex:
            with self.assertRaises(IntegrityError) as cm:
                ex.submit(triple, 5).result(BOUND)
        self.assertIsInstance(cm.exception, OSError)
        self.assertIn("does not match its checksum", str(cm.exception))

    def test_corrupt_arguments_are_refused_by_the_worker(self):
        # Big arguments travel through storage; the worker checks them before unpickling.
        FaultyStorage.arm("corrupt", "/args/", 100)
        # pipe_args=False: by default the local backend's pipe carries big arguments.
        with CloudPoolExecutor(1, storage=self.url, retry=0, pipe_args=False) as ex:
            with self.assertRaises(IntegrityError) as cm:
                ex.submit(len, b"x" * 200_000).result(BOUND)
        self.assertIn("the arguments", str(cm.exception))

    def test_corrupt_function_is_refused_and_recovers_on_retry(self):
        FaultyStorage.arm("corrupt", "function.pickle", 1)
        with CloudPoolExecutor(1, storage=self.url) as ex:
            self.assertEqual(ex.submit(triple, 7).result(BOUND), 21)

    def test_worker_verifies_inline_arguments(self):
        args, offsets = protocol.dumps_each([((1,), {})])
        storage_dir = os.path.join(self.dir, "w")
        keys = protocol.Keys(storage_dir.lstrip("/"), "cp-test")
        store = LocalStorage("")
        store.put(keys.function("j1"), protocol.dumps(triple))
        event = {"protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions(),
                 "storage": {"url": "file:///" + storage_dir.lstrip("/"), "options": {}},
                 "keys": {"root": keys.root, "executor": "cp-test"}, "job": "j1", "batch": 0,
                 "offsets": offsets, "args": args, "args_sum": "crc32:00000000", "timeout": None}
        summary = worker.handle(event)
        self.assertEqual(summary.get("fatal"), "args")

    def test_refused_reads_are_retried_as_invocation_failures(self):
        FaultyStorage.arm("refuse", "function.pickle", 1)
        with CloudPoolExecutor(1, storage=self.url) as ex:
            self.assertEqual(ex.submit(triple, 3).result(BOUND), 9)


class CleanupTest(TempDirMixin, unittest.TestCase):
    def _files_under(self, prefix, part):
        found = []
        for root, _dirs, files in os.walk(prefix):
            if f"/{part}" in root + "/":
                found += files
        return found

    def test_consumed_results_are_deleted_while_the_executor_lives(self):
        with CloudPoolExecutor(2, storage=self.storage) as ex:
            self.assertEqual(list(ex.map(triple, range(200), timeout=BOUND)), [3 * x for x in range(200)])
            prefix = ex.storage_url[len("file://"):]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (self._files_under(prefix, "results/")
                                                   or self._files_under(prefix, "status/")):
                time.sleep(0.05)
            self.assertEqual(self._files_under(prefix, "results/"), [])
            self.assertEqual(self._files_under(prefix, "status/"), [])
            # The executor keeps working after its data was cleaned up.
            self.assertEqual(ex.submit(triple, 4).result(BOUND), 12)
        self.assertFalse(os.path.exists(prefix))

    def test_one_call_after_another_costs_no_delete_per_call(self):
        # A caller that submits each call once the last one finished leaves the executor
        # idle between every two: consumed data is deleted in bulk after it stays idle,
        # not once per call (which, on a remote store, held up every next submit).
        url = "countingfile://local" + os.path.join(self.dir, "counted")
        with CloudPoolExecutor(1, storage=url) as ex:
            self.assertEqual(ex.submit(triple, 0).result(BOUND), 0)
            DeleteCountingStorage.deletes = 0
            t0 = time.monotonic()
            for x in range(40):
                self.assertEqual(ex.submit(triple, x).result(BOUND), 3 * x)
            elapsed = time.monotonic() - t0
            during = DeleteCountingStorage.deletes
            prefix = ex.storage_url[len("countingfile://local"):]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._files_under(prefix, "results/"):
                time.sleep(0.05)
            self.assertEqual(self._files_under(prefix, "results/"), [], "deleted once idle")
        # At most one periodic (5 s) delete may fall inside the loop.
        self.assertLessEqual(during, 1 + int(elapsed // 5), f"{during} deletes for 40 calls in {elapsed:.1f} s")

    def test_keep_data_keeps_everything(self):
        with CloudPoolExecutor(2, storage=self.storage, config={"keep_data": True}) as ex:
            list(ex.map(triple, range(50), timeout=BOUND))
            prefix = ex.storage_url[len("file://"):]
            time.sleep(0.5)
        self.assertTrue(self._files_under(prefix, "results/"))
        self.assertTrue(self._files_under(prefix, "status/"))
        self.assertTrue(os.path.exists(os.path.join(prefix, "client.json")))


if __name__ == "__main__":
    unittest.main()
