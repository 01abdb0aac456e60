"""The ``knative`` backend: each invocation is one HTTP request to a cloudpool runtime service.

This module owns the client side of the HTTP runtime's wire protocol (the service side,
and the protocol itself, are described in ``runtime/knative/server.py``): the backend's
options, spreading invocations over service URLs, retrying requests that surely did not
run, turning each response stream into the manager's notices, the version handshake
before the first invocation, and cancelling invocations that ran out of time.

Data flow::

    manager ── invoke(inv, event) ──> queue ──> posting thread ── POST /invoke ──> runtime
                                                     │   (least outstanding URL first)   │ worker writes
    manager <── SegmentDone / InvocationLost ────────┘ <── JSON lines: segment/lost/done ─┘ results+status
                                                                                          to storage

``invoke`` only queues: a pool of posting threads (one per unit of concurrency) sends
the requests, so the manager never waits on the network. A response is a stream of
JSON lines; each ``segment`` line carries the status object the worker just stored, and
becomes a ``SegmentDone`` notice, so the manager fetches results at once instead of at
its next LIST. Storage stays the source of truth: if a notice is lost, polling (every
``poll_interval_max`` seconds when notices flow) still finds the status.

What happens to a request, by answer:

- **200**: streamed to the end; ``lost`` lines (a worker process died, was killed for
  its timeout) become ``InvocationLost`` with the running call, as on the local backend.
- **429 / 503** (the instance or Knative's activator is full): tried again, on the least
  loaded other URL first, with jittered exponential back-off, for at most
  ``retry_seconds``; then the invocation is reported lost, naming URL and status.
- **connection refused / DNS / connect time-out** (surely never reached the service):
  the URL is benched for a moment and the request goes elsewhere; after a bounded
  number of such failures the invocation is reported lost.
- **a connection that breaks after the request was sent**, a stream that ends without
  its ``done`` line, or 30 s without even a heartbeat: the service instance died with
  the invocation in it. It is *not* re-sent (it may have partly run); it is reported
  lost, and the manager keeps whatever results the worker did store.
- **401 / 403**: the token is wrong; **other 4xx / 5xx**: reported lost with the
  service's own explanation.

Version handshake: ``start`` fetches ``GET /runtime`` from every URL in parallel and the
first ``invoke`` waits for the answers, so nothing is sent anywhere before every reachable
runtime's Python / cloudpickle / cloudpool versions are known. A runtime that differs
breaks the executor with a ``VersionMismatchError`` naming both sides and the URL (the
same way a worker's in-band refusal does); a URL that did not answer is checked before
the first request to it.

Capacity: ``concurrency`` is each service's container concurrency (the runtime's
``--concurrency``); without ``max_workers`` the backend runs at most the sum over URLs
at once. With ``max_workers`` it runs that many, spread over the URLs in proportion to
their concurrency -- for one autoscaled Knative URL, that is how many pods' worth of
requests to keep in flight (Knative adds pods; its 429/503s are retried).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import random
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import requests
import requests.adapters
from urllib3 import exceptions as urllib3_exceptions

from .. import protocol
from .._version import __version__
from ..errors import VersionMismatchError
from ..storage import split_url
from . import declared
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone

LOGGER = logging.getLogger("cloudpool")

#: Environment variable read when no ``token`` option is given. The config-native form,
#: ``CLOUDPOOL_KNATIVE__TOKEN`` (a ``knative`` section option), works too.
TOKEN_ENV = "CLOUDPOOL_KNATIVE_TOKEN"
#: Largest event accepted (Cloud Run's HTTP/1 request limit; the runtime's --max-body default).
#: Events hold at most ``inline_limit`` bytes of arguments, so only a huge setting reaches it.
PAYLOAD_LIMIT = 32 * 1024 * 1024
DEFAULT_CONCURRENCY = 4
#: Knative's default max-revision-timeout-seconds: the longest one request may take.
DEFAULT_REQUEST_TIMEOUT = 600.0
#: How long an invocation refused with 429/503 or unreachable keeps being retried.
DEFAULT_RETRY_SECONDS = 60.0
#: HTTP invocations cost milliseconds (a request, two storage writes, a fetch), so a
#: batch worth a quarter second amortises them while keeping results flowing.
BATCH_TARGET_SECONDS = 0.25

_CONNECT_TIMEOUT = 5.0
#: The runtime sends a heartbeat line every 5 s while calls run; six missed ones mean the
#: instance is gone (a host that vanished sends no RST, so only silence tells).
_SILENCE_LIMIT = 30.0
_METADATA_TIMEOUT = 10.0
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
_RETRY_AFTER_MAX = 5.0
_DOWN_MAX = 30.0


class _Service:
    """One runtime URL and what the backend knows about it."""

    __slots__ = ("url", "weight", "outstanding", "busy_until", "down_until", "failures",
                 "runtime", "check_lock")

    def __init__(self, url: str, weight: int) -> None:
        self.url = url
        self.weight = weight
        self.outstanding = 0
        self.busy_until = 0.0     # answered 429/503: prefer others until then
        self.down_until = 0.0     # refused connections: avoid until then
        self.failures = 0         # consecutive connection failures
        self.runtime: Optional[Dict[str, Any]] = None  # /runtime answer, once checked
        self.check_lock = threading.Lock()


class _Invocation:
    __slots__ = ("inv", "job", "batch", "body", "cancel_id", "state", "service", "cancel_reason")

    def __init__(self, inv: str, job: str, batch: int, body: bytes, cancel_id: str) -> None:
        self.inv = inv
        self.job = job
        self.batch = batch
        self.body = body
        self.cancel_id = cancel_id
        self.state = "queued"      # -> "posting" -> "finished"
        self.service: Optional[_Service] = None
        self.cancel_reason: Optional[str] = None


class _Unreachable(Exception):
    """The request surely never reached the service (nothing ran)."""


def _surely_not_sent(exc: BaseException) -> bool:
    """True if ``exc`` happened before any byte of the request reached the service."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError,
                        requests.exceptions.InvalidURL)):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
        return isinstance(reason, (urllib3_exceptions.NewConnectionError,
                                   urllib3_exceptions.ConnectTimeoutError))
    return False


def _short(exc: BaseException) -> str:
    text = str(exc)
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    if reason is not None:
        text = str(reason)
    return f"{type(exc).__name__}: {text}"[:300]


def _error_text(resp: requests.Response) -> str:
    try:
        body = resp.content[:2000]
    except requests.RequestException as exc:
        return f"(no body: {_short(exc)})"
    try:
        message = json.loads(body).get("error")
        if message:
            return str(message)
    except (ValueError, AttributeError):
        pass
    return body.decode("utf-8", "replace").strip()[:300] or resp.reason or ""


def _retry_after(resp: requests.Response) -> Optional[float]:
    raw = resp.headers.get("Retry-After")
    try:
        return min(max(float(raw), 0.0), _RETRY_AFTER_MAX) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off


def _positive_number(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"the knative backend's {name!r} must be a number of seconds {bound}, not {value!r}")
    return float(value)


def _normalize_url(url: Any) -> str:
    if not isinstance(url, str):
        raise ValueError(f"knative service URLs must be strings like 'https://svc.example.com', not {url!r}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"knative service URL {url!r} must start with http:// or https:// and name a host")
    if parts.query or parts.fragment:
        raise ValueError(f"knative service URL {url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


class KnativeBackend(ComputeBackend):
    """Runs invocations on cloudpool HTTP runtimes (``runtime/knative``) at one or more URLs."""

    name = "knative"
    option_names = declared.KNATIVE.options

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        opts = self.options
        if ("url" in opts) == ("urls" in opts):
            raise ValueError("the knative backend needs the runtime service's address: give either "
                             "url='https://...' or urls=[...] (several services), not both or neither")
        raw_urls = [opts["url"]] if "url" in opts else opts["urls"]
        if isinstance(raw_urls, str) or not isinstance(raw_urls, (list, tuple)) or not raw_urls:
            raise ValueError(f"the knative backend's 'urls' must be a non-empty list of URLs, not {raw_urls!r}")
        urls = [_normalize_url(u) for u in raw_urls]
        if len(set(urls)) != len(urls):
            raise ValueError(f"the knative backend's 'urls' lists a URL twice: {urls}")

        token = opts.get("token") or os.environ.get(TOKEN_ENV)
        if not isinstance(token, str) or not token:
            raise ValueError(
                "the knative backend needs the runtime's shared token: pass token=..., set the "
                "'knative: {token: ...}' config option or CLOUDPOOL_KNATIVE__TOKEN (it is the "
                "CLOUDPOOL_RUNTIME_TOKEN the runtime was started with)")
        self._token = token

        concurrency = opts.get("concurrency", DEFAULT_CONCURRENCY)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"the knative backend's 'concurrency' (per service, the runtime's "
                             f"--concurrency) must be an integer >= 1, not {concurrency!r}")
        self.request_timeout = _positive_number("request_timeout", opts.get("request_timeout", DEFAULT_REQUEST_TIMEOUT))
        self.retry_seconds = _positive_number("retry_seconds", opts.get("retry_seconds", DEFAULT_RETRY_SECONDS),
                                              allow_zero=True)
        notices = opts.get("notices", True)
        if not isinstance(notices, bool):
            raise ValueError(f"the knative backend's 'notices' must be true or false, not {notices!r}")
        self._notices = notices

        self._check_storage(storage_url)

        self._services = [_Service(u, concurrency) for u in urls]
        total = concurrency * len(urls)
        self.max_concurrency = max_workers if max_workers is not None else total

        self._cond = threading.Condition()
        self._queue: Deque[_Invocation] = collections.deque()
        self._jobs: Dict[str, _Invocation] = {}
        self._threads: List[threading.Thread] = []
        self._idle = 0  # posting threads waiting for work
        self._closing = False
        self._refused: Optional[BaseException] = None
        self._checks_done = threading.Event()
        self._rr = 0  # rotates ties between equally loaded services
        self._headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "User-Agent": f"cloudpool/{__version__}",
        }

    def _check_storage(self, storage_url: str) -> None:
        """Refuse a storage the runtimes cannot reach (a directory of this machine)."""
        scheme = split_url(storage_url)[0] if storage_url else "file"
        if scheme == "file":
            raise ValueError(
                f"the knative backend runs calls on other machines, which cannot read this machine's "
                f"directory {storage_url!r}: set storage to an object store both sides reach "
                f"(s3://, gs://, az:// or cos://)")

    # ------------------------------------------------------------------ declared
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_concurrency=self.max_concurrency,
            # One invocation queued ahead keeps a posting thread busy while the manager
            # prepares the next batch; everything else stays cancellable, as in the stdlib.
            max_in_flight=self.max_concurrency + 1,
            max_timeout=self.request_timeout,
            payload_limit=PAYLOAD_LIMIT,
            # Queued invocations are dropped; running ones are stopped through POST /cancel
            # (the runtime kills the worker process and reports the invocation lost).
            can_cancel=True,
            notifies=self._notices,
            batch_target_seconds=BATCH_TARGET_SECONDS,
            remote=True,
        )

    def describe(self) -> Dict[str, Any]:
        """Where calls run: each URL's runtime metadata (fetched once per URL)."""
        session = self._new_session()
        runtimes: Dict[str, Any] = {}
        try:
            for svc in self._services:
                if svc.runtime is None:
                    try:
                        svc.runtime = self._fetch_runtime(session, svc)
                    except (_Unreachable, OSError, RuntimeError) as exc:
                        runtimes[svc.url] = {"error": str(exc)}
                        continue
                runtimes[svc.url] = svc.runtime
        finally:
            session.close()
        return {"backend": self.name, "urls": [s.url for s in self._services],
                "concurrency": {s.url: s.weight for s in self._services},
                "max_concurrency": self.max_concurrency, "runtimes": runtimes}

    # ------------------------------------------------------------------ manager side
    #: A subclass sets this when its platform has no deployed runtime yet (the refusal
    #: naming the deploy command): start() then checks no URL and every invoke raises it,
    #: which the manager gives to the calls.
    _missing: Optional[BaseException] = None

    def start(self, notify) -> None:
        if self._missing is not None:
            self._notify = notify
            self._refused = self._missing
            self._checks_done.set()
            return
        super().start(notify)
        # The handshake runs in the background and the first invoke() waits for it: the
        # manager marks the first batch running before anything goes over the network,
        # as the stdlib does, so shutdown(cancel_futures=True) right after submitting
        # still lets the first calls run.
        threading.Thread(target=self._check_all, name="cloudpool-knative-handshake", daemon=True).start()

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        body = protocol.encode_event(event)
        if len(body) > PAYLOAD_LIMIT:
            raise ValueError(
                f"the invocation event is {len(body)} bytes, more than the knative runtime accepts "
                f"({PAYLOAD_LIMIT}); lower the 'inline_limit' setting so arguments travel through storage")
        keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])
        job = _Invocation(inv, event["job"], event["batch"], body,
                          keys.batch_status_prefix(event["job"], event["batch"]))
        # Before the first invocation, every runtime's versions (DESIGN). Bounded: the
        # checks' own time-outs end them; a URL still unanswered is checked again before
        # anything is sent to it.
        self._checks_done.wait(_CONNECT_TIMEOUT + _METADATA_TIMEOUT + 5.0)
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            self._refuse_job(job)
            return
        if refused is not None:
            raise type(refused)(str(refused))  # e.g. PermissionError: the calls fail with it
        with self._cond:
            if self._closing:
                raise RuntimeError("the knative backend is shut down")
            self._jobs[inv] = job
            self._queue.append(job)
            self._cond.notify()
            self._start_threads_locked()

    def cancel(self, inv: str, reason: str) -> bool:
        with self._cond:
            job = self._jobs.get(inv)
            if job is None or job.state == "finished":
                return False
            if job.state == "queued":
                self._queue.remove(job)
                self._jobs.pop(inv, None)
                job.state = "finished"
                self._notify(InvocationLost(inv, f"cancelled before it was sent ({reason})",
                                            timed_out=(reason == "timeout")))
                return True
            job.cancel_reason = reason
            svc = job.service
        if svc is None:
            return True  # between retries: its posting thread sees cancel_reason and reports it
        threading.Thread(target=self._cancel_remote, args=(job, svc, reason),
                         name="cloudpool-knative-cancel", daemon=True).start()
        return True

    def shutdown(self, wait: bool = True) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._queue.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            # Idle threads exit at once. A thread still streaming belongs to an invocation
            # the manager gave up on (deadline, terminate): it is a daemon, not waited for.
            deadline = time.monotonic() + 1.0
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ version handshake
    def _fetch_runtime(self, session: requests.Session, svc: _Service) -> Dict[str, Any]:
        """GET /runtime; raises _Unreachable, PermissionError or RuntimeError."""
        try:
            resp = session.get(svc.url + "/runtime", headers=self._headers,
                               timeout=(_CONNECT_TIMEOUT, _METADATA_TIMEOUT))
        except requests.RequestException as exc:
            raise _Unreachable(f"{svc.url}: cannot reach the runtime ({_short(exc)})") from exc
        with resp:
            if resp.status_code in (401, 403):
                raise PermissionError(
                    f"{svc.url} refused the token (HTTP {resp.status_code}): set the knative backend's "
                    f"'token' to the CLOUDPOOL_RUNTIME_TOKEN the runtime was started with")
            if resp.status_code in (429, 502, 503, 504):
                raise _Unreachable(f"{svc.url}: the runtime is not ready (HTTP {resp.status_code})")
            if resp.status_code != 200:
                raise RuntimeError(f"{svc.url}/runtime answered HTTP {resp.status_code} "
                                   f"({_error_text(resp)}); is this a cloudpool knative runtime?")
            try:
                body = resp.content
            except requests.RequestException as exc:
                raise _Unreachable(f"{svc.url}: the runtime's answer was cut ({_short(exc)})") from exc
        try:
            meta = json.loads(body)
            meta["versions"]["python"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"{svc.url}/runtime did not answer cloudpool runtime metadata "
                               f"({exc}); is this a cloudpool knative runtime?") from None
        return meta

    def _check(self, session: requests.Session, svc: _Service) -> None:
        """Fetch and check one service's runtime once; sets ``_refused`` if it must not be used.

        Raises ``_Unreachable`` (checked again before the next request to it).
        """
        with svc.check_lock:
            if svc.runtime is not None:
                return
            try:
                meta = self._fetch_runtime(session, svc)
            except (PermissionError, RuntimeError) as exc:
                self._refuse(exc)
                return
            mismatch = protocol.version_mismatch(protocol.versions(), meta.get("versions") or {})
            if mismatch is None and meta.get("protocol", protocol.PROTOCOL_VERSION) != protocol.PROTOCOL_VERSION:
                mismatch = (f"the runtime does not match this client: protocol {protocol.PROTOCOL_VERSION} "
                            f"on the client but {meta.get('protocol')} on the worker")
            if mismatch:
                self._refuse(VersionMismatchError(f"the knative runtime at {svc.url}: {mismatch}"))
                return
            svc.runtime = meta

    def _refuse(self, exc: BaseException) -> None:
        if self._refused is None:
            self._refused = exc

    def _refuse_job(self, job: _Invocation) -> None:
        """Fail ``job`` because the backend refuses to run anything (``_refused``).

        A version mismatch is reported the way a worker reports one -- a fatal "version"
        status for the batch -- so the manager breaks the executor with a
        ``VersionMismatchError`` naming both sides, exactly as if the runtime had refused
        in band. Other refusals (a wrong token) fail the job's calls with that error.
        """
        refused = self._refused
        if isinstance(refused, VersionMismatchError):
            self._finish(job)
            self._notify(SegmentDone({
                "protocol": protocol.PROTOCOL_VERSION, "job": job.job, "batch": job.batch,
                "segment": 0, "first": 0, "calls": [], "offsets": [0], "result_key": None,
                "last": True, "fatal": {"kind": "version", "message": str(refused)},
                "worker": {"id": "knative-client-handshake", "versions": {}},
                # Not a storage key: the refusal happened here, before anything was sent.
                "key": job.cancel_id + "refused",
            }))
            return
        self._finish(job, f"the knative backend refuses to run it: {refused}", error=refused)

    def _check_all(self) -> None:
        """Check every URL's runtime at once (DESIGN: before the first invocation)."""

        def check(svc: _Service) -> None:
            session = self._new_session()
            try:
                self._check(session, svc)
            except _Unreachable as exc:
                # Maybe scaled to zero or restarting: the posting thread checks it again
                # (and retries, bounded) before sending it anything.
                LOGGER.info("cloudpool: %s; will check again before using it", exc)
            finally:
                session.close()

        threads = [threading.Thread(target=check, args=(svc,), name="cloudpool-knative-check", daemon=True)
                   for svc in self._services]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            self._checks_done.set()

    # ------------------------------------------------------------------ posting threads
    def _start_threads_locked(self) -> None:
        """Start posting threads on demand (up to max_concurrency), not all up front."""
        while self._idle < len(self._queue) and len(self._threads) < self.max_concurrency and not self._closing:
            t = threading.Thread(target=self._post_loop, name=f"cloudpool-knative-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
            self._idle += 1  # it waits for work as soon as it runs
            t.start()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=len(self._services), pool_maxsize=2,
                                                max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def _post_loop(self) -> None:
        session = self._new_session()  # one per thread: a Session is not guaranteed thread-safe
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        return
                    self._idle -= 1
                    job = self._queue.popleft()
                    job.state = "posting"
                try:
                    self._run(session, job)
                except Exception as exc:  # noqa: BLE001 - a bug here must not hang the batch's futures
                    LOGGER.exception("cloudpool: the knative backend failed while sending %s", job.inv)
                    self._finish(job, f"the knative backend failed while sending it: {exc!r}", error=exc)
                with self._cond:
                    self._idle += 1
        finally:
            session.close()

    def _finish(self, job: _Invocation, lost_reason: Optional[str] = None, *,
                running_call: Optional[int] = None, timed_out: bool = False,
                error: Optional[BaseException] = None) -> None:
        """Forget ``job``; report it lost (unless it finished normally)."""
        with self._cond:
            self._jobs.pop(job.inv, None)
            job.state = "finished"
        if lost_reason is not None:
            self._notify(InvocationLost(job.inv, lost_reason, running_call=running_call,
                                        timed_out=timed_out, error=error))

    def _pick(self, now: float) -> Tuple[Optional[_Service], float]:
        """The least loaded usable service, or (None, seconds until one may be usable)."""
        with self._cond:
            n = len(self._services)
            self._rr = (self._rr + 1) % n
            order = self._services[self._rr:] + self._services[:self._rr]
            usable = [s for s in order if s.down_until <= now and s.busy_until <= now]
            if usable:
                svc = min(usable, key=lambda s: s.outstanding / s.weight)
                svc.outstanding += 1
                return svc, 0.0
            return None, min(max(s.down_until, s.busy_until) for s in self._services) - now

    def _backoff(self, attempt: int) -> float:
        return min(_BACKOFF_MAX, _BACKOFF_FIRST * (2 ** attempt)) * random.uniform(0.5, 1.5)

    def _run(self, session: requests.Session, job: _Invocation) -> None:
        """Send ``job`` until it ran (notices emitted) or must be reported lost."""
        give_up = time.monotonic() + self.retry_seconds
        # With one URL these tries span ~12 s of benching (see below): time for a
        # restarting instance to come back, yet a bounded wait for a dead one.
        max_unreachable = len(self._services) + 4
        unreachable = refusals = 0
        last_problem = "no attempt was made"
        while True:
            if self._closing:
                self._finish(job)  # the manager is gone; nobody waits for a notice
                return
            if job.cancel_reason is not None:
                self._finish(job, f"cancelled before it reached a service ({job.cancel_reason})",
                             timed_out=(job.cancel_reason == "timeout"))
                return
            if self._refused is not None:
                self._refuse_job(job)
                return
            now = time.monotonic()
            svc, wait = self._pick(now)
            if svc is None:
                if now + wait > give_up:
                    if unreachable == refusals == 0:
                        # Every URL was benched by earlier invocations: say which and why.
                        down = [s.url for s in self._services if s.down_until > now]
                        busy = [s.url for s in self._services if s.busy_until > now]
                        last_problem = (f"cannot connect to {', '.join(down)} (refused earlier)" if down
                                        else f"{', '.join(busy)} answered busy" if busy else last_problem)
                    self._finish(job, f"no knative service could take it within retry_seconds="
                                      f"{self.retry_seconds:g} s; last: {last_problem}")
                    return
                time.sleep(min(wait, 1.0))
                continue
            try:
                outcome = self._attempt(session, svc, job)
            finally:
                with self._cond:
                    svc.outstanding -= 1
                    job.service = None
            if outcome is None:
                return
            kind, problem, retry_after = outcome
            last_problem = problem
            now = time.monotonic()
            if kind == "busy":
                refusals += 1
                # A slot often frees within milliseconds (another client's call ends):
                # try again soon at first, and honour Retry-After once it keeps happening.
                delay = self._backoff(refusals)
                if retry_after is not None and refusals > 2:
                    delay = max(delay, retry_after * random.uniform(0.8, 1.2))
                svc.busy_until = now + delay
            else:  # unreachable
                unreachable += 1
                svc.failures += 1
                # Benched for longer after each failure in a row (0.4 s doubling, up to
                # 30 s), so a dead URL costs the others one refused connection now and then.
                svc.down_until = now + min(_DOWN_MAX, _BACKOFF_FIRST * 2 ** min(svc.failures + 2, 16)) \
                    * random.uniform(0.5, 1.5)
                if unreachable >= max_unreachable:
                    self._finish(job, f"could not reach a knative service after {unreachable} tries; "
                                      f"last: {problem}")
                    return
            if now >= give_up:
                self._finish(job, f"gave up after retry_seconds={self.retry_seconds:g} s; last: {problem}")
                return
            # The next _pick() waits for the first service to come off the bench.

    def _attempt(self, session: requests.Session, svc: _Service,
                 job: _Invocation) -> Optional[Tuple[str, str, Optional[float]]]:
        """One request. None: done with the job (ran, or reported lost); else (kind, problem, retry_after)."""
        if svc.runtime is None:
            try:
                self._check(session, svc)
            except _Unreachable as exc:
                return ("unreachable", str(exc), None)
            if self._refused is not None:
                self._refuse_job(job)
                return None
        with self._cond:
            job.service = svc
            cancelled = job.cancel_reason
        if cancelled is not None:
            self._finish(job, f"cancelled before it was sent ({cancelled})", timed_out=(cancelled == "timeout"))
            return None
        sent_at = time.monotonic()
        try:
            resp = session.post(svc.url + "/invoke", data=job.body, headers=self._headers, stream=True,
                                timeout=(_CONNECT_TIMEOUT, _SILENCE_LIMIT))
        except requests.RequestException as exc:
            if _surely_not_sent(exc):
                return ("unreachable", f"{svc.url}: cannot connect ({_short(exc)})", None)
            self._finish(job, f"the request to {svc.url} failed after it was sent ({_short(exc)}); the "
                              f"service instance probably died, and the invocation may have partly run",
                         error=exc)
            return None
        svc.failures = 0
        with resp:
            code = resp.status_code
            if code == 200:
                self._consume(resp, svc, job, sent_at)
                return None
            text = _error_text(resp)
            if code in (429, 503):
                return ("busy", f"{svc.url} answered HTTP {code} ({text})", _retry_after(resp))
            if code in (401, 403):
                err = PermissionError(f"{svc.url} refused the token (HTTP {code}): set the knative "
                                      f"backend's 'token' to the runtime's CLOUDPOOL_RUNTIME_TOKEN")
                self._refuse(err)
                self._finish(job, str(err), error=err)
                return None
            self._finish(job, f"{svc.url} answered HTTP {code}: {text}")
            return None

    def _consume(self, resp: requests.Response, svc: _Service, job: _Invocation, sent_at: float) -> None:
        """Turn the runtime's JSON lines into notices, until the stream ends or breaks."""
        deadline = sent_at + self.request_timeout
        lost: Optional[Dict[str, Any]] = None
        done = False
        try:
            # Read to the end of the stream even after "done": a response read to its
            # last chunk gives its connection back to the pool for the next request.
            for line in resp.iter_lines(chunk_size=1 << 16):
                if line:
                    message = json.loads(line)
                    if "segment" in message:
                        if self._notices:
                            self._notify(SegmentDone(message["segment"]))
                    elif "lost" in message:
                        lost = message["lost"]
                        # Reported now: the manager re-queues the rest of the batch at once.
                        self._finish(job, f"{svc.url}: {lost.get('reason')}",
                                     running_call=lost.get("running_call"),
                                     timed_out=bool(lost.get("timed_out")))
                    elif "done" in message:
                        done = True
                if not done and lost is None and time.monotonic() > deadline:
                    self._send_cancel(svc, job.cancel_id, "request_timeout")
                    self._finish(job, f"{svc.url} did not finish it within request_timeout="
                                      f"{self.request_timeout:g} s", timed_out=True)
                    return
        except requests.exceptions.ConnectionError as exc:
            if done or lost is not None:
                return  # only the end of the stream was lost; the outcome is known
            # requests reports a read time-out while streaming as a ConnectionError too.
            if "timed out" in str(exc).lower():
                why = f"no word from {svc.url} for {_SILENCE_LIMIT:g} s (not even a heartbeat)"
            else:
                why = f"the connection to {svc.url} broke ({_short(exc)})"
            self._finish(job, f"{why} while the invocation ran; the service instance probably died",
                         error=exc)
            return
        except (requests.RequestException, urllib3_exceptions.HTTPError) as exc:
            if done or lost is not None:
                return
            self._finish(job, f"the answer from {svc.url} was cut ({_short(exc)}); the service instance "
                              f"probably died while the invocation ran", error=exc)
            return
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if lost is None:
                self._finish(job, f"{svc.url} answered something that is not a cloudpool runtime stream "
                                  f"({type(exc).__name__}: {exc})", error=exc)
            return
        if lost is not None:
            return
        if done:
            self._finish(job)
        else:
            self._finish(job, f"the answer from {svc.url} ended before the invocation finished; the "
                              f"service instance probably died while it ran")

    # ------------------------------------------------------------------ cancelling
    def _send_cancel(self, svc: _Service, cancel_id: str, reason: str) -> Optional[bool]:
        """POST /cancel; True/False: the runtime's answer, None: it could not be asked."""
        session = self._new_session()
        try:
            resp = session.post(svc.url + "/cancel", json={"id": cancel_id, "reason": reason},
                                headers=self._headers, timeout=(_CONNECT_TIMEOUT, _METADATA_TIMEOUT))
            with resp:
                if resp.status_code != 200:
                    LOGGER.warning("cloudpool: %s would not cancel %s: HTTP %s %s", svc.url, cancel_id,
                                   resp.status_code, _error_text(resp))
                    return None
                return bool(resp.json().get("cancelled"))
        except (requests.RequestException, ValueError) as exc:
            LOGGER.warning("cloudpool: could not ask %s to cancel %s: %s", svc.url, cancel_id, _short(exc))
            return None
        finally:
            session.close()

    def _cancel_remote(self, job: _Invocation, svc: _Service, reason: str) -> None:
        if self._send_cancel(svc, job.cancel_id, reason):
            return  # the runtime killed the worker; its stream reports the loss (with the running call)
        # Not running there (yet, or any more), or unreachable: report it ourselves. A
        # later notice for the same invocation is ignored by the manager.
        with self._cond:
            if job.state == "finished":
                return
        self._notify(InvocationLost(job.inv, f"stopped ({reason}); {svc.url} could not stop it itself",
                                    timed_out=(reason == "timeout")))
