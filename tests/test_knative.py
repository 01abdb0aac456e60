"""The ``knative`` backend and its HTTP runtime, end to end on real local processes.

Topology (set up once per module): four ``runtime/knative/server.py`` processes started
by ``runtime/knative/local_cluster.py``, each in its own network namespace with its own
IP on a private bridge when the tests run as root with iproute2 (so the client reaches
them over a virtual network link and a killed host drops its connections like a dead
machine), else on 127.0.0.1 with different ports -- the module prints which
(``KNATIVE_TEST_NETNS=1`` requires namespaces, ``=0`` forbids them). Storage is
S3 on a moto server listening on the bridge address, reachable from client and hosts;
the hosts get their S3 credentials from their own environment, never from events.

The servers run with the repository root (and CPython's test directory) on PYTHONPATH,
so functions defined in test modules unpickle there by reference: that stands in for
"the user's modules are installed in the runtime image". Shipping local modules by
value is a separate part of issue 5.

What runs here:

- the executor contract, reused rather than rewritten: CPython's ``concurrent.futures``
  mixins and ``tests/test_executor.py``'s backend-independent classes, with executors
  bound to backend ``knative`` and S3 storage (exclusions below, each with its reason);
- the runtime's HTTP surface: token checks (401, nothing runs), bad requests;
- the backend's failure handling: 429 from a saturated runtime is retried, a host killed
  mid-call fails its calls within a bound while the others keep serving, an unreachable
  URL is reported lost within a bound, a wrong token or a runtime with other versions is
  refused before any invocation, terminate stops remote work;
- options and config, notices that beat polling, interpreter exit.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import functools
import importlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import uuid

import requests

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.errors import BrokenCloudPool, VersionMismatchError, WorkerLostError
from tests import servers
from tests import test_executor as te
from tests._cpython import CACHE, ROOT, load_concurrent_futures_tests
from tests.test_conformance_futures import _EXCLUDED as _CPYTHON_EXCLUDED

cft = load_concurrent_futures_tests()


def _load_local_cluster():
    # Loaded by path: runtime/ is not a package, and putting runtime/knative on sys.path
    # would make its generic module names ("server") importable everywhere.
    name = "cloudpool_knative_local_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "runtime", "knative", "local_cluster.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


local_cluster = _load_local_cluster()

BOUND = 30  # seconds: no failure case may take longer to surface
HOSTS = 4
CONCURRENCY = 2  # per host: 8 calls at once over the cluster, on 2 shared cores
TOKEN = "test-" + secrets.token_hex(16)
#: Network namespaces: "1" forces them (fails loudly if impossible), "0" forbids them,
#: unset uses them when running as root with iproute2.
NETNS = {"1": True, "0": False}.get(os.environ.get("KNATIVE_TEST_NETNS", ""), None)


# ---------------------------------------------------------------------------- functions run on the hosts
def host_index(delay: float = 0.0) -> str:
    """Which cluster host ran the call (after sleeping ``delay``)."""
    time.sleep(delay)
    return os.environ.get(local_cluster.HOST_INDEX_ENV, "?")


def touch_after(seconds: float, path: str) -> str:
    time.sleep(seconds)
    with open(path, "w") as f:  # the hosts share this machine's filesystem
        f.write("done")
    return "done"


# ---------------------------------------------------------------------------- module fixture
class _GatewayMoto(servers.MotoServer):
    """moto listening on the cluster's gateway address, which every host can reach."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host


class _State:
    cluster = None
    moto = None
    base_urls: list = []
    bucket = "cp-knative-" + uuid.uuid4().hex[:10]
    s3_options: dict = {}
    extra: dict = {}  # lazily added hosts, by role


def _teardown() -> None:
    if _State.cluster is not None:
        _State.cluster.stop()
        _State.cluster = None
    if _State.moto is not None:
        _State.moto.close()
        _State.moto = None


def setUpModule():
    atexit.register(_teardown)  # also if the run is interrupted between here and tearDownModule
    try:
        cluster = local_cluster.LocalCluster(HOSTS, token=TOKEN, concurrency=CONCURRENCY,
                                             netns=NETNS, pythonpath=[ROOT, CACHE])
        _State.cluster = cluster
        cluster.create_network()
        moto = _State.moto = _GatewayMoto(cluster.gateway).start()
        import boto3

        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                     aws_access_key_id=servers.S3_ACCESS_KEY,
                     aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=_State.bucket)
        # The client's credentials are (secret) storage options; the hosts use their env.
        _State.s3_options = {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION,
                             "aws_access_key_id": servers.S3_ACCESS_KEY,
                             "aws_secret_access_key": servers.S3_SECRET_KEY}
        cluster.start(env=moto.env)
        _State.base_urls = cluster.urls[:HOSTS]
        where = "network namespaces" if cluster.use_netns else f"127.0.0.1 ports ({cluster.why_no_netns})"
        print(f"\n[test_knative] {HOSTS} runtime hosts on {where}: {', '.join(_State.base_urls)}",
              file=sys.stderr)
    except BaseException:
        _teardown()
        raise


def tearDownModule():
    _teardown()


def knative_config(**overrides) -> dict:
    """A config mapping selecting backend knative on the module's hosts, and S3 storage."""
    options = {"urls": list(_State.base_urls), "token": TOKEN, "concurrency": CONCURRENCY}
    options.update(overrides)
    return {"backend": "knative", "knative": options, "s3": dict(_State.s3_options)}


def fresh_storage_url() -> str:
    return f"s3://{_State.bucket}/run-{uuid.uuid4().hex[:8]}"


def runtime_stats(url: str) -> dict:
    resp = requests.get(url + "/runtime", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    resp.raise_for_status()
    return resp.json()["stats"]


def extra_host(role: str, **kwargs):
    """A host beyond the base four, created once per role (never in the base URLs)."""
    host = _State.extra.get(role)
    if host is None:
        host = _State.extra[role] = _State.cluster.add_host(**kwargs)
    return host


# ---------------------------------------------------------------------------- CPython's mixins
class KnativeExecutorMixin(cft.ExecutorMixin):
    """CPython's ExecutorMixin, building executors on the knative backend with S3 storage."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.executor_type = functools.partial(CloudPoolExecutor, storage=fresh_storage_url(),
                                              config=knative_config())


#: CPython's interpreter-exit tests start a child that imports the executor class from
#: concurrent.futures *and* expects the worker's print() on the child's stdout; on an
#: HTTP runtime the worker's stdout is the server's log. See InterpreterExitTest.
_CPYTHON_EXCLUDED_HERE = {
    name: "imports the executor from concurrent.futures in a child and reads the worker's "
          "stdout there; see InterpreterExitTest" for name in _CPYTHON_EXCLUDED
}


def _make(name: str, mixin: type) -> type:
    attrs = {test: unittest.skip(why)(lambda self: None)
             for test, why in _CPYTHON_EXCLUDED_HERE.items() if hasattr(mixin, test)}
    return type(name, (mixin, KnativeExecutorMixin, cft.BaseTestCase), attrs)


KnativeCPythonExecutorTest = _make("KnativeCPythonExecutorTest", cft.ExecutorTest)
KnativeCPythonWaitTest = _make("KnativeCPythonWaitTest", cft.WaitTests)
KnativeCPythonAsCompletedTest = _make("KnativeCPythonAsCompletedTest", cft.AsCompletedTests)
KnativeCPythonInitializerTest = _make("KnativeCPythonInitializerTest", cft.InitializerMixin)
KnativeCPythonFailingInitializerTest = _make("KnativeCPythonFailingInitializerTest", cft.FailingInitializerMixin)
KnativeCPythonShutdownTest = _make("KnativeCPythonShutdownTest", cft.ExecutorShutdownTest)


# ---------------------------------------------------------------------------- tests/test_executor.py
class KnativeStorageMixin:
    """test_executor's TempStorageMixin, pointed at the knative hosts and an S3 prefix per test."""

    def setUp(self):
        super().setUp()  # keeps the scratch directory some tests use
        self.storage_url = fresh_storage_url()
        self.storage_config = knative_config()


def _skip(why: str):
    return unittest.skip(why)(lambda self: None)


class KnativeSemanticsTest(KnativeStorageMixin, te.SemanticsTest):
    test_max_tasks_per_child_gives_fresh_processes_and_loses_nothing = _skip(
        "max_tasks_per_child is a local-backend option: a runtime's worker processes belong to "
        "the service (its --concurrency), not to one client's executor")


class KnativeErrorsTest(KnativeStorageMixin, te.ErrorsTest):
    test_memory_error_is_raised_on_the_future = _skip(
        "lowers RLIMIT_AS in the worker process for good; runtime worker processes outlive the "
        "executor and serve the next tests, which that limit would break")


class KnativeWorkerDeathTest(KnativeStorageMixin, te.WorkerDeathTest):
    # All four run as is: the runtime's worker engine names the call that was running when
    # its process died, and the stream carries it to the client. test_killed_from_outside
    # finds the worker's pid through a file: the "hosts" share this machine's filesystem
    # and pid namespace (only their network is separate).
    pass


class KnativeTimeoutTest(KnativeStorageMixin, te.TimeoutTest):
    # The second test reaches the runtime's POST /cancel: the manager's deadline cancels
    # the invocation and the runtime kills the worker process.
    pass


class KnativeProtocolTest(KnativeStorageMixin, te.ProtocolTest):
    test_key_layout_and_json_status = _skip(
        "reads status files from a local directory; the S3 twin is in test_executor_remote_storage")
    test_version_mismatch_is_refused_naming_both_sides = _skip(
        "drives worker.handle in-process on local storage: no backend involved")
    test_client_breaks_on_version_mismatch = _skip(
        "uses the local backend's start_method option; see VersionTest.test_in_band_mismatch_breaks_executor")


# ---------------------------------------------------------------------------- the runtime's HTTP surface
class RuntimeHTTPTest(unittest.TestCase):
    def _event(self, executor_id: str) -> bytes:
        """A valid event whose run would store a status object under ``executor_id``."""
        from cloudpool.storage import storage_for

        backend, root = storage_for(fresh_storage_url(), _State.s3_options)
        keys = protocol.Keys(root, executor_id)
        backend.put(keys.function("j00000"), protocol.dumps(te.square))
        blob, offsets = protocol.dumps_each([((4,), {})])
        self._storage, self._keys = backend, keys
        return protocol.encode_event({
            "protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions(),
            "storage": {"url": f"s3://{_State.bucket}/{root}", "options": {"endpoint_url": _State.moto.endpoint_url,
                                                                          "region": servers.S3_REGION}},
            "keys": {"root": keys.root, "executor": executor_id},
            "job": "j00000", "batch": 0, "offsets": offsets, "args": blob,
            "timeout": None, "flush_interval": 0.25})

    def _statuses(self):
        return list(self._storage.list(self._keys.status_prefix("j00000")))

    def test_healthz_is_open_runtime_needs_the_token(self):
        url = _State.base_urls[0]
        self.assertEqual(requests.get(url + "/healthz", timeout=10).json(), {"ok": True})
        resp = requests.get(url + "/runtime", timeout=10)
        self.assertEqual(resp.status_code, 401)
        self.assertNotIn("versions", resp.text)
        meta = requests.get(url + "/runtime", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
        self.assertEqual(meta["versions"], protocol.versions())
        self.assertIn("cloudpickle", {name.lower() for name in meta["packages"]})

    def test_invoke_without_or_with_wrong_token_is_refused_and_runs_nothing(self):
        url = _State.base_urls[1]
        body = self._event("cp-authtest-" + uuid.uuid4().hex[:6])
        before = runtime_stats(url).get("invocations", 0)
        wrong = [{}, {"Authorization": "Bearer wrong-" + TOKEN}, {"Authorization": TOKEN},
                 {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}]
        session = requests.Session()  # one keep-alive connection: refusals must leave it usable
        for headers in wrong:
            resp = session.post(url + "/invoke", data=body, headers=headers, timeout=10)
            self.assertEqual(resp.status_code, 401, headers)
            self.assertIn("token", resp.json()["error"])
        time.sleep(0.5)  # were anything running, it would have written its status by now
        self.assertEqual(self._statuses(), [])
        self.assertEqual(runtime_stats(url).get("invocations", 0), before)
        # The same event with the right token runs: the refusals above were about the token.
        resp = session.post(url + "/invoke", data=body, headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=BOUND)
        self.assertEqual(resp.status_code, 200)
        lines = [json.loads(line) for line in resp.text.splitlines() if line]
        self.assertEqual(lines[-1]["done"]["outcome"], "done")
        self.assertEqual(len(self._statuses()), 1)

    def test_bad_requests(self):
        url = _State.base_urls[2]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        resp = requests.post(url + "/invoke", data=b"{not json", headers=auth, timeout=10)
        self.assertEqual(resp.status_code, 400)
        self.assertIn("not a cloudpool invocation event", resp.json()["error"])
        self.assertEqual(requests.get(url + "/nowhere", headers=auth, timeout=10).status_code, 404)
        resp = requests.post(url + "/cancel", json={"id": "no/such/invocation."}, headers=auth, timeout=10)
        self.assertEqual(resp.json(), {"cancelled": False})


# ---------------------------------------------------------------------------- backend behaviour
class BackendTest(unittest.TestCase):
    def executor(self, max_workers=None, **knative_options):
        config = knative_config(**knative_options)
        return CloudPoolExecutor(max_workers, storage=fresh_storage_url(), config=config)

    def test_users_own_module_travels_by_value(self):
        # A module that exists only in a client-side directory (not on the runtimes'
        # sys.path): the client ships its source, and the workers import it.
        with tempfile.TemporaryDirectory(prefix="cp-userlib-") as tmp:
            name = "cp_userlib_" + uuid.uuid4().hex[:8]
            with open(os.path.join(tmp, name + ".py"), "w") as f:
                f.write("import os\n"
                        "class Point:\n"
                        "    def __init__(self, x, y):\n"
                        "        self.x, self.y = x, y\n"
                        "def scaled(p, k):\n"
                        "    return Point(p.x * k, p.y * k), os.getpid()\n")
            sys.path.insert(0, tmp)
            try:
                mod = importlib.import_module(name)
                with self.executor() as ex:
                    point, pid = ex.submit(mod.scaled, mod.Point(2, 3), 10).result(BOUND)
            finally:
                sys.path.remove(tmp)
                sys.modules.pop(name, None)
        self.assertNotEqual(pid, os.getpid())
        # Imported by name on the worker, so the result is an instance of the client's class.
        self.assertIsInstance(point, mod.Point)
        self.assertEqual((point.x, point.y), (20, 30))

    def test_busy_runtime_answers_429_and_calls_still_complete(self):
        # One slot on the host, three requests at once from the client: two get 429.
        host = extra_host("busy", concurrency=1)
        before = runtime_stats(host.url).get("rejected_busy", 0)
        start = time.monotonic()
        with self.executor(urls=[host.url], concurrency=3) as ex:
            fs = [ex.submit(te.sleep_then, 0.3, i) for i in range(6)]
            self.assertEqual([f.result(timeout=BOUND) for f in fs], list(range(6)))
        self.assertLess(time.monotonic() - start, BOUND)
        self.assertGreater(runtime_stats(host.url).get("rejected_busy", 0), before)

    def test_client_within_capacity_is_never_refused(self):
        # One invocation per call, back to back: the runtime frees a slot before it sends
        # the line that lets the client send the next request, so no 429 may appear.
        before = sum(runtime_stats(u).get("rejected_busy", 0) for u in _State.base_urls)
        with CloudPoolExecutor(storage=fresh_storage_url(), config={**knative_config(), "max_batch_size": 1}) as ex:
            self.assertEqual(list(ex.map(te.square, range(200))), [x * x for x in range(200)])
        self.assertEqual(sum(runtime_stats(u).get("rejected_busy", 0) for u in _State.base_urls), before)

    def test_killed_host_fails_its_calls_and_the_others_keep_serving(self):
        cluster, victim = _State.cluster, HOSTS - 1
        victim_url = _State.base_urls[victim]
        try:
            # retry=0: the stdlib's behaviour, each lost call fails (the default policy
            # re-runs them elsewhere: test_killed_host_calls_are_retried_on_the_others).
            with CloudPoolExecutor(storage=fresh_storage_url(), config=knative_config(), retry=0) as ex:
                fs = [ex.submit(host_index, 4.0) for _ in range(HOSTS * CONCURRENCY)]
                deadline = time.monotonic() + BOUND
                while runtime_stats(victim_url).get("active", 0) < 1:
                    self.assertLess(time.monotonic(), deadline, "no call reached the victim host")
                    time.sleep(0.05)
                killed_at = time.monotonic()
                cluster.kill(victim)
                # The victim's calls fail at once (its connections drop), long before
                # the 4 s calls on the other hosts finish.
                cf.wait(fs, timeout=BOUND, return_when=cf.FIRST_EXCEPTION)
                self.assertLess(time.monotonic() - killed_at, 2.0)
                done, not_done = cf.wait(fs, timeout=BOUND)
                self.assertFalse(not_done)
                lost = [f.exception() for f in fs if f.exception() is not None]
                ran = [f.result() for f in fs if f.exception() is None]
                self.assertTrue(lost, "no call failed although its host was killed")
                for exc in lost:
                    self.assertIsInstance(exc, WorkerLostError)
                    self.assertIn(victim_url, str(exc))
                self.assertLessEqual(len(lost), CONCURRENCY)
                self.assertTrue(ran and str(victim) not in ran, ran)
                # The dead host refuses connections; everything goes to the living ones.
                start = time.monotonic()
                hosts = list(ex.map(host_index, [0.05] * 24))
                self.assertNotIn(str(victim), hosts)
                self.assertLess(time.monotonic() - start, BOUND)
        finally:
            cluster.restart(victim)

    def test_killed_host_calls_are_retried_on_the_others(self):
        cluster, victim = _State.cluster, HOSTS - 1
        victim_url = _State.base_urls[victim]
        try:
            with self.executor() as ex:  # the default retry policy
                fs = [ex.submit(host_index, 2.0) for _ in range(HOSTS * CONCURRENCY)]
                deadline = time.monotonic() + BOUND
                while runtime_stats(victim_url).get("active", 0) < 1:
                    self.assertLess(time.monotonic(), deadline, "no call reached the victim host")
                    time.sleep(0.05)
                cluster.kill(victim)
                done, not_done = cf.wait(fs, timeout=BOUND)
                self.assertFalse(not_done)
                # Every call completes, the victim's on the living hosts.
                hosts = [f.result() for f in fs]
                self.assertNotIn(str(victim), hosts)
                self.assertEqual(len(hosts), HOSTS * CONCURRENCY)
                self.assertGreater(ex.stats().summary()["calls"], 0)
        finally:
            cluster.restart(victim)

    def test_unreachable_service_is_reported_lost_within_a_bound(self):
        closed = f"http://{_State.cluster.gateway}:{servers.free_port()}"
        start = time.monotonic()
        with self.executor(urls=[closed], retry_seconds=2) as ex:
            with self.assertRaises(WorkerLostError) as cm:
                ex.submit(te.square, 2).result(timeout=BOUND)
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn(closed, str(cm.exception))
        self.assertIn("cannot", str(cm.exception))

    def test_wrong_token_is_refused_before_any_invocation(self):
        url = _State.base_urls[0]
        before = runtime_stats(url).get("invocations", 0)
        with self.executor(urls=[url], token="not-the-token") as ex:
            with self.assertRaisesRegex(PermissionError, "refused the token"):
                ex.submit(te.square, 2).result(timeout=BOUND)
        self.assertEqual(runtime_stats(url).get("invocations", 0), before)

    def test_terminate_stops_remote_work(self):
        url = _State.base_urls[1]
        cancelled = runtime_stats(url).get("cancelled", 0)
        ex = self.executor(urls=[url])
        f = ex.submit(te.sleep_then, 60, "late")
        deadline = time.monotonic() + BOUND
        while runtime_stats(url).get("active", 0) < 1:
            self.assertLess(time.monotonic(), deadline, "the call never reached the host")
            time.sleep(0.05)
        start = time.monotonic()
        ex._terminate()  # what Pool.terminate() does
        with self.assertRaises(BrokenCloudPool):
            f.result(timeout=BOUND)
        while runtime_stats(url).get("active", 0) > 0:  # the runtime killed the worker
            self.assertLess(time.monotonic() - start, 10, "the runtime kept running the call")
            time.sleep(0.05)
        self.assertGreater(runtime_stats(url).get("cancelled", 0), cancelled)

    def test_segment_notices_beat_polling(self):
        # Polling every 5 s: only the runtime's stream can deliver this result sooner.
        config = {"poll_interval": 5.0, "poll_interval_max": 5.0}
        with CloudPoolExecutor(storage=fresh_storage_url(), config={**knative_config(), **config}) as ex:
            ex.submit(te.square, 1).result(timeout=BOUND)  # first poll done, workers warm
            start = time.monotonic()
            for i in range(3):  # three results in a row: no lucky poll can deliver them all
                self.assertEqual(ex.submit(te.sleep_then, 0.5, i).result(timeout=BOUND), i)
            self.assertLess(time.monotonic() - start, 3.5)

    def test_describe_reports_each_runtime(self):
        with self.executor() as ex:
            info = ex._backend.describe()
        self.assertEqual(info["urls"], _State.base_urls)
        self.assertEqual(info["max_concurrency"], HOSTS * CONCURRENCY)
        for url in _State.base_urls:
            self.assertEqual(info["runtimes"][url]["versions"], protocol.versions())


class VersionTest(unittest.TestCase):
    def test_mismatched_runtime_is_refused_before_any_invocation(self):
        # A host whose cloudpool reports another version (as an image built from another
        # release would): sitecustomize patches it before the server imports anything.
        patch_dir = tempfile.mkdtemp(prefix="cloudpool-mismatch-")
        self.addCleanup(lambda: __import__("shutil").rmtree(patch_dir, ignore_errors=True))
        with open(os.path.join(patch_dir, "sitecustomize.py"), "w") as f:
            f.write("import cloudpool, cloudpool._version\n"
                    "cloudpool.__version__ = cloudpool._version.__version__ = '9.9.9'\n")
        bad = extra_host("mismatch", env={"PYTHONPATH": patch_dir})
        good_url = _State.base_urls[0]
        before = {u: runtime_stats(u).get("invocations", 0) for u in (good_url, bad.url)}
        storage = fresh_storage_url()
        with CloudPoolExecutor(2, storage=storage, config=knative_config(urls=[good_url, bad.url])) as ex:
            with self.assertRaises(VersionMismatchError) as cm:
                ex.submit(te.square, 2).result(timeout=BOUND)
            message = str(cm.exception)
            self.assertIn(bad.url, message)
            self.assertIn(f"cloudpool {protocol.versions()['cloudpool']} on the client but 9.9.9 on the worker",
                          message)
            self.assertIsInstance(cm.exception, cf.BrokenExecutor)
            self.assertTrue(ex._broken)  # the executor is broken, as for an in-band refusal
            with self.assertRaises(VersionMismatchError):
                ex.submit(te.square, 3)
        # Refused before the first invocation: neither host ran anything, nothing was stored.
        self.assertEqual({u: runtime_stats(u).get("invocations", 0) for u in before}, before)
        from cloudpool.storage import storage_for

        backend, root = storage_for(storage, _State.s3_options)
        self.assertEqual([i.key for i in backend.list(root + "/") if "/status/" in i.key], [])

    def test_in_band_mismatch_breaks_executor(self):
        # The handshake passes (real versions), but the event claims another client
        # version: the worker refuses in band and the executor breaks.
        ex = CloudPoolExecutor(1, storage=fresh_storage_url(), config=knative_config())
        ex._event_base["versions"] = {**protocol.versions(), "cloudpool": "9.9.9"}
        try:
            with self.assertRaises(VersionMismatchError) as cm:
                ex.submit(te.square, 2).result(timeout=BOUND)
            self.assertIn("cloudpool 9.9.9 on the client", str(cm.exception))
            with self.assertRaises(cf.BrokenExecutor):
                ex.submit(te.square, 1)
        finally:
            ex.shutdown()


class OptionsTest(unittest.TestCase):
    def _make(self, **options):
        config = knative_config()
        knative = config.pop("knative")
        knative.update(options)
        for key in [k for k, v in knative.items() if v is None]:
            del knative[key]
        return CloudPoolExecutor(storage=fresh_storage_url(), config={**config, "knative": knative})

    def test_invalid_options_raise_naming_the_fix(self):
        cases = [
            ({"concurency": 2}, r"concurency.*'knative' backend"),
            ({"url": "http://a:1"}, "either url=.* or urls="),
            ({"urls": None}, "either url=.* or urls="),
            ({"urls": []}, "non-empty list"),
            ({"urls": ["ftp://x"]}, "must start with http"),
            ({"urls": ["http://a:1", "http://a:1/"]}, "twice"),
            ({"concurrency": 0}, "concurrency"),
            ({"request_timeout": -1}, "request_timeout"),
            ({"notices": "yes"}, "notices"),
        ]
        for options, pattern in cases:
            with self.subTest(options=options):
                with self.assertRaisesRegex(ValueError, pattern):
                    self._make(**options)

    def test_token_is_required_and_read_from_config_env(self):
        saved = os.environ.pop("CLOUDPOOL_KNATIVE__TOKEN", None)
        try:
            with self.assertRaisesRegex(ValueError, "needs the runtime's shared token"):
                self._make(token=None)
            os.environ["CLOUDPOOL_KNATIVE__TOKEN"] = TOKEN
            ex = CloudPoolExecutor(backend="knative", urls=_State.base_urls[:1], storage=fresh_storage_url(),
                                   config={"s3": _State.s3_options})
            with ex:
                self.assertEqual(ex.submit(te.square, 5).result(timeout=BOUND), 25)
        finally:
            os.environ.pop("CLOUDPOOL_KNATIVE__TOKEN", None)
            if saved is not None:
                os.environ["CLOUDPOOL_KNATIVE__TOKEN"] = saved

    def test_token_and_storage_secrets_stay_out_of_events(self):
        secret = "sekret-" + uuid.uuid4().hex  # moto accepts any key pair
        config = knative_config()
        config["s3"] = {**config["s3"], "aws_secret_access_key": secret}
        posted = []
        with CloudPoolExecutor(storage=fresh_storage_url(), config=config) as ex:
            backend = ex._backend
            real_invoke = backend.invoke
            backend.invoke = lambda inv, event: (posted.append(protocol.encode_event(event)),
                                                 real_invoke(inv, event))[1]
            self.assertEqual(ex.submit(te.square, 6).result(timeout=BOUND), 36)
        self.assertTrue(posted)
        for body in posted:
            self.assertNotIn(TOKEN.encode(), body)
            self.assertNotIn(secret.encode(), body)
            self.assertIn(b"endpoint_url", body)  # public storage options do travel

    def test_local_directory_storage_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(ValueError, "cannot read this machine's directory"):
                CloudPoolExecutor(storage="file://" + tmp, config={"backend": "knative",
                                                                    "knative": {"url": "http://a:1", "token": "t"}})

    def test_capacity_follows_concurrency_or_max_workers(self):
        ex = self._make(concurrency=3)
        self.assertEqual(ex._max_workers, 3 * HOSTS)
        ex.shutdown()
        ex = CloudPoolExecutor(5, storage=fresh_storage_url(), config=knative_config())
        caps = ex._backend.capabilities
        self.assertEqual((caps.max_concurrency, caps.max_in_flight), (5, 6))
        self.assertTrue(caps.can_cancel and caps.notifies)
        ex.shutdown()


class MainScriptTest(unittest.TestCase):
    """Issue 13: a user's script on remote hosts behaves as under a spawn-started pool.

    The script lives in a temp dir the hosts do not have on their path: the client ships
    its source and each worker process imports it once as ``__mp_main__``
    (``cloudpool._mainscript``). Same script and checks as ``tests/test_main_script.py``.
    """

    def test_script_semantics_match_spawn(self):
        from tests import test_main_script as tms

        out = tms.run_script(["stdlib", "cloudpool", "pool", "lithops"], storage=fresh_storage_url(),
                             config=knative_config())
        checks = tms.MainScriptChecks()
        checks.assertEqual, checks.assertTrue = self.assertEqual, self.assertTrue
        for kind in ("cloudpool", "pool", "lithops"):
            with self.subTest(kind=kind):
                checks.assert_like_stdlib(out[kind], out["stdlib"], name="__mp_main__")


    def test_script_run_as_a_module_keeps_its_package(self):
        # python -m userpkg.main: the script imports a sibling relatively; on the worker it
        # is __mp_main__ inside its (shipped) package, as spawn does with init_main_from_name.
        pkg = "cp_userpkg_" + uuid.uuid4().hex[:8]
        with tempfile.TemporaryDirectory(prefix="cp-user-pkg-") as tmp:
            os.makedirs(os.path.join(tmp, pkg))
            with open(os.path.join(tmp, pkg, "__init__.py"), "w") as f:
                f.write("")
            with open(os.path.join(tmp, pkg, "helper.py"), "w") as f:
                f.write("def triple(x):\n    return 3 * x\n")
            with open(os.path.join(tmp, pkg, "main.py"), "w") as f:
                f.write(textwrap.dedent("""
                    import concurrent.futures as cf, json, multiprocessing as mp, sys
                    from . import helper
                    G = None
                    def init(v):
                        global G
                        G = v
                    def read(x):
                        return [helper.triple(x), G, __name__, __package__]
                    if __name__ == "__main__":
                        from cloudpool import CloudPoolExecutor
                        settings = json.loads(sys.argv[1])
                        with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"),
                                                    initializer=init, initargs=(5,)) as ex:
                            ref = list(ex.map(read, [1, 2]))
                        with CloudPoolExecutor(2, initializer=init, initargs=(5,), **settings) as ex:
                            got = list(ex.map(read, [1, 2]))
                        print("RESULT " + json.dumps([ref, got]))
                """))
            settings = json.dumps({"storage": fresh_storage_url(), "config": knative_config()})
            proc = subprocess.run([sys.executable, "-m", f"{pkg}.main", settings], cwd=tmp,
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join([tmp, ROOT])})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        self.assertIsNotNone(line, proc.stdout + proc.stderr)
        ref, got = json.loads(line[len("RESULT "):])
        self.assertEqual(ref, [[3, 5, "__mp_main__", pkg], [6, 5, "__mp_main__", pkg]])
        self.assertEqual(got, ref)


class NestedTest(unittest.TestCase):
    """Issue 13: an executor opened inside a call on a host runs there on local processes."""

    def test_nested_executor_like_stdlib(self):
        from tests import test_nested as tn

        with cf.ProcessPoolExecutor(2) as ex:
            expected = [total for total, _pid, _inner in ex.map(tn.outer_stdlib, [3, 4, 5])]
        with CloudPoolExecutor(2, storage=fresh_storage_url(), config=knative_config()) as ex:
            got = list(ex.map(tn.outer_cloudpool, [3, 4, 5], timeout=BOUND))
        self.assertEqual([total for total, _pid, _inner in got], expected)
        for _total, outer_pid, inner_pids in got:
            self.assertNotIn(outer_pid, inner_pids)
            # The host's worker gets its share of the host's CPUs (CONCURRENCY workers).
            self.assertLessEqual(len(inner_pids), max(1, (os.cpu_count() or 1) // CONCURRENCY))


class InterpreterExitTest(unittest.TestCase):
    """Like CPython's test_interpreter_shutdown / test_hang_gh83386, with remote calls.

    A child interpreter submits a call to an executor it never shuts down, and one to an
    executor shut down with wait=False, then exits. The calls (on remote hosts) must
    still complete before the interpreter exits, and the exit must be clean.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._tmp = tempfile.TemporaryDirectory()
        cls.marker = os.path.join(cls._tmp.name, "marker")
        settings = json.dumps({"storage": fresh_storage_url(), "config": knative_config()})
        cls.proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import json, sys
            from cloudpool import CloudPoolExecutor
            from tests.test_knative import touch_after
            settings = json.loads(sys.argv[1])
            t = CloudPoolExecutor(5, storage=settings["storage"], config=settings["config"])
            t.submit(touch_after, 1.0, sys.argv[2])
            t2 = CloudPoolExecutor(3, storage=settings["storage"], config=settings["config"])
            t2.submit(touch_after, 1.0, sys.argv[2] + "2")
            t2.shutdown(wait=False)
        """), settings, cls.marker], capture_output=True, timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, CACHE])})

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()
        super().tearDownClass()

    def test_remote_calls_complete_before_exit(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr.decode())
        self.assertTrue(os.path.exists(self.marker), self.proc.stderr.decode())
        self.assertTrue(os.path.exists(self.marker + "2"), self.proc.stderr.decode())

    # The manager fetches results through a ThreadPoolExecutor, which refuses work once
    # the stdlib's exit hook has run (before cloudpool's); the manager then fetches in
    # its own thread. Before that fix the manager died here with "cannot schedule new
    # futures after interpreter shutdown".
    def test_exit_is_clean(self):
        self.assertEqual(self.proc.stderr.decode(), "")


if __name__ == "__main__":
    unittest.main()
