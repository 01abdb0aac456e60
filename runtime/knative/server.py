#!/usr/bin/env python3
"""The cloudpool runtime for Knative-style HTTP services (Knative, Cloud Run, Code Engine...).

One process per container. It owns the *service side* of the ``knative`` backend's wire
protocol (the client side is ``cloudpool/compute/knative.py``): authentication, admission
(bounded concurrency, 429 when full), running invocation events, and streaming what
happens back to the client. Results themselves never travel over HTTP: the worker writes
them to object storage, exactly as on every other backend.

Endpoints::

    GET  /healthz   200 {"ok": true}                 no token: platform probes carry none
    GET  /runtime   200 runtime metadata             versions, packages, load   [token]
    POST /invoke    body: a JSON invocation event (cloudpool.protocol.encode_event) [token]
                    200 + a stream of JSON lines (below), 429 + Retry-After when full
    POST /cancel    body: {"id": <invocation id>, "reason": str}  -> {"cancelled": bool} [token]

The token is the deployment's shared secret (``--token`` or ``CLOUDPOOL_RUNTIME_TOKEN``),
sent as ``Authorization: Bearer <token>`` and compared in constant time. An invocation's
id is its batch's status prefix in storage (``protocol.Keys.batch_status_prefix``), so
the client can name it in ``/cancel`` without waiting for any answer.

``/invoke`` answers as soon as the invocation is handed to a worker, then streams one
JSON object per line (chunked transfer encoding, as Knative and Cloud Run allow)::

    {"segment": <status>}   a segment's results and status object are stored; <status> is
                            the same JSON as in storage, so the client can fetch the
                            results now instead of waiting for its next LIST
    {"lost": {"reason": str, "running_call": int|null, "timed_out": bool}}
                            the worker process died or was stopped; running_call is the
                            index in the batch of the call it was running
    {"alive": seconds}      heartbeat every --heartbeat seconds while calls run, so the
                            client can tell a long call from a vanished instance
    {"done": {...}}         always the last line; a stream that ends without it was cut

Why worker processes and not threads of this server: calls run in long-lived worker
processes managed by cloudpool's own ``local`` backend engine (the same code that runs
calls on the client's machine in local mode). That gives CPU parallelism past the GIL
(``--concurrency`` calls really run at once), per-call timeouts (``worker.handle`` arms
``SIGALRM``, which only works in a process's main thread), and crash isolation: a call
that segfaults, calls ``os._exit`` or is OOM-killed takes down one worker process, and
the engine names the call that was running, so the client fails just that call and
re-runs the rest of its batch. A call that even ignores its ``SIGALRM`` is stopped by
the client's deadline (the manager's ``timeout`` + grace), which reaches this server as
``POST /cancel`` and kills that worker process.

Run it directly (the repository root or an installed cloudpool must be importable)::

    CLOUDPOOL_RUNTIME_TOKEN=secret python runtime/knative/server.py --host 127.0.0.1 --port 8080

Knative sets ``PORT``; it is the default for ``--port``. SIGTERM stops accepting new
requests, lets running invocations finish for up to ``--grace`` seconds, then exits.
"""
from __future__ import annotations

import argparse
import collections
import hmac
import importlib.metadata
import json
import logging
import os
import platform
import queue
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from cloudpool import __version__ as cloudpool_version
from cloudpool import protocol
from cloudpool.compute.base import InvocationLost, SegmentDone
from cloudpool.compute.local import LocalBackend

LOGGER = logging.getLogger("cloudpool.runtime.knative")

TOKEN_ENV = "CLOUDPOOL_RUNTIME_TOKEN"
#: Cloud Run's request-size limit for HTTP/1 (events carry at most ``inline_limit``
#: bytes of arguments; bigger ones travel through storage, so this is generous).
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: An unauthenticated or refused request's body is read (to keep the connection usable)
#: only up to this size; beyond it the connection is closed instead.
_DRAIN_LIMIT = 1024 * 1024
_MAX_REASON = 200


def invocation_id(event: Dict[str, Any]) -> str:
    """The id of an invocation: its batch's status prefix (unique per executor, job and batch)."""
    keys = protocol.Keys(str(event["keys"]["root"]), str(event["keys"]["executor"]))
    return keys.batch_status_prefix(str(event["job"]), int(event["batch"]))


def _id_of_status(status: Dict[str, Any]) -> str:
    # ".../status/00000012.0003.json" -> ".../status/00000012." (see invocation_id)
    return status["key"].rsplit(".", 2)[0] + "."


class Runtime:
    """Admission, the worker engine, and the routing of engine notices to open streams."""

    def __init__(self, *, token: Optional[str], concurrency: int, heartbeat: float,
                 max_body: int, start_method: str) -> None:
        self._token = token.encode() if token else None
        self.concurrency = concurrency
        self.heartbeat = heartbeat
        self.max_body = max_body
        self.start_method = start_method
        self.started = time.time()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._streams: Dict[str, "queue.SimpleQueue[Any]"] = {}
        self._stats: collections.Counter = collections.Counter()
        self._packages: Optional[Dict[str, str]] = None
        # The engine never queues: admission (the semaphore) keeps at most `concurrency`
        # invocations inside it, one per worker process.
        self.engine = LocalBackend({"start_method": start_method}, max_workers=concurrency,
                                   storage_url="", storage_options={})
        self.engine.start(self._on_notice)

    # ------------------------------------------------------------------ auth, admission
    def authorized(self, header: Optional[str]) -> bool:
        if self._token is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    def admit(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self._stats[what] += n

    # ------------------------------------------------------------------ streams
    def open_stream(self, inv_id: str) -> Optional["queue.SimpleQueue[Any]"]:
        """A queue that receives the engine's notices for ``inv_id`` (None: already running)."""
        with self._lock:
            if inv_id in self._streams:
                return None
            notices: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
            self._streams[inv_id] = notices
            self._stats["active"] += 1
            return notices

    def close_stream(self, inv_id: str) -> None:
        with self._lock:
            if self._streams.pop(inv_id, None) is not None:
                self._stats["active"] -= 1

    def active(self) -> int:
        with self._lock:
            return self._stats["active"]

    def _on_notice(self, notice: Any) -> None:
        """Engine callback (its reader thread): hand the notice to the request streaming it."""
        if isinstance(notice, SegmentDone):
            inv_id = _id_of_status(notice.status)
        elif isinstance(notice, InvocationLost):
            inv_id = notice.inv
        else:
            LOGGER.warning("unexpected notice from the worker engine: %r", notice)
            return
        with self._lock:
            notices = self._streams.get(inv_id)
        if notices is None:
            LOGGER.debug("notice for %s, which nobody is streaming any more: %r", inv_id, notice)
            return
        notices.put(notice)

    def cancel(self, inv_id: str, reason: str) -> bool:
        """Stop a running invocation (its worker process is killed; the stream reports it lost)."""
        with self._lock:
            known = inv_id in self._streams
        if not known or not self.engine.cancel(inv_id, reason):
            return False
        self.count("cancelled")
        return True

    # ------------------------------------------------------------------ metadata
    def packages(self) -> Dict[str, str]:
        if self._packages is None:
            found: Dict[str, str] = {}
            for dist in importlib.metadata.distributions():
                name = dist.metadata.get("Name")
                if name:
                    found[name] = dist.version
            self._packages = dict(sorted(found.items(), key=lambda kv: kv[0].lower()))
        return self._packages

    def metadata(self) -> Dict[str, Any]:
        with self._lock:
            stats = dict(self._stats)
        stats.setdefault("active", 0)
        return {
            "runtime": "cloudpool-knative",
            "versions": protocol.versions(),
            "protocol": protocol.PROTOCOL_VERSION,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.concurrency,
            "start_method": self.start_method,
            "uptime": round(time.time() - self.started, 3),
            "stats": stats,
            "packages": self.packages(),
        }

    def wait_idle(self, seconds: float) -> bool:
        """Wait until no invocation runs (graceful shutdown); False if some still run."""
        deadline = time.monotonic() + seconds
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.active()

    def shutdown(self) -> None:
        self.engine.shutdown(wait=True)


class _Slot:
    """One admission slot (and the stream it serves), freed exactly once."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.stream: Optional[str] = None
        self._held = True

    def free(self) -> None:
        if self._held:
            self._held = False
            if self.stream is not None:
                self._runtime.close_stream(self.stream)
            self._runtime.release()


class _ChunkedLines:
    """Writes JSON lines as HTTP/1.1 chunks; remembers (instead of raising) a vanished client."""

    def __init__(self, wfile) -> None:
        self._wfile = wfile
        self.broken: Optional[BaseException] = None

    def send(self, objects: Iterable[Dict[str, Any]], final: bool = False) -> None:
        if self.broken is not None:
            return
        data = b"".join(protocol.json_bytes(obj) + b"\n" for obj in objects)
        # One write per event (and the last line with the terminating chunk): with
        # TCP_NODELAY each line leaves at once, without waiting for the previous ACK.
        frame = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if final:
            frame += b"0\r\n\r\n"
        try:
            self._wfile.write(frame)
        except OSError as exc:  # BrokenPipe, ConnectionReset: the client went away
            self.broken = exc


class Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection (keep-alive); ``self.server.runtime`` does the work."""

    protocol_version = "HTTP/1.1"
    server_version = f"cloudpool-knative-runtime/{cloudpool_version}"
    sys_version = ""
    #: Socket time-out: a keep-alive connection idle this long is closed (each one holds a
    #: thread), and a client that stops reading a stream this long is dropped.
    timeout = 600

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            LOGGER.debug("TCP_NODELAY not available on this socket")

    @property
    def runtime(self) -> Runtime:
        return self.server.runtime  # type: ignore[attr-defined]

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        LOGGER.debug("%s %s -> %s", self.command, self.path, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOGGER.info("%s: " + format, self.address_string(), *args)

    # ------------------------------------------------------------------ helpers
    def _send_json(self, code: int, obj: Dict[str, Any],
                   headers: Sequence[Tuple[str, str]] = ()) -> None:
        body = protocol.json_bytes(obj) + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError as exc:
            LOGGER.info("%s went away before the answer was sent: %s", self.address_string(), exc)
            self.close_connection = True

    def _error(self, code: int, message: str, headers: Sequence[Tuple[str, str]] = ()) -> None:
        self._send_json(code, {"error": message}, headers)

    def _body_length(self) -> Optional[int]:
        """The request's Content-Length, or None after answering an error for it."""
        raw = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._error(411, "chunked request bodies are not accepted; send Content-Length")
            return None
        if raw is None:
            return 0
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            self._error(400, f"bad Content-Length {raw!r}")
            return None
        return length

    def _drain(self, length: int) -> None:
        """Read and drop a body we will not use, so the connection stays usable."""
        if length > _DRAIN_LIMIT:
            self.close_connection = True  # not worth reading; the client reconnects
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)

    def _read(self, length: int) -> Optional[bytes]:
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            self.close_connection = True
            return None
        return data

    def _authorized(self, body_length: int) -> bool:
        if self.runtime.authorized(self.headers.get("Authorization")):
            return True
        self.runtime.count("rejected_auth")
        self._drain(body_length)
        self._error(401, "missing or wrong token: send 'Authorization: Bearer <token>' with the "
                         "token this runtime was started with (CLOUDPOOL_RUNTIME_TOKEN)",
                    [("WWW-Authenticate", 'Bearer realm="cloudpool"')])
        return False

    # ------------------------------------------------------------------ endpoints
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send_json(200, {"ok": True})
        elif path == "/runtime":
            if self._authorized(0):
                self._send_json(200, self.runtime.metadata())
        else:
            self._error(404, f"no endpoint {path!r}: GET /healthz or /runtime, POST /invoke or /cancel")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        length = self._body_length()
        if length is None:
            return
        if path not in ("/invoke", "/cancel"):
            self._drain(length)
            self._error(404, f"no endpoint {path!r}: POST /invoke or /cancel")
            return
        if not self._authorized(length):
            return
        if length > self.runtime.max_body:
            self.close_connection = True
            self._error(413, f"the request body has {length} bytes, more than this runtime's limit "
                             f"of {self.runtime.max_body} (--max-body); lower the client's inline_limit")
            return
        if path == "/cancel":
            self._cancel(length)
        else:
            self._invoke(length)

    def _cancel(self, length: int) -> None:
        body = self._read(length)
        try:
            request = json.loads(body or b"")
            inv_id = str(request["id"])
            reason = str(request.get("reason") or "cancelled by the client")[:_MAX_REASON]
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"expected a JSON object with 'id' (and 'reason'): {exc}")
            return
        self._send_json(200, {"cancelled": self.runtime.cancel(inv_id, reason)})

    def _invoke(self, length: int) -> None:
        rt = self.runtime
        if not rt.admit():
            rt.count("rejected_busy")
            self._drain(length)
            self._error(429, f"all {rt.concurrency} slots of this instance are busy; retry later",
                        [("Retry-After", "1")])
            return
        slot = _Slot(rt)
        try:
            body = self._read(length)
            if body is None:
                return  # the client hung up mid-body
            try:
                event = protocol.decode_event(body)
                inv_id = invocation_id(event)
                if not isinstance(event["storage"]["url"], str):
                    raise TypeError("storage.url must be a string")
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                self._error(400, f"the body is not a cloudpool invocation event ({type(exc).__name__}: "
                                 f"{exc}); the client and runtime may speak different protocols")
                return
            del body
            notices = rt.open_stream(inv_id)
            if notices is None:
                self._error(409, f"invocation {inv_id} is already running here")
                return
            slot.stream = inv_id
            try:
                rt.engine.invoke(inv_id, event)
            except RuntimeError as exc:  # the engine is shutting down
                self._error(503, f"this instance is shutting down ({exc}); retry",
                            [("Retry-After", "1")])
                return
            del event
            rt.count("invocations")
            self._stream(inv_id, notices, slot)
        finally:
            slot.free()

    def _stream(self, inv_id: str, notices: "queue.SimpleQueue[Any]", slot: "_Slot") -> None:
        rt = self.runtime
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # ask proxies not to buffer the stream
        self.send_header("X-Cloudpool-Invocation", inv_id)
        self.end_headers()
        out = _ChunkedLines(self.wfile)
        started = time.monotonic()
        segments = 0
        cancelled_for_client = False
        outcome = "done"
        while True:
            try:
                notice = notices.get(timeout=rt.heartbeat)
            except queue.Empty:
                out.send([{"alive": round(time.monotonic() - started, 3)}])
            else:
                if isinstance(notice, SegmentDone):
                    segments += 1
                    if notice.status.get("last"):
                        break_with = [{"segment": notice.status}]
                        outcome = "done"
                        break
                    out.send([{"segment": notice.status}])
                else:
                    break_with = [{"lost": {"reason": notice.reason, "running_call": notice.running_call,
                                            "timed_out": notice.timed_out}}]
                    outcome = "lost"
                    break
            if out.broken is not None and not cancelled_for_client:
                # Nobody will read the results' news; stop the work instead of finishing it.
                LOGGER.info("client of %s went away (%s); stopping the invocation", inv_id, out.broken)
                cancelled_for_client = True
                rt.cancel(inv_id, "the client disconnected")
        rt.count("completed" if outcome == "done" else "lost")
        # The worker is done: free the slot *before* the last line leaves, or the client,
        # which may send its next request the moment it reads that line, could find the
        # slot still taken and get a 429 for capacity that is in fact free.
        slot.free()
        seconds = round(time.monotonic() - started, 6)
        out.send(break_with + [{"done": {"outcome": outcome, "segments": segments, "seconds": seconds}}],
                 final=True)
        if out.broken is not None:
            self.close_connection = True


class RuntimeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: bursts of connections from many clients

    def __init__(self, address: Tuple[str, int], runtime: Runtime) -> None:
        super().__init__(address, Handler)
        self.runtime = runtime


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py", description="cloudpool's HTTP runtime for Knative-style services.")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"),
                        help="address to listen on (default: $HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")),
                        help="port to listen on (default: $PORT, which Knative sets, or 8080)")
    parser.add_argument("--token", default=None,
                        help=f"shared token clients must send; prefer the {TOKEN_ENV} environment "
                             f"variable (a command line is visible to other local users)")
    parser.add_argument("--insecure-no-token", action="store_true",
                        help="accept requests without a token (only behind an authenticating proxy)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                        help="invocations run at once, one worker process each; match Knative's "
                             "containerConcurrency (default: the CPU count)")
    parser.add_argument("--heartbeat", type=float, default=5.0,
                        help="seconds between keep-alive lines while calls run (default 5)")
    parser.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY,
                        help=f"largest request body accepted, in bytes (default {DEFAULT_MAX_BODY})")
    # forkserver is left out on purpose: the local engine's workers watch their parent's
    # pid, and under forkserver their parent is the fork server, not this process.
    parser.add_argument("--start-method", choices=("spawn", "fork"), default="spawn",
                        help="how worker processes start: spawn (default; safe in a threaded "
                             "server) or fork (faster cold start)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="on SIGTERM, seconds to let running invocations finish (default 30)")
    # Settings are arguments, not CLOUDPOOL_* variables: worker processes inherit the
    # environment, and cloudpool's config treats every CLOUDPOOL_* name as a setting.
    parser.add_argument("--log-level", default="WARNING",
                        help="logging level (default WARNING; INFO logs each connection problem)")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.heartbeat <= 0:
        parser.error("--heartbeat must be a positive number of seconds")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Read the token, then drop it from the environment: worker processes (and the user
    # code they run) inherit the environment and have no business with it.
    env_token = os.environ.pop(TOKEN_ENV, None)
    token = args.token or env_token
    if not token and not args.insecure_no_token:
        print(f"server.py: no token: set {TOKEN_ENV} (or pass --token); use --insecure-no-token "
              f"only behind a proxy that authenticates callers", file=sys.stderr)
        return 2
    runtime = Runtime(token=token, concurrency=args.concurrency, heartbeat=args.heartbeat,
                      max_body=args.max_body, start_method=args.start_method)
    try:
        server = RuntimeServer((args.host, args.port), runtime)
    except OSError as exc:
        runtime.shutdown()
        print(f"server.py: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                               name="cloudpool-runtime-accept", daemon=True)
    serving.start()
    LOGGER.warning("cloudpool runtime %s listening on http://%s:%d (concurrency %d, %s workers)",
                   cloudpool_version, args.host, server.server_address[1], args.concurrency,
                   args.start_method)
    while not stop.wait(1.0):
        pass
    server.shutdown()      # no new connections; streams already open keep going
    server.server_close()
    if not runtime.wait_idle(args.grace):
        LOGGER.warning("%d invocation(s) still running after %g s; stopping them", runtime.active(), args.grace)
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
