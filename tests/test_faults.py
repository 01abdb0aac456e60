"""Fault injection: real processes, real servers, real faults (issue 7).

Every test here breaks something for real -- it SIGKILLs worker processes, lets calls
hang or ``os._exit``, stops and restarts a storage server mid-job, or puts
``tests/faultproxy.py`` (a real HTTP proxy) between cloudpool and a real server to reset
connections and answer 503 / SlowDown / 429 -- and then checks three things:

(a) every future resolves within a stated bound (``cf.wait`` with a timeout, then an
    assertion that nothing is left: a hang fails the test instead of hanging it);
(b) every call that completed returned the right value (each call returns something
    derived from its argument);
(c) transient faults are recovered: the job completes, and the proxy's counters show the
    faults were really injected and really retried.

``tests/test_executor.py`` has the single-fault cases (one SIGKILL, one ``os._exit``, one
timeout); this module makes them systematic: several faults at once, on local disk and
on S3 (moto), mid-batch, plus storage faults at the storage layer (each backend through
the proxy) and at the executor level, and throttling of the knative backend.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
import unittest
import uuid

import pytest

from cloudpool import CloudPoolExecutor
from cloudpool.errors import BrokenCloudPool, CallTimeoutError, WorkerLostError
from tests import servers
from tests.faultproxy import FaultProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- functions run by workers
def echo_after(seconds: float, value):
    time.sleep(seconds)
    return value


def square(x):
    return x * x


def mark_and_sleep(directory: str, index: int, seconds: float):
    """Write this worker's pid to ``<directory>/<index>.pid``, then sleep; returns ``index * 10``."""
    path = os.path.join(directory, f"{index}.pid")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return index * 10


def exit_or_square(x, exits):
    """``os._exit(code)`` when ``x`` is a key of ``exits`` -- before any status is written."""
    if x in exits:
        os._exit(exits[x])
    return x * x


def hang_forever(directory: str, index: int, block_alarm: bool):
    """Never returns. With ``block_alarm`` the worker's own SIGALRM timer cannot stop it
    either (as a call stuck in C code with signals blocked): only the client can."""
    if block_alarm:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    with open(os.path.join(directory, f"hang{index}.pid"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------- helpers
def wait_all(test: unittest.TestCase, futures, bound: float, what: str = "futures"):
    """(a): every future resolves within ``bound`` seconds; returns the elapsed time."""
    start = time.monotonic()
    done, not_done = cf.wait(futures, timeout=bound)
    elapsed = time.monotonic() - start
    test.assertFalse(not_done, f"{len(not_done)} of {len(futures)} {what} unresolved after {bound} s")
    return elapsed


def outcomes(futures):
    """Counter of 'ok' / exception type names."""
    return collections.Counter("ok" if f.exception() is None else type(f.exception()).__name__ for f in futures)


def wait_for(predicate, bound: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound} s waiting for {what}")
        time.sleep(step)


def gone(pid: int) -> bool:
    """True once process ``pid`` has exited (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def make_bucket(endpoint_url: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=name)


def chain_has(exc: BaseException, kind: type) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def setUpModule():
    # Forked workers find S3 credentials in their own environment, as on a real platform.
    os.environ.update(servers.moto_s3().env)


# ============================================================================ worker faults
class LocalDiskStorage:
    """Executors of a test store their data in a fresh local directory."""

    def setUp(self):
        super().setUp()
        self._tmp = tempfile.mkdtemp(prefix="cloudpool-faults-")
        self.addCleanup(shutil.rmtree, self._tmp, True)
        self.scratch = os.path.join(self._tmp, "scratch")
        os.makedirs(self.scratch)

    def executor(self, max_workers, config=None, **kwargs):
        return CloudPoolExecutor(max_workers, storage="file://" + os.path.join(self._tmp, "store"),
                                 config=dict(config or {}), **kwargs)


class MotoS3Storage(LocalDiskStorage):
    """The same, with the executor's storage on a moto S3 bucket (scratch files stay local)."""

    bucket = "cp-faults-" + uuid.uuid4().hex[:8]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        moto = servers.moto_s3()
        make_bucket(moto.endpoint_url, cls.bucket)
        cls.s3 = {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION}

    def executor(self, max_workers, config=None, **kwargs):
        config = dict(config or {})
        config["s3"] = dict(self.s3)
        return CloudPoolExecutor(max_workers, storage=f"s3://{self.bucket}/run-{uuid.uuid4().hex[:8]}",
                                 config=config, **kwargs)


class WorkerFaults:
    BOUND = 30.0

    def test_several_workers_sigkilled_at_once_mid_call(self):
        # Four workers each start a long call; three are SIGKILLed together while their
        # calls run. Exactly those three calls fail (WorkerKilledError, a WorkerLostError, naming SIGKILL);
        # every other call -- the fourth long one, and 36 short ones queued behind --
        # completes with its own result, and the executor stays usable.
        with self.executor(4) as ex:
            futures = [ex.submit(mark_and_sleep, self.scratch, i, 2.0) for i in range(4)]
            futures += [ex.submit(mark_and_sleep, self.scratch, i, 0.01) for i in range(4, 40)]
            pid_files = [os.path.join(self.scratch, f"{i}.pid") for i in range(4)]
            wait_for(lambda: all(os.path.exists(p) for p in pid_files), self.BOUND, "4 long calls to start")
            pids = [int(open(p).read()) for p in pid_files]
            self.assertEqual(len(set(pids)), 4, "the long calls must run in 4 different workers")
            victims = pids[:3]
            killed_at = time.monotonic()
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            # (a) the victims' futures fail fast, long before their 2 s calls would end
            cf.wait(futures[:3], timeout=self.BOUND)
            self.assertLess(time.monotonic() - killed_at, 5.0)
            wait_all(self, futures, self.BOUND)
            for i, f in enumerate(futures[:3]):
                with self.assertRaises(WorkerLostError, msg=f"call {i}") as cm:
                    f.result()
                self.assertIn("SIGKILL", str(cm.exception))
                self.assertIsInstance(cm.exception, cf.BrokenExecutor)
            # (b) everything else completed, correctly
            self.assertEqual([f.result() for f in futures[3:]], [i * 10 for i in range(3, 40)])
            self.assertEqual(outcomes(futures), {"ok": 37, "WorkerKilledError": 3})
            # the pool replaced its workers and still runs work
            self.assertEqual(list(ex.map(square, range(20))), [x * x for x in range(20)])
            self.assertTrue(all(gone(pid) for pid in victims))

    def test_os_exit_mid_batch_with_several_exit_codes(self):
        # Calls are fast, so batches grow; three of them os._exit (codes 0, 1 and 7) in
        # the middle of their batches, before writing any status. Exactly those three
        # fail, naming the exit code; their batch neighbours, finished or not, complete.
        exits = {37: 0, 111: 1, 222: 7}
        with self.executor(2) as ex:
            list(ex.map(square, range(200)))  # teach the manager that calls are fast
            futures = [ex.submit(exit_or_square, x, exits) for x in range(300)]
            wait_all(self, futures, self.BOUND)
            for x, f in enumerate(futures):
                if x in exits:
                    with self.assertRaises(WorkerLostError, msg=f"call {x}") as cm:
                        f.result()
                    self.assertIn(f"exited with code {exits[x]}", str(cm.exception))
                else:
                    self.assertEqual(f.result(), x * x, f"call {x}")

    def test_os_exit_in_the_very_first_call_before_any_status(self):
        # Nothing was ever written for this executor: no status, no result, no marker of
        # a started call. (Lithops waits forever here.) The future still fails, fast.
        with self.executor(1) as ex:
            start = time.monotonic()
            with self.assertRaisesRegex(WorkerLostError, "exited with code 5"):
                ex.submit(exit_or_square, 1, {1: 5}).result(timeout=self.BOUND)
            self.assertLess(time.monotonic() - start, 10)
            self.assertEqual(ex.submit(square, 9).result(timeout=self.BOUND), 81)

    def test_hanging_calls_with_a_timeout_are_failed_and_neighbours_complete(self):
        # Two calls hang forever, one of them with SIGALRM blocked so the worker's own
        # timer cannot interrupt it; 20 short calls run beside them on a third worker.
        # With timeout=1: the plain hang gets CallTimeoutError from the worker within
        # ~1 s; the blocked one is killed by the client after timeout + grace (~11 s).
        with self.executor(3, config={"timeout": 1}) as ex:
            start = time.monotonic()
            plain = ex.submit(hang_forever, self.scratch, 0, False)
            blocked = ex.submit(hang_forever, self.scratch, 1, True)
            short = [ex.submit(echo_after, 0.01, i) for i in range(20)]
            self.assertEqual([f.result(timeout=self.BOUND) for f in short], list(range(20)))
            with self.assertRaisesRegex(CallTimeoutError, "timeout of 1 s"):
                plain.result(timeout=self.BOUND)
            self.assertLess(time.monotonic() - start, 6)
            with self.assertRaises(CallTimeoutError):
                blocked.result(timeout=self.BOUND)
            self.assertLess(time.monotonic() - start, 25)
            pid = int(open(os.path.join(self.scratch, "hang1.pid")).read())
            wait_for(lambda: gone(pid), 5, "the hung worker to be killed")
            self.assertEqual(ex.submit(square, 4).result(timeout=self.BOUND), 16)

    def test_hanging_call_without_a_timeout_is_bounded_by_terminate(self):
        # No per-call timeout: like the stdlib, a call that hangs is never failed on its
        # own, but nothing else waits for it -- its neighbours complete, result(timeout)
        # is honoured, and terminating the pool fails it and kills its worker in bounds.
        ex = self.executor(2)
        try:
            hung = ex.submit(hang_forever, self.scratch, 2, True)
            others = [ex.submit(echo_after, 0.01, i) for i in range(30)]
            self.assertEqual([f.result(timeout=self.BOUND) for f in others], list(range(30)))
            start = time.monotonic()
            with self.assertRaises(cf.TimeoutError):
                hung.result(timeout=1)
            self.assertLess(time.monotonic() - start, 2)
            pid_file = os.path.join(self.scratch, "hang2.pid")
            wait_for(lambda: os.path.exists(pid_file), self.BOUND, "the hanging call to start")
            pid = int(open(pid_file).read())
            start = time.monotonic()
            ex._terminate()  # what cloudpool.multiprocessing.Pool.terminate() does
            with self.assertRaises(BrokenCloudPool):
                hung.result(timeout=self.BOUND)
            self.assertLess(time.monotonic() - start, 10)
            wait_for(lambda: gone(pid), 10, "the hung worker to be killed")
        finally:
            ex.shutdown(wait=False)


class LocalDiskWorkerFaultsTest(WorkerFaults, LocalDiskStorage, unittest.TestCase):
    pass


class MotoS3WorkerFaultsTest(WorkerFaults, MotoS3Storage, unittest.TestCase):
    # The hang tests do not depend on the storage: run them once, on local disk.
    test_hanging_calls_with_a_timeout_are_failed_and_neighbours_complete = None
    test_hanging_call_without_a_timeout_is_bounded_by_terminate = None


# ============================================================================ storage server restart
class StorageRestartTest(unittest.TestCase):
    BOUND = 120.0

    def test_seaweedfs_restarted_mid_job_loses_nothing(self):
        # SeaweedFS keeps its data on disk. It is stopped (SIGTERM, ~2 s) and started
        # again (~1.5 s) while 120 calls run; every request made meanwhile finds the port
        # closed. The storage layer's retries (botocore, 8 tries over ~35 s) ride it out:
        # every call succeeds with its own value, none is lost or duplicated.
        sw = servers.seaweedfs()
        env = sw.env
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # SeaweedFS checks keys: the workers' own credentials
        self.addCleanup(lambda: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                                 for k, v in saved.items()])
        bucket = "cp-restart-" + uuid.uuid4().hex[:8]
        make_bucket(sw.endpoint_url, bucket)
        config = {"s3": {"endpoint_url": sw.endpoint_url, "region": servers.S3_REGION}}
        with CloudPoolExecutor(2, storage=f"s3://{bucket}/job", config=config) as ex:
            futures = [ex.submit(echo_after, 0.02, i) for i in range(120)]
            wait_for(lambda: sum(f.done() for f in futures) >= 5, 60, "the first results")
            down_at = time.monotonic()
            sw.stop()
            sw.start()
            outage = time.monotonic() - down_at
            done_at_restart = sum(f.done() for f in futures)
            wait_all(self, futures, self.BOUND)
            self.assertEqual(outcomes(futures), {"ok": 120},
                             [repr(f.exception())[:300] for f in futures if f.exception()][:3])
            self.assertEqual([f.result() for f in futures], list(range(120)))
        self.assertGreater(outage, 1.0)  # it really was down
        self.assertLess(done_at_restart, 120, "the job finished before the restart: nothing was tested")


# ============================================================================ storage faults, per backend
class ProxiedStorage:
    """A storage backend whose every request goes through a FaultProxy to a real server."""

    proxy: FaultProxy

    def tearDown(self):
        if self.proxy.running:  # a test may have stopped it (an outage)
            self.proxy.clear()
        super().tearDown()

    def assert_injected(self, kind: str, at_least: int = 1):
        injected = self.proxy.stats()["injected"].get(kind, 0)
        self.assertGreaterEqual(injected, at_least, f"the proxy injected {injected} '{kind}' faults")

    def requests(self) -> int:
        return self.proxy.stats()["requests"]


class StorageRetryContract(ProxiedStorage):
    """Each backend: transient faults retried and survived, 4xx not retried, outages bounded.

    Subclasses set ``storage`` (through the proxy) and ``outage_storage`` (same, with
    few attempts), and name the 4xx the proxy answers for ``denied``.
    """

    data = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable
    denied_code = "AccessDenied"
    outage_bound = 15.0

    def setUp(self):
        super().setUp()
        self.prefix = f"t-{uuid.uuid4().hex[:8]}/"
        self.proxy.clear()
        self.storage.put(self.prefix + "obj", self.data)

    def exercise(self):
        """Every primitive, several times, checking each answer."""
        st, p = self.storage, self.prefix
        for i in range(2):
            st.put(f"{p}k{i}", self.data[i:i + 1000])
        for i in range(2):
            self.assertEqual(st.get(f"{p}k{i}"), self.data[i:i + 1000])
            self.assertEqual(st.get(p + "obj", 1000 * i, 1000 * i + 777), self.data[1000 * i:1000 * i + 777])
            self.assertEqual(st.head(f"{p}k{i}").size, 1000)
        self.assertEqual([o.key for o in st.list(p + "k")], [f"{p}k{i}" for i in range(2)])
        st.delete([f"{p}k{i}" for i in range(2)])
        self.assertEqual(list(st.list(p + "k")), [])

    def test_every_other_request_answered_503(self):
        self.proxy.set_rules({"action": "status", "status": 503, "code": "SlowDown", "every": 2})
        self.exercise()
        self.assert_injected("status 503", 4)

    def test_every_other_request_answered_429(self):
        self.proxy.set_rules({"action": "status", "status": 429, "code": "TooManyRequests", "every": 2})
        self.exercise()
        self.assert_injected("status 429", 4)

    def test_connections_reset_before_the_answer(self):
        self.proxy.set_rules({"action": "reset", "every": 3})
        self.exercise()
        self.assert_injected("reset", 3)

    def test_connection_reset_mid_body_on_ranged_gets(self):
        # The answer's headers and half its body arrive, then the connection is reset:
        # SDKs retry only until the headers, so this is the storage layer's own retry.
        self.proxy.set_rules({"methods": ["GET"], "path": re.escape(self.prefix + "obj").replace("/", "(/|%2F)"),
                              "action": "reset_mid_body", "every": 2})
        for i in range(3):
            self.assertEqual(self.storage.get(self.prefix + "obj", 5000 * i, 5000 * i + 300_000),
                             self.data[5000 * i:5000 * i + 300_000])
        self.assertEqual(self.storage.get(self.prefix + "obj"), self.data)
        self.assert_injected("reset_mid_body", 2)

    def test_4xx_is_not_retried(self):
        self.proxy.set_rules({"action": "status", "status": 403, "code": self.denied_code})
        before = self.requests()
        with self.assertRaises(PermissionError) as cm:
            self.storage.get(self.prefix + "obj")
        self.assertIn(self.storage.url(self.prefix + "obj"), str(cm.exception))
        self.assertEqual(self.requests() - before, 1, "a 403 must not be retried")

    def test_permanent_outage_fails_within_a_bound(self):
        self.proxy.set_rules({"action": "status", "status": 503, "code": "ServiceUnavailable"})
        for name, call in (("get", lambda: self.outage_storage.get(self.prefix + "obj")),
                           ("put", lambda: self.outage_storage.put(self.prefix + "new", b"x")),
                           ("list", lambda: list(self.outage_storage.list(self.prefix)))):
            with self.subTest(call=name):
                start = time.monotonic()
                with self.assertRaises(OSError) as cm:
                    call()
                self.assertLess(time.monotonic() - start, self.outage_bound)
                self.assertNotIsInstance(cm.exception, (PermissionError, FileNotFoundError))
                self.assertIn(f"{self.storage.scheme}://{self.storage.bucket}/", str(cm.exception))
                self.assertIn("503", str(cm.exception))


class S3StorageRetryTest(StorageRetryContract, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from cloudpool.storage.s3 import S3Storage

        moto = servers.moto_s3()
        cls.proxy = FaultProxy(moto.endpoint_url).start()
        cls.addClassCleanup(cls.proxy.close)
        bucket = "cp-retry-" + uuid.uuid4().hex[:8]
        make_bucket(moto.endpoint_url, bucket)
        opts = {"endpoint_url": cls.proxy.url, "region": servers.S3_REGION}
        cls.storage = S3Storage(bucket, **opts)
        cls.outage_storage = S3Storage(bucket, **opts, max_attempts=3)

    def test_max_attempts_is_exact(self):
        self.proxy.set_rules({"action": "status", "status": 500, "code": "InternalError"})
        before = self.requests()
        with self.assertRaisesRegex(OSError, "after 3 attempts"):
            self.outage_storage.head(self.prefix + "obj")
        self.assertEqual(self.requests() - before, 3)

    def test_throttling_is_retried_by_one_layer_only(self):
        # botocore retries a 429 whose code it knows (SlowDown); the storage layer retries
        # a bare one. Either way a request is tried max_attempts times, never that squared.
        self.proxy.set_rules({"action": "status", "status": 429, "code": "SlowDown"})
        for name, call in (("GET, code in the body", lambda: self.outage_storage.get(self.prefix + "obj")),
                           ("HEAD, no body", lambda: self.outage_storage.head(self.prefix + "obj"))):
            with self.subTest(call=name):
                before = self.requests()
                with self.assertRaisesRegex(OSError, "429.*after 3 attempts"):
                    call()
                self.assertEqual(self.requests() - before, 3)

    def test_missing_bucket_is_not_retried(self):
        from cloudpool.storage.s3 import S3Storage

        st = S3Storage("cp-nobucket-" + uuid.uuid4().hex[:8], endpoint_url=self.proxy.url,
                       region=servers.S3_REGION)
        before = self.requests()
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            list(st.list(""))
        self.assertEqual(self.requests() - before, 1)

    def test_bad_retry_options_are_refused(self):
        from cloudpool.storage.s3 import S3Storage

        with self.assertRaisesRegex(ValueError, "'max_attempts' must be an integer >= 1"):
            S3Storage("b", max_attempts=0)
        with self.assertRaisesRegex(ValueError, "'retry_mode' must be one of standard, adaptive"):
            S3Storage("b", retry_mode="agressive")

    def test_adaptive_mode_survives_throttling(self):
        from cloudpool.storage.s3 import S3Storage

        st = S3Storage(self.storage.bucket, endpoint_url=self.proxy.url, region=servers.S3_REGION,
                       retry_mode="adaptive")
        self.proxy.set_rules({"action": "status", "status": 503, "code": "SlowDown", "every": 2})
        for i in range(2):
            st.put(f"{self.prefix}a{i}", b"v%d" % i)
            self.assertEqual(st.get(f"{self.prefix}a{i}"), b"v%d" % i)
        self.assert_injected("status 503", 2)


@pytest.mark.slow
class COSStorageRetryTest(StorageRetryContract, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from cloudpool.storage.cos import COSStorage

        moto = servers.moto_s3()
        cls.proxy = FaultProxy(moto.endpoint_url).start()
        cls.addClassCleanup(cls.proxy.close)
        bucket = "cp-retry-" + uuid.uuid4().hex[:8]
        make_bucket(moto.endpoint_url, bucket)
        opts = {"endpoint_url": cls.proxy.url, "access_key_id": servers.S3_ACCESS_KEY,
                "secret_access_key": servers.S3_SECRET_KEY}
        cls.storage = COSStorage(bucket, **opts)
        cls.outage_storage = COSStorage(bucket, **opts, max_attempts=3)


@pytest.mark.slow
class GCSStorageRetryTest(StorageRetryContract, unittest.TestCase):
    denied_code = "forbidden"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from cloudpool.storage.gcs import GCSStorage

        gcs = servers.fake_gcs()
        cls.proxy = FaultProxy(gcs.endpoint_url).start()
        cls.addClassCleanup(cls.proxy.close)
        bucket = "cp-retry-" + uuid.uuid4().hex[:8]
        GCSStorage(bucket, endpoint_url=gcs.endpoint_url, project="test").client.create_bucket(bucket)
        cls.storage = GCSStorage(bucket, endpoint_url=cls.proxy.url, project="test")
        cls.outage_storage = GCSStorage(bucket, endpoint_url=cls.proxy.url, project="test", retry_timeout=2)


@pytest.mark.slow
class AzureStorageRetryTest(StorageRetryContract, unittest.TestCase):
    denied_code = "AuthorizationFailure"
    outage_bound = 20.0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from cloudpool.storage.azure import AzureBlobStorage

        az = servers.azurite()
        cls.proxy = FaultProxy(f"{az.host}:{az.port}").start()
        cls.addClassCleanup(cls.proxy.close)
        bucket = "cp-retry-" + uuid.uuid4().hex[:8]
        AzureBlobStorage(bucket, connection_string=az.connection_string).container.create_container()
        proxied = az.connection_string.replace(f"{az.host}:{az.port}", f"{cls.proxy.host}:{cls.proxy.port}")
        cls.storage = AzureBlobStorage(bucket, connection_string=proxied)
        cls.outage_storage = AzureBlobStorage(bucket, connection_string=proxied, max_attempts=3)


class HTTPStorageRetryTest(StorageRetryContract, unittest.TestCase):
    """Read-only: the objects are files the Range server serves; no list, put, delete."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from cloudpool.storage.http import HTTPStorage

        cls.root = tempfile.mkdtemp(prefix="cloudpool-faults-http-")
        cls.addClassCleanup(shutil.rmtree, cls.root, True)
        web = servers.http_server(cls.root)
        cls.proxy = FaultProxy(web.base_url).start()
        cls.addClassCleanup(cls.proxy.close)
        host = f"{cls.proxy.host}:{cls.proxy.port}"
        cls.storage = HTTPStorage(host)
        cls.outage_storage = HTTPStorage(host, max_attempts=3)

    def setUp(self):
        unittest.TestCase.setUp(self)
        self.prefix = f"t-{uuid.uuid4().hex[:8]}/"
        os.makedirs(os.path.join(self.root, self.prefix))
        for name, blob in [("obj", self.data)] + [(f"k{i}", self.data[i:i + 1000]) for i in range(4)]:
            with open(os.path.join(self.root, self.prefix, name), "wb") as f:
                f.write(blob)
        self.proxy.clear()

    def exercise(self):
        st, p = self.storage, self.prefix
        for i in range(3):
            self.assertEqual(st.get(f"{p}k{i}"), self.data[i:i + 1000])
            self.assertEqual(st.get(p + "obj", 1000 * i, 1000 * i + 777), self.data[1000 * i:1000 * i + 777])
            self.assertEqual(st.head(f"{p}k{i}").size, 1000)
            self.assertEqual([o.key for o in st.list(f"{p}k{i}")], [f"{p}k{i}"])

    def test_permanent_outage_fails_within_a_bound(self):
        self.proxy.set_rules({"action": "status", "status": 503})
        start = time.monotonic()
        with self.assertRaisesRegex(OSError, "503.*after 3 attempts"):
            self.outage_storage.get(self.prefix + "obj")
        self.assertLess(time.monotonic() - start, self.outage_bound)

    def test_missing_object_is_not_retried(self):
        before = self.requests()
        with self.assertRaises(FileNotFoundError):
            self.storage.get(self.prefix + "nothing-here")
        self.assertEqual(self.requests() - before, 1)


# ============================================================================ storage faults under a running job
class ExecutorStorageFaultsTest(ProxiedStorage, unittest.TestCase):
    """The executor's storage is moto S3 behind the proxy; client and workers go through it."""

    BOUND = 90.0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        moto = servers.moto_s3()
        cls.proxy = FaultProxy(moto.endpoint_url).start()
        cls.addClassCleanup(cls.proxy.close)
        cls.bucket = "cp-jobfaults-" + uuid.uuid4().hex[:8]
        make_bucket(moto.endpoint_url, cls.bucket)

    def setUp(self):
        super().setUp()
        if not self.proxy.running:
            self.proxy.start()
        self.proxy.clear()
        self.proxy.reset_stats()

    def executor(self, max_workers=2, s3=None, **config):
        s3_options = {"endpoint_url": self.proxy.url, "region": servers.S3_REGION}
        s3_options.update(s3 or {})
        return CloudPoolExecutor(max_workers, storage=f"s3://{self.bucket}/run-{uuid.uuid4().hex[:8]}",
                                 config={"s3": s3_options, **config})

    def test_job_completes_through_resets_503s_and_cut_bodies(self):
        # Every kind of request meets some fault: PUTs of results and statuses get
        # SlowDown, GETs of results are reset before answering or cut mid-body, LISTs
        # of the status prefix get 503. 200 calls must all come back right.
        self.proxy.set_rules(
            {"methods": ["PUT"], "action": "status", "status": 503, "code": "SlowDown", "every": 4},
            {"methods": ["GET"], "path": "list-type", "action": "status", "status": 503,
             "code": "ServiceUnavailable", "every": 3},
            {"methods": ["GET"], "action": "reset_mid_body", "every": 5},
            {"methods": ["HEAD", "POST", "DELETE"], "action": "reset", "every": 3},
        )
        start = time.monotonic()
        with self.executor() as ex:
            futures = [ex.submit(square, i) for i in range(100)]
            results = list(ex.map(square, range(100, 200)))
            wait_all(self, futures, self.BOUND)
            self.assertEqual([f.result() for f in futures] + results, [x * x for x in range(200)])
        self.assertLess(time.monotonic() - start, self.BOUND)
        injected = self.proxy.stats()["injected"]
        self.assertGreater(injected.get("status 503", 0), 5, injected)
        self.assertGreater(injected.get("reset_mid_body", 0), 0, injected)

    def test_executor_refuses_an_unreachable_store_at_once(self):
        # The endpoint is down before anything starts: the constructor's bucket check
        # fails with an OSError naming the store, after the storage's bounded retries.
        self.proxy.stop()
        start = time.monotonic()
        with self.assertRaises(OSError) as cm:
            self.executor(s3={"max_attempts": 2})
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn(f"s3://{self.bucket}/", str(cm.exception))
        self.assertIn(self.proxy.url, str(cm.exception))

    def test_permanent_outage_mid_job_fails_every_future_with_oserror_in_bounds(self):
        # The store goes away for good while 40 calls are queued. Every future must
        # resolve, within a bound that does not grow with the number of calls, with an
        # OSError (or an error caused by one) that names the store -- never a hang.
        ex = self.executor(2, s3={"max_attempts": 2}, storage_timeout=5)
        try:
            warm = ex.submit(square, 3)
            self.assertEqual(warm.result(timeout=self.BOUND), 9)
            futures = [ex.submit(echo_after, 0.2, i) for i in range(40)]
            time.sleep(0.5)
            self.proxy.stop()
            elapsed = wait_all(self, futures, 45)
            kinds = outcomes(futures)
            failed = [f.exception() for f in futures if f.exception() is not None]
            self.assertTrue(failed, kinds)
            for exc in failed:
                self.assertTrue(chain_has(exc, OSError), f"not an OSError: {exc!r}"[:600])
                self.assertRegex(str(exc), re.escape(self.bucket) + "|" + re.escape(self.proxy.url),
                                 f"the error does not name the store: {exc!r}"[:600])
            for i, f in enumerate(futures):
                if f.exception() is None:
                    self.assertEqual(f.result(), i)
            self.assertLess(elapsed, 45)
        finally:
            ex.shutdown(wait=False, cancel_futures=True)


# ============================================================================ knative throttling
class KnativeThrottlingTest(ProxiedStorage, unittest.TestCase):
    """A knative runtime behind the proxy, which answers some POST /invoke with 429 or 503."""

    BOUND = 60.0

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "cloudpool_knative_local_cluster_faults", os.path.join(ROOT, "runtime", "knative", "local_cluster.py"))
        local_cluster = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(local_cluster)
        moto = servers.moto_s3()
        cls.token = "faults-" + secrets.token_hex(8)
        cls.cluster = local_cluster.LocalCluster(1, token=cls.token, concurrency=2, netns=False,
                                                 pythonpath=[ROOT])
        cls.addClassCleanup(cls.cluster.stop)
        cls.cluster.start(env=moto.env)
        cls.proxy = FaultProxy(cls.cluster.urls[0]).start()
        cls.addClassCleanup(cls.proxy.close)
        cls.bucket = "cp-knfaults-" + uuid.uuid4().hex[:8]
        make_bucket(moto.endpoint_url, cls.bucket)
        cls.s3 = {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION}

    def executor(self, **knative):
        options = {"urls": [self.proxy.url], "token": self.token, "concurrency": 2}
        options.update(knative)
        return CloudPoolExecutor(storage=f"s3://{self.bucket}/run-{uuid.uuid4().hex[:8]}",
                                 config={"backend": "knative", "knative": options, "s3": self.s3,
                                         "max_batch_size": 5})

    def test_throttled_invocations_are_retried_and_the_job_completes(self):
        self.proxy.set_rules(
            {"methods": ["POST"], "path": "^/invoke", "action": "status", "status": 429, "every": 2,
             "retry_after": 0},
            {"methods": ["POST"], "path": "^/invoke", "action": "status", "status": 503, "every": 5, "offset": 1})
        start = time.monotonic()
        with self.executor() as ex:
            self.assertEqual(list(ex.map(square, range(60))), [x * x for x in range(60)])
        self.assertLess(time.monotonic() - start, self.BOUND)
        self.assert_injected("status 429", 3)

    def test_throttled_for_good_fails_within_retry_seconds(self):
        self.proxy.set_rules({"methods": ["POST"], "path": "^/invoke", "action": "status", "status": 429,
                              "retry_after": 1})
        start = time.monotonic()
        with self.executor(retry_seconds=2) as ex:
            futures = [ex.submit(square, i) for i in range(4)]
            elapsed = wait_all(self, futures, 40)
            for f in futures:
                with self.assertRaises(WorkerLostError) as cm:
                    f.result()
                self.assertIn("429", str(cm.exception))
                self.assertIn("retry_seconds", str(cm.exception))
        self.assertLess(elapsed, 40)
        self.assertLess(time.monotonic() - start, 45)
        self.assert_injected("status 429", 4)


if __name__ == "__main__":
    unittest.main()
