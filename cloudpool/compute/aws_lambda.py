"""The ``aws_lambda`` backend: each invocation is one asynchronous AWS Lambda invocation.

This module owns the client side of running cloudpool on Lambda: the backend's options
and their checks, sending invocation events with boto3 (``InvocationType="Event"``),
riding out throttling, the version handshake with the deployed function, a watchdog for
invocations that Lambda dropped, and the runtime commands (build a zip package or an
image build context, deploy/list/delete the function). The function's entry point is
``runtime/aws_lambda/handler.py``; it calls ``cloudpool.worker.handle``.

Data flow::

    manager ── invoke(inv, event) ──> queue ──> sender threads ── lambda:Invoke (Event) ──> Lambda
                                                    │  429/throttled: jittered back-off,        │ worker writes
                                                    │  at most retry_seconds                    │ results + status
    manager <── InvocationLost (throttled too long, refused, dropped) ┘                         ▼ to storage
    manager ── polls status in storage (notifies=False) ────────────────────────────────────────┘

``invoke`` only queues: a pool of sender threads (``invoke_concurrency``) makes the API
calls, so the manager never waits on the network. Results never come back through
Lambda; the manager polls storage, as for every backend.

What happens to an ``Invoke`` call, by answer:

- **202**: accepted; a watchdog reports the invocation lost if the manager still waits
  for it after the longest time Lambda could take to start and finish it (the event's
  maximum age in Lambda's queue + the function timeout + a grace period). The manager
  ignores the notice when the batch has finished, so no bookkeeping of completions is
  needed here.
- **throttled** (429 ``TooManyRequestsException`` and other throttling codes) or a
  connection that surely never reached Lambda, or a function not ready yet: tried again
  with jittered exponential back-off for at most ``retry_seconds``, then reported lost
  naming the last error.
- **anything else** (unknown function, access denied, payload too large, ...): reported
  lost at once with Lambda's own message. A read time-out after sending is *not* resent
  (the event may be queued); the watchdog covers it.

Version handshake: ``start`` reads the function's configuration and tags (written by
``deploy_runtime`` from one synchronous metadata invocation) in the background; the first
``invoke`` waits for it. A function with other Python / cloudpickle / cloudpool versions
breaks the executor with ``VersionMismatchError`` naming both sides; a missing function
fails the calls with ``FileNotFoundError`` naming ``cloudpool runtime deploy --backend
aws_lambda``. Nothing is deployed implicitly: deploying needs an execution role and
creates billable resources, which a user should choose to do.

Credentials come only from boto3's chain (environment, profile, instance role); the
function reads storage with its execution role. Events carry no secret (the executor
strips secret storage options before building them).
"""
from __future__ import annotations

import collections
import hashlib
import heapq
import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import cloudpickle

from .. import protocol
from .._version import __version__
from ..errors import VersionMismatchError
from ..storage import split_url
from . import declared
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone
from ._runtime_files import PACKAGE_DIR, RUNTIME_DATA_DIR, copy_package, runtime_file

LOGGER = logging.getLogger("cloudpool")

# ---------------------------------------------------------------------------- Lambda's limits
MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 10240
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 900
#: Largest asynchronous (``Event``) invocation payload. Lambda's documented limit was
#: 256 KiB for years; keeping to it stays valid in every region and account.
PAYLOAD_LIMIT = 256 * 1024
#: Lambda keeps an unprocessed asynchronous event at most this long by default (6 h).
DEFAULT_EVENT_AGE_S = 21600

DEFAULT_MEMORY_MB = 1024
DEFAULT_TIMEOUT_S = 300
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_RETRY_SECONDS = 60.0
#: Event age set by ``deploy_runtime``: an event Lambda could not start within this time
#: is dropped (and the watchdog reports it lost) instead of running hours later.
DEPLOY_EVENT_AGE_S = 300
#: Invoking a function costs tens of milliseconds warm and seconds cold: batches worth a
#: few seconds of work keep that overhead a small share.
BATCH_TARGET_SECONDS = 3.0

HANDLER_MODULE = "cloudpool_lambda_handler"
HANDLER = f"{HANDLER_MODULE}.lambda_handler"
METADATA_REQUEST = {"cloudpool": "metadata"}
TAG_PREFIX = "cloudpool:"
_TAG_VALUE_MAX = 256
_PACKAGE_TAGS_MAX = 30

_THROTTLE_CODES = frozenset({
    "TooManyRequestsException", "ThrottlingException", "Throttling", "ThrottledException",
    "RequestLimitExceeded", "RequestThrottled", "SlowDown", "EC2ThrottledException",
})
#: The function exists but cannot take invocations for a moment (being created/updated).
_NOT_READY_CODES = frozenset({"ResourceNotReadyException", "ResourceConflictException"})
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
_CONNECT_TIMEOUT = 10.0
#: Extra time after the function timeout before an unfinished invocation counts as lost.
_WATCHDOG_GRACE = 30.0
_HANDSHAKE_WAIT = 60.0

_FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FUNCTION_ARN_RE = re.compile(r"^arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:\d{12}:function:[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]+)?$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_ROLE_RE = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
_TAG_VALUE_BAD = re.compile(r"[^A-Za-z0-9 _.:/=+@-]")


def default_function_name() -> str:
    """``cloudpool-py311-cp2_1_0-v0_1_0``: one function per client version triple."""
    v = protocol.versions()
    clean = lambda s: re.sub(r"[^A-Za-z0-9]", "_", s)  # noqa: E731 - tiny local helper
    name = f"cloudpool-py{v['python'].replace('.', '')}-cp{clean(v['cloudpickle'])}-v{clean(v['cloudpool'])}"
    return name[:64]


def _runtime_identifier() -> str:
    """Lambda's managed runtime for this client's Python, e.g. ``python3.11``."""
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


# ---------------------------------------------------------------------------- option checks
def _int_in_range(name: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"the aws_lambda backend's {name!r} must be a whole number of {unit} "
                         f"between {low} and {high}, not {value!r}")
    value = int(value)
    if not low <= value <= high:
        # Rejected, never clamped: a silently changed limit surprises later (OOM, timeouts).
        raise ValueError(f"the aws_lambda backend's {name!r} is {value} {unit}, outside Lambda's "
                         f"range {low}..{high} {unit}; set it within that range")
    return value


def _check_region(region: Any) -> str:
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise ValueError(f"the aws_lambda backend's 'region' must be an AWS region name such as "
                         f"'us-east-1' or 'eu-west-3', not {region!r}")
    return region


def _check_role(role: Any) -> str:
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise ValueError(f"the aws_lambda backend's 'role' must be the ARN of an IAM role the function "
                         f"runs as, like 'arn:aws:iam::123456789012:role/cloudpool-lambda', not {role!r}")
    return role


def _check_function_name(name: Any, option: str = "function_name") -> str:
    if not isinstance(name, str) or not (_FUNCTION_NAME_RE.match(name) or _FUNCTION_ARN_RE.match(name)):
        raise ValueError(f"the aws_lambda backend's {option!r} must be a Lambda function name (1-64 "
                         f"letters, digits, '-' or '_') or function ARN, not {name!r}")
    return name


def _check_endpoint(url: Any) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the aws_lambda backend's 'endpoint_url' must be an http(s):// URL such as "
                         f"'http://127.0.0.1:5000', not {url!r}")
    return url


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def _error_code(exc: botocore.exceptions.ClientError) -> Tuple[str, int, str]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "")), int(status or 0), str(err.get("Message", "")) or str(exc)


class _Invocation:
    __slots__ = ("inv", "body", "job", "batch")

    def __init__(self, inv: str, body: bytes, job: str, batch: int) -> None:
        self.inv = inv
        self.body = body
        self.job = job
        self.batch = batch


class LambdaBackend(ComputeBackend):
    """Runs invocations as asynchronous invocations of one Lambda function."""

    name = "aws_lambda"
    option_names = declared.AWS_LAMBDA.options
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        if opts.get("function_name") and opts.get("runtime") and opts["function_name"] != opts["runtime"]:
            raise ValueError(f"the aws_lambda backend got runtime={opts['runtime']!r} and "
                             f"function_name={opts['function_name']!r}: they name the same deployed "
                             f"function, give one of them")
        # The executor's 'runtime' setting names the deployed function (the runtime).
        self.function_name = _check_function_name(opts.get("function_name") or opts.get("runtime")
                                                  or default_function_name())
        self.memory_mb = _int_in_range("memory_mb", opts.get("memory_mb", DEFAULT_MEMORY_MB),
                                       MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        self.timeout = _int_in_range("timeout", opts.get("timeout", DEFAULT_TIMEOUT_S),
                                     TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        self.role = _check_role(opts["role"]) if opts.get("role") is not None else None
        self.endpoint_url = _check_endpoint(opts["endpoint_url"]) if opts.get("endpoint_url") else None

        package_type = opts.get("package_type", "zip")
        if package_type not in ("zip", "image"):
            raise ValueError(f"the aws_lambda backend's 'package_type' must be 'zip' or 'image', not {package_type!r}")
        self.package_type = package_type
        image_uri = opts.get("image_uri")
        if image_uri is not None and (not isinstance(image_uri, str) or not image_uri):
            raise ValueError(f"the aws_lambda backend's 'image_uri' must be a container image URI "
                             f"(ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG), not {image_uri!r}")
        if image_uri and package_type != "image":
            raise ValueError("the aws_lambda backend got 'image_uri' with package_type 'zip': set "
                             "package_type='image' to deploy a container image, or drop image_uri")
        self.image_uri = image_uri
        architecture = opts.get("architecture", "x86_64")
        if architecture not in ("x86_64", "arm64"):
            raise ValueError(f"the aws_lambda backend's 'architecture' must be 'x86_64' or 'arm64', not {architecture!r}")
        self.architecture = architecture

        self.max_concurrency = max_workers if max_workers is not None else DEFAULT_MAX_CONCURRENCY
        concurrency = opts.get("invoke_concurrency", min(self.max_concurrency, 32))
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"the aws_lambda backend's 'invoke_concurrency' (threads calling Invoke at "
                             f"once) must be an integer >= 1, not {concurrency!r}")
        self.invoke_concurrency = concurrency
        retry_seconds = opts.get("retry_seconds", DEFAULT_RETRY_SECONDS)
        if isinstance(retry_seconds, bool) or not isinstance(retry_seconds, (int, float)) or retry_seconds < 0:
            raise ValueError(f"the aws_lambda backend's 'retry_seconds' (how long throttled invocations "
                             f"are retried) must be a number of seconds >= 0, not {retry_seconds!r}")
        self.retry_seconds = float(retry_seconds)

        region = opts.get("region")
        if region is None:
            # boto3's own resolution (AWS_REGION / AWS_DEFAULT_REGION / profile): nothing new to learn.
            region = boto3.session.Session().region_name
            if region is None:
                raise ValueError("the aws_lambda backend needs an AWS region: pass region='us-east-1' "
                                 "(config 'aws_lambda: {region: ...}') or set AWS_DEFAULT_REGION")
        self.region = _check_region(region)

        # Checked when calls are invoked, not here: the runtime commands (deploy, list...)
        # build this backend with whatever storage is configured and need none.
        self._storage_problem: Optional[str] = None
        if storage_url and split_url(storage_url)[0] == "file":
            self._storage_problem = (
                f"the aws_lambda backend runs calls in Lambda, which cannot read this machine's "
                f"directory {storage_url!r}: set storage to an object store the function can reach "
                f"(s3://bucket/prefix)")

        self._client_obj: Any = None
        self._client_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: Deque[_Invocation] = collections.deque()
        self._threads: List[threading.Thread] = []
        self._idle = 0
        self._closing = False
        self._handshake_done = threading.Event()
        self._handshake_started = False
        self._refused: Optional[BaseException] = None
        self._runtime: Optional[Dict[str, Any]] = None
        self._function_timeout = float(self.timeout)
        self._event_age = float(DEFAULT_EVENT_AGE_S)
        # Watchdog: (deadline, inv) pairs, earliest first.
        self._deadlines: List[Tuple[float, str]] = []
        self._watchdog: Optional[threading.Thread] = None
        #: accepted / throttled (refusals retried) / lost invocations, for describe().
        self.counts: "collections.Counter[str]" = collections.Counter()

    # ------------------------------------------------------------------ boto3
    @property
    def client(self) -> Any:
        """One Lambda client (boto3 clients are thread-safe; sessions are not)."""
        with self._client_lock:
            if self._client_obj is None:
                config = botocore.config.Config(
                    region_name=self.region,
                    # Retries are ours: botocore would resend throttled Invokes without a
                    # bound we control, and resend after read time-outs (a duplicate run).
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=_CONNECT_TIMEOUT,
                    # An Event invoke answers at once on Lambda; moto answers only after
                    # running the function, so allow the function's own time limit.
                    read_timeout=self.timeout + 60,
                    max_pool_connections=self.invoke_concurrency + 4,
                    user_agent_extra=f"cloudpool/{__version__}",
                )
                session = boto3.session.Session(region_name=self.region)
                self._client_obj = session.client("lambda", endpoint_url=self.endpoint_url, config=config)
            return self._client_obj

    # ------------------------------------------------------------------ declared
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_concurrency=self.max_concurrency,
            # One more than can run keeps a sender busy while the manager builds the next batch.
            max_in_flight=self.max_concurrency + 1,
            max_timeout=float(self.timeout),
            memory_mb=self.memory_mb,
            payload_limit=PAYLOAD_LIMIT,
            can_cancel=False,  # Lambda cannot stop one asynchronous invocation
            notifies=False,
            batch_target_seconds=BATCH_TARGET_SECONDS,
            remote=True,
        )

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "function": self.function_name, "region": self.region,
                "memory_mb": self.memory_mb, "timeout": self.timeout,
                "max_concurrency": self.max_concurrency, "runtime": self._runtime,
                "invocations": dict(self.counts)}  # a snapshot

    # ------------------------------------------------------------------ manager side
    def start(self, notify) -> None:
        super().start(notify)
        self._start_handshake()

    def _start_handshake(self) -> None:
        with self._cond:
            if self._handshake_started:
                return
            self._handshake_started = True
        threading.Thread(target=self._handshake, name="cloudpool-lambda-handshake", daemon=True).start()

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        if self._storage_problem:
            raise ValueError(self._storage_problem)
        body = protocol.encode_event(event)
        if len(body) > PAYLOAD_LIMIT:
            raise ValueError(
                f"the invocation event is {len(body)} bytes, more than Lambda accepts for an "
                f"asynchronous invocation ({PAYLOAD_LIMIT}); lower the 'inline_limit' setting so "
                f"arguments travel through storage")
        self._start_handshake()  # in case start() was not called (direct use)
        # Before the first invocation, the function's versions (DESIGN). Bounded by the
        # API calls' own time-outs.
        self._handshake_done.wait(_HANDSHAKE_WAIT)
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            self._refuse_version(inv, event, refused)
            return
        if refused is not None:
            raise type(refused)(str(refused))
        if not self._handshake_done.is_set():
            raise TimeoutError(f"could not read the Lambda function {self.function_name!r} within "
                               f"{_HANDSHAKE_WAIT:g} s; check 'endpoint_url', the network and credentials")
        job = _Invocation(inv, body, event["job"], event["batch"])
        with self._cond:
            if self._closing:
                raise RuntimeError("the aws_lambda backend is shut down")
            self._queue.append(job)
            self._cond.notify()
            self._start_threads_locked()

    def shutdown(self, wait: bool = True) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
            threads = list(self._threads)
            watchdog = self._watchdog
        if wait:
            # Idle senders exit at once; one blocked in an API call belongs to an invocation
            # nobody waits for any more: a daemon, not waited for beyond a moment.
            deadline = time.monotonic() + 1.0
            for t in threads + ([watchdog] if watchdog else []):
                t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ handshake
    def _handshake(self) -> None:
        try:
            self._runtime = self._check_function()
        except (FileNotFoundError, PermissionError, VersionMismatchError, RuntimeError, OSError, ValueError) as exc:
            self._refused = exc
        except Exception as exc:  # noqa: BLE001 - any failure must reach the calls, not hang them
            LOGGER.exception("cloudpool: reading the Lambda function failed")
            self._refused = RuntimeError(f"could not read the Lambda function {self.function_name!r}: {_short(exc)}")
        finally:
            self._handshake_done.set()

    def _check_function(self) -> Dict[str, Any]:
        """Read the function, compare its runtime metadata with this client; raise on refusal."""
        try:
            fn = self.client.get_function(FunctionName=self.function_name)
        except botocore.exceptions.ClientError as exc:
            raise self._api_error(exc, "read") from None
        except botocore.exceptions.NoCredentialsError as exc:
            raise PermissionError(f"no AWS credentials for the aws_lambda backend ({exc}); configure "
                                  f"them as for boto3 (AWS_ACCESS_KEY_ID..., a profile or a role)") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ConnectionError(f"could not reach the Lambda API ({_short(exc)}); check 'endpoint_url', "
                                  f"'region' and the network") from None
        config = fn.get("Configuration", {})
        self._function_timeout = float(config.get("Timeout") or self.timeout)
        try:
            age = self.client.get_function_event_invoke_config(FunctionName=self.function_name)
            self._event_age = float(age.get("MaximumEventAgeInSeconds") or DEFAULT_EVENT_AGE_S)
        except botocore.exceptions.ClientError:
            self._event_age = float(DEFAULT_EVENT_AGE_S)  # none configured: Lambda's default
        meta = metadata_from_tags(fn.get("Tags") or {})
        if meta is None:
            # Deployed by other tools: ask the function itself, once.
            meta = self._invoke_metadata()
        mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
        if mismatch is None and meta.get("protocol", protocol.PROTOCOL_VERSION) != protocol.PROTOCOL_VERSION:
            mismatch = (f"the runtime does not match this client: protocol {protocol.PROTOCOL_VERSION} "
                        f"on the client but {meta.get('protocol')} on the worker")
        if mismatch:
            raise VersionMismatchError(f"the Lambda function {self.function_name!r} ({self.region}): {mismatch}")
        return meta

    def _api_error(self, exc: botocore.exceptions.ClientError, verb: str) -> BaseException:
        code, status, message = _error_code(exc)
        if code == "ResourceNotFoundException" or status == 404:
            return FileNotFoundError(
                f"the Lambda function {self.function_name!r} does not exist in {self.region}: deploy the "
                f"runtime with `cloudpool runtime deploy --backend aws_lambda` (or set the aws_lambda "
                f"option 'function_name' to a deployed cloudpool runtime)")
        if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException") \
                or status in (401, 403):
            return PermissionError(f"AWS refused to {verb} the Lambda function {self.function_name!r}: "
                                   f"{code}: {message}")
        return RuntimeError(f"could not {verb} the Lambda function {self.function_name!r}: {code}: {message}")

    def _refuse_version(self, inv: str, event: Dict[str, Any], refused: VersionMismatchError) -> None:
        """Report a mismatch as a worker would: a fatal "version" status, so the manager
        breaks the executor with ``VersionMismatchError`` naming both sides."""
        keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
        self._notify(SegmentDone({
            "protocol": protocol.PROTOCOL_VERSION, "job": event["job"], "batch": event["batch"],
            "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None,
            "last": True, "fatal": {"kind": "version", "message": str(refused)},
            "worker": {"id": "aws-lambda-client-handshake", "versions": {}},
            # Not a storage key: the refusal happened here, before anything was sent.
            "key": keys.batch_status_prefix(event["job"], event["batch"]) + "refused",
        }))

    # ------------------------------------------------------------------ senders
    def _start_threads_locked(self) -> None:
        while self._idle < len(self._queue) and len(self._threads) < self.invoke_concurrency and not self._closing:
            t = threading.Thread(target=self._send_loop, name=f"cloudpool-lambda-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            self._idle += 1
            t.start()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                self._idle -= 1
                job = self._queue.popleft()
            try:
                self._send(job)
            except Exception as exc:  # noqa: BLE001 - a bug here must not hang the batch's futures
                LOGGER.exception("cloudpool: the aws_lambda backend failed while invoking %s", job.inv)
                self._notify(InvocationLost(job.inv, f"the aws_lambda backend failed while invoking it: "
                                                     f"{exc!r}", error=exc))
            with self._cond:
                self._idle += 1

    def _count(self, what: str) -> None:
        with self._cond:
            self.counts[what] += 1

    def _backoff(self, attempt: int) -> float:
        return min(_BACKOFF_MAX, _BACKOFF_FIRST * (2 ** attempt)) * random.uniform(0.5, 1.5)

    def _send(self, job: _Invocation) -> None:
        """Invoke until Lambda accepted the event or it must be reported lost."""
        started = time.monotonic()
        give_up = started + self.retry_seconds
        attempt = 0
        while True:
            if self._closing:
                return  # the manager is gone; nobody waits for a notice
            attempt += 1
            sent_at = time.monotonic()
            try:
                resp = self.client.invoke(FunctionName=self.function_name, InvocationType="Event",
                                          Payload=job.body)
            except botocore.exceptions.ClientError as exc:
                code, status, message = _error_code(exc)
                retryable = code in _THROTTLE_CODES or status == 429 or code in _NOT_READY_CODES
                problem = f"{code or status}: {message}"
                if retryable:
                    self._count("throttled")
                else:
                    self._count("lost")
                    hint = ""
                    if code == "ResourceNotFoundException":
                        hint = "; deploy it with `cloudpool runtime deploy --backend aws_lambda`"
                    # Mapped (FileNotFoundError, PermissionError...): the manager gives the
                    # calls this error and does not retry a refusal.
                    error = self._api_error(exc, "invoke")
                    error.__cause__ = exc
                    self._notify(InvocationLost(job.inv, f"Lambda refused to invoke {self.function_name!r}: "
                                                         f"{problem}{hint}", error=error))
                    return
            except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError) as exc:
                problem = f"cannot connect to the Lambda API ({_short(exc)})"  # surely never sent
            except botocore.exceptions.ReadTimeoutError as exc:
                # Sent, and maybe queued by Lambda: resending could run the batch twice.
                LOGGER.warning("cloudpool: no answer to the Invoke of %s (%s); the watchdog reports it "
                               "if it never finishes", job.inv, exc)
                self._watch(job.inv, sent_at)
                return
            except botocore.exceptions.BotoCoreError as exc:
                self._notify(InvocationLost(job.inv, f"could not invoke {self.function_name!r}: {_short(exc)}",
                                            error=exc))
                return
            else:
                function_error = resp.get("FunctionError")
                self._count("accepted")
                if function_error:
                    # Only emulators run the function before answering an Event invoke;
                    # when one says it failed, say so now rather than at the watchdog.
                    payload = resp["Payload"].read()[:2000].decode("utf-8", "replace")
                    self._notify(InvocationLost(job.inv, f"the Lambda function {self.function_name!r} "
                                                         f"failed ({function_error}): {payload}"))
                    return
                resp["Payload"].close()
                self._watch(job.inv, sent_at)
                return
            now = time.monotonic()
            if now >= give_up:
                self._count("lost")
                self._notify(InvocationLost(
                    job.inv, f"Lambda kept refusing the invocation of {self.function_name!r} for "
                             f"{now - started:.1f} s ({attempt} tries, retry_seconds={self.retry_seconds:g}); "
                             f"last: {problem}. Raise the function's concurrency limit or lower max_workers"))
                return
            time.sleep(min(self._backoff(attempt), max(0.0, give_up - now)))

    # ------------------------------------------------------------------ watchdog
    def _watch(self, inv: str, sent_at: float) -> None:
        """Report ``inv`` lost once Lambda can no longer be running it.

        After the event's maximum age in Lambda's queue plus the function timeout, the
        invocation either finished or never will. The manager ignores the notice for
        batches that finished, so nothing needs to be removed from here.
        """
        deadline = sent_at + self._event_age + self._function_timeout + _WATCHDOG_GRACE
        with self._cond:
            heapq.heappush(self._deadlines, (deadline, inv))
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch_loop, name="cloudpool-lambda-watchdog",
                                                  daemon=True)
                self._watchdog.start()
            self._cond.notify_all()

    def _watch_loop(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
                now = time.monotonic()
                due = []
                while self._deadlines and self._deadlines[0][0] <= now:
                    due.append(heapq.heappop(self._deadlines)[1])
                if not due:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._cond.wait(wait)
                    continue
            for inv in due:
                self._notify(InvocationLost(
                    inv, f"the Lambda function {self.function_name!r} wrote no final status within its "
                         f"timeout ({self._function_timeout:g} s) plus the event's queueing time: it timed "
                         f"out, ran out of memory ({self.memory_mb} MB) or crashed; see its CloudWatch logs"))

    # ------------------------------------------------------------------ runtimes
    def _invoke_metadata(self) -> Dict[str, Any]:
        """One synchronous invocation answering the runtime's versions and packages."""
        try:
            resp = self.client.invoke(FunctionName=self.function_name, InvocationType="RequestResponse",
                                      Payload=json.dumps(METADATA_REQUEST).encode())
        except botocore.exceptions.ClientError as exc:
            raise self._api_error(exc, "invoke") from None
        payload = resp["Payload"].read()
        if resp.get("FunctionError"):
            raise RuntimeError(f"the Lambda function {self.function_name!r} failed to answer its runtime "
                               f"metadata ({resp['FunctionError']}): {payload[:2000].decode('utf-8', 'replace')}")
        try:
            meta = json.loads(payload)
            meta["versions"]["python"]
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"the Lambda function {self.function_name!r} did not answer cloudpool runtime "
                               f"metadata (it answered {payload[:300]!r}); is its handler {HANDLER}?") from None
        return meta

    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        """Build the package for function ``name``: a zip, or (package_type image) a build context.

        The zip holds this client's own cloudpool and cloudpickle (so their versions match
        by construction), the entry point, and ``requirements`` installed with pip. boto3
        is not included: Lambda's Python runtimes provide it.
        """
        _check_function_name(name, "name")
        if isinstance(requirements, str):
            raise TypeError("requirements must be a list of pip requirement strings, not one string")
        out_dir = output or _build_dir()
        os.makedirs(out_dir, exist_ok=True)
        if self.package_type == "image":
            return _build_image_context(name, list(requirements), os.path.join(out_dir, f"{name}-image"))
        path = os.path.join(out_dir, f"{name}.zip")
        data = build_zip(list(requirements))
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return {"name": name, "package_type": "zip", "path": path, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "handler": HANDLER,
                "versions": protocol.versions(), "requirements": list(requirements)}

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """Create or update function ``name`` (default: this backend's), then record its metadata.

        Uses the package ``build_runtime`` left in the build directory (built now with no
        extra requirements if there is none). Returns the metadata stored in its tags.
        """
        name = _check_function_name(name or self.function_name, "name")
        memory = _int_in_range("memory_mb", memory_mb if memory_mb is not None else self.memory_mb,
                               MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        fn_timeout = _int_in_range("timeout", timeout if timeout is not None else self.timeout,
                                   TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        if self.role is None:
            raise ValueError("deploying a Lambda function needs the IAM role it runs as: set the aws_lambda "
                             "option 'role' to its ARN (arn:aws:iam::ACCOUNT:role/NAME); the role must allow "
                             "reading and writing the executor's storage bucket")
        if self.package_type == "image":
            if not self.image_uri:
                raise ValueError("package_type 'image' deploys an image you pushed: set the aws_lambda option "
                                 "'image_uri' (build it from `cloudpool runtime build` output)")
            code: Dict[str, Any] = {"ImageUri": self.image_uri}
        else:
            path = os.path.join(_build_dir(), f"{name}.zip")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    zip_bytes = f.read()
            else:
                zip_bytes = build_zip([])
            code = {"ZipFile": zip_bytes}

        client = self.client
        settings: Dict[str, Any] = {"Role": self.role, "MemorySize": memory, "Timeout": fn_timeout,
                                    "Description": f"cloudpool {__version__} runtime"}
        if self.package_type == "zip":
            settings.update(Runtime=_runtime_identifier(), Handler=HANDLER)
        previous = self.function_name
        self.function_name = name
        try:
            try:
                existing = client.get_function(FunctionName=name)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc)[0] != "ResourceNotFoundException":
                    raise self._api_error(exc, "read") from None
                existing = None
            if existing is None:
                client.create_function(FunctionName=name, PackageType="Image" if self.package_type == "image" else "Zip",
                                       Code=code, Architectures=[self.architecture], Publish=False,
                                       Tags={TAG_PREFIX + "runtime": name}, **settings)
                self._wait(name, "function_active_v2")
            else:
                client.update_function_code(FunctionName=name, Publish=False, **code)
                self._wait(name, "function_updated_v2")
                client.update_function_configuration(FunctionName=name, **settings)
                self._wait(name, "function_updated_v2")
            # No retries by Lambda: a failed batch is re-queued by the client, which knows
            # which calls finished; a retry would run the finished ones again.
            client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0,
                                                    MaximumEventAgeInSeconds=DEPLOY_EVENT_AGE_S)
            meta = self._invoke_metadata()
            arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
            client.tag_resource(Resource=arn, Tags=metadata_tags(name, meta))
        except botocore.exceptions.ClientError as exc:
            raise self._api_error(exc, "deploy") from None
        finally:
            self.function_name = previous
        meta = dict(meta, name=name, memory_mb=memory, timeout=fn_timeout, role=self.role,
                    package_type=self.package_type, region=self.region)
        mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
        if mismatch:
            LOGGER.warning("cloudpool: the deployed Lambda runtime %r differs from this client: %s", name, mismatch)
        return meta

    def _wait(self, name: str, waiter_name: str) -> None:
        try:
            self.client.get_waiter(waiter_name).wait(FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
        except botocore.exceptions.WaiterError as exc:
            raise RuntimeError(f"the Lambda function {name!r} did not become ready: {exc}") from None

    def list_runtimes(self) -> List[Dict[str, Any]]:
        """Functions deployed as cloudpool runtimes (tagged ``cloudpool:runtime``), with their metadata."""
        found = []
        try:
            for page in self.client.get_paginator("list_functions").paginate():
                for fn in page.get("Functions", []):
                    if fn.get("PackageType", "Zip") == "Zip" and fn.get("Handler") != HANDLER:
                        continue  # not ours: skip the tag look-up
                    tags = self.client.list_tags(Resource=fn["FunctionArn"]).get("Tags", {})
                    if TAG_PREFIX + "runtime" not in tags:
                        continue
                    meta = metadata_from_tags(tags) or {}
                    found.append({"name": fn["FunctionName"], "memory_mb": fn.get("MemorySize"),
                                  "timeout": fn.get("Timeout"), "role": fn.get("Role"),
                                  "package_type": fn.get("PackageType", "Zip").lower(),
                                  "runtime": fn.get("Runtime"), "last_modified": fn.get("LastModified"),
                                  **meta})
        except botocore.exceptions.ClientError as exc:
            raise self._api_error(exc, "list") from None
        return sorted(found, key=lambda r: r["name"])

    def delete_runtime(self, name: str) -> None:
        _check_function_name(name, "name")
        previous, self.function_name = self.function_name, name
        try:
            try:
                fn = self.client.get_function(FunctionName=name)
            except botocore.exceptions.ClientError as exc:
                raise self._api_error(exc, "read") from None
            if TAG_PREFIX + "runtime" not in (fn.get("Tags") or {}):
                raise PermissionError(f"the Lambda function {name!r} is not a cloudpool runtime (no "
                                      f"{TAG_PREFIX}runtime tag); delete it with the AWS console or CLI")
            try:
                self.client.delete_function(FunctionName=name)
            except botocore.exceptions.ClientError as exc:
                raise self._api_error(exc, "delete") from None
        finally:
            self.function_name = previous


# ---------------------------------------------------------------------------- metadata in tags
def metadata_tags(name: str, meta: Dict[str, Any]) -> Dict[str, str]:
    """Tags recording a runtime's metadata; the package list is spread over several tags
    because a tag value holds at most 256 characters."""
    versions = meta.get("versions") or {}
    tags = {TAG_PREFIX + "runtime": name, TAG_PREFIX + "protocol": str(meta.get("protocol", ""))}
    for key in ("python", "cloudpickle", "cloudpool"):
        tags[TAG_PREFIX + key] = _TAG_VALUE_BAD.sub("_", str(versions.get(key, "")))[:_TAG_VALUE_MAX]
    items = [f"{k}=={v}" for k, v in (meta.get("packages") or {}).items()]
    chunks: List[str] = []
    for item in items:
        item = _TAG_VALUE_BAD.sub("_", item)[:_TAG_VALUE_MAX]
        if chunks and len(chunks[-1]) + 1 + len(item) <= _TAG_VALUE_MAX:
            chunks[-1] += " " + item
        else:
            chunks.append(item)
    if len(chunks) > _PACKAGE_TAGS_MAX:
        LOGGER.warning("cloudpool: the runtime lists too many packages to record them all in tags")
        chunks = chunks[:_PACKAGE_TAGS_MAX]
    for i, chunk in enumerate(chunks):
        tags[f"{TAG_PREFIX}packages:{i:02d}"] = chunk
    return tags


def metadata_from_tags(tags: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The metadata ``metadata_tags`` wrote, or None when the function has none."""
    if TAG_PREFIX + "python" not in tags:
        return None
    packages: Dict[str, str] = {}
    for key in sorted(k for k in tags if k.startswith(TAG_PREFIX + "packages:")):
        for item in tags[key].split():
            pkg, _, version = item.partition("==")
            packages[pkg] = version
    try:
        proto: Any = int(tags.get(TAG_PREFIX + "protocol", ""))
    except ValueError:
        proto = tags.get(TAG_PREFIX + "protocol")
    return {"protocol": proto,
            "versions": {k: tags.get(TAG_PREFIX + k) for k in ("python", "cloudpickle", "cloudpool")},
            "packages": packages}


# ---------------------------------------------------------------------------- packaging
def _build_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cloudpool", "aws_lambda")


def handler_source_path() -> str:
    """``runtime/aws_lambda/handler.py``, from the installed package or the source checkout."""
    return runtime_file("aws_lambda", "handler.py")


def _add_tree(zf: zipfile.ZipFile, src: str, arc_root: str, skip: Sequence[str] = ()) -> None:
    """Add the tree ``src`` under ``arc_root``; ``skip`` names directories left out at its top."""
    for dirpath, dirnames, filenames in os.walk(src):
        top = dirpath == src
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not (top and d in skip))
        for fname in sorted(filenames):
            if fname.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(dirpath, fname)
            arc = os.path.join(arc_root, os.path.relpath(full, src))
            _add_file(zf, full, arc)


def _add_file(zf: zipfile.ZipFile, full: str, arc: str) -> None:
    info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))  # fixed: same inputs, same zip
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(full, "rb") as f:
        zf.writestr(info, f.read())


def _add_text(zf: zipfile.ZipFile, arc: str, text: str) -> None:
    info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, text)


def build_zip(requirements: Sequence[str] = ()) -> bytes:
    """The function package: entry point, this client's cloudpool and cloudpickle, requirements."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_file(zf, handler_source_path(), f"{HANDLER_MODULE}.py")
        _add_tree(zf, PACKAGE_DIR, "cloudpool", skip=(RUNTIME_DATA_DIR,))
        _add_text(zf, f"cloudpool-{__version__}.dist-info/METADATA",
                  f"Metadata-Version: 2.1\nName: cloudpool\nVersion: {__version__}\n")
        # cloudpickle exactly as the client has it: the same version by construction.
        _add_tree(zf, os.path.dirname(os.path.abspath(cloudpickle.__file__)), "cloudpickle")
        _add_text(zf, f"cloudpickle-{cloudpickle.__version__}.dist-info/METADATA",
                  f"Metadata-Version: 2.1\nName: cloudpickle\nVersion: {cloudpickle.__version__}\n")
        if requirements:
            with tempfile.TemporaryDirectory(prefix="cloudpool-lambda-build-") as target:
                _pip_install(list(requirements), target)
                for entry in sorted(os.listdir(target)):
                    full = os.path.join(target, entry)
                    if entry in ("bin", "__pycache__") or entry.startswith(("cloudpickle", "cloudpool")):
                        continue  # the client's own copies above win
                    if os.path.isdir(full):
                        _add_tree(zf, full, entry)
                    else:
                        _add_file(zf, full, entry)
    return buf.getvalue()


def _pip_install(requirements: List[str], target: str) -> None:
    # cloudpickle pinned to the client's: a requirement must not pull in another one.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(f"cloudpickle=={cloudpickle.__version__}\n")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
             "--no-compile", "--target", target, "-c", constraints.name, *requirements],
            capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(constraints.name)
    if proc.returncode != 0:
        raise RuntimeError(f"pip could not install the runtime's requirements {requirements}:\n"
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")


def _build_image_context(name: str, requirements: List[str], context: str) -> Dict[str, Any]:
    """A docker build context for a container-image function (built and pushed by the user)."""
    if os.path.isdir(context):
        shutil.rmtree(context)
    os.makedirs(context)
    shutil.copy(runtime_file("aws_lambda", "Dockerfile"), os.path.join(context, "Dockerfile"))
    shutil.copy(handler_source_path(), os.path.join(context, f"{HANDLER_MODULE}.py"))
    copy_package(os.path.join(context, "cloudpool"))
    with open(os.path.join(context, "requirements.txt"), "w") as f:
        f.write("\n".join([f"cloudpickle=={cloudpickle.__version__}", *requirements]) + "\n")
    v = protocol.versions()
    command = (f"docker build --build-arg PYTHON_VERSION={v['python']} -t IMAGE_URI {context} && "
               f"docker push IMAGE_URI")
    return {"name": name, "package_type": "image", "context": context, "command": command,
            "versions": v, "requirements": requirements}
