"""The ``kubernetes`` backend against a fake Kubernetes API server (kmock), with pods played here.

No real Kubernetes control plane, kubelet or container engine is obtainable on the machines
this project is built on, so these are **API-contract tests**: the backend talks to a real
HTTP server on 127.0.0.1 -- kmock's ``KubernetesEmulator``, an in-memory CRUD store of
Kubernetes objects -- through the official ``kubernetes`` client and a real kubeconfig file.
kmock runs nothing: no Job controller, no pods. The tests therefore play the kubelet and the
Job controller themselves (``Kubelet`` below): they read each Job the backend created back
from the API, run ``runtime/kubernetes/entry.py`` as a real subprocess once per completion
index with ``JOB_COMPLETION_INDEX`` set and the container's environment from the manifest
(Secrets in ``envFrom`` resolved from the API too), then write what happened back into the
Job's status (``completedIndexes``, ``failedIndexes``, conditions) and, for a failed index,
a failed Pod object carrying exit code and termination message -- as a cluster would.

Storage is S3 on a moto server; the client holds its credentials as (secret) storage
options, the "pods" get theirs only from a Secret via ``envFrom``.

What runs here:

- the Job manifest (indexed mode, completions, parallelism, image, resources, namespace,
  pull secrets, service account, env from secrets, labels, TTL) and that no credential is
  in it or in the stored events;
- the index -> batch mapping end to end: map over 24 calls spanning several batches and Jobs;
- losses: a pod killed mid-call fails exactly that call (the rest of its batch runs again),
  an index the API reports failed fails exactly its batch's calls; bounded in time;
- cancel (one index's pods, then the whole Job; a batch still being collected),
  cleanup of every Job at shutdown (propagationPolicy=Background);
- API errors: missing namespace (404), forbidden (403) when listing and when creating,
  an unreachable API server; option validation;
- runtimes: deploy/list/delete as ConfigMaps, version-mismatch refusal, build context.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import contextlib
import faulthandler
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from typing import Any, Callable, Dict, List, Optional

import cloudpickle
import kmock
from kubernetes import client as k8s_client

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.compute.base import InvocationLost
from cloudpool.compute.kubernetes import (KubernetesBackend, parse_index_set,
                                          runtime_configmap_name)
from cloudpool.errors import VersionMismatchError, WorkerLostError
from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(ROOT, "runtime", "kubernetes", "entry.py")
BOUND = 30.0  # seconds: no failure may take longer to surface
NAMESPACE = "cloudpool-test"
#: Distinctive credentials (moto accepts any): they must never show up in a Job or an event.
ACCESS_KEY = "AKIACPK8S" + uuid.uuid4().hex[:10].upper()
SECRET_KEY = "cpk8s-secret-" + uuid.uuid4().hex
S3_SECRET_NAME = "s3-credentials"
FAST = {"collect_window": 0.3, "status_interval": 0.2}


# ---------------------------------------------------------------------------- functions run in "pods"
def square(x: int) -> int:
    return x * x


def die_on(x: int, bad: int) -> int:
    if x == bad:
        os._exit(137)  # what an OOM kill looks like from outside: exit code 137, no goodbye
    return x + 100


def where_am_i(_x: int) -> str:
    return os.environ.get("JOB_COMPLETION_INDEX", "?")


# ---------------------------------------------------------------------------- kmock in a thread
class KubeAPI:
    """kmock's KubernetesEmulator served on 127.0.0.1 from its own event-loop thread."""

    RESOURCES = [("batch/v1/jobs", "Job"), ("v1/pods", "Pod"), ("v1/configmaps", "ConfigMap"),
                 ("v1/secrets", "Secret")]

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.km: Any = None
        self.url = ""
        self._ready = threading.Event()
        self._stop: Optional[asyncio.Event] = None
        self._error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as km, kmock.Server(km, host="127.0.0.1") as srv:
            for res, kind in self.RESOURCES:
                km.resources[res] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, subresources={"status"},
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"})
            self.km = km
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> "KubeAPI":
        self.thread.start()
        if not self._ready.wait(20) or self._error is not None or not self.url:
            raise RuntimeError(f"kmock did not start ({self._error!r}); run scripts/install-test-deps.sh")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (DSL changes) in kmock's loop thread."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def add_namespace(self, name: str) -> None:
        # kmock does not treat namespaces as objects: answer GET for the ones that "exist";
        # any other namespace gets kmock's 404, as from a cluster without it.
        self.on_loop(lambda: self.km[f"get /api/v1/namespaces/{name}"] << {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}, "status": {"phase": "Active"}})

    def refuse(self, method: str, path: str, message: str) -> None:
        self.on_loop(lambda: self.km[f"{method} {path}"] << kmock.KubernetesError(
            status=403, reason="Forbidden", message=message))

    def requests(self) -> List[Any]:
        """The requests served since the current test began (see ``forget_requests``)."""
        return list(self.km._requests)

    def forget_requests(self) -> None:
        """Drop kmock's log of served requests; every test starts with an empty one.

        kmock matches each incoming request against its DSL reactions (the namespace
        answers and refusals above) by scanning the whole request log, so serving one
        request costs time proportional to every request served before it (measured:
        46 ms per request after 500, 400 ms after 2,500). Over the module the executors'
        monitors poll steadily, and by the last classes the API server took long enough
        to stall a test past its 30 s bound, most under load. ``km._requests`` is
        private: kmock offers no public way to clear it.
        """
        self.on_loop(self.km._requests.clear)


class _State:
    api: Optional[KubeAPI] = None
    moto: Any = None
    bucket = "cp-k8s-" + uuid.uuid4().hex[:10]
    s3_options: Dict[str, Any] = {}
    tmp = ""
    kubeconfig = ""


def setUpModule() -> None:
    # The test functions are not installed in the "pods": ship them by value, as a user's
    # own modules would be.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    _State.tmp = tempfile.mkdtemp(prefix="cp-k8s-test-")
    _State.api = KubeAPI().start()
    _State.kubeconfig = write_kubeconfig(_State.api.url, "kubeconfig")
    _State.moto = servers.moto_s3()
    import boto3

    boto3.client("s3", endpoint_url=_State.moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=_State.bucket)
    _State.s3_options = {"endpoint_url": _State.moto.endpoint_url, "region": servers.S3_REGION,
                         "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}
    for ns in (NAMESPACE, "locked", "readonly", "runtimes"):
        _State.api.add_namespace(ns)
        core().create_namespaced_secret(ns, {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET_NAME, "namespace": ns},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}})


def tearDownModule() -> None:
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if _State.api is not None:
        _State.api.stop()
        _State.api = None
    if _State.tmp:
        shutil.rmtree(_State.tmp, ignore_errors=True)  # kubeconfigs, termination logs, contexts
        _State.tmp = ""


def write_kubeconfig(server: str, name: str, namespace: str = NAMESPACE) -> str:
    path = os.path.join(_State.tmp, name)
    with open(path, "w") as f:
        f.write(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": server}}],
            "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester",
                                                       "namespace": namespace}}],
            "current-context": "kmock",
        }))
    return path


def api_client() -> k8s_client.ApiClient:
    cfg = k8s_client.Configuration()
    cfg.host = _State.api.url
    return k8s_client.ApiClient(cfg)


def batch_api() -> k8s_client.BatchV1Api:
    return k8s_client.BatchV1Api(api_client())


def core() -> k8s_client.CoreV1Api:
    return k8s_client.CoreV1Api(api_client())


def storage_url() -> str:
    return f"s3://{_State.bucket}/run-{uuid.uuid4().hex[:8]}"


def k8s_options(namespace: str = NAMESPACE, **extra: Any) -> Dict[str, Any]:
    opts = {"kubeconfig": _State.kubeconfig, "namespace": namespace, "image": "registry.example/cp:1",
            "env_from_secrets": [S3_SECRET_NAME], **FAST}
    opts.update(extra)
    return opts


def executor(max_workers: int = 4, namespace: str = NAMESPACE, config: Optional[dict] = None,
             **extra: Any) -> CloudPoolExecutor:
    return CloudPoolExecutor(max_workers, backend="kubernetes", storage=storage_url(),
                             config={"s3": dict(_State.s3_options), "poll_interval_max": 0.25,
                                     **(config or {}),
                                     "kubernetes": k8s_options(namespace, **extra)})


def jobs_in(namespace: str) -> List[Any]:
    return batch_api().list_namespaced_job(namespace).items


def wait_for(predicate: Callable[[], Any], timeout: float = BOUND, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    # Where every thread is, so a stall can be diagnosed from the CI log alone.
    faulthandler.dump_traceback(all_threads=True)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (thread stacks above)")


# ---------------------------------------------------------------------------- the kubelet, played here
class Kubelet(threading.Thread):
    """Runs the Jobs of one namespace: entry.py once per index, then the Job's status.

    ``lose(job_name, index)`` returning True makes an index fail without running (a lost
    node): only ``status.failedIndexes`` tells. A process that exits non-zero becomes a
    failed Pod object with its exit code and termination message, as a kubelet reports it.
    """

    def __init__(self, namespace: str, lose: Optional[Callable[[str, int], bool]] = None) -> None:
        super().__init__(name=f"kubelet-{namespace}", daemon=True)
        self.namespace = namespace
        self.lose = lose or (lambda name, index: False)
        self.batch = batch_api()
        self.core = core()
        self.handled: List[str] = []
        self.jobs: Dict[str, Any] = {}  # name -> the Job object as first read from the API
        self.ran: Dict[str, List[int]] = {}
        self.stopping = threading.Event()
        self.errors: List[BaseException] = []
        self.nodes = threading.Semaphore(3)  # pods running at once, over all Jobs

    def __enter__(self) -> "Kubelet":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.join(BOUND)
        if self.errors:
            raise self.errors[0]

    def run(self) -> None:
        threads: List[threading.Thread] = []
        try:
            while not self.stopping.is_set():
                for job in self.batch.list_namespaced_job(self.namespace).items:
                    if job.metadata.name not in self.handled:
                        self.handled.append(job.metadata.name)
                        self.jobs[job.metadata.name] = job
                        # Jobs run side by side, as on a cluster; pods share a few "nodes".
                        t = threading.Thread(target=self.run_job_safely, args=(job,), daemon=True)
                        threads.append(t)
                        t.start()
                self.stopping.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.errors.append(exc)
        finally:
            for t in threads:
                t.join(BOUND)

    def run_job_safely(self, job: Any) -> None:
        try:
            self.run_job(job)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.errors.append(exc)

    def pod_env(self, container: Any) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["PYTHONPATH"] = ROOT
        for ref in container.env_from or []:
            secret = self.core.read_namespaced_secret(ref.secret_ref.name, self.namespace)
            env.update(secret.string_data or {})
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
        env.update({e.name: e.value for e in container.env or []})
        return env

    def run_index(self, name: str, index: int, env: Dict[str, str]) -> Dict[str, Any]:
        if self.lose(name, index):
            return {"index": index, "lost": True}
        log = os.path.join(_State.tmp, f"termination-{name}-{index}")
        env = dict(env, JOB_COMPLETION_INDEX=str(index), CLOUDPOOL_TERMINATION_LOG=log)
        with self.nodes:
            proc = subprocess.run([sys.executable, ENTRY], env=env, capture_output=True, text=True, timeout=60)
        message = ""
        if os.path.exists(log):
            with open(log) as f:
                message = f.read()
        self.ran.setdefault(name, []).append(index)
        return {"index": index, "rc": proc.returncode, "message": message, "stderr": proc.stderr}

    def run_job(self, job: Any) -> None:
        name = job.metadata.name
        container = job.spec.template.spec.containers[0]
        env = self.pod_env(container)
        done: List[int] = []
        failed: List[int] = []
        with cf.ThreadPoolExecutor(job.spec.parallelism) as pool:
            for outcome in pool.map(lambda i: self.run_index(name, i, env), range(job.spec.completions)):
                i = outcome["index"]
                if outcome.get("lost"):
                    failed.append(i)
                elif outcome["rc"] == 0:
                    done.append(i)
                else:
                    failed.append(i)
                    self.failed_pod(job, i, outcome)
                if not self.patch_status(name, {"completedIndexes": _ranges(done),
                                                "failedIndexes": _ranges(failed),
                                                "succeeded": len(done), "failed": len(failed)}):
                    return  # the Job was deleted (cancelled) while its pods ran
        condition = ({"type": "Complete", "status": "True", "reason": "Completed"} if not failed else
                     {"type": "Failed", "status": "True", "reason": "FailedIndexes",
                      "message": "Job has failed indexes"})
        self.patch_status(name, {"conditions": [condition]})

    def patch_status(self, name: str, status: Dict[str, Any]) -> bool:
        try:
            self.batch.patch_namespaced_job_status(name, self.namespace, {"status": status})
            return True
        except k8s_client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def failed_pod(self, job: Any, index: int, outcome: Dict[str, Any]) -> None:
        name = job.metadata.name
        labels = dict(job.spec.template.metadata.labels or {})
        labels.update({"batch.kubernetes.io/job-name": name, "job-name": name,
                       "batch.kubernetes.io/job-completion-index": str(index)})
        rc = outcome["rc"]
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-{index}-{uuid.uuid4().hex[:5]}", "namespace": self.namespace,
                         "labels": labels,
                         "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "x"}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "worker", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"exitCode": rc, "reason": "OOMKilled" if rc == 137 else "Error",
                                         "message": outcome["message"]}}}]},
        })


def _ranges(indexes: List[int]) -> str:
    return ",".join(str(i) for i in sorted(indexes))


# ---------------------------------------------------------------------------- tests
class KubeTestCase(unittest.TestCase):
    """Every test starts with kmock's request log empty (``KubeAPI.forget_requests``)."""

    def setUp(self) -> None:
        _State.api.forget_requests()


class JobManifestTest(KubeTestCase):
    def test_manifest_has_every_option_and_no_credential(self):
        ex = executor(3, config={"timeout": 60}, cpu="250m", memory="256Mi", cpu_limit="1",
                      image_pull_secrets=["regcred"], service_account="cloudpool-worker",
                      labels={"team": "data", "example.com/cost-center": "42"},
                      ttl_seconds_after_finished=120, backoff_limit=3)
        try:
            futures = [ex.submit(square, i) for i in range(4)]
            job = wait_for(lambda: next(iter(jobs_in(NAMESPACE)), None), what="a Job")
            raw = batch_api().api_client.sanitize_for_serialization(job)
            spec = raw["spec"]
            self.assertEqual(spec["completionMode"], "Indexed")
            self.assertEqual(spec["completions"], 4)  # four probe batches collected into one Job
            self.assertEqual(spec["parallelism"], 3)  # bounded by max_workers
            self.assertEqual(spec["backoffLimit"], 3)
            self.assertEqual(spec["backoffLimitPerIndex"], 0)
            self.assertEqual(spec["ttlSecondsAfterFinished"], 120)
            self.assertEqual(raw["metadata"]["namespace"], NAMESPACE)
            self.assertEqual(raw["metadata"]["labels"]["team"], "data")
            self.assertEqual(raw["metadata"]["labels"]["cloudpool.dev/executor"], ex.executor_id)
            pod = spec["template"]["spec"]
            self.assertEqual(spec["template"]["metadata"]["labels"]["example.com/cost-center"], "42")
            self.assertEqual(pod["restartPolicy"], "Never")
            self.assertEqual(pod["serviceAccountName"], "cloudpool-worker")
            self.assertEqual(pod["imagePullSecrets"], [{"name": "regcred"}])
            (container,) = pod["containers"]
            self.assertEqual(container["image"], "registry.example/cp:1")
            self.assertEqual(container["resources"], {"requests": {"cpu": "250m", "memory": "256Mi"},
                                                      "limits": {"cpu": "1", "memory": "256Mi"}})
            self.assertEqual(container["envFrom"], [{"secretRef": {"name": S3_SECRET_NAME}}])
            env = {e["name"]: e["value"] for e in container["env"]}
            self.assertTrue(env["CLOUDPOOL_STORAGE_URL"].startswith(f"s3://{_State.bucket}/"))
            self.assertEqual(json.loads(env["CLOUDPOOL_STORAGE_OPTIONS"]),
                             {"endpoint_url": _State.moto.endpoint_url, "region": servers.S3_REGION})
            manifest_text = json.dumps(raw)
            # The stored events: one per index, and no credential in them either.
            import boto3

            s3 = boto3.client("s3", endpoint_url=_State.moto.endpoint_url, region_name=servers.S3_REGION,
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
            listed = s3.list_objects_v2(Bucket=_State.bucket, Prefix=env["CLOUDPOOL_EVENTS_PREFIX"])
            keys = sorted(o["Key"] for o in listed.get("Contents", []))
            self.assertEqual([k.rsplit("/", 1)[1] for k in keys], [f"{i:06d}.json" for i in range(4)])
            events = [s3.get_object(Bucket=_State.bucket, Key=k)["Body"].read().decode() for k in keys]
            self.assertEqual([protocol.decode_event(e)["batch"] for e in events], list(range(4)))
            for text in [manifest_text] + events:
                self.assertNotIn(SECRET_KEY, text)
                self.assertNotIn(ACCESS_KEY, text)
            with Kubelet(NAMESPACE):
                self.assertEqual([f.result(BOUND) for f in futures], [0, 1, 4, 9])
        finally:
            ex.shutdown(wait=True)
        self.assertEqual(jobs_in(NAMESPACE), [], "shutdown must delete the executor's Jobs")


class IndexedCompletionTest(KubeTestCase):
    def test_map_spans_several_jobs_and_batches_in_order(self):
        t0 = time.monotonic()
        with Kubelet(NAMESPACE) as kubelet:
            with executor(2) as ex:
                results = list(ex.map(square, range(24), timeout=BOUND * 2))
                self.assertEqual(results, [x * x for x in range(24)])
                jobs = {j.metadata.name: j for j in jobs_in(NAMESPACE)
                        if j.metadata.labels.get("cloudpool.dev/executor") == ex.executor_id}
        self.assertGreaterEqual(len(jobs), 2, "later batches go into later Jobs")
        self.assertGreater(sum(j.spec.completions for j in jobs.values()), len(jobs),
                           "a Job holds several batches")
        for name, job in jobs.items():
            self.assertLessEqual(job.spec.parallelism, 2)
            self.assertEqual(sorted(kubelet.ran[name]), list(range(job.spec.completions)))
        self.assertEqual(jobs_in(NAMESPACE), [])
        print(f"\n[test_kubernetes] 24 calls in {len(jobs)} Jobs, "
              f"{sum(j.spec.completions for j in jobs.values())} pods, {time.monotonic() - t0:.1f} s",
              file=sys.stderr)

    def test_each_index_runs_its_own_batch(self):
        with Kubelet(NAMESPACE):
            with executor(2) as ex:
                futures = [ex.submit(where_am_i, i) for i in range(3)]
                # Three probes collected into one Job: batch i runs as completion index i.
                self.assertEqual([f.result(BOUND) for f in futures], ["0", "1", "2"])


class LossTest(KubeTestCase):
    def test_pod_killed_mid_call_fails_that_call_and_reruns_the_rest(self):
        t0 = time.monotonic()
        with Kubelet(NAMESPACE) as kubelet:
            with executor(1) as ex:
                # A probe first: once calls are timed, the next 12 go out as one batch.
                self.assertEqual(ex.submit(die_on, 0, -1).result(BOUND), 100)
                futures = [ex.submit(die_on, x, 5) for x in range(12)]
                done, not_done = cf.wait(futures, timeout=BOUND)
                self.assertFalse(not_done, "every future must finish within the bound")
        for x, fut in enumerate(futures):
            if x == 5:
                self.assertIsInstance(fut.exception(), WorkerLostError)
                self.assertIn("OOMKilled", str(fut.exception()))
            else:
                self.assertEqual(fut.result(), x + 100)
        self.assertLess(time.monotonic() - t0, BOUND * 2)
        self.assertGreaterEqual(len(kubelet.handled), 3, "the killed batch's other calls ran again")

    def run_losing_index_1(self, config: dict) -> tuple:
        lost: List[str] = []

        def lose(name: str, index: int) -> bool:
            if index == 1 and not lost:
                lost.append(name)  # the first Job's index 1 never runs: its node vanished
                return True
            return False

        with Kubelet(NAMESPACE, lose=lose) as kubelet:
            with executor(2, config=config) as ex:
                futures = [ex.submit(square, x) for x in range(2)]
                done, not_done = cf.wait(futures, timeout=BOUND)
                self.assertFalse(not_done, "every future must finish within the bound")
        self.assertEqual(futures[0].result(), 0)
        return futures[1], lost[0], kubelet

    def test_index_reported_failed_fails_exactly_its_batch(self):
        fut, job, _kubelet = self.run_losing_index_1({"retries": 0})
        err = fut.exception()
        self.assertIsInstance(err, WorkerLostError)
        self.assertIn(f"index 1 of Kubernetes Job {NAMESPACE}/{job}", str(err))

    def test_index_reported_failed_is_retried_by_default(self):
        # The manager's rule: an invocation lost before it reported anything runs again.
        fut, job, kubelet = self.run_losing_index_1({})
        self.assertEqual(fut.result(), 1)
        self.assertNotIn(1, kubelet.ran[job])
        self.assertGreaterEqual(len(kubelet.handled), 2, "the retry ran in a later Job")


class _Notices:
    def __init__(self) -> None:
        self.items: List[Any] = []
        self.cond = threading.Condition()

    def __call__(self, notice: Any) -> None:
        with self.cond:
            self.items.append(notice)
            self.cond.notify_all()

    def lost(self, inv: str) -> InvocationLost:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(isinstance(n, InvocationLost) and n.inv == inv
                                                for n in self.items), BOUND)
        assert ok, f"no InvocationLost for {inv}: {self.items}"
        return next(n for n in self.items if isinstance(n, InvocationLost) and n.inv == inv)


def direct_backend(namespace: str = NAMESPACE, **extra: Any) -> KubernetesBackend:
    return KubernetesBackend(k8s_options(namespace, **extra), max_workers=4, storage_url=storage_url(),
                             storage_options=dict(_State.s3_options))


def event(backend: KubernetesBackend, executor_id: str, batch: int) -> Dict[str, Any]:
    from cloudpool.storage import split_url

    _scheme, _bucket, root = split_url(backend.storage_url)
    return {"protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions(),
            "storage": {"url": backend.storage_url, "options": {"endpoint_url": _State.moto.endpoint_url}},
            "keys": {"root": root, "executor": executor_id}, "job": "j00000", "batch": batch,
            "offsets": [0], "args": b"", "init": False, "timeout": None, "flush_interval": 0.25}


class CancelAndCleanupTest(KubeTestCase):
    def running_pod(self, job: str, index: int, executor_id: str) -> str:
        name = f"{job}-{index}-run"
        core().create_namespaced_pod(NAMESPACE, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
                "cloudpool.dev/executor": executor_id, "batch.kubernetes.io/job-name": job,
                "batch.kubernetes.io/job-completion-index": str(index)}},
            "spec": {"containers": [{"name": "worker", "image": "x"}]},
            "status": {"phase": "Running"}})
        return name

    def test_cancel_one_index_then_the_whole_job(self):
        backend = direct_backend()
        notices = _Notices()
        backend.start(notices)
        eid = "cp-" + uuid.uuid4().hex[:16]
        try:
            for b in range(3):
                backend.invoke(f"j00000:{b}", event(backend, eid, b))
            job = wait_for(lambda: [j for j in jobs_in(NAMESPACE)
                                    if j.metadata.labels.get("cloudpool.dev/executor") == eid], what="the Job")[0]
            name = job.metadata.name
            self.assertEqual(job.spec.completions, 3)
            pods = [self.running_pod(name, i, eid) for i in range(3)]
            self.assertTrue(backend.cancel("j00000:1", "terminated"))
            lost = notices.lost("j00000:1")
            self.assertIn("cancelled (terminated)", lost.reason)
            remaining = {p.metadata.name for p in core().list_namespaced_pod(NAMESPACE).items}
            self.assertNotIn(pods[1], remaining)
            self.assertTrue({pods[0], pods[2]} <= remaining)
            self.assertIn(name, [j.metadata.name for j in jobs_in(NAMESPACE)], "other indexes still run")
            # The last running indexes: the whole Job goes, reported as timed out for "timeout".
            self.assertTrue(backend.cancel("j00000:0", "timeout"))
            self.assertTrue(backend.cancel("j00000:2", "terminated"))
            self.assertTrue(notices.lost("j00000:0").timed_out)
            notices.lost("j00000:2")
            wait_for(lambda: name not in [j.metadata.name for j in jobs_in(NAMESPACE)], what="Job deleted")
            self.assertFalse(backend.cancel("j00000:0", "terminated"), "already lost")
        finally:
            backend.shutdown()
            for p in core().list_namespaced_pod(NAMESPACE).items:
                core().delete_namespaced_pod(p.metadata.name, NAMESPACE)

    def test_cancel_while_collecting_creates_no_job(self):
        backend = direct_backend(collect_window=30.0)
        notices = _Notices()
        backend.start(notices)
        eid = "cp-" + uuid.uuid4().hex[:16]
        try:
            backend.invoke("j00000:0", event(backend, eid, 0))
            self.assertTrue(backend.cancel("j00000:0", "terminated"))
            self.assertIn("before its Job was created", notices.lost("j00000:0").reason)
        finally:
            t0 = time.monotonic()
            backend.shutdown()
            self.assertLess(time.monotonic() - t0, 5, "shutdown must not wait out the window")
        self.assertEqual([j for j in jobs_in(NAMESPACE)
                          if j.metadata.labels.get("cloudpool.dev/executor") == eid], [])

    def test_shutdown_deletes_every_job_in_the_background(self):
        backend = direct_backend()
        backend.start(_Notices())
        eid = "cp-" + uuid.uuid4().hex[:16]
        mine = lambda: sorted(j.metadata.name for j in jobs_in(NAMESPACE)  # noqa: E731
                              if j.metadata.labels.get("cloudpool.dev/executor") == eid)
        backend.invoke("j00000:0", event(backend, eid, 0))
        wait_for(lambda: len(mine()) == 1, what="first Job")
        backend.invoke("j00000:1", event(backend, eid, 1))
        names = wait_for(lambda: mine() if len(mine()) == 2 else None, what="second Job")
        backend.shutdown()
        self.assertEqual(mine(), [])
        deletes = [r for r in _State.api.requests()
                   if str(r.method).upper().endswith("DELETE") and r.name in names]
        self.assertEqual(sorted(r.name for r in deletes), names)
        self.assertTrue(all(r.params.get("propagationPolicy") == "Background" for r in deletes))


class ApiErrorTest(KubeTestCase):
    def test_missing_namespace(self):
        with executor(2, namespace="nowhere") as ex:
            err = ex.submit(square, 2).exception(BOUND)
        self.assertIsInstance(err, FileNotFoundError)
        self.assertIn("'nowhere' does not exist", str(err))
        self.assertIn("kubectl create namespace nowhere", str(err))

    def test_forbidden_list_names_the_verb_and_resource(self):
        _State.api.refuse("get", "/apis/batch/v1/namespaces/locked/jobs",
                          'jobs.batch is forbidden: User "tester" cannot list resource "jobs"')
        with executor(2, namespace="locked") as ex:
            errors = [f.exception(BOUND) for f in [ex.submit(square, i) for i in range(2)]]
        for err in errors:
            self.assertIsInstance(err, PermissionError)
            self.assertIn("forbids list on jobs.batch in namespace 'locked'", str(err))
            self.assertIn("RoleBinding", str(err))
        creates = [r for r in _State.api.requests()
                   if str(r.method).upper().endswith("POST") and r.namespace == "locked"
                   and r.resource is not None and r.resource.plural == "jobs"]
        self.assertEqual(creates, [], "nothing is created once listing is refused")

    def test_forbidden_create_is_reported_and_refuses_later_batches(self):
        _State.api.refuse("post", "/apis/batch/v1/namespaces/readonly/jobs",
                          'jobs.batch is forbidden: User "tester" cannot create resource "jobs"')
        backend = direct_backend("readonly")
        notices = _Notices()
        backend.start(notices)
        eid = "cp-" + uuid.uuid4().hex[:16]
        try:
            backend.invoke("j00000:0", event(backend, eid, 0))
            lost = notices.lost("j00000:0")
            self.assertIsInstance(lost.error, PermissionError)
            self.assertIn("forbids create on jobs.batch", str(lost.error))
            with self.assertRaises(PermissionError):
                backend.invoke("j00000:1", event(backend, eid, 1))
        finally:
            backend.shutdown()

    def test_unreachable_api_server(self):
        port = servers.free_port()
        path = write_kubeconfig(f"http://127.0.0.1:{port}", "unreachable")
        t0 = time.monotonic()
        with CloudPoolExecutor(1, backend="kubernetes", storage=storage_url(),
                               config={"s3": dict(_State.s3_options),
                                       "kubernetes": {"kubeconfig": path, "image": "x/y:1"}}) as ex:
            err = ex.submit(square, 1).exception(BOUND)
        self.assertLess(time.monotonic() - t0, 15)
        self.assertIsInstance(err, ConnectionError)
        self.assertIn(f"http://127.0.0.1:{port}", str(err))
        self.assertIn(path, str(err))


class OptionTest(KubeTestCase):
    def make(self, storage: Optional[str] = None, **options: Any) -> KubernetesBackend:
        backend = KubernetesBackend({"kubeconfig": _State.kubeconfig, **options}, max_workers=None,
                                    storage_url=storage or storage_url(), storage_options={})
        backend.capabilities  # what the executor reads right after building a backend
        return backend

    def test_image_is_required(self):
        with self.assertRaisesRegex(ValueError, r"needs the container image.*image='REGISTRY"):
            self.make()
        with self.assertRaisesRegex(ValueError, r"needs the container image"):
            CloudPoolExecutor(backend="kubernetes", storage=storage_url(),
                              config={"s3": dict(_State.s3_options),
                                      "kubernetes": {"kubeconfig": _State.kubeconfig}})

    def test_bad_values_are_named(self):
        cases = [({"cpu": "lots"}, "'cpu' must be a Kubernetes quantity"),
                 ({"labels": {"cloudpool.dev/executor": "x"}}, "set by cloudpool itself"),
                 ({"labels": {"team": "has space"}}, "label team="),
                 ({"namespace": "Bad_NS"}, "not a valid namespace"),
                 ({"env_from_secrets": ["Bad Secret"]}, "'env_from_secrets' must be a list of Secret"),
                 ({"ttl_seconds_after_finished": -1}, "'ttl_seconds_after_finished' must be an integer"),
                 ({"in_cluster": True, "context": "x"}, "not both"),
                 ({"imgae": "x"}, r"unknown option\(s\) \['imgae'\]")]
        for options, message in cases:
            with self.subTest(options=options):
                with self.assertRaisesRegex(ValueError, message):
                    self.make(image="x/y:1", **options)

    def test_local_storage_is_refused(self):
        with self.assertRaisesRegex(ValueError, "cannot read this machine's directory"):
            self.make(storage=_State.tmp, image="x/y:1")
        with self.assertRaisesRegex(ValueError, "cannot read this machine's directory"):
            CloudPoolExecutor(backend="kubernetes", storage=_State.tmp,
                              kubeconfig=_State.kubeconfig, image="x/y:1")

    def test_missing_kubeconfig(self):
        with self.assertRaisesRegex(FileNotFoundError, "no kubeconfig at"):
            KubernetesBackend({"kubeconfig": os.path.join(_State.tmp, "absent"), "image": "x/y:1"},
                              max_workers=None, storage_url=storage_url(), storage_options={})

    def test_namespace_from_kubeconfig_context_and_capabilities(self):
        backend = self.make(image="x/y:1", memory="1Gi")
        self.assertEqual(backend.namespace, NAMESPACE)
        caps = backend.capabilities
        self.assertTrue(caps.remote and caps.can_cancel)
        self.assertFalse(caps.notifies)
        self.assertEqual(caps.memory_mb, 1024)
        self.assertGreaterEqual(caps.batch_target_seconds, 5)
        self.assertEqual(parse_index_set("0-2,5,7-8"), {0, 1, 2, 5, 7, 8})


class RuntimeTest(KubeTestCase):
    def backend(self, **options: Any) -> KubernetesBackend:
        # Built as `cloudpool runtime` does: the configured (here: local) storage, no image.
        return KubernetesBackend({"kubeconfig": _State.kubeconfig, "namespace": "runtimes", **options},
                                 max_workers=None, storage_url=_State.tmp, storage_options={})

    def test_deploy_list_delete(self):
        be = self.backend(image="registry.example/cp-rt:7")
        meta = be.deploy_runtime("alpha", memory_mb=2048)
        self.assertEqual(meta["image"], "registry.example/cp-rt:7")
        cm = core().read_namespaced_config_map(runtime_configmap_name("alpha"), "runtimes")
        self.assertEqual(cm.data["cloudpickle"], cloudpickle.__version__)
        self.assertEqual(cm.data["python"], protocol.versions()["python"])
        self.assertEqual(cm.data["memory_mb"], "2048")
        self.assertEqual(cm.metadata.labels["app.kubernetes.io/managed-by"], "cloudpool")
        be.deploy_runtime("alpha")  # again: updated in place, not a conflict
        self.backend(image="registry.example/other:1").deploy_runtime("beta")
        listed = {r["name"]: r for r in be.list_runtimes()}
        self.assertTrue({"alpha", "beta"} <= set(listed))
        self.assertEqual(listed["beta"]["image"], "registry.example/other:1")
        self.assertEqual(listed["alpha"]["cloudpool"], protocol.versions()["cloudpool"])
        be.delete_runtime("alpha")
        self.assertNotIn("alpha", {r["name"] for r in be.list_runtimes()})
        with self.assertRaisesRegex(FileNotFoundError, "no runtime 'alpha'"):
            be.delete_runtime("alpha")
        with self.assertRaisesRegex(ValueError, "runtime name"):
            be.deploy_runtime("Not_Valid")
        be.delete_runtime("beta")

    def test_version_mismatch_is_refused_before_any_job(self):
        self.backend(image="registry.example/old:1").deploy_runtime("old")
        core().patch_namespaced_config_map(runtime_configmap_name("old"), "runtimes",
                                           {"data": {"cloudpickle": "0.0.1"}})
        with CloudPoolExecutor(2, backend="kubernetes", storage=storage_url(),
                               config={"s3": dict(_State.s3_options),
                                       "kubernetes": {"kubeconfig": _State.kubeconfig, "namespace": "runtimes",
                                                      "runtime": "old", **FAST}}) as ex:
            err = ex.submit(square, 3).exception(BOUND)
        self.assertIsInstance(err, VersionMismatchError)
        self.assertIn(f"cloudpickle {cloudpickle.__version__} on the client but 0.0.1 on the worker", str(err))
        self.assertIn("runtime 'old'", str(err))
        self.assertEqual(jobs_in("runtimes"), [])

    def test_runtime_option_supplies_the_image(self):
        self.backend(image="registry.example/fromcm:3").deploy_runtime("good")
        with Kubelet("runtimes") as kubelet:
            with CloudPoolExecutor(2, backend="kubernetes", storage=storage_url(),
                                   config={"s3": dict(_State.s3_options),
                                           "kubernetes": {"kubeconfig": _State.kubeconfig,
                                                          "namespace": "runtimes", "runtime": "good",
                                                          "env_from_secrets": [S3_SECRET_NAME], **FAST}}) as ex:
                self.assertEqual(ex.submit(square, 6).result(BOUND), 36)
        # The Jobs as the kubelet first read them: a Job that completes and is cleaned
        # up quickly cannot be missed, as it could be by polling the list.
        self.assertTrue(kubelet.jobs, "the call ran, so some Job must have been created")
        self.assertEqual({j.spec.template.spec.containers[0].image for j in kubelet.jobs.values()},
                         {"registry.example/fromcm:3"})

    def test_runtime_not_deployed(self):
        with executor(1, namespace="runtimes", runtime="absent") as ex:
            err = ex.submit(square, 1).exception(BOUND)
        self.assertIsInstance(err, FileNotFoundError)
        self.assertIn("cloudpool runtime deploy absent", str(err))

    def test_build_prints_the_command_without_a_container_engine(self):
        out = os.path.join(_State.tmp, "ctx-print")
        env_path = os.environ["PATH"]
        os.environ["PATH"] = _State.tmp  # no podman, no docker
        try:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                meta = self.backend().build_runtime("numpy", requirements=["numpy==1.26.4"], output=out)
        finally:
            os.environ["PATH"] = env_path
        self.assertFalse(meta["built"])
        self.assertIn(f"CLOUDPICKLE_VERSION={cloudpickle.__version__}", buf.getvalue())
        for rel in ("Dockerfile", "entry.py", "requirements.txt"):
            self.assertTrue(os.path.exists(os.path.join(out, "runtime", "kubernetes", rel)), rel)
        self.assertTrue(os.path.exists(os.path.join(out, "cloudpool", "worker.py")))
        for rel in ("setup.py", "setup.cfg", "pyproject.toml"):  # what `pip install .` in the image reads
            self.assertTrue(os.path.exists(os.path.join(out, rel)), rel)
        with open(os.path.join(out, "runtime", "kubernetes", "requirements.txt")) as f:
            self.assertEqual(f.read(), "numpy==1.26.4\n")
        self.assertEqual(meta["image"], "cloudpool-runtime-numpy:" + protocol.versions()["cloudpool"])

    def test_build_runs_the_container_engine(self):
        bindir = os.path.join(_State.tmp, "fakebin")
        os.makedirs(bindir, exist_ok=True)
        record = os.path.join(_State.tmp, "docker-args.json")
        fake = os.path.join(bindir, "docker")
        with open(fake, "w") as f:  # a stand-in CLI: records its arguments, exits 0
            f.write(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({record!r}, 'w'))\n")
        os.chmod(fake, os.stat(fake).st_mode | stat.S_IEXEC)
        env_path = os.environ["PATH"]
        os.environ["PATH"] = bindir
        try:
            meta = self.backend(image="registry.example/built:2").build_runtime("built")
        finally:
            os.environ["PATH"] = env_path
        # Without output= the context is a new temporary directory, the user's to keep.
        self.addCleanup(shutil.rmtree, meta["context"], True)
        self.assertTrue(meta["built"])
        with open(record) as f:
            args = json.load(f)
        self.assertEqual(args[0], "build")
        self.assertIn("registry.example/built:2", args)
        self.assertIn(f"CLOUDPICKLE_VERSION={cloudpickle.__version__}", args)
        self.assertIn(f"PYTHON_VERSION={protocol.versions()['python']}", args)
        self.assertEqual(args[-1], meta["context"])


if __name__ == "__main__":
    unittest.main()
