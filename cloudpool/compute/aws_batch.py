"""The ``aws_batch`` backend: batches of calls run as the children of AWS Batch array jobs.

This module owns the client side of running cloudpool on AWS Batch: the backend's
options and their checks, grouping invocations into array jobs, writing the invocation
event each child reads, submitting with boto3 (throttling backed off within
``retry_seconds``), watching children with ``DescribeJobs`` for failed or lost ones, the
version check against the deployed job definition, and the runtime commands (build an
image context; register/list/deregister job definitions; create the job queue and its
compute environment). The container side is ``runtime/aws_batch/entry.py``.

Data flow::

    manager ── invoke(inv, event) ──> queue ──(collect_window)──> submitter thread
                                                                   │ 1. events -> storage:
                                                                   │    <executor>/aws_batch/<job>/<index>.json
                                                                   │ 2. SubmitJob (arrayProperties.size = batches)
    child i (AWS_BATCH_JOB_ARRAY_INDEX=i) ── reads event i ── cloudpool.worker.handle ── results -> storage
    manager <── InvocationLost ── monitor thread: DescribeJobs on the children, every status_interval
    manager <── results ── polls status in storage (the source of truth), as for every backend

Why arrays and a collection window: a Batch job takes seconds to minutes to be scheduled,
so one job per batch would be slow and would hit SubmitJob's rate limit. Invocations
arriving within ``collect_window`` seconds share one array job. Batch arrays have 2 to
10,000 children, so a single batch is submitted as a plain job whose index is passed in
``CLOUDPOOL_BATCH_INDEX``; ``array_jobs=False`` submits every batch that way (one job
each), for schedulers or emulators that do not set ``AWS_BATCH_JOB_ARRAY_INDEX``.

Credentials never travel in events or in the job: the container gets them from the job
definition's IAM role (``job_role``); the storage options written into its environment are
the storage's public ones. The helpers shared with Lambda (region checks, error codes,
metadata tags) are imported from ``aws_lambda``, not copied.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import random
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import boto3
import botocore.config
import botocore.exceptions
import cloudpickle

from .. import protocol
from .._version import __version__
from ..errors import VersionMismatchError
from ..storage import get_storage, split_url
from . import declared
from .aws_lambda import (_REGION_RE, _THROTTLE_CODES, _error_code, _short, default_function_name,
                         metadata_from_tags, metadata_tags, TAG_PREFIX)
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone
from ._runtime_files import copy_package, runtime_file

LOGGER = logging.getLogger("cloudpool")

# ---------------------------------------------------------------------------- Batch's limits
#: Fargate's smallest and the largest EC2 instance memory Batch schedules (MiB).
MEMORY_MIN_MB, MEMORY_MAX_MB = 512, 1_048_576
VCPUS_MIN, VCPUS_MAX = 0.25, 192.0
#: attemptDurationSeconds: Batch's minimum is 60 s; 14 days is its longest job.
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 60, 14 * 24 * 3600
ARRAY_MIN, ARRAY_MAX = 2, 10_000
DEFAULT_MEMORY_MB = 2048
DEFAULT_VCPUS = 1.0
DEFAULT_TIMEOUT_S = 3600
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_RETRY_SECONDS = 60.0
DEFAULT_COLLECT_WINDOW = 1.0
DEFAULT_STATUS_INTERVAL = 5.0
DEFAULT_QUEUE = "cloudpool"
#: A job is scheduled in tens of seconds at best: batches worth a minute of work keep
#: that overhead a small share.
BATCH_TARGET_SECONDS = 60.0
ENTRY = "/opt/cloudpool/cloudpool_batch_entry.py"
#: Batch's terminal states; the others (SUBMITTED..RUNNING) mean "still going".
_DONE = frozenset({"SUCCEEDED", "FAILED"})
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 5.0
_CONNECT_TIMEOUT, _READ_TIMEOUT = 10.0, 60.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_ARN_RE = re.compile(r"^arn:aws[a-zA-Z-]*:(batch|iam):[a-z0-9-]*:\d{12}:[A-Za-z0-9_/:.+=,@-]+$")


def _fail(option: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"the aws_batch backend's {option!r} must be {expected}, not {value!r}")


def _number(option: str, value: Any, low: float, high: float, unit: str, whole: bool = True) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and value != int(value)):
        raise _fail(option, f"a {'whole ' if whole else ''}number of {unit} between {low:g} and {high:g}", value)
    if not low <= value <= high:
        # Rejected, never clamped: a silently changed limit surprises later.
        raise ValueError(f"the aws_batch backend's {option!r} is {value:g} {unit}, outside AWS Batch's "
                         f"range {low:g}..{high:g} {unit}; set it within that range")
    return int(value) if whole else float(value)


def _name(option: str, value: Any) -> str:
    if not isinstance(value, str) or not (_NAME_RE.match(value) or _ARN_RE.match(value)):
        raise _fail(option, "a name of 1-128 letters, digits, '-' or '_' (or an ARN)", value)
    return value


def _str_list(option: str, value: Any) -> List[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v for v in value):
        raise _fail(option, "a list of IDs such as ['subnet-0abc...']", value)
    return list(value)


class _Array:
    """One submitted (or about to be) job: ``invs[i]`` runs as child i."""

    __slots__ = ("name", "invs", "job_id", "done", "submitted_at")

    def __init__(self, name: str, invs: List[str]) -> None:
        self.name = name
        self.invs = invs
        self.job_id: Optional[str] = None
        self.done: Dict[int, str] = {}
        self.submitted_at = 0.0

    def child_id(self, index: int) -> str:
        assert self.job_id is not None
        return f"{self.job_id}:{index}" if len(self.invs) >= ARRAY_MIN else self.job_id


class AwsBatchBackend(ComputeBackend):
    """Runs invocations as children of AWS Batch array jobs."""

    name = "aws_batch"
    option_names = declared.AWS_BATCH.options
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        if opts.get("job_definition") and opts.get("runtime") and opts["job_definition"] != opts["runtime"]:
            raise ValueError(f"the aws_batch backend got runtime={opts['runtime']!r} and job_definition="
                             f"{opts['job_definition']!r}: they name the same job definition, give one")
        self.job_definition = _name("job_definition", opts.get("job_definition") or opts.get("runtime")
                                    or default_function_name())
        self.job_queue = _name("job_queue", opts.get("job_queue", DEFAULT_QUEUE))
        self.compute_environment = _name("compute_environment",
                                         opts.get("compute_environment", f"{self.job_queue}-env"))
        self.memory_mb = _number("memory_mb", opts.get("memory_mb", DEFAULT_MEMORY_MB),
                                 MEMORY_MIN_MB, MEMORY_MAX_MB, "MiB")
        self.vcpus = _number("vcpus", opts.get("vcpus", DEFAULT_VCPUS), VCPUS_MIN, VCPUS_MAX, "vCPUs", whole=False)
        self.timeout = _number("timeout", opts.get("timeout", DEFAULT_TIMEOUT_S), TIMEOUT_MIN_S, TIMEOUT_MAX_S,
                               "seconds")
        self.max_vcpus = _number("max_vcpus", opts.get("max_vcpus", 256), 1, 100_000, "vCPUs")
        self.retry_seconds = _number("retry_seconds", opts.get("retry_seconds", DEFAULT_RETRY_SECONDS),
                                     0, 3600, "seconds", whole=False)
        self.collect_window = _number("collect_window", opts.get("collect_window", DEFAULT_COLLECT_WINDOW),
                                      0, 600, "seconds", whole=False)
        self.status_interval = _number("status_interval", opts.get("status_interval", DEFAULT_STATUS_INTERVAL),
                                       0.1, 600, "seconds", whole=False)
        array_jobs = opts.get("array_jobs", True)
        if not isinstance(array_jobs, bool):
            raise _fail("array_jobs", "True (batches share array jobs) or False (one job per batch)", array_jobs)
        self.array_jobs = array_jobs
        self.image = opts.get("image")
        if self.image is not None and (not isinstance(self.image, str) or not self.image.strip()):
            raise _fail("image", "a container image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG)",
                        self.image)
        for option in ("job_role", "service_role", "execution_role"):
            value = opts.get(option)
            if value is not None and (not isinstance(value, str) or not re.match(
                    r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$", value)):
                raise _fail(option, "an IAM role ARN like 'arn:aws:iam::123456789012:role/NAME'", value)
        self.job_role = opts.get("job_role")
        self.service_role = opts.get("service_role")
        self.execution_role = opts.get("execution_role")
        self.subnets = _str_list("subnets", opts["subnets"]) if opts.get("subnets") is not None else None
        self.security_groups = (_str_list("security_groups", opts["security_groups"])
                                if opts.get("security_groups") is not None else None)
        endpoint = opts.get("endpoint_url")
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
            raise _fail("endpoint_url", "an http(s):// URL such as 'http://127.0.0.1:5000'", endpoint)
        self.endpoint_url = endpoint
        region = opts.get("region") or boto3.session.Session().region_name
        if region is None:
            raise ValueError("the aws_batch backend needs an AWS region: pass region='us-east-1' "
                             "(config 'aws_batch: {region: ...}') or set AWS_DEFAULT_REGION")
        if not isinstance(region, str) or not _REGION_RE.match(region):
            raise _fail("region", "an AWS region name such as 'us-east-1'", region)
        self.region = region
        self.max_concurrency = max_workers if max_workers is not None else DEFAULT_MAX_CONCURRENCY

        self._storage_problem: Optional[str] = None
        if storage_url and split_url(storage_url)[0] == "file":
            self._storage_problem = (
                f"the aws_batch backend runs calls in AWS Batch containers, which cannot read this "
                f"machine's directory {storage_url!r}: set storage to s3://bucket/prefix")
        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: List[Tuple[str, Dict[str, Any]]] = []
        self._queued_at = 0.0
        self._arrays: Deque[_Array] = collections.deque()
        self._threads: List[threading.Thread] = []
        self._closing = False
        self._checked = False
        self._preflight_lock = threading.Lock()
        self._refused: Optional[BaseException] = None
        self._runtime: Optional[Dict[str, Any]] = None
        self._storage: Any = None
        self._seq = 0
        self.counts: "collections.Counter[str]" = collections.Counter()

    # ------------------------------------------------------------------ boto3
    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client_obj is None:
                config = botocore.config.Config(
                    region_name=self.region, connect_timeout=_CONNECT_TIMEOUT, read_timeout=_READ_TIMEOUT,
                    # Retries are ours, bounded by retry_seconds.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    user_agent_extra=f"cloudpool/{__version__}")
                self._client_obj = boto3.session.Session(region_name=self.region).client(
                    "batch", endpoint_url=self.endpoint_url, config=config)
            return self._client_obj

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_concurrency=self.max_concurrency,
            max_in_flight=self.max_concurrency + 1,
            max_timeout=float(self.timeout),
            memory_mb=self.memory_mb,
            payload_limit=None,  # events travel through storage
            can_cancel=False,
            notifies=False,
            batch_target_seconds=BATCH_TARGET_SECONDS,
            remote=True,
        )

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "job_definition": self.job_definition, "job_queue": self.job_queue,
                "region": self.region, "memory_mb": self.memory_mb, "vcpus": self.vcpus,
                "timeout": self.timeout, "runtime": self._runtime, "jobs": dict(self.counts)}

    def _api_error(self, exc: BaseException, verb: str, what: str) -> BaseException:
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return PermissionError(f"no AWS credentials for the aws_batch backend ({exc}); configure them "
                                   f"as for boto3 (AWS_ACCESS_KEY_ID..., a profile or a role)")
        if not isinstance(exc, botocore.exceptions.ClientError):
            return ConnectionError(f"could not reach the AWS Batch API to {verb} {what} ({_short(exc)}); "
                                   f"check 'endpoint_url', 'region' and the network")
        code, status, message = _error_code(exc)
        if code in ("AccessDeniedException", "UnrecognizedClientException") or status in (401, 403):
            return PermissionError(f"AWS refused to {verb} {what}: {code}: {message}")
        return RuntimeError(f"could not {verb} {what}: {code or status}: {message}")

    def _call(self, verb: str, what: str, fn: Any, **kwargs: Any) -> Any:
        """One API call, throttling answers retried with jittered back-off for ``retry_seconds``."""
        give_up = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(**kwargs)
            except botocore.exceptions.ClientError as exc:
                code, status, _message = _error_code(exc)
                if not (code in _THROTTLE_CODES or status == 429) or time.monotonic() >= give_up:
                    raise self._api_error(exc, verb, what) from None
                self.counts["throttled"] += 1
            except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as exc:
                if time.monotonic() >= give_up:
                    raise self._api_error(exc, verb, what) from None
            except botocore.exceptions.BotoCoreError as exc:
                raise self._api_error(exc, verb, what) from None
            if self._closing and verb == "submit":
                raise RuntimeError("the aws_batch backend is shut down")
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.5)
            time.sleep(max(0.0, min(delay, give_up - time.monotonic())))

    # ------------------------------------------------------------------ version handshake
    def _latest_definition(self, name: str) -> Optional[Dict[str, Any]]:
        found: List[Dict[str, Any]] = []
        kwargs: Dict[str, Any] = {"jobDefinitionName": name, "status": "ACTIVE"}
        while True:
            page = self._call("read", f"the job definition {name!r}", self.client.describe_job_definitions,
                              **kwargs)
            found += page.get("jobDefinitions", [])
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        return max(found, key=lambda d: d.get("revision", 0)) if found else None

    def _check_runtime(self) -> Dict[str, Any]:
        deploy = "`cloudpool runtime deploy --backend aws_batch`"
        definition = self._latest_definition(self.job_definition)
        if definition is None:
            raise FileNotFoundError(
                f"the AWS Batch job definition {self.job_definition!r} does not exist in {self.region}: deploy "
                f"the runtime with {deploy} (or set the aws_batch option 'job_definition' to a deployed one)")
        queues = self._call("read", f"the job queue {self.job_queue!r}", self.client.describe_job_queues,
                            jobQueues=[self.job_queue]).get("jobQueues", [])
        if not queues:
            raise FileNotFoundError(f"the AWS Batch job queue {self.job_queue!r} does not exist in {self.region}: "
                                    f"create it with {deploy} or set the aws_batch option 'job_queue'")
        meta = metadata_from_tags(definition.get("tags") or {})
        if meta is None:
            raise FileNotFoundError(
                f"the AWS Batch job definition {self.job_definition!r} is not a cloudpool runtime (no "
                f"{TAG_PREFIX}python tag): deploy one with {deploy}")
        mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
        if mismatch is None and meta.get("protocol") != protocol.PROTOCOL_VERSION:
            mismatch = (f"protocol {protocol.PROTOCOL_VERSION} on the client but {meta.get('protocol')} "
                        f"on the runtime")
        if mismatch:
            raise VersionMismatchError(f"the AWS Batch job definition {self.job_definition!r}:"
                                       f"{definition.get('revision')} ({self.region}): {mismatch}; deploy it "
                                       f"again with {deploy}")
        return dict(meta, revision=definition.get("revision"),
                    image=(definition.get("containerProperties") or {}).get("image"))

    def _preflight(self, event: Dict[str, Any]) -> None:
        with self._preflight_lock:
            if self._checked:
                return
            try:
                self._runtime = self._check_runtime()
                scheme, bucket, _root = split_url(self.storage_url)
                self._storage = get_storage(scheme, bucket, self.storage_options)
            except (OSError, ValueError, RuntimeError, VersionMismatchError) as exc:
                self._refused = exc
            finally:
                self._checked = True

    def _refuse_version(self, event: Dict[str, Any], refused: BaseException) -> None:
        # Reported as a worker reports a mismatch (a fatal "version" status), so the
        # manager breaks the executor with VersionMismatchError naming both sides.
        keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
        self._notify(SegmentDone({
            "protocol": protocol.PROTOCOL_VERSION, "job": event["job"], "batch": event["batch"],
            "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None, "last": True,
            "fatal": {"kind": "version", "message": str(refused)},
            "worker": {"id": "aws-batch-client-check", "versions": {}},
            "key": keys.batch_status_prefix(event["job"], event["batch"]) + "refused",
        }))

    # ------------------------------------------------------------------ manager side
    def start(self, notify) -> None:
        super().start(notify)
        for target, label in ((self._submit_loop, "submit"), (self._monitor_loop, "monitor")):
            t = threading.Thread(target=target, name=f"cloudpool-batch-{label}", daemon=True)
            self._threads.append(t)
            t.start()

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        if self._storage_problem:
            raise ValueError(self._storage_problem)
        if self._closing:
            raise RuntimeError("the aws_batch backend is shut down")
        self._preflight(event)
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            self._refuse_version(event, refused)
            return
        if refused is not None:
            raise type(refused)(str(refused))  # a fresh one per batch: tracebacks stay apart
        with self._cond:
            if not self._queue:
                self._queued_at = time.monotonic()
            self._queue.append((inv, event))
            self._cond.notify_all()

    def shutdown(self, wait: bool = True) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
            running = [a for a in self._arrays if a.job_id and len(a.done) < len(a.invs)]
        for array in running:
            # Nobody waits for these any more: stop paying for them (best effort).
            try:
                self.client.terminate_job(jobId=array.job_id, reason="cloudpool executor shut down")
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                LOGGER.warning("cloudpool: could not terminate AWS Batch job %s: %s", array.job_id, exc)
        if wait:
            for t in self._threads:
                t.join(1.0)

    def _submit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                most = ARRAY_MAX if self.array_jobs else 1
                while not self._closing and len(self._queue) < most:
                    left = self._queued_at + self.collect_window - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closing:
                    return
                group, self._queue = self._queue[:most], self._queue[most:]
                if self._queue:
                    self._queued_at = time.monotonic()
                self._seq += 1
                executor = re.sub(r"[^A-Za-z0-9_-]", "-", group[0][1]["keys"]["executor"])[:80]
                array = _Array(f"cloudpool-{executor}-{self._seq:04d}", [inv for inv, _ in group])
            try:
                self._submit(array, [event for _inv, event in group])
            except Exception as exc:  # noqa: BLE001 - an API error or bug must not hang the batches
                err = exc if isinstance(exc, (OSError, ValueError, RuntimeError)) else RuntimeError(repr(exc))
                self.counts["lost"] += len(array.invs)
                for inv in array.invs:
                    self._notify(InvocationLost(inv, f"its AWS Batch job {array.name} could not be submitted: "
                                                     f"{err}", error=err))

    def events_prefix(self, event: Dict[str, Any], array_name: str) -> str:
        # Under the executor's prefix, so the manager's cleanup removes them with the rest.
        keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
        return f"{keys.executor_prefix}aws_batch/{array_name}/"

    def submit_request(self, array_name: str, size: int, storage_spec: Dict[str, Any],
                       events_prefix: str) -> Dict[str, Any]:
        """The SubmitJob request running ``size`` batches whose events are under ``events_prefix``."""
        env = [{"name": "CLOUDPOOL_STORAGE_URL", "value": storage_spec["url"]},
               # Public options only (the executor strips secrets): credentials come from the job role.
               {"name": "CLOUDPOOL_STORAGE_OPTIONS", "value": json.dumps(storage_spec.get("options") or {})},
               {"name": "CLOUDPOOL_EVENTS_PREFIX", "value": events_prefix}]
        request: Dict[str, Any] = {"jobName": array_name[:128], "jobQueue": self.job_queue,
                                   "jobDefinition": self.job_definition,
                                   "timeout": {"attemptDurationSeconds": self.timeout},
                                   # No retries by Batch: the client re-runs only unfinished calls.
                                   "retryStrategy": {"attempts": 1},
                                   "tags": {TAG_PREFIX + "executor": array_name[:256]}}
        if size >= ARRAY_MIN:
            request["arrayProperties"] = {"size": size}
        else:
            env.append({"name": "CLOUDPOOL_BATCH_INDEX", "value": "0"})
        request["containerOverrides"] = {"environment": env}
        return request

    def _submit(self, array: _Array, events: List[Dict[str, Any]]) -> None:
        prefix = self.events_prefix(events[0], array.name)
        for i, ev in enumerate(events):
            self._storage.put(f"{prefix}{i:06d}.json", protocol.encode_event(ev))
        request = self.submit_request(array.name, len(events), events[0]["storage"], prefix)
        resp = self._call("submit", f"the AWS Batch job {array.name} to queue {self.job_queue!r}",
                          self.client.submit_job, **request)
        with self._cond:
            array.job_id = resp["jobId"]
            array.submitted_at = time.monotonic()
            self._arrays.append(array)
            self.counts["submitted"] += len(array.invs)

    # ------------------------------------------------------------------ monitor
    def _monitor_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing, timeout=self.status_interval)
                if self._closing:
                    return
                watched = [(a, i) for a in self._arrays for i in range(len(a.invs)) if i not in a.done]
            try:
                self._poll(watched)
            except (OSError, RuntimeError) as exc:
                # A failed poll is retried next interval; storage still decides what finished.
                LOGGER.warning("cloudpool: could not read AWS Batch job states: %s", exc)
            with self._cond:
                while self._arrays and len(self._arrays[0].done) == len(self._arrays[0].invs):
                    self._arrays.popleft()

    def _poll(self, watched: List[Tuple[_Array, int]]) -> None:
        by_id = {array.child_id(i): (array, i) for array, i in watched}
        ids = list(by_id)
        for start in range(0, len(ids), 100):  # DescribeJobs takes at most 100 ids
            chunk = ids[start:start + 100]
            jobs = self._call("read", "job states", self.client.describe_jobs, jobs=chunk).get("jobs", [])
            seen = set()
            for job in jobs:
                job_id = job["jobId"]
                if job_id not in by_id:
                    continue
                seen.add(job_id)
                array, index = by_id[job_id]
                status = job.get("status", "")
                if status not in _DONE:
                    continue
                array.done[index] = status
                if status == "FAILED":
                    self.counts["failed"] += 1
                    reason = job.get("statusReason") or "no reason given"
                    attempts = job.get("attempts") or [{}]
                    container = attempts[-1].get("container") or job.get("container") or {}
                    exit_code = container.get("exitCode")
                    timed_out = "attempt duration" in reason.lower() or "timeout" in reason.lower()
                    self._notify(InvocationLost(
                        array.invs[index],
                        f"AWS Batch job {job_id} ({array.name}, child {index}) FAILED: {reason}"
                        f"{'' if exit_code is None else f' (exit code {exit_code})'}; see its CloudWatch log "
                        f"stream {container.get('logStreamName') or '(none)'}",
                        timed_out=timed_out, killed=exit_code == 137))
            for job_id in set(chunk) - seen:
                # Batch keeps finished jobs for at least 7 days: one it no longer knows was
                # deleted behind our back, and will write nothing more.
                array, index = by_id[job_id]
                if time.monotonic() - array.submitted_at > 2 * self.status_interval + 30:
                    array.done[index] = "GONE"
                    self._notify(InvocationLost(array.invs[index], f"AWS Batch no longer knows job {job_id}"))

    # ------------------------------------------------------------------ runtimes
    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        """Write an image build context: Dockerfile, entry point, this client's cloudpool and cloudpickle."""
        _name("name", name)
        if isinstance(requirements, str):
            raise TypeError("requirements must be a list of pip requirement strings, not one string")
        context = os.path.abspath(output) if output else tempfile.mkdtemp(prefix=f"cloudpool-batch-{name}-")
        site = os.path.join(context, "site")
        if os.path.isdir(site):
            shutil.rmtree(site)
        os.makedirs(context, exist_ok=True)
        copy_package(os.path.join(site, "cloudpool"))
        shutil.copytree(os.path.dirname(os.path.abspath(cloudpickle.__file__)), os.path.join(site, "cloudpickle"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(runtime_file("aws_batch", "entry.py"), os.path.join(site, os.path.basename(ENTRY)))
        shutil.copy(runtime_file("aws_batch", "Dockerfile"), os.path.join(context, "Dockerfile"))
        v = protocol.versions()
        reqs = " ".join(["boto3", *requirements])
        command = (f"docker build --build-arg PYTHON_VERSION={v['python']} --build-arg REQUIREMENTS='{reqs}' "
                   f"-t IMAGE_URI {context} && docker push IMAGE_URI")
        return {"name": name, "context": context, "command": command, "versions": v,
                "requirements": list(requirements)}

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """Register job definition ``name`` for the ``image`` option; create the queue if missing.

        The job queue gets a compute environment of its own: managed Fargate when
        ``subnets`` and ``security_groups`` are set, otherwise unmanaged (you attach the
        instances, e.g. an ECS cluster you run).
        """
        name = _name("name", name or self.job_definition)
        memory = _number("memory_mb", memory_mb if memory_mb is not None else self.memory_mb,
                         MEMORY_MIN_MB, MEMORY_MAX_MB, "MiB")
        job_timeout = _number("timeout", timeout if timeout is not None else self.timeout,
                              TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        if not self.image:
            raise ValueError("deploying an AWS Batch runtime needs its container image: set the aws_batch option "
                             "'image' to an image built from `cloudpool runtime build --backend aws_batch` "
                             "and pushed to a registry Batch can pull from")
        fargate = self.subnets is not None
        if fargate and (not self.security_groups or not self.execution_role):
            raise ValueError("a Fargate compute environment (the aws_batch option 'subnets' is set) also needs "
                             "'security_groups' and 'execution_role' (the ECS task execution role ARN)")
        self._ensure_queue(fargate)
        container: Dict[str, Any] = {
            "image": self.image, "command": ["python3", ENTRY],
            "resourceRequirements": [{"type": "VCPU", "value": f"{self.vcpus:g}"},
                                     {"type": "MEMORY", "value": str(memory)}]}
        if self.job_role:
            container["jobRoleArn"] = self.job_role  # the container's storage credentials
        if fargate:
            container["executionRoleArn"] = self.execution_role
            container["networkConfiguration"] = {"assignPublicIp": "ENABLED"}
        meta = {"protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions(), "packages": {}}
        self._call("register", f"the job definition {name!r}", self.client.register_job_definition,
                   jobDefinitionName=name, type="container", containerProperties=container,
                   timeout={"attemptDurationSeconds": job_timeout}, retryStrategy={"attempts": 1},
                   platformCapabilities=["FARGATE" if fargate else "EC2"], tags=metadata_tags(name, meta))
        definition = self._latest_definition(name) or {}
        return dict(meta, name=name, revision=definition.get("revision"), image=self.image, memory_mb=memory,
                    vcpus=self.vcpus, timeout=job_timeout, job_queue=self.job_queue, region=self.region)

    def _ensure_queue(self, fargate: bool) -> None:
        client = self.client
        queues = self._call("read", f"the job queue {self.job_queue!r}", client.describe_job_queues,
                            jobQueues=[self.job_queue]).get("jobQueues", [])
        if queues:
            return
        envs = self._call("read", f"the compute environment {self.compute_environment!r}",
                          client.describe_compute_environments,
                          computeEnvironments=[self.compute_environment]).get("computeEnvironments", [])
        if not envs:
            request: Dict[str, Any] = {"computeEnvironmentName": self.compute_environment, "state": "ENABLED",
                                       "tags": {TAG_PREFIX + "runtime": self.job_queue}}
            if fargate:
                request.update(type="MANAGED", computeResources={
                    "type": "FARGATE", "maxvCpus": self.max_vcpus, "subnets": self.subnets,
                    "securityGroupIds": self.security_groups})
            else:
                request["type"] = "UNMANAGED"
            if self.service_role:
                request["serviceRole"] = self.service_role
            self._call("create", f"the compute environment {self.compute_environment!r}",
                       client.create_compute_environment, **request)
        self._call("create", f"the job queue {self.job_queue!r}", client.create_job_queue,
                   jobQueueName=self.job_queue, state="ENABLED", priority=1,
                   computeEnvironmentOrder=[{"order": 1, "computeEnvironment": self.compute_environment}],
                   tags={TAG_PREFIX + "runtime": self.job_queue})

    def list_runtimes(self) -> List[Dict[str, Any]]:
        """Active job definitions recorded as cloudpool runtimes (latest revision of each)."""
        latest: Dict[str, Dict[str, Any]] = {}
        kwargs: Dict[str, Any] = {"status": "ACTIVE"}
        while True:
            page = self._call("list", "job definitions", self.client.describe_job_definitions, **kwargs)
            for d in page.get("jobDefinitions", []):
                if TAG_PREFIX + "runtime" not in (d.get("tags") or {}):
                    continue
                if d["jobDefinitionName"] not in latest or d["revision"] > latest[d["jobDefinitionName"]]["revision"]:
                    latest[d["jobDefinitionName"]] = d
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        found = []
        for name, d in sorted(latest.items()):
            props = d.get("containerProperties") or {}
            resources = {r["type"]: r["value"] for r in props.get("resourceRequirements", [])}
            found.append({"name": name, "revision": d["revision"], "image": props.get("image"),
                          "memory_mb": int(resources["MEMORY"]) if "MEMORY" in resources else None,
                          "vcpus": float(resources["VCPU"]) if "VCPU" in resources else None,
                          "timeout": (d.get("timeout") or {}).get("attemptDurationSeconds"),
                          **(metadata_from_tags(d.get("tags") or {}) or {})})
        return found

    def delete_runtime(self, name: str) -> None:
        """Deregister every active revision of job definition ``name`` (the queue stays: it may be shared)."""
        _name("name", name)
        kwargs: Dict[str, Any] = {"jobDefinitionName": name, "status": "ACTIVE"}
        revisions = self._call("read", f"the job definition {name!r}", self.client.describe_job_definitions,
                               **kwargs).get("jobDefinitions", [])
        if not revisions:
            raise FileNotFoundError(f"the AWS Batch job definition {name!r} does not exist (or has no active "
                                    f"revision) in {self.region}; `cloudpool runtime list --backend aws_batch` "
                                    f"shows the deployed ones")
        if not all(TAG_PREFIX + "runtime" in (d.get("tags") or {}) for d in revisions):
            raise PermissionError(f"the AWS Batch job definition {name!r} is not a cloudpool runtime (no "
                                  f"{TAG_PREFIX}runtime tag); deregister it with the AWS console or CLI")
        for d in revisions:
            self._call("delete", f"the job definition {d['jobDefinitionArn']}", self.client.deregister_job_definition,
                       jobDefinition=d["jobDefinitionArn"])
