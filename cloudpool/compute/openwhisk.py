"""The ``openwhisk`` backend: each invocation is one activation of an Apache OpenWhisk action
(IBM Cloud Functions is OpenWhisk).

This module owns the client side of OpenWhisk's REST API for cloudpool: the backend's
options, non-blocking invocations and the activation look-ups that tell how they ended,
the version handshake, and the runtime lifecycle (``cloudpool runtime build|deploy|list|
delete --backend openwhisk``). The action itself is ``runtime/openwhisk/action.py``, a
Docker ("blackbox") action implementing OpenWhisk's action interface.

Data flow::

    manager ── invoke(inv, event) ──> SenderPool thread ── POST .../actions/{a}?blocking=false ──> controller
                                            │  202 {"activationId"}                                  │ invoker: /init, /run
                                            └── GET .../activations/{id} until it exists ────────────┘ worker writes
    manager <── SegmentDone / InvocationLost ── its result: {"segments", "lost"}                         results+status

The API key (``uuid:key``) authenticates every request with HTTP Basic auth, as the
``wsk`` CLI does; it is never part of an event, and deployed actions are annotated
``provide-api-key: false`` so OpenWhisk does not hand it to the action either.

Throttling: OpenWhisk answers 429 when a namespace exceeds its invocations per minute
or concurrent activations; such invokes are retried with jittered back-off for at most
``retry_seconds``, then the invocation is reported lost naming the limit. An invoke
whose answer was lost after sending is *not* retried (it may run); the activation
look-up deadline (action timeout + ``activation_grace``) then reports it lost.

Version handshake: before the first invocation, one blocking activation with
``{"cloudpool": "metadata"}`` answers the runtime's Python / cloudpickle / cloudpool /
protocol versions; a missing action is refused naming the deploy command, and a
runtime that differs breaks the executor with ``VersionMismatchError``.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote, urlsplit

import requests
import requests.adapters

from .. import protocol
from .._version import __version__
from ..errors import VersionMismatchError
from ..storage import split_url
from . import _http_invoke as hi
from . import declared
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone

LOGGER = logging.getLogger("cloudpool")

METADATA_REQUEST = {"cloudpool": "metadata"}
#: The annotation marking actions deployed as cloudpool runtimes (``list``/``delete``).
RUNTIME_ANNOTATION = "cloudpool-runtime"
DEFAULT_ACTION = "cloudpool-runtime"
#: IBM Cloud Functions' limits (cloud.ibm.com/docs/openwhisk?topic=openwhisk-limits):
#: memory 128..2048 MB, timeout up to 600 s; Apache OpenWhisk defaults are lower (512 MB,
#: 300 s) but operators raise them, so the IBM bounds are the ones checked here.
MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 2048
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 600
DEFAULT_MEMORY_MB = 256
DEFAULT_TIMEOUT_S = 300
#: Concurrent activations per namespace on IBM Cloud Functions is 1000; stay well below.
DEFAULT_MAX_CONCURRENCY = 100
#: OpenWhisk's default maximum activation payload (1 MB).
PAYLOAD_LIMIT = 1024 * 1024
DEFAULT_RETRY_SECONDS = 60.0
#: Activation records can appear some seconds after the action ended (they are written
#: by the invoker asynchronously); this much past the action's timeout, a missing record
#: means the activation is lost.
DEFAULT_ACTIVATION_GRACE = 60.0
BATCH_TARGET_SECONDS = 1.0
DEFAULT_IMAGE = "cloudpool/openwhisk-runtime"

_CONNECT_TIMEOUT = 10.0
_READ_TIMEOUT = 65.0  # a blocking invoke waits up to 60 s in the controller
_POLL_FIRST, _POLL_MAX = 0.05, 1.0
_HANDSHAKE_WAIT = 120.0
_NAME_RE = re.compile(r"^[A-Za-z0-9_@.-][A-Za-z0-9_@. -]{0,255}$")
_KEY_RE = re.compile(r"^[^:\s]+:[^:\s]+$")


def _int_in_range(name: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or not low <= value <= high:
        raise ValueError(f"the openwhisk backend's {name!r} must be a whole number of {unit} from {low} "
                         f"to {high} (OpenWhisk's action limits), not {value!r}")
    return int(value)


def _check_name(option: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value) or value.strip() != value:
        raise ValueError(f"the openwhisk backend's {option!r} must be an OpenWhisk entity name (letters, "
                         f"digits, _ @ . - and inner spaces, at most 256 characters), not {value!r}")
    return value


def _check_api_host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("the openwhisk backend needs the OpenWhisk API host: set the option 'api_host' "
                         "(e.g. 'https://us-south.functions.cloud.ibm.com', or your controller's URL)")
    url = value.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url  # as the wsk CLI takes a bare host name
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"the openwhisk backend's 'api_host' {value!r} must be a host name or an "
                         f"http(s):// URL without query")
    return url


class _Invocation:
    __slots__ = ("inv", "event", "body")

    def __init__(self, inv: str, event: Dict[str, Any], body: bytes) -> None:
        self.inv = inv
        self.event = event
        self.body = body


class OpenWhiskBackend(ComputeBackend):
    """Runs invocations as activations of a cloudpool action on Apache OpenWhisk / IBM Cloud Functions."""

    name = "openwhisk"
    option_names = declared.OPENWHISK.options
    secret_option_names = declared.OPENWHISK.secrets
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        self.api_host = _check_api_host(opts.get("api_host"))
        namespace = opts.get("namespace")
        if namespace is None:
            raise ValueError("the openwhisk backend needs the namespace its action lives in: set the option "
                             "'namespace' (your IBM Cloud Functions namespace ID, or '_' for the API key's "
                             "default namespace)")
        self.namespace = namespace if namespace == "_" else _check_name("namespace", namespace)
        api_key = opts.get("api_key")
        if not isinstance(api_key, str) or not _KEY_RE.match(api_key):
            raise PermissionError(
                "the openwhisk backend needs an API key of the form 'uuid:key' (`wsk property get --auth`): "
                "set the openwhisk option 'api_key' (config file, or the CLOUDPOOL_OPENWHISK__API_KEY environment "
                "variable)"
                + ("" if api_key is None else " (the one given does not have that form)"))
        self._auth = tuple(api_key.split(":", 1))
        self.action = _check_name("action", opts.get("action", DEFAULT_ACTION))
        self.memory_mb = _int_in_range("memory_mb", opts.get("memory_mb", DEFAULT_MEMORY_MB),
                                       MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        self.timeout = _int_in_range("timeout", opts.get("timeout", DEFAULT_TIMEOUT_S),
                                     TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        image = opts.get("image", f"{DEFAULT_IMAGE}:{__version__}")
        if not isinstance(image, str) or not image or any(c.isspace() for c in image):
            raise ValueError(f"the openwhisk backend's 'image' must be a Docker image reference, not {image!r}")
        self.image = image
        self.retry_seconds = self._seconds("retry_seconds", DEFAULT_RETRY_SECONDS)
        self.activation_grace = self._seconds("activation_grace", DEFAULT_ACTIVATION_GRACE)
        insecure = opts.get("insecure", False)
        if not isinstance(insecure, bool):
            raise ValueError(f"the openwhisk backend's 'insecure' must be true or false, not {insecure!r}")
        self._verify = not insecure
        if max_workers is not None and (isinstance(max_workers, bool) or max_workers < 1):
            raise ValueError(f"max_workers must be >= 1, not {max_workers!r}")
        self.max_concurrency = max_workers or DEFAULT_MAX_CONCURRENCY
        self.storage_url = storage_url
        self._local = threading.local()
        self._handshake_done = threading.Event()
        self._refused: Optional[BaseException] = None
        self.runtime_meta: Optional[Dict[str, Any]] = None
        self._pool = hi.SenderPool("openwhisk", self.max_concurrency, self._send, self._crashed)

    def _seconds(self, name: str, default: float) -> float:
        value = self.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"the openwhisk backend's {name!r} must be a number of seconds >= 0, not {value!r}")
        return float(value)

    def _check_storage(self) -> None:
        scheme = split_url(self.storage_url)[0] if self.storage_url else "file"
        if scheme == "file":
            raise ValueError(
                f"the openwhisk backend runs calls in OpenWhisk's containers, which cannot read this "
                f"machine's directory {self.storage_url!r}: set storage to an object store both sides "
                f"reach (cos://, s3://, gs:// or az://)")

    # ------------------------------------------------------------------ HTTP
    @property
    def session(self) -> requests.Session:
        """One session per thread (a Session is not guaranteed thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.auth = self._auth
            session.verify = self._verify
            session.headers["User-Agent"] = f"cloudpool/{__version__}"
            self._local.session = session
        return session

    def _url(self, *parts: str) -> str:
        return "/".join([self.api_host, "api", "v1", "namespaces", quote(self.namespace, safe="_")]
                        + [quote(p, safe="") for p in parts])

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", (_CONNECT_TIMEOUT, _READ_TIMEOUT))
        try:
            return self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            raise ConnectionError(f"could not reach the OpenWhisk API at {self.api_host} ({hi.short(exc)}); "
                                  f"check 'api_host' and the network") from None

    def _api_error(self, resp: requests.Response, verb: str, name: str) -> BaseException:
        text = hi.error_text(resp)
        if resp.status_code == 404:
            return FileNotFoundError(
                f"the OpenWhisk action {name!r} does not exist in namespace {self.namespace!r} at "
                f"{self.api_host}: deploy the runtime with `cloudpool runtime deploy --backend openwhisk "
                f"{name}` (or set the openwhisk option 'action' to a deployed cloudpool runtime)")
        if resp.status_code in (401, 403):
            return PermissionError(f"OpenWhisk refused to {verb} the action {name!r} (HTTP {resp.status_code}: "
                                   f"{text}): check the openwhisk options 'api_key' and 'namespace'")
        return RuntimeError(f"could not {verb} the OpenWhisk action {name!r}: HTTP {resp.status_code}: {text}")

    # ------------------------------------------------------------------ declared
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_concurrency=self.max_concurrency,
            max_in_flight=self.max_concurrency + 1,
            max_timeout=float(self.timeout),
            memory_mb=self.memory_mb,
            payload_limit=PAYLOAD_LIMIT,
            can_cancel=False,  # OpenWhisk cannot stop a running activation
            notifies=True,
            batch_target_seconds=BATCH_TARGET_SECONDS,
            remote=True,
        )

    def describe(self) -> Dict[str, Any]:
        if self.runtime_meta is None and self._refused is None:
            try:
                self.runtime_meta = self._metadata(self.action)
            except (OSError, RuntimeError) as exc:
                return {"backend": self.name, "api_host": self.api_host, "namespace": self.namespace,
                        "action": self.action, "error": str(exc)}
        return {"backend": self.name, "api_host": self.api_host, "namespace": self.namespace,
                "action": self.action, "max_concurrency": self.max_concurrency,
                "runtime": self.runtime_meta, "refused": None if self._refused is None else str(self._refused)}

    # ------------------------------------------------------------------ manager side
    def start(self, notify) -> None:
        self._check_storage()
        super().start(notify)
        threading.Thread(target=self._handshake, name="cloudpool-openwhisk-handshake", daemon=True).start()

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        body = protocol.encode_event(event)
        # The action's parameters are the event's JSON object, so OpenWhisk passes it as /run's value.
        if len(body) > PAYLOAD_LIMIT:
            raise ValueError(
                f"the invocation event is {len(body)} bytes, more than OpenWhisk accepts ({PAYLOAD_LIMIT}); "
                f"lower the 'inline_limit' setting so arguments travel through storage")
        self._handshake_done.wait(_HANDSHAKE_WAIT)
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            self._refuse_version(event, refused)
            return
        if refused is not None:
            raise type(refused)(str(refused))
        if not self._handshake_done.is_set():
            raise TimeoutError(f"the OpenWhisk action {self.action!r} did not answer its version handshake "
                               f"within {_HANDSHAKE_WAIT:g} s")
        self._pool.put(_Invocation(inv, event, body))

    def shutdown(self, wait: bool = True) -> None:
        self._pool.close(wait)

    # ------------------------------------------------------------------ handshake
    def _handshake(self) -> None:
        try:
            meta = self._metadata(self.action)
            mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
            if mismatch is None and meta.get("protocol") != protocol.PROTOCOL_VERSION:
                mismatch = (f"the runtime does not match this client: protocol {protocol.PROTOCOL_VERSION} "
                            f"on the client but {meta.get('protocol')} on the worker")
            if mismatch:
                raise VersionMismatchError(
                    f"the OpenWhisk action {self.action!r} ({self.api_host}): {mismatch}; redeploy it with "
                    f"`cloudpool runtime deploy --backend openwhisk {self.action}` from this environment")
            self.runtime_meta = meta
        except (OSError, RuntimeError, VersionMismatchError) as exc:
            self._refused = exc
        except Exception as exc:  # noqa: BLE001 - any failure must reach the calls, not hang them
            LOGGER.exception("cloudpool: the OpenWhisk version handshake failed")
            self._refused = RuntimeError(f"the OpenWhisk version handshake failed: {hi.short(exc)}")
        finally:
            self._handshake_done.set()

    def _metadata(self, action: str) -> Dict[str, Any]:
        """A blocking activation answering the runtime's versions (raises FileNotFound/Permission/Runtime)."""
        url = self._url("actions", action)
        try:
            resp = hi.send_with_backoff(
                lambda: self._request("POST", url, params={"blocking": "true", "result": "true"},
                                      json=METADATA_REQUEST),
                retry_seconds=self.retry_seconds, what=f"the metadata activation of {action!r}")
        except hi.GaveUp as exc:
            raise ConnectionError(str(exc)) from None
        except requests.RequestException as exc:
            raise ConnectionError(f"the metadata activation of {action!r} failed: {hi.short(exc)}") from None
        with resp:
            if resp.status_code in (401, 403, 404):
                raise self._api_error(resp, "invoke", action)
            if resp.status_code == 202:
                raise RuntimeError(f"the metadata activation of {action!r} did not finish within OpenWhisk's "
                                   f"blocking wait (60 s); is the action's image pulled and starting?")
            try:
                meta = resp.json()
                meta["versions"]["python"]
            except (ValueError, KeyError, TypeError):
                raise RuntimeError(
                    f"the OpenWhisk action {action!r} did not answer cloudpool runtime metadata (HTTP "
                    f"{resp.status_code}: {hi.error_text(resp)}); is it a cloudpool runtime? Deploy one with "
                    f"`cloudpool runtime deploy --backend openwhisk {action}`") from None
        return meta

    def _refuse_version(self, event: Dict[str, Any], refused: VersionMismatchError) -> None:
        """Report a mismatch as a worker would: a fatal "version" status, so the manager
        breaks the executor with ``VersionMismatchError`` naming both sides."""
        keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
        self._notify(SegmentDone({
            "protocol": protocol.PROTOCOL_VERSION, "job": event["job"], "batch": event["batch"],
            "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None,
            "last": True, "fatal": {"kind": "version", "message": str(refused)},
            "worker": {"id": "openwhisk-client-handshake", "versions": {}},
            # Not a storage key: the refusal happened here, before anything was sent.
            "key": keys.batch_status_prefix(event["job"], event["batch"]) + "refused",
        }))

    # ------------------------------------------------------------------ sending
    def _crashed(self, job: _Invocation, exc: BaseException) -> None:
        self._notify(InvocationLost(job.inv, f"the openwhisk backend failed while sending it: {exc!r}", error=exc))

    def _send(self, job: _Invocation) -> None:
        """Start the activation, then follow it to its end (a pool thread)."""
        url = self._url("actions", self.action)
        try:
            resp = hi.send_with_backoff(
                lambda: self.session.post(url, params={"blocking": "false"}, data=job.body,
                                          headers={"Content-Type": "application/json"},
                                          timeout=(_CONNECT_TIMEOUT, _READ_TIMEOUT)),
                retry_seconds=self.retry_seconds, what=f"invoking the OpenWhisk action {self.action!r}",
                busy_codes=(429, 503), closing=lambda: self._pool.closing)
        except hi.GaveUp as exc:
            self._notify(InvocationLost(job.inv, f"{exc}. OpenWhisk throttles a namespace's concurrent "
                                                 f"activations and invocations per minute: lower max_workers "
                                                 f"or ask for higher limits"))
            return
        except requests.RequestException as exc:
            self._notify(InvocationLost(job.inv, f"the invoke of {self.action!r} failed after it was sent "
                                                 f"({hi.short(exc)}); it may have partly run", error=exc))
            return
        with resp:
            if resp.status_code not in (200, 202):
                error = self._api_error(resp, "invoke", self.action)
                self._notify(InvocationLost(job.inv, str(error), error=error))
                return
            try:
                activation_id = str(resp.json()["activationId"])
            except (ValueError, KeyError, TypeError):
                self._notify(InvocationLost(job.inv, f"OpenWhisk accepted the invoke of {self.action!r} but "
                                                     f"answered no activationId: {hi.error_text(resp)}"))
                return
        self._follow(job, activation_id)

    def _follow(self, job: _Invocation, activation_id: str) -> None:
        """Look the activation up until its record exists, then report how it ended."""
        url = self._url("activations", activation_id)
        deadline = time.monotonic() + self.timeout + self.activation_grace
        delay = _POLL_FIRST
        problem = "no activation record yet"
        while not self._pool.closing:
            try:
                resp = self.session.get(url, timeout=(_CONNECT_TIMEOUT, _READ_TIMEOUT))
            except requests.RequestException as exc:
                problem = f"activation look-up failed ({hi.short(exc)})"
            else:
                with resp:
                    if resp.status_code == 200:
                        try:
                            record = resp.json()
                        except ValueError:
                            record = None
                        if isinstance(record, dict) and isinstance(record.get("response"), dict):
                            self._report(job, activation_id, record["response"])
                            return
                        problem = f"unreadable activation record: {hi.error_text(resp)}"
                    elif resp.status_code in (401, 403):
                        error = self._api_error(resp, "read the activations of", self.action)
                        self._notify(InvocationLost(job.inv, str(error), error=error))
                        return
                    elif resp.status_code != 404:  # 404: still running (no record yet)
                        problem = f"HTTP {resp.status_code}: {hi.error_text(resp)}"
            if time.monotonic() > deadline:
                self._notify(InvocationLost(
                    job.inv, f"activation {activation_id} of {self.action!r} has no record {self.timeout} s "
                             f"(the action's timeout) + {self.activation_grace:g} s after it was accepted "
                             f"({problem}); OpenWhisk lost it"))
                return
            time.sleep(delay)
            delay = min(_POLL_MAX, delay * 2)

    def _report(self, job: _Invocation, activation_id: str, response: Dict[str, Any]) -> None:
        result = response.get("result")
        status = response.get("status")
        if status == "success" and isinstance(result, dict) and "segments" in result:
            for seg in result.get("segments") or []:
                self._notify(SegmentDone(seg))
            lost = result.get("lost")
            if lost:
                self._notify(InvocationLost(job.inv, f"activation {activation_id}: {lost.get('reason')}",
                                            running_call=lost.get("running_call"),
                                            timed_out=bool(lost.get("timed_out")),
                                            killed=bool(lost.get("killed"))))
            return
        error = result.get("error") if isinstance(result, dict) else result
        text = str(error)[:500]
        # OpenWhisk ends an activation that outlives its limit with a developer error
        # whose text is "The action exceeded its time limits of N milliseconds."
        timed_out = "time limit" in text.lower()
        self._notify(InvocationLost(job.inv, f"activation {activation_id} of {self.action!r} ended with "
                                             f"{status!r}: {text}", timed_out=timed_out))

    # ------------------------------------------------------------------ runtimes
    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        """Write a Docker build context for the action's image (build and push it yourself)."""
        import shutil

        from ._runtime_files import copy_package, project_files, runtime_file

        _check_name("name", name)
        if isinstance(requirements, str):
            raise TypeError("requirements must be a list of pip requirement strings, not one string")
        base = output or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                                      "cloudpool", "openwhisk")
        context = os.path.join(base, f"{name}-image")
        if os.path.exists(os.path.join(context, "cloudpool")):
            shutil.rmtree(os.path.join(context, "cloudpool"))
        os.makedirs(context, exist_ok=True)
        copy_package(os.path.join(context, "cloudpool"))
        shutil.copyfile(runtime_file("openwhisk", "action.py"), os.path.join(context, "action.py"))
        shutil.copyfile(runtime_file("knative", "server.py"), os.path.join(context, "knative_server.py"))
        shutil.copyfile(runtime_file("openwhisk", "Dockerfile"), os.path.join(context, "Dockerfile"))
        copied = project_files(context)
        with open(os.path.join(context, "requirements.txt"), "w", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in requirements))
        return {"name": name, "context": context, "image": self.image, "files": sorted(os.listdir(context)),
                "project": copied, "versions": protocol.versions(),
                "next": f"podman build -t {self.image} {context} && podman push {self.image}; then "
                        f"`cloudpool runtime deploy --backend openwhisk {name}`"}

    def _action_body(self, memory: int, timeout_s: int) -> Dict[str, Any]:
        return {
            "exec": {"kind": "blackbox", "image": self.image},
            "limits": {"memory": memory, "timeout": timeout_s * 1000, "concurrency": 1},
            "annotations": [
                {"key": RUNTIME_ANNOTATION, "value": {"cloudpool": __version__, "image": self.image}},
                # Do not hand the caller's API key to the action: it needs none.
                {"key": "provide-api-key", "value": False},
            ],
        }

    def deploy_runtime(self, name: Optional[str] = None, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """Create or update action ``name`` (PUT ?overwrite=true), then run its version handshake."""
        name = _check_name("name", name or self.action)
        memory = _int_in_range("memory_mb", memory_mb if memory_mb is not None else self.memory_mb,
                               MEMORY_MIN_MB, MEMORY_MAX_MB, "MB")
        timeout_s = _int_in_range("timeout", timeout if timeout is not None else self.timeout,
                                  TIMEOUT_MIN_S, TIMEOUT_MAX_S, "seconds")
        resp = self._request("PUT", self._url("actions", name), params={"overwrite": "true"},
                             json=self._action_body(memory, timeout_s))
        with resp:
            if resp.status_code != 200:
                raise self._api_error(resp, "deploy", name)
        meta = self._metadata(name)
        mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
        if mismatch:
            LOGGER.warning("cloudpool: the deployed OpenWhisk runtime %r differs from this client: %s", name, mismatch)
        return dict(meta, name=name, memory_mb=memory, timeout=timeout_s, image=self.image,
                    namespace=self.namespace, api_host=self.api_host)

    def list_runtimes(self) -> List[Dict[str, Any]]:
        """Actions of the namespace annotated as cloudpool runtimes."""
        found: List[Dict[str, Any]] = []
        skip, page = 0, 200
        while True:
            resp = self._request("GET", self._url("actions"), params={"limit": page, "skip": skip})
            with resp:
                if resp.status_code != 200:
                    raise self._api_error(resp, "list", "*")
                actions = resp.json()
            for action in actions:
                notes = {a.get("key"): a.get("value") for a in action.get("annotations") or []}
                if RUNTIME_ANNOTATION not in notes:
                    continue
                limits = action.get("limits") or {}
                mark = notes[RUNTIME_ANNOTATION] if isinstance(notes[RUNTIME_ANNOTATION], dict) else {}
                found.append({"name": action.get("name"), "memory_mb": limits.get("memory"),
                              "timeout": (limits.get("timeout") or 0) / 1000 or None,
                              "image": mark.get("image"), "cloudpool": mark.get("cloudpool"),
                              "version": action.get("version")})
            if len(actions) < page:
                return sorted(found, key=lambda r: r["name"] or "")
            skip += page

    def delete_runtime(self, name: str) -> None:
        _check_name("name", name)
        url = self._url("actions", name)
        resp = self._request("GET", url, params={"code": "false"})
        with resp:
            if resp.status_code != 200:
                raise self._api_error(resp, "read", name)
            notes = {a.get("key") for a in resp.json().get("annotations") or []}
        if RUNTIME_ANNOTATION not in notes:
            raise PermissionError(f"the OpenWhisk action {name!r} is not a cloudpool runtime (no "
                                  f"{RUNTIME_ANNOTATION!r} annotation); delete it with `wsk action delete`")
        resp = self._request("DELETE", url)
        with resp:
            if resp.status_code != 200:
                raise self._api_error(resp, "delete", name)
