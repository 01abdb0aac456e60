"""The ``azure_functions`` backend: each invocation is one HTTPS request to an Azure Function.

This module owns the client side of running cloudpool on Azure Functions: the backend's
options and their checks, sending invocation events to the HTTP-triggered function of
``runtime/azure_functions/function_app.py`` with its function key (``x-functions-key``)
or a Microsoft Entra token (azure-identity), riding out 429/503 answers within
``retry_seconds``, the version handshake before the first call, and the runtime commands
(build the zip; zip deploy through Kudu; list/delete through Azure Resource Manager).

``invoke`` only queues; sender threads (``concurrency``) post the events and wait for the
answer (the function runs the batch before answering, at most 230 s: Azure's load
balancer closes longer HTTP requests). Results never come back through HTTP: the worker
writes them to storage, which the manager polls, as for every backend.

What happens to a request, by answer: **200** done; **429 / 503** (scale-out limit, host
busy) or a connection that surely never reached Azure: tried again with jittered
back-off for at most ``retry_seconds``, then reported lost; **401 / 403**: the key or
token is wrong, the calls fail with ``PermissionError``; **404**: the function is not
deployed (``FileNotFoundError`` naming the deploy command); anything else, or a
connection broken after sending: reported lost with the answer's text (not resent: the
batch may have partly run).

Credentials (the function key, Entra tokens) travel only in request headers, never in
events or storage; the function reads storage with its app settings or managed identity.
"""
from __future__ import annotations

import collections
import io
import json
import logging
import os
import random
import re
import threading
import time
import zipfile
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import cloudpickle
import requests

from .. import protocol
from .._version import __version__
from ..errors import VersionMismatchError
from ..storage import split_url
from . import declared
from .aws_lambda import _add_file, _add_text, _add_tree
from .knative import _surely_not_sent
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone
from ._runtime_files import PACKAGE_DIR, RUNTIME_DATA_DIR, runtime_file

LOGGER = logging.getLogger("cloudpool")

#: Azure's load balancer ends an HTTP request after 230 s, whatever functionTimeout says.
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 230
#: Flex Consumption instance sizes (MB); 1536 is the Consumption plan's fixed size.
MEMORY_SIZES = (512, 1536, 2048, 4096)
DEFAULT_TIMEOUT_S = 230
DEFAULT_MEMORY_MB = 2048
DEFAULT_CONCURRENCY = 16
DEFAULT_RETRY_SECONDS = 60.0
#: The HTTP trigger's request size limit (100 MB); events hold at most inline_limit bytes.
PAYLOAD_LIMIT = 100 * 1024 * 1024
BATCH_TARGET_SECONDS = 2.0
FUNCTION_ROUTE = "api/cloudpool"
KEY_ENV = "CLOUDPOOL_AZURE_FUNCTION_KEY"
MANAGEMENT_URL = "https://management.azure.com"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
ARM_API_VERSION = "2022-03-01"
METADATA_REQUEST = {"cloudpool": "metadata"}
DEPLOY = "`cloudpool runtime deploy --backend azure_functions`"
_CONNECT_TIMEOUT = 10.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$")


def _fail(option: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"the azure_functions backend's {option!r} must be {expected}, not {value!r}")


def _url(option: str, value: Any) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(option, "an http(s):// URL", value)
    return value.rstrip("/")


def build_zip(requirements: Sequence[str] = ()) -> bytes:
    """The app package: function_app.py, host.json, requirements.txt, this cloudpool and cloudpickle.

    The app root is on the function's ``sys.path``; ``requirements.txt`` is installed by
    the platform's remote build (``SCM_DO_BUILD_DURING_DEPLOYMENT``).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("function_app.py", "host.json"):
            _add_file(zf, runtime_file("azure_functions", name), name)
        with open(runtime_file("azure_functions", "requirements.txt"), encoding="utf-8") as f:
            base = [line.strip() for line in f if line.strip()]
        _add_text(zf, "requirements.txt", "\n".join(base + list(requirements)) + "\n")
        _add_tree(zf, PACKAGE_DIR, "cloudpool", skip=(RUNTIME_DATA_DIR,))
        _add_tree(zf, os.path.dirname(os.path.abspath(cloudpickle.__file__)), "cloudpickle")
    return buf.getvalue()


class AzureFunctionsBackend(ComputeBackend):
    """Runs invocations as HTTPS requests to one Azure Functions app."""

    name = "azure_functions"
    option_names = declared.AZURE_FUNCTIONS.options
    secret_option_names = declared.AZURE_FUNCTIONS.secrets
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        app = opts.get("app_name") or opts.get("runtime")
        if app is None and opts.get("url") is None:
            raise ValueError("the azure_functions backend needs the function app's name: pass app_name='my-app' "
                             "(config 'azure_functions: {app_name: ...}'), or url='https://my-app.azurewebsites.net'")
        if app is not None and (not isinstance(app, str) or not _APP_NAME.match(app)):
            raise _fail("app_name", "a function app name (2-60 letters, digits and '-')", app)
        self.app_name = app
        self.url = _url("url", opts["url"]) if opts.get("url") else f"https://{app}.azurewebsites.net"
        self.scm_url = _url("scm_url", opts["scm_url"]) if opts.get("scm_url") else f"https://{app}.scm.azurewebsites.net"
        self.management_url = _url("management_url", opts.get("management_url", MANAGEMENT_URL))
        auth = opts.get("auth", "key")
        if auth not in ("key", "entra"):
            raise _fail("auth", "'key' (function key in x-functions-key) or 'entra' (Microsoft Entra token)", auth)
        self.auth = auth
        self._key = opts.get("function_key") or os.environ.get(KEY_ENV)
        if auth == "key" and not (isinstance(self._key, str) and self._key):
            raise PermissionError(f"the azure_functions backend needs the function's key: set the option "
                                  f"'function_key' or {KEY_ENV} (Azure portal: the function app > App keys), or "
                                  f"use auth='entra' with App Service authentication")
        self.entra_scope = opts.get("entra_scope") or (f"api://{app}/.default" if app else None)
        self._credential = opts.get("credential")
        if self._credential is not None and not hasattr(self._credential, "get_token"):
            raise _fail("credential", "an azure-identity credential (with get_token)", self._credential)
        timeout = opts.get("timeout", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not TIMEOUT_MIN_S <= timeout <= TIMEOUT_MAX_S:
            raise ValueError(f"the azure_functions backend's 'timeout' is {timeout!r}: it must be {TIMEOUT_MIN_S}.."
                             f"{TIMEOUT_MAX_S} seconds (Azure ends HTTP requests after 230 s)")
        self.timeout = float(timeout)
        memory = opts.get("memory_mb", DEFAULT_MEMORY_MB)
        if memory not in MEMORY_SIZES or isinstance(memory, bool):
            raise ValueError(f"the azure_functions backend's 'memory_mb' is {memory!r}: Azure Functions instances "
                             f"have {', '.join(map(str, MEMORY_SIZES))} MB; pick one")
        self.memory_mb = int(memory)
        concurrency = opts.get("concurrency", DEFAULT_CONCURRENCY)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise _fail("concurrency", "an integer >= 1 (requests in flight)", concurrency)
        self.max_concurrency = max_workers if max_workers is not None else concurrency
        self.concurrency = min(concurrency, self.max_concurrency)
        retry = opts.get("retry_seconds", DEFAULT_RETRY_SECONDS)
        if isinstance(retry, bool) or not isinstance(retry, (int, float)) or retry < 0:
            raise _fail("retry_seconds", "a number of seconds >= 0", retry)
        self.retry_seconds = float(retry)
        for option in ("subscription_id", "resource_group"):
            value = opts.get(option)
            if value is not None and (not isinstance(value, str) or not value):
                raise _fail(option, "a non-empty string", value)
        self.subscription_id = opts.get("subscription_id")
        self.resource_group = opts.get("resource_group")
        self._storage_problem = None
        if storage_url and split_url(storage_url)[0] == "file":
            self._storage_problem = (f"the azure_functions backend runs calls in Azure, which cannot read this "
                                     f"machine's directory {storage_url!r}: use az://container/prefix or s3://...")
        self._cond = threading.Condition()
        self._queue: Deque[Tuple[str, bytes]] = collections.deque()
        self._threads: List[threading.Thread] = []
        self._idle = 0
        self._closing = False
        self._handshake_lock = threading.Lock()
        self._handshake_done = False
        self._refused: Optional[BaseException] = None
        self._runtime: Optional[Dict[str, Any]] = None
        self.counts: "collections.Counter[str]" = collections.Counter()

    # ------------------------------------------------------------------ auth
    def _token(self, scope: str) -> str:
        if self._credential is None:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise ImportError("Microsoft Entra authentication needs azure-identity: pip install "
                                  "'cloudpool[azure]'") from None
            self._credential = DefaultAzureCredential()
        return self._credential.get_token(scope).token

    def _invoke_headers(self) -> Dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"cloudpool/{__version__}"}
        if self.auth == "key":
            headers["x-functions-key"] = str(self._key)
        else:
            headers["Authorization"] = f"Bearer {self._token(str(self.entra_scope))}"
        return headers

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_concurrency=self.max_concurrency, max_in_flight=self.max_concurrency + 1,
                            max_timeout=self.timeout, memory_mb=self.memory_mb, payload_limit=PAYLOAD_LIMIT,
                            can_cancel=False, notifies=False, batch_target_seconds=BATCH_TARGET_SECONDS,
                            remote=True)

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "app": self.app_name, "url": self.url, "auth": self.auth,
                "memory_mb": self.memory_mb, "timeout": self.timeout, "runtime": self._runtime,
                "invocations": dict(self.counts)}

    # ------------------------------------------------------------------ handshake
    def _post(self, body: bytes, timeout: float) -> requests.Response:
        return requests.post(f"{self.url}/{FUNCTION_ROUTE}", data=body, headers=self._invoke_headers(),
                             timeout=(_CONNECT_TIMEOUT, timeout))

    def _status_error(self, resp: requests.Response) -> BaseException:
        text = resp.text[:500]
        if resp.status_code in (401, 403):
            return PermissionError(f"{self.url} refused the {'function key' if self.auth == 'key' else 'Entra token'} "
                                   f"(HTTP {resp.status_code}): set the azure_functions option "
                                   f"{'function_key' if self.auth == 'key' else 'entra_scope'} correctly")
        if resp.status_code == 404:
            return FileNotFoundError(f"{self.url}/{FUNCTION_ROUTE} does not exist (HTTP 404): deploy the runtime "
                                     f"with {DEPLOY} (or set 'app_name' to a deployed cloudpool app)")
        return RuntimeError(f"{self.url} answered HTTP {resp.status_code}: {text}")

    def fetch_metadata(self) -> Dict[str, Any]:
        """The deployed runtime's versions and packages (one synchronous request)."""
        give_up = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            # Throttled (a cold app scaling out) or unreachable: backed off, as invocations are.
            attempt += 1
            try:
                resp = self._post(json.dumps(METADATA_REQUEST).encode(), 60.0)
                if resp.status_code not in (429, 503) or time.monotonic() >= give_up:
                    break
            except requests.RequestException as exc:
                if not _surely_not_sent(exc) or time.monotonic() >= give_up:
                    raise ConnectionError(f"could not reach the Azure function at {self.url} ({type(exc).__name__}: "
                                          f"{exc}); check 'app_name'/'url' and the network") from None
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.5)
            time.sleep(max(0.0, min(delay, give_up - time.monotonic())))
        if resp.status_code != 200:
            raise self._status_error(resp)
        try:
            meta = resp.json()
            meta["versions"]["python"]
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"{self.url} did not answer cloudpool runtime metadata ({resp.text[:200]!r}): is "
                               f"it a cloudpool runtime? Deploy one with {DEPLOY}") from None
        return meta

    def _handshake(self) -> None:
        with self._handshake_lock:
            if self._handshake_done:
                return
            try:
                meta = self.fetch_metadata()
                mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
                if mismatch is None and meta.get("protocol") != protocol.PROTOCOL_VERSION:
                    mismatch = f"protocol {protocol.PROTOCOL_VERSION} here, {meta.get('protocol')} on the runtime"
                if mismatch:
                    raise VersionMismatchError(f"the Azure function at {self.url}: {mismatch}; deploy it again "
                                               f"with {DEPLOY}")
                self._runtime = meta
            except (OSError, RuntimeError, VersionMismatchError, ImportError) as exc:
                self._refused = exc
            finally:
                self._handshake_done = True

    # ------------------------------------------------------------------ manager side
    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        if self._storage_problem:
            raise ValueError(self._storage_problem)
        self._handshake()
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
            self._notify(SegmentDone({
                "protocol": protocol.PROTOCOL_VERSION, "job": event["job"], "batch": event["batch"],
                "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None, "last": True,
                "fatal": {"kind": "version", "message": str(refused)},
                "worker": {"id": "azure-functions-client-check", "versions": {}},
                "key": keys.batch_status_prefix(event["job"], event["batch"]) + "refused"}))
            return
        if refused is not None:
            raise type(refused)(str(refused))
        body = protocol.encode_event(event)
        with self._cond:
            if self._closing:
                raise RuntimeError("the azure_functions backend is shut down")
            self._queue.append((inv, body))
            self._cond.notify()
            while self._idle < len(self._queue) and len(self._threads) < self.concurrency:
                t = threading.Thread(target=self._send_loop, name=f"cloudpool-azfn-{len(self._threads)}",
                                     daemon=True)
                self._threads.append(t)
                self._idle += 1
                t.start()

    def shutdown(self, wait: bool = True) -> None:
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                self._idle -= 1
                inv, body = self._queue.popleft()
            try:
                self._send(inv, body)
            except Exception as exc:  # noqa: BLE001 - a bug here must not hang the batch's futures
                LOGGER.exception("cloudpool: the azure_functions backend failed while invoking %s", inv)
                self._notify(InvocationLost(inv, f"the azure_functions backend failed: {exc!r}", error=exc))
            with self._cond:
                self._idle += 1

    def _send(self, inv: str, body: bytes) -> None:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self._post(body, self.timeout + 10)
            except requests.RequestException as exc:
                if _surely_not_sent(exc):
                    problem = f"cannot connect to {self.url} ({type(exc).__name__})"
                else:
                    self._count("lost")
                    self._notify(InvocationLost(inv, f"the request to {self.url} failed after it was sent "
                                                     f"({type(exc).__name__}: {exc}); the batch may have partly run",
                                                timed_out=isinstance(exc, requests.ReadTimeout), error=exc))
                    return
            else:
                if resp.status_code == 200:
                    self._count("done")
                    return
                if resp.status_code not in (429, 503):
                    self._count("lost")
                    error = self._status_error(resp)
                    self._notify(InvocationLost(inv, str(error), error=error if resp.status_code in (401, 403, 404)
                                                else None))
                    return
                self._count("throttled")
                problem = f"HTTP {resp.status_code} ({resp.text[:200]})"
            elapsed = time.monotonic() - started
            if elapsed >= self.retry_seconds or self._closing:
                self._count("lost")
                self._notify(InvocationLost(inv, f"{self.url} kept refusing the invocation for {elapsed:.1f} s "
                                                 f"({attempt} tries, retry_seconds={self.retry_seconds:g}); last: "
                                                 f"{problem}. Raise the app's scale-out limit or lower max_workers"))
                return
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.5)
            time.sleep(max(0.0, min(delay, self.retry_seconds - elapsed)))

    def _count(self, what: str) -> None:
        with self._cond:
            self.counts[what] += 1

    # ------------------------------------------------------------------ runtimes
    def _arm_site(self, name: Optional[str] = None) -> str:
        if not (self.subscription_id and self.resource_group):
            raise ValueError("managing Azure Functions runtimes needs the app's subscription and resource group: "
                             "set the azure_functions options 'subscription_id' and 'resource_group'")
        return (f"{self.management_url}/subscriptions/{self.subscription_id}/resourceGroups/"
                f"{self.resource_group}/providers/Microsoft.Web/sites/{name or self.app_name}")

    def _management(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._token(MANAGEMENT_SCOPE)}",
                   "User-Agent": f"cloudpool/{__version__}", **kwargs.pop("headers", {})}
        try:
            resp = requests.request(method, url, headers=headers, timeout=(_CONNECT_TIMEOUT, 600), **kwargs)
        except requests.RequestException as exc:
            raise ConnectionError(f"could not reach {url} ({type(exc).__name__}: {exc})") from None
        if resp.status_code in (401, 403):
            raise PermissionError(f"Azure refused {method} {url} (HTTP {resp.status_code}): {resp.text[:300]}")
        if resp.status_code == 404:
            raise FileNotFoundError(f"{method} {url}: not found (HTTP 404): {resp.text[:300]}")
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {url} failed (HTTP {resp.status_code}): {resp.text[:300]}")
        return resp

    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        if isinstance(requirements, str):
            raise TypeError("requirements must be a list of pip requirement strings, not one string")
        data = build_zip(requirements)
        out_dir = output or os.path.join(os.path.expanduser("~"), ".cache", "cloudpool", "azure_functions")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{name}.zip")
        with open(path, "wb") as f:
            f.write(data)
        return {"name": name, "path": path, "size": len(data), "versions": protocol.versions(),
                "requirements": list(requirements)}

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """Zip-deploy the runtime to the existing function app ``name`` (Kudu ``/api/zipdeploy``).

        The app (plan, storage account, Python version, managed identity) is created once
        with the Azure CLI or portal; this pushes cloudpool's code into it, turns on the
        remote build for requirements.txt, and asks the deployed function for its versions.
        """
        app = name or self.app_name
        if not app:
            raise ValueError("deploying needs the function app's name: set the azure_functions option 'app_name'")
        site = self._arm_site(app)
        # The remote build installs requirements.txt on the platform (documented app setting).
        settings = self._management("POST", f"{site}/config/appsettings/list?api-version={ARM_API_VERSION}").json()
        properties = dict(settings.get("properties") or {})
        if properties.get("SCM_DO_BUILD_DURING_DEPLOYMENT") != "true":
            properties["SCM_DO_BUILD_DURING_DEPLOYMENT"] = "true"
            self._management("PUT", f"{site}/config/appsettings?api-version={ARM_API_VERSION}",
                             json={"properties": properties})
        self._management("POST", f"{self.scm_url}/api/zipdeploy", params={"isAsync": "true"},
                         data=build_zip(), headers={"Content-Type": "application/zip"})
        meta = self.fetch_metadata()
        return dict(meta, name=app, url=self.url)

    def list_runtimes(self) -> List[Dict[str, Any]]:
        """The cloudpool functions of this app (ARM ``sites/functions``)."""
        resp = self._management("GET", f"{self._arm_site()}/functions?api-version={ARM_API_VERSION}").json()
        found = []
        for fn in resp.get("value", []):
            props = fn.get("properties") or {}
            short = str(fn.get("name", "")).rsplit("/", 1)[-1]
            if short != "cloudpool":
                continue
            found.append({"name": self.app_name, "function": short, "url": props.get("invoke_url_template"),
                          "language": props.get("language"), "disabled": props.get("isDisabled")})
        return found

    def delete_runtime(self, name: str) -> None:
        """Delete the cloudpool function from app ``name`` (the app itself stays: it holds your settings)."""
        self._management("DELETE", f"{self._arm_site(name)}/functions/cloudpool?api-version={ARM_API_VERSION}")
