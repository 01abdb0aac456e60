"""The ``aliyun_fc`` backend: each invocation is one asynchronous Alibaba Function Compute 3.0 call.

This module owns the client side of running cloudpool on Function Compute 3.0: options
and their checks, ``InvokeFunction`` with ``X-Fc-Invocation-Type: Async`` through the
official SDK (``alibabacloud_fc20230330``, which signs every request with the AccessKey),
throttling answers (HTTP 429, ``ResourceThrottled`` / ``ResourceExhausted``) backed off
within ``retry_seconds``, the version check before the first call, and the runtime
commands (``CreateFunction`` / ``UpdateFunction`` with the zip, ``ListFunctions``,
``DeleteFunction``). The function side is ``runtime/aliyun_fc/index.py``.

The deployed function records the runtime's versions in its environment variable
``CLOUDPOOL_RUNTIME``; ``start`` reads it with ``GetFunction`` and refuses a runtime with
other versions (``VersionMismatchError``) or a missing function (``FileNotFoundError``
naming ``cloudpool runtime deploy --backend aliyun_fc``).

Credentials (AccessKey pair, optional STS token) come from the options or the
``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``ALIBABA_CLOUD_ACCESS_KEY_SECRET`` /
``ALIBABA_CLOUD_SECURITY_TOKEN`` environment; they only sign requests and never enter
events. Function Compute queues an accepted async call itself; this client does not watch
it: a batch whose function crashed is found by the manager's call timeout.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import re
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import cloudpickle

from .. import protocol
from ..errors import VersionMismatchError
from ..storage import split_url
from . import declared
from .aws_lambda import _add_file, _add_tree
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone
from ._runtime_files import PACKAGE_DIR, RUNTIME_DATA_DIR, runtime_file

LOGGER = logging.getLogger("cloudpool")

MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 32768
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 86400
#: Async invocation payload limit of Function Compute 3.0 (128 KB).
PAYLOAD_LIMIT = 128 * 1024
DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S = 1024, 600
DEFAULT_CONCURRENCY, DEFAULT_RETRY_SECONDS = 16, 60.0
DEFAULT_FUNCTION = "cloudpool"
DEFAULT_RUNTIME = "python3.10"
ENV_META = "CLOUDPOOL_RUNTIME"
DEPLOY = "`cloudpool runtime deploy --backend aliyun_fc`"
_THROTTLED = frozenset({"ResourceThrottled", "ResourceExhausted", "TooManyRequests", "Throttling"})
_REGION = re.compile(r"^[a-z]{2}-[a-z0-9-]+$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


def _fail(option: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"the aliyun_fc backend's {option!r} must be {expected}, not {value!r}")


def _int(option: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"the aliyun_fc backend's {option!r} is {value!r}: Function Compute 3.0 accepts "
                         f"{low}..{high} {unit}; set it within that range")
    return value


def build_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add_file(zf, runtime_file("aliyun_fc", "index.py"), "index.py")
        _add_tree(zf, PACKAGE_DIR, "cloudpool", skip=(RUNTIME_DATA_DIR,))
        _add_tree(zf, os.path.dirname(os.path.abspath(cloudpickle.__file__)), "cloudpickle")
    return buf.getvalue()


class AliyunFcBackend(ComputeBackend):
    """Runs invocations as asynchronous invocations of one Function Compute 3.0 function."""

    name = "aliyun_fc"
    option_names = declared.ALIYUN_FC.options
    secret_option_names = declared.ALIYUN_FC.secrets
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        self.function_name = opts.get("function_name") or opts.get("runtime") or DEFAULT_FUNCTION
        if not isinstance(self.function_name, str) or not _NAME.match(self.function_name):
            raise _fail("function_name", "1-128 letters, digits, '_' or '-', starting with a letter or '_'",
                        self.function_name)
        region = opts.get("region") or os.environ.get("ALIBABA_CLOUD_REGION_ID") or None
        if region is None:
            raise ValueError("the aliyun_fc backend needs a region: pass region='cn-hangzhou' (config "
                             "'aliyun_fc: {region: ...}') or set ALIBABA_CLOUD_REGION_ID")
        if not isinstance(region, str) or not _REGION.match(region):
            raise _fail("region", "a region id such as 'cn-hangzhou' or 'ap-southeast-1'", region)
        self.region = region
        self.account_id = opts.get("account_id") or os.environ.get("ALIBABA_CLOUD_ACCOUNT_ID")
        self.endpoint = opts.get("endpoint")
        if self.endpoint is None:
            if not self.account_id:
                raise ValueError("the aliyun_fc backend needs the account id for its endpoint "
                                 "(ACCOUNT.REGION.fc.aliyuncs.com): set 'account_id' or ALIBABA_CLOUD_ACCOUNT_ID, "
                                 "or give 'endpoint'")
            self.endpoint = f"{self.account_id}.{region}.fc.aliyuncs.com"
        self.memory_mb = _int("memory_mb", opts.get("memory_mb", DEFAULT_MEMORY_MB), MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        if self.memory_mb % 64:
            raise ValueError(f"the aliyun_fc backend's 'memory_mb' is {self.memory_mb}: Function Compute needs a "
                             f"multiple of 64 MB")
        self.timeout = _int("timeout", opts.get("timeout", DEFAULT_TIMEOUT_S), TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        self.concurrency = _int("concurrency", opts.get("concurrency", DEFAULT_CONCURRENCY), 1, 1000, "threads")
        retry = opts.get("retry_seconds", DEFAULT_RETRY_SECONDS)
        if isinstance(retry, bool) or not isinstance(retry, (int, float)) or retry < 0:
            raise _fail("retry_seconds", "a number of seconds >= 0", retry)
        self.retry_seconds = float(retry)
        self.role = opts.get("role")
        if self.role is not None and (not isinstance(self.role, str) or not self.role.startswith("acs:ram::")):
            raise _fail("role", "a RAM role ARN like 'acs:ram::1234567890:role/cloudpool-fc'", self.role)
        self.runtime_version = opts.get("runtime_version", DEFAULT_RUNTIME)
        self.protocol = opts.get("protocol", "https")
        if self.protocol not in ("https", "http"):
            raise _fail("protocol", "'https' (or 'http' for a local endpoint)", self.protocol)
        self._key_id = opts.get("access_key_id") or os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID")
        self._key_secret = opts.get("access_key_secret") or os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        self._token = opts.get("security_token") or os.environ.get("ALIBABA_CLOUD_SECURITY_TOKEN")
        if not (self._key_id and self._key_secret):
            raise PermissionError("the aliyun_fc backend needs an AccessKey: set ALIBABA_CLOUD_ACCESS_KEY_ID and "
                                  "ALIBABA_CLOUD_ACCESS_KEY_SECRET (or the options access_key_id/access_key_secret)")
        self.max_concurrency = max_workers if max_workers is not None else 64
        self._storage_problem = None
        if storage_url and split_url(storage_url)[0] == "file":
            self._storage_problem = (f"the aliyun_fc backend runs calls in Function Compute, which cannot read this "
                                     f"machine's directory {storage_url!r}: use an object store (oss via s3://...)")
        self._client_obj: Any = None
        self._lock = threading.Lock()
        self._checked = False
        self._refused: Optional[BaseException] = None
        self._runtime: Optional[Dict[str, Any]] = None
        self._pool: Optional[ThreadPoolExecutor] = None
        self._closing = False
        self.throttled = 0

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client_obj is None:
                try:
                    from alibabacloud_fc20230330.client import Client
                    from alibabacloud_tea_openapi import models as open_api_models
                except ImportError:
                    raise ImportError("the aliyun_fc backend needs the Function Compute SDK: pip install "
                                      "'cloudpool[aliyun]'") from None
                config = open_api_models.Config(access_key_id=self._key_id, access_key_secret=self._key_secret,
                                                security_token=self._token, endpoint=self.endpoint,
                                                region_id=self.region, protocol=self.protocol,
                                                read_timeout=60_000, connect_timeout=10_000)
                self._client_obj = Client(config)
            return self._client_obj

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_concurrency=self.max_concurrency, max_in_flight=self.max_concurrency + 1,
                            max_timeout=float(self.timeout), memory_mb=self.memory_mb, payload_limit=PAYLOAD_LIMIT,
                            can_cancel=False, notifies=False, batch_target_seconds=3.0, remote=True)

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "function": self.function_name, "region": self.region,
                "memory_mb": self.memory_mb, "timeout": self.timeout, "runtime": self._runtime}

    @staticmethod
    def _code(exc: BaseException) -> tuple:
        status = getattr(exc, "status_code", None) or (getattr(exc, "data", None) or {}).get("statusCode")
        return str(getattr(exc, "code", "") or ""), int(status or 0), str(getattr(exc, "message", "") or exc)

    def _error(self, exc: BaseException, verb: str) -> BaseException:
        code, status, message = self._code(exc)
        if status == 404 or code in ("FunctionNotFound", "ResourceNotFound"):
            return FileNotFoundError(f"the Function Compute function {self.function_name!r} does not exist in "
                                     f"{self.region}: deploy it with {DEPLOY}")
        if status in (401, 403) or code in ("InvalidAccessKeyId", "SignatureNotMatch", "AccessDenied",
                                            "InvalidAccessKeyId.NotFound"):
            return PermissionError(f"Function Compute refused to {verb} {self.function_name!r}: {code}: {message}")
        return RuntimeError(f"could not {verb} the function {self.function_name!r}: {code or status}: {message}")

    # ------------------------------------------------------------------ handshake
    def _check(self) -> None:
        with self._lock:
            if self._checked:
                return
        from alibabacloud_fc20230330 import models
        try:
            try:
                fn = self.client.get_function(self.function_name, models.GetFunctionRequest())
            except Exception as exc:  # noqa: BLE001 - the SDK raises its own exception types
                raise self._error(exc, "read") from None
            env = (fn.body.environment_variables or {}) if fn.body else {}
            try:
                meta = json.loads(env[ENV_META])
            except (KeyError, ValueError):
                raise FileNotFoundError(f"the function {self.function_name!r} is not a cloudpool runtime (no "
                                        f"{ENV_META} setting): deploy one with {DEPLOY}") from None
            mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
            if mismatch:
                raise VersionMismatchError(f"the Function Compute function {self.function_name!r} "
                                           f"({self.region}): {mismatch}")
            self._runtime = meta
        except (OSError, RuntimeError, VersionMismatchError, ImportError) as exc:
            self._refused = exc
        with self._lock:
            self._checked = True

    # ------------------------------------------------------------------ manager side
    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        if self._storage_problem:
            raise ValueError(self._storage_problem)
        body = protocol.encode_event(event)
        if len(body) > PAYLOAD_LIMIT:
            raise ValueError(f"the invocation event is {len(body)} bytes, more than Function Compute accepts for "
                             f"an async invocation ({PAYLOAD_LIMIT}); lower 'inline_limit'")
        self._check()
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
            self._notify(SegmentDone({
                "protocol": protocol.PROTOCOL_VERSION, "job": event["job"], "batch": event["batch"],
                "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None, "last": True,
                "fatal": {"kind": "version", "message": str(refused)},
                "worker": {"id": "aliyun-fc-client-check", "versions": {}},
                "key": keys.batch_status_prefix(event["job"], event["batch"]) + "refused"}))
            return
        if refused is not None:
            raise type(refused)(str(refused))
        with self._lock:
            if self._closing:
                raise RuntimeError("the aliyun_fc backend is shut down")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="cloudpool-fc")
            self._pool.submit(self._send_logged, inv, body)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closing = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _send_logged(self, inv: str, body: bytes) -> None:
        try:
            self.send(inv, body)
        except Exception as exc:  # noqa: BLE001 - must reach the futures, not vanish in the pool
            self._notify(InvocationLost(inv, f"the aliyun_fc backend failed while invoking: {exc!r}", error=exc))

    def send(self, inv: str, body: bytes) -> None:
        """InvokeFunction (Async) until accepted, refused, or throttled for longer than retry_seconds."""
        from alibabacloud_fc20230330 import models
        from darabonba.runtime import RuntimeOptions

        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                self.client.invoke_function_with_options(
                    self.function_name, models.InvokeFunctionRequest(body=io.BytesIO(body)),
                    models.InvokeFunctionHeaders(x_fc_invocation_type="Async"),
                    RuntimeOptions(autoretry=False, max_attempts=1))
                return
            except Exception as exc:  # noqa: BLE001 - the SDK raises its own exception types
                code, status, message = self._code(exc)
                if not (status == 429 or code in _THROTTLED):
                    error = self._error(exc, "invoke")
                    self._notify(InvocationLost(inv, str(error), error=error))
                    return
                self.throttled += 1
                elapsed = time.monotonic() - started
                if elapsed >= self.retry_seconds or self._closing:
                    self._notify(InvocationLost(inv, f"Function Compute kept throttling the invocation for "
                                                     f"{elapsed:.1f} s ({attempt} tries); last: {code or status}: "
                                                     f"{message}. Raise the function's concurrency or lower "
                                                     f"max_workers"))
                    return
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.5)
            time.sleep(max(0.0, min(delay, self.retry_seconds - (time.monotonic() - started))))

    # ------------------------------------------------------------------ runtimes
    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """CreateFunction (UpdateFunction when it exists) with the zip and this client's versions."""
        from alibabacloud_fc20230330 import models

        name = name or self.function_name
        memory = _int("memory_mb", memory_mb if memory_mb is not None else self.memory_mb, MEMORY_MIN_MB,
                      MEMORY_MAX_MB, "MB")
        fn_timeout = _int("timeout", int(timeout) if timeout is not None else self.timeout, TIMEOUT_MIN_S,
                          TIMEOUT_MAX_S, "seconds")
        # Provisional until the function answers for itself below.
        meta = {"protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions()}
        code = models.InputCodeLocation(zip_file=base64.b64encode(build_zip()).decode())
        env = {ENV_META: json.dumps(meta)}
        try:
            try:
                self.client.get_function(name, models.GetFunctionRequest())
                exists = True
            except Exception as exc:  # noqa: BLE001 - the SDK raises its own exception types
                if not isinstance(self._error(exc, "read"), FileNotFoundError):
                    raise
                exists = False
            if exists:
                self.client.update_function(name, models.UpdateFunctionRequest(body=models.UpdateFunctionInput(
                    code=code, memory_size=memory, timeout=fn_timeout, environment_variables=env,
                    handler="index.handler", runtime=self.runtime_version, role=self.role)))
            else:
                self.client.create_function(models.CreateFunctionRequest(body=models.CreateFunctionInput(
                    function_name=name, code=code, memory_size=memory, timeout=fn_timeout,
                    environment_variables=env, handler="index.handler", runtime=self.runtime_version,
                    role=self.role, description="cloudpool runtime")))
            # Ask the deployed function itself (one synchronous call) and record what it
            # answered, so the check before each executor's first call compares the
            # function's own Python and packages, not this client's.
            previous, self.function_name = self.function_name, name
            try:
                meta = self.invoke_metadata()
            finally:
                self.function_name = previous
            self.client.update_function(name, models.UpdateFunctionRequest(body=models.UpdateFunctionInput(
                environment_variables={ENV_META: json.dumps({k: meta.get(k) for k in ("protocol", "versions")})})))
        except (OSError, RuntimeError):
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own exception types
            raise self._error(exc, "deploy") from None
        mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
        if mismatch:
            LOGGER.warning("cloudpool: the deployed Function Compute runtime %r differs from this client: %s",
                           name, mismatch)
        return dict(meta, name=name, memory_mb=memory, timeout=fn_timeout, region=self.region)

    def invoke_metadata(self) -> Dict[str, Any]:
        """One synchronous InvokeFunction of the metadata request; the function's own versions."""
        from alibabacloud_fc20230330 import models

        try:
            resp = self.client.invoke_function(self.function_name, models.InvokeFunctionRequest(
                body=io.BytesIO(json.dumps({"cloudpool": "metadata"}).encode())))
            raw = resp.body.read() if hasattr(resp.body, "read") else resp.body
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own exception types
            raise self._error(exc, "invoke") from None
        try:
            meta = json.loads(raw)
            meta["versions"]["python"]
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"the function {self.function_name!r} did not answer cloudpool runtime metadata "
                               f"({raw[:300]!r}); is its handler index.handler?") from None
        return meta

    def list_runtimes(self) -> List[Dict[str, Any]]:
        from alibabacloud_fc20230330 import models
        try:
            resp = self.client.list_functions(models.ListFunctionsRequest(limit=100))
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "list") from None
        found = []
        for fn in (resp.body.functions or []):
            env = fn.environment_variables or {}
            if ENV_META in env:
                found.append({"name": fn.function_name, "memory_mb": fn.memory_size, "timeout": fn.timeout,
                              **json.loads(env[ENV_META])})
        return found

    def delete_runtime(self, name: str) -> None:
        try:
            self.client.delete_function(name)
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, "delete") from None
