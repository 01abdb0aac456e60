"""The ``kubernetes`` backend: call batches run as pods of Indexed ``batch/v1`` Jobs.

This module owns everything between the manager and the Kubernetes API: the backend's
options, the Job manifest, grouping invocations into Jobs, writing the invocation events
a pod reads, watching Jobs and pods for lost work, cancelling, cleaning up, the version
check against a deployed runtime, and the ``cloudpool runtime`` hooks (build an image
context, record runtimes in ConfigMaps). The pod side is ``runtime/kubernetes/entry.py``.

Data flow::

    manager ── invoke(inv, event) ──> queue ──(collection window)──> submitter thread
                                                                        │ 1. events -> storage:
                                                                        │    <executor>/kubernetes/<job>/<index>.json
                                                                        │ 2. POST Job (completionMode: Indexed,
                                                                        │    completions = batches, parallelism <= max_workers)
    pod i (JOB_COMPLETION_INDEX=i) ── reads event i ── cloudpool.worker.handle ── results + status -> storage
    manager <── InvocationLost ── monitor thread: one LIST of Jobs + one LIST of pods per interval
    manager <── results ── polls status in storage (the source of truth), as for every backend

Why a collection window: a pod cannot receive a payload and a Job costs seconds of
scheduling and start-up, so one Job per batch would make 100 batches 100 Jobs.
Invocations that arrive within ``collect_window`` seconds of the first one share a Job
(index i runs the i-th of them); the pod reads its event from storage by its index.

Loss detection (storage still decides what finished): an index in the Job's
``status.failedIndexes``, a pod of ours that failed (when indexes are not retried,
``backoff_limit_per_index=0``, the default), a pod stuck in a start-up error
(``InvalidImageName`` at once; image pull back-off, a missing secret, unschedulable after
``pod_start_timeout``), a ``Failed`` Job condition, or a Job deleted behind our back --
each makes the matching invocations ``InvocationLost``. The entry point keeps the index
of the call it is running in the pod's termination message, so a pod killed mid-call
(out of memory, evicted) names the culprit: the manager fails that call and runs the
rest of its batch again, as on the local backend.

Credentials never travel in events or in the Job: pods get them from the Secrets listed
in ``env_from_secrets`` (``envFrom``) or from their service account (workload identity,
IRSA); the storage options written into the pod's environment are the storage's public
ones (no keys).

API errors become stdlib exceptions: 403 -> ``PermissionError`` naming the verb and
resource to grant, 401 -> ``PermissionError`` about the kubeconfig's credentials, a
missing namespace -> ``FileNotFoundError``, an unreachable API server ->
``ConnectionError`` naming its URL and the kubeconfig it came from, an invalid manifest
(422) -> ``ValueError``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from .. import protocol
from .._version import __version__
from ..errors import VersionMismatchError
from ..storage import get_storage, split_url
from ..storage.base import StorageBackend
from ._runtime_files import copy_package, project_files, runtime_file
from . import declared
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone

LOGGER = logging.getLogger("cloudpool")

DEFAULT_MAX_WORKERS = 16
#: Invocations arriving within this many seconds of the first queued one share a Job.
DEFAULT_COLLECT_WINDOW = 0.2
#: How often the Jobs and pods of this executor are listed to find lost work.
DEFAULT_STATUS_INTERVAL = 2.0
#: A pod still not running after this long with a start-up error is given up on.
DEFAULT_POD_START_TIMEOUT = 300.0
DEFAULT_TTL_SECONDS = 3600
DEFAULT_API_TIMEOUT = 30.0
#: A Job's pods cost seconds to schedule and start: batches worth ~20 s amortise that.
BATCH_TARGET_SECONDS = 20.0
#: Most batches in one Job (the API allows 100,000 indexes; a smaller Job is cancelled
#: and cleaned up in fewer calls, and one huge failed Job loses less).
MAX_JOB_COMPLETIONS = 500

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "cloudpool.dev/component"
LABEL_EXECUTOR = "cloudpool.dev/executor"
RUNTIME_CONFIGMAP_PREFIX = "cloudpool-runtime-"
CONTAINER_NAME = "worker"
#: What ``runtime/kubernetes/entry.py`` writes into the termination message.
RUNNING_CALL_RE = re.compile(r"cloudpool-running-call=(\d+)")

#: Pod start-up errors that will not go away by waiting.
_PERMANENT_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
#: Pod start-up errors that may clear (a registry hiccup, a secret created late).
_STUCK_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError",
                            "CreateContainerError", "RunContainerError"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([EPTGMK]i|[munkMGTPE]|e[0-9]+)?$")
_MEMORY_UNITS = {"": 1, "k": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4, "P": 1000 ** 5,
                 "E": 1000 ** 6, "Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
                 "Pi": 1024 ** 5, "Ei": 1024 ** 6, "m": 0.001}


def event_key(keys: protocol.Keys, job_name: str, index: int) -> str:
    """Where the invocation event for index ``index`` of Job ``job_name`` is stored."""
    return f"{event_prefix(keys, job_name)}{index:06d}.json"


def event_prefix(keys: protocol.Keys, job_name: str) -> str:
    # Under the executor's prefix, so the manager's cleanup removes it with the rest.
    return f"{keys.executor_prefix}kubernetes/{job_name}/"


def runtime_configmap_name(name: str) -> str:
    return RUNTIME_CONFIGMAP_PREFIX + name


def parse_index_set(text: Optional[str]) -> Set[int]:
    """``"0-2,5"`` (the API's completedIndexes/failedIndexes format) -> ``{0, 1, 2, 5}``."""
    out: Set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def _memory_mib(quantity: Any) -> Optional[int]:
    match = _QUANTITY.match(str(quantity))
    if not match:
        return None
    unit = match.group(3) or ""
    if unit.startswith("e"):
        factor: float = 10 ** int(unit[1:])
    else:
        factor = _MEMORY_UNITS.get(unit, 1)
    return int(float(match.group(1)) * factor // (1024 * 1024))


def _dns_name(text: str, limit: int) -> str:
    """A DNS-1123 label made of ``text`` (lower case, invalid characters -> '-')."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return name or "cloudpool"


# ---------------------------------------------------------------------------- option checks
def _opt_str(opts: Dict[str, Any], name: str) -> Optional[str]:
    value = opts.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the kubernetes backend's {name!r} must be a non-empty string, not {value!r}")
    return value.strip()


def _opt_names(opts: Dict[str, Any], name: str, what: str) -> List[str]:
    value = opts.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and _OBJECT_NAME.match(v) and len(v) <= 253 for v in value):
        raise ValueError(f"the kubernetes backend's {name!r} must be a list of {what} names "
                         f"(lower-case DNS names such as 'my-secret'), not {value!r}")
    return list(value)


def _opt_number(opts: Dict[str, Any], name: str, default: Optional[float], *, integer: bool = False,
                minimum: float = 0.0, allow_equal: bool = True) -> Optional[float]:
    value = opts.get(name, default)
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if ok:
        ok = value >= minimum if allow_equal else value > minimum
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f">= {minimum:g}" if allow_equal else f"> {minimum:g}"
        raise ValueError(f"the kubernetes backend's {name!r} must be {kind} {bound}, not {value!r}")
    return value


def _opt_quantity(opts: Dict[str, Any], name: str) -> Optional[str]:
    value = opts.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not _QUANTITY.match(str(value)):
        raise ValueError(f"the kubernetes backend's {name!r} must be a Kubernetes quantity such as "
                         f"'500m', '2' (cpu) or '512Mi', '4Gi' (memory), not {value!r}")
    return str(value)


def _opt_labels(opts: Dict[str, Any]) -> Dict[str, str]:
    value = opts.get("labels")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"the kubernetes backend's 'labels' must be a mapping of label names to "
                         f"values, not {value!r}")
    out: Dict[str, str] = {}
    for key, val in value.items():
        prefix, _, name = str(key).rpartition("/")
        if not isinstance(key, str) or not _LABEL_NAME.match(name) or len(name) > 63 or \
                (prefix and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", prefix)):
            raise ValueError(f"the kubernetes backend's label name {key!r} is not a valid Kubernetes "
                             f"label name ([prefix/]name, name <= 63 alphanumerics, '-', '_' or '.')")
        if key.startswith("cloudpool.dev/") or key == LABEL_MANAGED_BY:
            raise ValueError(f"the kubernetes backend's label {key!r} is set by cloudpool itself; "
                             f"choose another name")
        if not isinstance(val, str) or len(val) > 63 or not _LABEL_VALUE.match(val):
            raise ValueError(f"the kubernetes backend's label {key}={val!r}: a value must be a string "
                             f"of <= 63 alphanumerics, '-', '_' or '.'")
        out[key] = val
    return out


class _Job:
    """One Indexed Job this backend created (or is creating)."""

    __slots__ = ("name", "invs", "state", "cancels", "created", "deleted", "first_seen",
                 "pod_failure", "complete")

    def __init__(self, name: str, invs: List[str]) -> None:
        self.name = name
        self.invs = invs
        self.state = ["running"] * len(invs)   # -> "done" | "lost"
        self.cancels: Dict[int, str] = {}      # index -> reason, acted on by the monitor
        self.created = False
        self.deleted = False
        self.complete = False
        self.first_seen: Dict[str, float] = {}  # pod name -> monotonic time first seen stuck
        self.pod_failure: Dict[int, Tuple[str, Optional[int]]] = {}  # index -> (why, running call)

    def unresolved(self) -> List[int]:
        return [i for i, s in enumerate(self.state) if s == "running"]


class KubernetesBackend(ComputeBackend):
    """Runs invocation batches as pods of Indexed Kubernetes Jobs (``runtime/kubernetes``)."""

    name = "kubernetes"
    option_names = declared.KUBERNETES.options
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        self.image = _opt_str(opts, "image")
        self.runtime_name = _opt_str(opts, "runtime")
        if self.runtime_name is not None and (not _DNS_LABEL.match(self.runtime_name)
                                              or len(self.runtime_name) > 63 - len(RUNTIME_CONFIGMAP_PREFIX)):
            raise ValueError(f"the kubernetes backend's 'runtime' {self.runtime_name!r} must be a runtime "
                             f"name as given to `cloudpool runtime deploy` (lower-case letters, digits, '-')")
        self.image_pull_secrets = _opt_names(opts, "image_pull_secrets", "Secret")
        self.image_pull_policy = _opt_str(opts, "image_pull_policy")
        if self.image_pull_policy not in (None, "Always", "IfNotPresent", "Never"):
            raise ValueError(f"the kubernetes backend's 'image_pull_policy' must be 'Always', "
                             f"'IfNotPresent' or 'Never', not {self.image_pull_policy!r}")
        self.service_account = _opt_str(opts, "service_account")
        if self.service_account is not None and not _OBJECT_NAME.match(self.service_account):
            raise ValueError(f"the kubernetes backend's 'service_account' {self.service_account!r} is "
                             f"not a valid ServiceAccount name")
        self.env_from_secrets = _opt_names(opts, "env_from_secrets", "Secret")
        self.cpu = _opt_quantity(opts, "cpu")
        self.memory = _opt_quantity(opts, "memory")
        self.cpu_limit = _opt_quantity(opts, "cpu_limit")
        # The same memory limit as request unless told otherwise: a pod then never gets
        # OOM-killed for memory the scheduler promised it, and the limit is predictable.
        self.memory_limit = _opt_quantity(opts, "memory_limit") or self.memory
        self.labels = _opt_labels(opts)
        self.ttl_seconds = _opt_number(opts, "ttl_seconds_after_finished", DEFAULT_TTL_SECONDS, integer=True)
        self.backoff_limit = _opt_number(opts, "backoff_limit", None, integer=True)
        # 0 by default: a failed pod is reported at once and the manager decides what
        # runs again (re-running a half-done batch on Kubernetes' own would run calls twice).
        self.backoff_limit_per_index = _opt_number(opts, "backoff_limit_per_index", 0, integer=True)
        self.collect_window = float(_opt_number(opts, "collect_window", DEFAULT_COLLECT_WINDOW))
        self.status_interval = float(_opt_number(opts, "status_interval", DEFAULT_STATUS_INTERVAL,
                                                 allow_equal=False))
        self.pod_start_timeout = float(_opt_number(opts, "pod_start_timeout", DEFAULT_POD_START_TIMEOUT,
                                                   allow_equal=False))
        self.api_timeout = float(_opt_number(opts, "api_timeout", DEFAULT_API_TIMEOUT, allow_equal=False))
        in_cluster = opts.get("in_cluster", False)
        if not isinstance(in_cluster, bool):
            raise ValueError(f"the kubernetes backend's 'in_cluster' must be true or false, not {in_cluster!r}")
        self.kubeconfig = _opt_str(opts, "kubeconfig")
        self.context = _opt_str(opts, "context")
        if in_cluster and (self.kubeconfig or self.context):
            raise ValueError("the kubernetes backend takes either in_cluster=True (the pod's service "
                             "account) or a kubeconfig/context, not both")

        self.max_concurrency = max_workers if max_workers is not None else DEFAULT_MAX_WORKERS
        self._api, self.api_server, self._config_source, default_ns = self._load_config(in_cluster)
        namespace = _opt_str(opts, "namespace") or default_ns or "default"
        if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
            raise ValueError(f"the kubernetes backend's 'namespace' {namespace!r} is not a valid namespace "
                             f"name (lower-case letters, digits and '-', at most 63)")
        self.namespace = namespace
        self._batch = k8s_client.BatchV1Api(self._api)
        self._core = k8s_client.CoreV1Api(self._api)

        self._cond = threading.Condition()
        self._queue: List[Tuple[str, Dict[str, Any]]] = []
        self._queued_at = 0.0
        self._jobs: Dict[str, _Job] = {}
        self._by_inv: Dict[str, Tuple[_Job, int]] = {}
        self._seq = 0
        self._closing = False
        self._refused: Optional[BaseException] = None
        self._preflight_lock = threading.Lock()
        self._preflight_done = False
        self._executor_id: Optional[str] = None
        self._storage: Optional[StorageBackend] = None
        self._wake_monitor = threading.Event()
        self._threads: List[threading.Thread] = []
        self._runtime_meta: Optional[Dict[str, Any]] = None
        self._last_monitor_error = 0.0

    # ------------------------------------------------------------------ configuration
    def _load_config(self, in_cluster: bool) -> Tuple[Any, str, str, Optional[str]]:
        """An ApiClient from in-cluster config or a kubeconfig; (client, server URL, source, namespace)."""
        cfg = k8s_client.Configuration()
        namespace: Optional[str] = None
        sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
        if in_cluster or (not self.kubeconfig and not self.context and not os.environ.get("KUBECONFIG")
                          and not os.path.exists(os.path.expanduser("~/.kube/config"))
                          and os.environ.get("KUBERNETES_SERVICE_HOST")):
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)
            except ConfigException as exc:
                raise FileNotFoundError(
                    f"the kubernetes backend could not use the in-cluster configuration ({exc}); outside "
                    f"a pod, give kubeconfig='~/.kube/config' (and context=...) instead") from None
            source = "the in-cluster service account"
            try:
                with open(os.path.join(sa_dir, "namespace"), encoding="utf-8") as f:
                    namespace = f.read().strip() or None
            except OSError:
                namespace = None
        else:
            path = os.path.expanduser(self.kubeconfig) if self.kubeconfig else None
            if path is None:
                env = os.environ.get("KUBECONFIG")
                path = env.split(os.pathsep)[0] if env else os.path.expanduser("~/.kube/config")
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"the kubernetes backend found no kubeconfig at {path!r}: give kubeconfig='PATH' "
                    f"(or set KUBECONFIG), or in_cluster=True when the client runs in a pod")
            try:
                k8s_config.load_kube_config(config_file=path, context=self.context, client_configuration=cfg)
                _contexts, active = k8s_config.list_kube_config_contexts(config_file=path)
                if self.context:
                    active = next((c for c in _contexts if c.get("name") == self.context), active)
            except ConfigException as exc:
                raise ValueError(f"the kubeconfig {path!r} cannot be used (context {self.context!r}): "
                                 f"{exc}; fix the file or choose an existing context=...") from None
            namespace = ((active or {}).get("context") or {}).get("namespace")
            source = f"kubeconfig {path}" + (f" (context {self.context})" if self.context else "")
        # Connection failures must surface within a bound: one quick retry for a
        # connection reset, never urllib3's default of three with back-off per call.
        cfg.retries = urllib3.util.Retry(total=1, connect=1, read=0, backoff_factor=0.2)
        return k8s_client.ApiClient(cfg), cfg.host, source, namespace

    def _check_can_run(self) -> None:
        """Settings needed to run calls, not to manage runtimes (``cloudpool runtime ...``).

        Called from ``capabilities``, which the executor reads right after building the
        backend, so a missing image or a local-disk storage fails the executor's
        construction; the runtime commands never ask for capabilities.
        """
        if self.image is None and self.runtime_name is None:
            raise ValueError(
                "the kubernetes backend needs the container image its pods run: pass "
                "image='REGISTRY/cloudpool-kubernetes:TAG' (an image built from runtime/kubernetes/"
                "Dockerfile, e.g. with `cloudpool runtime build`), or runtime='NAME' of a runtime "
                "recorded with `cloudpool runtime deploy`; in the config file: 'kubernetes: {image: ...}'")
        if not self.storage_url or split_url(self.storage_url)[0] == "file":
            raise ValueError(
                f"the kubernetes backend runs calls in pods, which cannot read this machine's directory "
                f"{self.storage_url!r}: set storage to an object store both sides reach (s3://, gs://, "
                f"az:// or cos://)")

    # ------------------------------------------------------------------ declared
    @property
    def capabilities(self) -> Capabilities:
        self._check_can_run()
        return Capabilities(
            max_concurrency=self.max_concurrency,
            # Batches handed over together become one Job: twice the concurrency gives
            # each Job work for every pod and the next Job's pods time to start, while
            # the rest stay pending (cancellable, as in the stdlib).
            max_in_flight=2 * self.max_concurrency,
            memory_mb=_memory_mib(self.memory_limit) if self.memory_limit else None,
            # One index's pods can be deleted, and whole Jobs; both are reported lost.
            can_cancel=True,
            # Only losses are pushed; results are found by polling storage.
            notifies=False,
            batch_target_seconds=BATCH_TARGET_SECONDS,
            remote=True,
        )

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "api_server": self.api_server, "config": self._config_source,
                "namespace": self.namespace, "image": self.image, "runtime": self.runtime_name,
                "max_concurrency": self.max_concurrency,
                "jobs": sorted(name for name, job in self._jobs.items() if job.created and not job.deleted)}

    # ------------------------------------------------------------------ API errors
    def _error(self, exc: BaseException, verb: str, resource: str, name: Optional[str] = None) -> BaseException:
        """The stdlib exception for a failed API call (``verb`` ``resource`` in our namespace)."""
        what = f"{resource} {name!r}" if name else resource
        where = f"in namespace {self.namespace!r}"
        if isinstance(exc, ApiException):
            message = _api_message(exc)
            if exc.status == 403:
                return PermissionError(
                    f"the Kubernetes API server {self.api_server} forbids {verb} on {what} {where} "
                    f"(HTTP 403: {message}); grant the user or service account of {self._config_source} "
                    f"a Role allowing {verb!r} on {resource} (cloudpool needs create/get/list/delete on "
                    f"jobs.batch, list/delete on pods and get/list/create/update/delete on configmaps) "
                    f"and a RoleBinding in {self.namespace!r}")
            if exc.status == 401:
                return PermissionError(
                    f"the Kubernetes API server {self.api_server} rejected the credentials of "
                    f"{self._config_source} (HTTP 401: {message}); refresh them (e.g. log in again) "
                    f"or choose another context")
            if exc.status == 404:
                if _namespace_missing(exc, self.namespace) or (resource == "namespaces"):
                    return FileNotFoundError(
                        f"the namespace {self.namespace!r} does not exist on {self.api_server}: create it "
                        f"(kubectl create namespace {self.namespace}) or set the kubernetes backend's "
                        f"'namespace' option")
                return FileNotFoundError(f"{what} was not found {where} on {self.api_server} "
                                         f"(HTTP 404: {message})")
            if exc.status == 409:
                return FileExistsError(f"{what} already exists {where} (HTTP 409: {message})")
            if exc.status in (400, 422):
                return ValueError(f"the Kubernetes API server rejected the {resource} manifest for "
                                  f"{verb} (HTTP {exc.status}: {message}); check the kubernetes "
                                  f"backend's options")
            return RuntimeError(f"the Kubernetes API server {self.api_server} answered HTTP {exc.status} "
                                f"to {verb} {what} {where}: {message}")
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            return ConnectionError(
                f"cannot reach the Kubernetes API server at {self.api_server} (from {self._config_source}) "
                f"to {verb} {what}: {_short(exc)}; check that the cluster is running and reachable and that "
                f"the kubeconfig/context names the right server")
        return exc

    def _call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any,
              name: Optional[str] = None, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.api_timeout, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error(exc, verb, resource, name) from exc

    # ------------------------------------------------------------------ manager side
    def start(self, notify) -> None:
        self._check_can_run()
        super().start(notify)
        for target, label in ((self._submit_loop, "submit"), (self._monitor_loop, "monitor")):
            t = threading.Thread(target=target, name=f"cloudpool-k8s-{label}", daemon=True)
            self._threads.append(t)
            t.start()

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        if self._closing:
            raise RuntimeError("the kubernetes backend is shut down")
        if not self._preflight_done:
            self._preflight(event)
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            self._refuse_version(inv, event, refused)
            return
        if refused is not None:
            # A fresh exception per batch: one shared instance would collect every
            # future's traceback. The calls of this batch fail with it.
            raise type(refused)(str(refused))
        with self._cond:
            if not self._queue:
                self._queued_at = time.monotonic()
            self._queue.append((inv, event))
            self._cond.notify_all()

    def cancel(self, inv: str, reason: str) -> bool:
        with self._cond:
            for i, (queued_inv, _event) in enumerate(self._queue):
                if queued_inv == inv:
                    del self._queue[i]
                    break
            else:
                entry = self._by_inv.get(inv)
                if entry is None:
                    return False
                job, index = entry
                if job.state[index] != "running" or index in job.cancels:
                    return index in job.cancels
                job.cancels[index] = reason
                self._wake_monitor.set()
                return True
        self._notify(InvocationLost(inv, f"cancelled before its Job was created ({reason})",
                                    timed_out=(reason == "timeout")))
        return True

    def shutdown(self, wait: bool = True) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
        self._wake_monitor.set()
        for t in self._threads:
            # The submitter may be creating a Job: it finishes (bounded by api_timeout) and
            # the Job is deleted below, or by the submitter itself if it ends later.
            t.join(self.api_timeout + 5.0)
        self._delete_jobs()
        try:
            self._api.close()
        except Exception as exc:  # noqa: BLE001 - closing must not hide the shutdown
            LOGGER.debug("cloudpool: closing the Kubernetes API client: %s", exc)

    def _delete_jobs(self) -> None:
        with self._cond:
            jobs = [j for j in self._jobs.values() if j.created and not j.deleted]
        failed: List[str] = []
        for job in jobs:
            try:
                self._delete_job(job)
            except (ConnectionError, PermissionError, RuntimeError) as exc:
                failed.append(job.name)
                LOGGER.warning("cloudpool: could not delete Job %s/%s: %s", self.namespace, job.name, exc)
        if failed and self._executor_id:
            LOGGER.warning("cloudpool: delete the leftover Jobs with: kubectl delete jobs -n %s -l %s=%s",
                           self.namespace, LABEL_EXECUTOR, self._label_value(self._executor_id))

    def _delete_job(self, job: _Job) -> None:
        try:
            self._call("delete", "jobs.batch", self._batch.delete_namespaced_job, job.name, self.namespace,
                       name=job.name, propagation_policy="Background")
        except FileNotFoundError:
            pass  # already gone (its TTL, or someone else): nothing left to clean
        job.deleted = True

    # ------------------------------------------------------------------ before the first Job
    def _preflight(self, event: Dict[str, Any]) -> None:
        """Check namespace, access and the runtime's versions once, before anything is created."""
        with self._preflight_lock:
            if self._preflight_done:
                return
            try:
                self._executor_id = event["keys"]["executor"]
                self._check_namespace()
                # Listing our Jobs is what the monitor does every interval: check it now.
                self._call("list", "jobs.batch", self._batch.list_namespaced_job, self.namespace,
                           label_selector=self._selector(), limit=1)
                self._check_runtime()
                scheme, bucket, _root = split_url(self.storage_url)
                self._storage = get_storage(scheme, bucket, self.storage_options)
            except (OSError, ValueError, RuntimeError, VersionMismatchError) as exc:
                self._refused = exc
            finally:
                self._preflight_done = True

    def _check_namespace(self) -> None:
        try:
            self._call("get", "namespaces", self._core.read_namespace, self.namespace, name=self.namespace)
        except PermissionError:
            # Users confined to one namespace often may not read Namespace objects; a
            # missing namespace then shows when the first Job is created.
            LOGGER.debug("cloudpool: may not read namespace %s; not checking that it exists", self.namespace)

    def _check_runtime(self) -> None:
        """Compare the deployed runtime's recorded versions with this client's."""
        meta: Optional[Dict[str, Any]] = None
        if self.runtime_name is not None:
            cm_name = runtime_configmap_name(self.runtime_name)
            try:
                cm = self._call("get", "configmaps", self._core.read_namespaced_config_map, cm_name,
                                self.namespace, name=cm_name)
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"the runtime {self.runtime_name!r} is not deployed in namespace {self.namespace!r} "
                    f"(no ConfigMap {cm_name}): run `cloudpool runtime deploy {self.runtime_name}` "
                    f"or choose another 'runtime' ({exc})") from None
            meta = dict(cm.data or {})
            if self.image is None:
                self.image = meta.get("image")
                if not self.image:
                    raise ValueError(f"the runtime ConfigMap {cm_name} records no image: deploy it again")
        else:
            try:
                runtimes = self.list_runtimes()
            except PermissionError as exc:
                LOGGER.info("cloudpool: cannot list runtimes to check the image's versions (%s); "
                            "the pods check them themselves", exc)
                runtimes = []
            matching = [r for r in runtimes if r.get("image") == self.image]
            meta = matching[0] if matching else None
            if meta is None:
                LOGGER.info("cloudpool: no runtime recorded for image %s in namespace %s; its pods "
                            "check the versions when they start", self.image, self.namespace)
        if meta is None:
            return
        self._runtime_meta = meta
        runtime_versions = {k: meta.get(k) for k in ("python", "cloudpickle", "cloudpool")}
        mismatch = protocol.version_mismatch(protocol.versions(), runtime_versions)
        if mismatch:
            raise VersionMismatchError(
                f"the kubernetes runtime {meta.get('name')!r} (ConfigMap {self.namespace}/"
                f"{runtime_configmap_name(str(meta.get('name')))}, image {meta.get('image')}): {mismatch}")

    def _refuse_version(self, inv: str, event: Dict[str, Any], refused: BaseException) -> None:
        # Reported the way a worker reports a mismatch -- a fatal "version" status -- so
        # the manager breaks the executor with a VersionMismatchError naming both sides.
        keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
        self._notify(SegmentDone({
            "protocol": protocol.PROTOCOL_VERSION, "job": event["job"], "batch": event["batch"],
            "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None, "last": True,
            "fatal": {"kind": "version", "message": str(refused)},
            "worker": {"id": "kubernetes-client-check", "versions": {}},
            # Not a storage key: the refusal happened here, before any Job existed.
            "key": keys.batch_status_prefix(event["job"], event["batch"]) + "refused",
        }))

    # ------------------------------------------------------------------ creating Jobs
    def _selector(self) -> str:
        return f"{LABEL_EXECUTOR}={self._label_value(self._executor_id or '')}"

    @staticmethod
    def _label_value(text: str) -> str:
        value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
        return value or "none"

    def _submit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                # Collect: wait out the window from the first queued invocation, unless
                # a Job's worth has already arrived.
                while not self._closing and len(self._queue) < MAX_JOB_COMPLETIONS:
                    left = self._queued_at + self.collect_window - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closing:
                    return
                group = self._queue[:MAX_JOB_COMPLETIONS]
                del self._queue[:MAX_JOB_COMPLETIONS]
                if self._queue:
                    self._queued_at = time.monotonic()
                self._seq += 1
                job = _Job(f"{_dns_name(self._executor_id or 'cloudpool', 40)}-{self._seq:04d}",
                           [inv for inv, _ in group])
                self._jobs[job.name] = job
                for index, inv in enumerate(job.invs):
                    self._by_inv[inv] = (job, index)
            try:
                self._launch(job, [event for _inv, event in group])
            except Exception as exc:  # noqa: BLE001 - a bug or API error must not hang the batches
                err = exc if isinstance(exc, (OSError, ValueError, RuntimeError)) else RuntimeError(repr(exc))
                if isinstance(err, (PermissionError, FileNotFoundError, ValueError)):
                    self._refused = err  # later batches fail at once with the same error
                self._lose(job, range(len(job.invs)), f"its Kubernetes Job {self.namespace}/{job.name} "
                                                      f"could not be created: {err}", error=err)

    def _launch(self, job: _Job, events: List[Dict[str, Any]]) -> None:
        assert self._storage is not None
        first = events[0]
        keys = protocol.Keys(first["keys"]["root"], first["keys"]["executor"])
        blobs = [(event_key(keys, job.name, i), protocol.encode_event(ev)) for i, ev in enumerate(events)]
        storage = self._storage
        if len(blobs) > 4:
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cloudpool-k8s-put") as pool:
                list(pool.map(lambda kv: storage.put(kv[0], kv[1]), blobs))
        else:
            for key, blob in blobs:
                storage.put(key, blob)
        manifest = self.job_manifest(job.name, len(events), first["storage"], event_prefix(keys, job.name))
        self._call("create", "jobs.batch", self._batch.create_namespaced_job, self.namespace, manifest,
                   name=job.name)
        with self._cond:
            job.created = True
            closing = self._closing
        if closing:
            self._delete_job(job)  # shutdown ran while this Job was being created
        elif job.cancels:
            self._wake_monitor.set()

    def job_manifest(self, name: str, completions: int, storage_spec: Dict[str, Any],
                     events_prefix: str) -> Dict[str, Any]:
        """The Indexed Job running ``completions`` batches whose events are under ``events_prefix``."""
        labels = dict(self.labels)
        labels[LABEL_MANAGED_BY] = "cloudpool"
        labels[LABEL_COMPONENT] = "worker"
        labels[LABEL_EXECUTOR] = self._label_value(self._executor_id or "")
        # What the entry point needs to find its event: the storage URL and its public
        # options (never credentials: storage.public_options() strips them).
        env = [
            {"name": "CLOUDPOOL_STORAGE_URL", "value": storage_spec["url"]},
            {"name": "CLOUDPOOL_STORAGE_OPTIONS", "value": json.dumps(storage_spec.get("options") or {})},
            {"name": "CLOUDPOOL_EVENTS_PREFIX", "value": events_prefix},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ]
        container: Dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": self.image,
            "env": env,
            # The entry point keeps the running call's index here: a pod killed mid-call
            # tells which call killed it.
            "terminationMessagePolicy": "File",
        }
        if self.image_pull_policy:
            container["imagePullPolicy"] = self.image_pull_policy
        if self.env_from_secrets:
            container["envFrom"] = [{"secretRef": {"name": s}} for s in self.env_from_secrets]
        requests = {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v}
        limits = {k: v for k, v in (("cpu", self.cpu_limit), ("memory", self.memory_limit)) if v}
        if requests or limits:
            container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
        pod_spec: Dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if self.service_account:
            pod_spec["serviceAccountName"] = self.service_account
        if self.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [{"name": s} for s in self.image_pull_secrets]
        spec: Dict[str, Any] = {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": max(1, min(completions, self.max_concurrency)),
            "backoffLimitPerIndex": self.backoff_limit_per_index,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        }
        if self.backoff_limit is not None:
            spec["backoffLimit"] = self.backoff_limit
        if self.ttl_seconds is not None:
            spec["ttlSecondsAfterFinished"] = self.ttl_seconds
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
                "spec": spec}

    # ------------------------------------------------------------------ watching Jobs
    def _lose(self, job: _Job, indices: Any, reason: str, *, running: Optional[Dict[int, int]] = None,
              timed_out: bool = False, error: Optional[BaseException] = None) -> None:
        notices = []
        with self._cond:
            for i in indices:
                if job.state[i] != "running":
                    continue
                job.state[i] = "lost"
                self._by_inv.pop(job.invs[i], None)
                notices.append(InvocationLost(job.invs[i], reason, running_call=(running or {}).get(i),
                                              timed_out=timed_out, error=error))
        for notice in notices:
            self._notify(notice)

    def _monitor_loop(self) -> None:
        while not self._closing:
            self._wake_monitor.wait(self.status_interval)
            self._wake_monitor.clear()
            if self._closing:
                return
            try:
                self._act_on_cancels()
                self._check_jobs()
            except (OSError, ValueError, RuntimeError) as exc:
                # Transient API trouble: the next round tries again. Logged at most every 30 s.
                now = time.monotonic()
                if now - self._last_monitor_error > 30.0:
                    self._last_monitor_error = now
                    LOGGER.warning("cloudpool: could not check the Kubernetes Jobs (will retry): %s", exc)
            except Exception:  # noqa: BLE001 - a bug here must not stop loss detection for good
                LOGGER.exception("cloudpool: the kubernetes backend's monitor failed; retrying")

    def _act_on_cancels(self) -> None:
        with self._cond:
            todo = [(job, dict(job.cancels)) for job in self._jobs.values()
                    if job.created and not job.deleted and job.cancels]
            for job, _ in todo:
                job.cancels.clear()
        for job, cancels in todo:
            running = set(job.unresolved())
            cancels = {i: r for i, r in cancels.items() if i in running}
            if not cancels:
                continue
            if running <= set(cancels):
                self._delete_job(job)  # nothing else runs in it: the whole Job goes
                how = f"its Job {self.namespace}/{job.name} was deleted"
            else:
                self._delete_index_pods(job, set(cancels))
                how = f"its pod in Job {self.namespace}/{job.name} was deleted"
            for i, reason in cancels.items():
                self._lose(job, [i], f"cancelled ({reason}): {how}", timed_out=(reason == "timeout"))

    def _delete_index_pods(self, job: _Job, indices: Set[int]) -> None:
        pods = self._call("list", "pods", self._core.list_namespaced_pod, self.namespace,
                          label_selector=f"batch.kubernetes.io/job-name={job.name}")
        for pod in pods.items:
            info = _pod_info(pod)
            if info["job"] == job.name and info["index"] in indices:
                try:
                    self._call("delete", "pods", self._core.delete_namespaced_pod, pod.metadata.name,
                               self.namespace, name=pod.metadata.name, grace_period_seconds=0)
                except FileNotFoundError:
                    pass

    def _check_jobs(self) -> None:
        with self._cond:
            live = {j.name: j for j in self._jobs.values() if j.created and not j.deleted and j.unresolved()}
        if not live:
            return
        listed = self._call("list", "jobs.batch", self._batch.list_namespaced_job, self.namespace,
                            label_selector=self._selector())
        seen = {obj.metadata.name: obj for obj in listed.items if obj.metadata.name in live}
        pods = self._call("list", "pods", self._core.list_namespaced_pod, self.namespace,
                          label_selector=self._selector())
        now = time.monotonic()
        stuck: Dict[str, Dict[int, str]] = {}  # job -> index -> why its pod cannot start
        for pod in pods.items:
            info = _pod_info(pod)
            job = live.get(info["job"] or "")
            index = info["index"]
            if job is None or index is None or index >= len(job.invs):
                continue
            if info["failed"] is not None:
                job.pod_failure[index] = (info["failed"], info["running_call"])
            elif info["waiting"] is not None:
                reason = info["waiting"]
                first = job.first_seen.setdefault(pod.metadata.name, now)
                if reason in _PERMANENT_WAITING or now - first > self.pod_start_timeout:
                    stuck.setdefault(job.name, {})[index] = (
                        f"its pod {pod.metadata.name} could not start ({reason}: {info['message']})")
            elif info["unschedulable"] is not None:
                first = job.first_seen.setdefault(pod.metadata.name, now)
                if now - first > self.pod_start_timeout:
                    stuck.setdefault(job.name, {})[index] = (
                        f"its pod {pod.metadata.name} was not scheduled within pod_start_timeout="
                        f"{self.pod_start_timeout:g} s ({info['unschedulable']})")
        for name, job in live.items():
            obj = seen.get(name)
            if obj is None:
                self._lose(job, job.unresolved(), f"its Kubernetes Job {self.namespace}/{name} was "
                                                  f"deleted before it finished")
                job.deleted = True
                continue
            self._check_job(job, obj, stuck.get(name, {}))

    def _check_job(self, job: _Job, obj: Any, stuck: Dict[int, str]) -> None:
        status = obj.status
        where = f"Kubernetes Job {self.namespace}/{job.name}"
        completed = parse_index_set(getattr(status, "completed_indexes", None)) if status else set()
        failed = parse_index_set(getattr(status, "failed_indexes", None)) if status else set()
        with self._cond:
            for i in completed:
                if i < len(job.state) and job.state[i] == "running":
                    job.state[i] = "done"
                    self._by_inv.pop(job.invs[i], None)
        # Pods that failed: at once when Kubernetes will not retry the index, else when
        # the Job reports the index failed.
        lost_now = set(failed)
        if self.backoff_limit_per_index == 0:
            lost_now |= set(job.pod_failure)
        for i in sorted(lost_now):
            if i < len(job.state) and job.state[i] == "running":
                why, running_call = job.pod_failure.get(i, ("the Job reports the index failed", None))
                self._lose(job, [i], f"index {i} of {where} failed: {why}",
                           running={i: running_call} if running_call is not None else None)
        for i, why in stuck.items():
            self._lose(job, [i], f"index {i} of {where}: {why}")
        conditions = {c.type: c for c in (getattr(status, "conditions", None) or []) if c.status == "True"}
        failed_cond = conditions.get("Failed") or conditions.get("FailureTarget")
        if failed_cond is not None:
            self._lose(job, job.unresolved(), f"{where} failed ({failed_cond.reason}: {failed_cond.message})")
        if conditions.get("Complete") is not None or conditions.get("SuccessCriteriaMet") is not None:
            job.complete = True
        if stuck and job.unresolved():
            self._delete_index_pods(job, set(stuck))
        elif not job.unresolved() and not job.complete:
            # Everything in it is accounted for, but pods may still linger (stuck or
            # retrying): stop them. A completed Job is left to its TTL and shutdown.
            self._delete_job(job)

    # ------------------------------------------------------------------ runtimes
    def _default_image(self, name: str) -> str:
        return self.image or f"cloudpool-runtime-{name}:{__version__}"

    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        """Write a build context for the runtime image; build it with podman/docker if present."""
        _check_runtime_name(name)
        reqs = [str(r).strip() for r in requirements if str(r).strip()]
        for req in reqs:
            if req.startswith("-") or "\n" in req:
                raise ValueError(f"runtime requirement {req!r} must be a pip requirement such as "
                                 f"'numpy==1.26.4', not an option")
        # The files first: a broken installation fails before anything is written.
        runtime_sources = {fname: runtime_file("kubernetes", fname) for fname in ("Dockerfile", "entry.py")}
        context = os.path.abspath(output) if output else tempfile.mkdtemp(prefix=f"cloudpool-runtime-{name}-")
        os.makedirs(context, exist_ok=True)
        # Laid out like the repository, which the Dockerfile expects: the project files
        # (so `pip install .` installs this exact cloudpool), the package, runtime/kubernetes/.
        project_source = project_files(context)
        pkg_dst = os.path.join(context, "cloudpool")
        if os.path.exists(pkg_dst):
            shutil.rmtree(pkg_dst)
        copy_package(pkg_dst)
        rt_dst = os.path.join(context, "runtime", "kubernetes")
        os.makedirs(rt_dst, exist_ok=True)
        for fname, source in runtime_sources.items():
            shutil.copy2(source, os.path.join(rt_dst, fname))
        with open(os.path.join(rt_dst, "requirements.txt"), "w", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in reqs))
        versions = protocol.versions()
        image = self._default_image(name)
        command = [
            "build", "-f", os.path.join(context, "runtime", "kubernetes", "Dockerfile"), "-t", image,
            "--build-arg", f"PYTHON_VERSION={versions['python']}",
            "--build-arg", f"CLOUDPICKLE_VERSION={versions['cloudpickle']}",
            context,
        ]
        tool = shutil.which("podman") or shutil.which("docker")
        result: Dict[str, Any] = {"name": name, "image": image, "context": context, "versions": versions,
                                  "requirements": reqs, "project_files_from": project_source}
        if tool is None:
            shown = " ".join(_quote(a) for a in ["docker"] + command)
            print(f"cloudpool: no podman or docker on PATH; build the image with:\n  {shown}\n"
                  f"then push it (docker push {image}) and run `cloudpool runtime deploy {name}`")
            result.update(built=False, command=["docker"] + command)
            return result
        proc = subprocess.run([tool] + command, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"{os.path.basename(tool)} build of {image} failed (exit {proc.returncode}):\n{tail}")
        result.update(built=True, command=[tool] + command)
        return result

    def deploy_runtime(self, name: str, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """Record the runtime ``name`` (image + versions) in ConfigMap ``cloudpool-runtime-<name>``."""
        _check_runtime_name(name)
        versions = protocol.versions()
        data = {"name": name, "image": self._default_image(name), "python": versions["python"],
                "cloudpickle": versions["cloudpickle"], "cloudpool": versions["cloudpool"],
                "protocol": str(protocol.PROTOCOL_VERSION), "deployed": str(time.time())}
        data["memory_mb"] = str(int(memory_mb)) if memory_mb is not None else None
        data["timeout"] = str(float(timeout)) if timeout is not None else None
        cm_name = runtime_configmap_name(name)
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": cm_name, "namespace": self.namespace,
                             "labels": {LABEL_MANAGED_BY: "cloudpool", LABEL_COMPONENT: "runtime"}},
                "data": data}
        try:
            # Keys set to None are left out of a new ConfigMap and removed from an old one.
            body["data"] = {k: v for k, v in data.items() if v is not None}
            self._call("create", "configmaps", self._core.create_namespaced_config_map, self.namespace, body,
                       name=cm_name)
        except FileExistsError:
            # Deployed before: a merge patch updates it in place (None removes a key).
            body["data"] = data
            self._call("patch", "configmaps", self._core.patch_namespaced_config_map, cm_name,
                       self.namespace, body, name=cm_name)
        return _runtime_record({k: v for k, v in data.items() if v is not None})

    def list_runtimes(self) -> List[Dict[str, Any]]:
        listed = self._call("list", "configmaps", self._core.list_namespaced_config_map, self.namespace,
                            label_selector=f"{LABEL_MANAGED_BY}=cloudpool,{LABEL_COMPONENT}=runtime")
        out = []
        for cm in listed.items:
            labels = cm.metadata.labels or {}
            # Filtered here too: the selector is the server's business, the result is ours.
            if labels.get(LABEL_COMPONENT) != "runtime" or not cm.metadata.name.startswith(RUNTIME_CONFIGMAP_PREFIX):
                continue
            out.append(_runtime_record({k: v for k, v in (cm.data or {}).items() if v is not None}))
        return sorted(out, key=lambda r: r.get("name") or "")

    def delete_runtime(self, name: str) -> None:
        _check_runtime_name(name)
        cm_name = runtime_configmap_name(name)
        try:
            self._call("delete", "configmaps", self._core.delete_namespaced_config_map, cm_name,
                       self.namespace, name=cm_name)
        except FileNotFoundError:
            raise FileNotFoundError(f"no runtime {name!r} is deployed in namespace {self.namespace!r} "
                                    f"(no ConfigMap {cm_name}); `cloudpool runtime list` shows what is") from None


# ---------------------------------------------------------------------------- helpers
def _check_runtime_name(name: Any) -> None:
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 63 - len(RUNTIME_CONFIGMAP_PREFIX):
        raise ValueError(f"a kubernetes runtime name must be lower-case letters, digits and '-' (at most "
                         f"{63 - len(RUNTIME_CONFIGMAP_PREFIX)} characters), such as 'default' or 'numpy', "
                         f"not {name!r}")


def _runtime_record(data: Dict[str, Any]) -> Dict[str, Any]:
    record: Dict[str, Any] = dict(data)
    for key, conv in (("memory_mb", int), ("timeout", float), ("deployed", float), ("protocol", int)):
        if key in record:
            try:
                record[key] = conv(record[key])
            except ValueError:
                pass
    return record


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"[:300]


def _api_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        message = body.get("message")
        if message:
            return str(message)[:500]
    except (ValueError, AttributeError, TypeError):
        pass
    return (exc.reason or "")[:300]


def _namespace_missing(exc: ApiException, namespace: str) -> bool:
    try:
        body = json.loads(exc.body or "")
    except (ValueError, TypeError):
        return False
    details = body.get("details") if isinstance(body, dict) else None
    if isinstance(details, dict) and details.get("kind") == "namespaces":
        return True
    return f'namespaces "{namespace}" not found' in str(body.get("message", ""))


def _pod_info(pod: Any) -> Dict[str, Any]:
    """What the monitor needs from a pod: its Job, index and what went wrong."""
    meta = pod.metadata
    labels = meta.labels or {}
    annotations = meta.annotations or {}
    job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    raw_index = (annotations.get("batch.kubernetes.io/job-completion-index")
                 or labels.get("batch.kubernetes.io/job-completion-index"))
    try:
        index = int(raw_index) if raw_index is not None else None
    except ValueError:
        index = None
    info: Dict[str, Any] = {"job": job, "index": index, "failed": None, "running_call": None,
                            "waiting": None, "message": None, "unschedulable": None}
    status = pod.status
    if status is None:
        return info
    statuses = [s for s in (status.container_statuses or []) if s.name == CONTAINER_NAME] or \
        list(status.container_statuses or [])
    if status.phase == "Failed":
        why = status.reason or "Failed"
        for cs in statuses:
            term = cs.state.terminated if cs.state else None
            if term is not None:
                why = f"{term.reason or 'terminated'}, exit code {term.exit_code}"
                match = RUNNING_CALL_RE.search(term.message or "")
                if match:
                    info["running_call"] = int(match.group(1))
        if status.message:
            why += f"; {status.message}"
        info["failed"] = f"its pod {meta.name} failed ({why})"
        return info
    if status.phase == "Pending":
        for cs in statuses:
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason in (_PERMANENT_WAITING | _STUCK_WAITING):
                info["waiting"] = waiting.reason
                info["message"] = (waiting.message or "")[:300]
                return info
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                info["unschedulable"] = (cond.message or "Unschedulable")[:300]
    return info
