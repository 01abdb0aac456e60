#!/usr/bin/env python3
"""The cloudpool runtime for Apache OpenWhisk / IBM Cloud Functions: an action proxy.

OpenWhisk runs a Docker action as a container that listens on port 8080 and implements
the platform's *action interface* (apache/openwhisk docs/actions-new.md):

    POST /init  {"value": {"name", "main", "code", "binary", ...}}
                once per container, before any activation; a second /init is refused
    POST /run   {"value": <parameters>, "activation_id", "namespace", "action_name",
                 "deadline", "api_key"?, ...}
                one per activation; 200 + a JSON object (the activation's result), or a
                non-200 status + {"error": ...} (an "application error")

This module owns that interface for cloudpool. The action's code is cloudpool itself
(baked into the image), so ``/init`` accepts no code: an init that carries code is
refused, rather than silently running something else than what was sent. ``/run``'s
``value`` is either a cloudpool invocation event (``cloudpool.protocol``'s JSON form)
or ``{"cloudpool": "metadata"}``, the version handshake the ``openwhisk`` backend makes
before its first invocation. The result of an event is::

    {"segments": [<status>, ...], "lost": null | {"reason", "running_call", "timed_out", "killed"}}

the same status objects the worker stored (so the client can fetch results at once)
and, if the worker process died, which call it was running.

The calls run in a worker process of cloudpool's ``local`` engine, exactly as in the
knative runtime (``runtime/knative/server.py``, whose ``Runtime`` class this proxy
reuses): per-call timeouts and crash isolation work the same way. The activation's
``api_key`` (sent only for actions annotated ``provide-api-key``, which cloudpool's
deploy turns off) is never exported to the worker's environment: storage credentials
come from the container's own environment or platform identity, never from payloads.

Run it directly (the repository root or an installed cloudpool must be importable)::

    python runtime/openwhisk/action.py --host 127.0.0.1 --port 8080
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from cloudpool import __version__ as cloudpool_version
from cloudpool import protocol
from cloudpool.compute.base import SegmentDone

LOGGER = logging.getLogger("cloudpool.runtime.openwhisk")

METADATA_REQUEST = {"cloudpool": "metadata"}
#: OpenWhisk's own default payload limit for an activation (1 MB on IBM; 5 MB here to
#: leave room for platforms configured higher). Events are far smaller in practice.
MAX_BODY = 5 * 1024 * 1024
#: The activation-context fields exported as __OW_* variables (the api key is not).
_CONTEXT_FIELDS = ("namespace", "action_name", "activation_id", "deadline", "transaction_id",
                   "action_version")


def _load_knative_server():
    """``runtime/knative/server.py``, loaded by path (the image copies it beside this file)."""
    name = "cloudpool_knative_runtime_server"
    if name in sys.modules:
        return sys.modules[name]
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, "knative_server.py"), os.path.join(here, "..", "knative", "server.py")):
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            return module
    raise ImportError("the knative runtime server (knative_server.py) is missing beside action.py")


knative_server = _load_knative_server()


class ActionProxy:
    """Init state, and one activation at a time per worker slot, on the knative ``Runtime``."""

    def __init__(self, *, concurrency: int, start_method: str) -> None:
        self.runtime = knative_server.Runtime(token=None, concurrency=concurrency, heartbeat=3600.0,
                                              max_body=MAX_BODY, start_method=start_method)
        self._lock = threading.Lock()
        self.initialized = False
        self.action_name: Optional[str] = None

    def init(self, value: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        with self._lock:
            if self.initialized:
                return 403, {"error": "Cannot initialize the action more than once."}
            code = value.get("code")
            if code:
                return 502, {"error": "this is cloudpool's OpenWhisk runtime: its action code is built into "
                                      "the image, so /init takes none; deploy it with `cloudpool runtime "
                                      "deploy --backend openwhisk` (a blackbox action without code)"}
            self.initialized = True
            self.action_name = value.get("name")
            return 200, {"ok": True}

    def run(self, message: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        if not self.initialized:
            return 502, {"error": "the action was not initialized: POST /init comes before /run"}
        for field in _CONTEXT_FIELDS:
            if field in message:
                os.environ["__OW_" + field.upper()] = str(message[field])
        value = message.get("value")
        if value == METADATA_REQUEST:
            meta = self.runtime.metadata()
            meta["runtime"] = "cloudpool-openwhisk"
            return 200, meta
        try:
            event = protocol.decode_event(json.dumps(value))
            inv_id = knative_server.invocation_id(event)
            if not isinstance(event["storage"]["url"], str):
                raise TypeError("storage.url must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f"the activation's value is not a cloudpool invocation event "
                                  f"({type(exc).__name__}: {exc}); the client and runtime may speak "
                                  f"different protocols"}
        rt = self.runtime
        if not rt.admit():
            return 503, {"error": f"all {rt.concurrency} worker slots of this container are busy"}
        try:
            notices = rt.open_stream(inv_id)
            if notices is None:
                return 409, {"error": f"invocation {inv_id} is already running here"}
            try:
                rt.engine.invoke(inv_id, event)
                return 200, self._collect(notices)
            finally:
                rt.close_stream(inv_id)
        finally:
            rt.release()

    @staticmethod
    def _collect(notices: "queue.SimpleQueue[Any]") -> Dict[str, Any]:
        """Wait for the worker's last segment or its loss (OpenWhisk bounds the wait by the
        action's time limit: past it, the platform destroys this container)."""
        segments = []
        while True:
            notice = notices.get()
            if isinstance(notice, SegmentDone):
                segments.append(notice.status)
                if notice.status.get("last"):
                    return {"segments": segments, "lost": None}
            else:
                return {"segments": segments,
                        "lost": {"reason": notice.reason, "running_call": notice.running_call,
                                 "timed_out": notice.timed_out,
                                 "killed": bool(getattr(notice, "killed", False))}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"cloudpool-openwhisk-runtime/{cloudpool_version}"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOGGER.info("%s: " + format, self.address_string(), *args)

    def _answer(self, code: int, obj: Dict[str, Any]) -> None:
        body = protocol.json_bytes(obj)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        proxy: ActionProxy = self.server.proxy  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._answer(413 if length > 0 else 400, {"error": f"bad or too large Content-Length ({length})"})
            return
        raw = self.rfile.read(length) if length else b""
        try:
            message = json.loads(raw or b"{}")
            if not isinstance(message, dict) or not isinstance(message.get("value", {}), dict):
                raise ValueError("expected a JSON object with an object 'value'")
        except ValueError as exc:
            self._answer(400, {"error": f"the body is not the JSON the action interface sends: {exc}"})
            return
        if path == "/init":
            self._answer(*proxy.init(message.get("value") or {}))
        elif path == "/run":
            self._answer(*proxy.run(message))
        else:
            self._answer(404, {"error": f"no endpoint {path!r}: POST /init or /run"})


class ActionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], proxy: ActionProxy) -> None:
        super().__init__(address, Handler)
        self.proxy = proxy


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="action.py", description="cloudpool's OpenWhisk action proxy.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080, help="OpenWhisk's invoker talks to port 8080")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("__OW_ALLOW_CONCURRENT") and
                                                                 os.cpu_count() or 1),
                        help="activations at once (OpenWhisk sends one at a time unless the action "
                             "allows concurrency)")
    parser.add_argument("--start-method", choices=("spawn", "fork"), default="spawn")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    proxy = ActionProxy(concurrency=max(1, args.concurrency), start_method=args.start_method)
    server = ActionServer((args.host, args.port), proxy)
    LOGGER.warning("cloudpool OpenWhisk action proxy %s on http://%s:%d", cloudpool_version, args.host,
                   server.server_address[1])
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        proxy.runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
