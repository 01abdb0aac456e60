"""A real HTTP/1.1 proxy on 127.0.0.1 that injects faults and counts requests (for tests and benchmarks).

This module owns the fault-injection proxy the reliability tests put between cloudpool
and a real server (moto S3, fake-gcs-server, Azurite, the Range HTTP server, a knative
runtime): clients are pointed at the proxy's port, the proxy forwards every request to
the upstream server over its own TCP connection and relays the answer, unless a *rule*
says to break that request. Nothing is mocked: the client's SDK sees real sockets,
real resets and real error responses; the upstream sees real requests.

It runs as its own process (``FaultProxy`` below is a ``tests/servers.Server``), so
forked worker processes reach it and it never competes with the test for the GIL. A
second port serves a small JSON control API the test drives::

    GET  /stats          {"requests": N, "by_method": {"GET": n, "GET (list)": n, ...},
                          "injected": {...}, "connections": N}
    POST /stats/reset    zero the counters
    POST /rules          {"rules": [RULE, ...]}: replace the rules (and their counters)

A RULE picks requests and says what to do with them; each rule counts the requests it
matches, and the first rule that fires on a request decides its fate::

    {"methods": ["GET"],          # optional: only these methods
     "path": "regex",             # optional: re.search on the request target
     "action": "status" | "reset" | "reset_mid_body",
     "status": 503, "code": "SlowDown",   # for "status": the answer (an S3-style XML error)
     "retry_after": 1,            # optional Retry-After header for "status"
     "every": 3, "offset": 0,     # inject on matches m with m % every == offset (every=1: all)
     "limit": 10}                 # optional: at most this many injections

- ``status`` answers that status itself (the request never reaches the upstream);
- ``reset`` closes the client's connection with a TCP RST after reading the request
  head, before any answer (what a crashed load balancer or a dropped link does);
- ``reset_mid_body`` forwards the request, relays the answer's head and half of its
  body, then resets: the "connection reset while reading a ranged GET" case.

Stopping the proxy (``FaultProxy.stop()``) makes its port refuse connections, which is
how the tests model a storage endpoint that is down for good.

Run as a script: ``python tests/faultproxy.py LISTEN_PORT UPSTREAM_HOST:PORT CONTROL_PORT``.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import socket
import socketserver
import struct
import sys
import threading
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

try:
    from tests import servers
except ImportError:  # run as a script from inside tests/
    import servers  # type: ignore[no-redef]

HOST = "127.0.0.1"
_MAX_HEAD = 64 * 1024
_COPY = 64 * 1024


# ============================================================================ the proxy process
class _State:
    """Rules and counters, shared by every connection thread of the proxy process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: List[Dict[str, Any]] = []
        self.reset_stats()

    def reset_stats(self) -> None:
        with self.lock:
            self.requests = 0
            self.by_method: Dict[str, int] = {}
            self.injected: Dict[str, int] = {}
            self.connections = 0

    def set_rules(self, rules: List[Dict[str, Any]]) -> None:
        compiled = []
        for rule in rules:
            rule = dict(rule)
            if rule.get("action") not in ("status", "reset", "reset_mid_body"):
                raise ValueError(f"unknown action in rule {rule!r}")
            rule["_path"] = re.compile(rule["path"]) if rule.get("path") else None
            rule["_methods"] = {m.upper() for m in rule.get("methods") or ()}
            rule["_matched"] = 0
            rule["_injected"] = 0
            compiled.append(rule)
        with self.lock:
            self.rules = compiled

    def decide(self, method: str, target: str) -> Optional[Dict[str, Any]]:
        """Count the request; return the rule to apply to it, if any."""
        with self.lock:
            self.requests += 1
            # A listing is a GET too; counted apart (S3's list-type=2, Azure's comp=list).
            kind = f"{method} (list)" if method == "GET" and ("list-type=" in target or "comp=list" in target) \
                else method
            self.by_method[kind] = self.by_method.get(kind, 0) + 1
            for rule in self.rules:
                if rule["_methods"] and method not in rule["_methods"]:
                    continue
                if rule["_path"] is not None and not rule["_path"].search(target):
                    continue
                m = rule["_matched"]
                rule["_matched"] += 1
                every = max(1, int(rule.get("every", 1)))
                if m % every != int(rule.get("offset", 0)) % every:
                    continue
                limit = rule.get("limit")
                if limit is not None and rule["_injected"] >= limit:
                    continue
                rule["_injected"] += 1
                name = rule["action"] if rule["action"] != "status" else f"status {rule.get('status', 503)}"
                self.injected[name] = self.injected.get(name, 0) + 1
                return rule
            return None

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "by_method": dict(self.by_method),
                    "injected": dict(self.injected), "connections": self.connections,
                    "rules": [{k: v for k, v in r.items() if not k.startswith("_")}
                              | {"matched": r["_matched"], "injected": r["_injected"]} for r in self.rules]}


class _Closed(Exception):
    """The peer closed its side between requests: the connection simply ends."""


def _read_head(reader) -> Tuple[bytes, List[Tuple[str, str]], List[bytes]]:
    """Read one message head: (start line, parsed headers, raw header lines)."""
    start = reader.readline(_MAX_HEAD)
    if not start:
        raise _Closed()
    while start in (b"\r\n", b"\n"):  # tolerated between messages (RFC 9112 2.2)
        start = reader.readline(_MAX_HEAD)
        if not start:
            raise _Closed()
    headers: List[Tuple[str, str]] = []
    raw: List[bytes] = []
    while True:
        line = reader.readline(_MAX_HEAD)
        if not line:
            raise ConnectionError("connection closed inside a message head")
        if line in (b"\r\n", b"\n"):
            break
        raw.append(line)
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return start, headers, raw


def _header(headers: List[Tuple[str, str]], name: str) -> Optional[str]:
    for k, v in headers:
        if k == name:
            return v
    return None


def _copy_exact(reader, out: Optional[socket.socket], n: int) -> None:
    while n > 0:
        block = reader.read1(min(n, _COPY)) if hasattr(reader, "read1") else reader.read(min(n, _COPY))
        if not block:
            raise ConnectionError("connection closed inside a message body")
        if out is not None:
            out.sendall(block)
        n -= len(block)


def _copy_chunked(reader, out: Optional[socket.socket]) -> None:
    """Relay a chunked body as it arrives (the knative runtime streams JSON lines this way)."""
    while True:
        size_line = reader.readline(_MAX_HEAD)
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        if out is not None:
            out.sendall(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                line = reader.readline(_MAX_HEAD)
                if not line:
                    raise ConnectionError("connection closed inside chunked trailers")
                if out is not None:
                    out.sendall(line)
                if line in (b"\r\n", b"\n"):
                    return
        _copy_exact(reader, out, size + 2)  # the data and its CRLF


def _body_framing(headers: List[Tuple[str, str]]) -> Tuple[str, int]:
    te = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        return "chunked", 0
    length = _header(headers, "content-length")
    if length is not None:
        return "length", int(length)
    return "none", 0


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees ECONNRESET."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _error_answer(rule: Dict[str, Any], close: bool) -> bytes:
    status = int(rule.get("status", 503))
    code = rule.get("code") or {429: "TooManyRequests", 503: "SlowDown", 500: "InternalError",
                                403: "AccessDenied", 404: "NoSuchKey"}.get(status, "InjectedFault")
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>").encode()
    reason = http.server.BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/xml",
             f"Content-Length: {len(body)}"]
    if rule.get("retry_after") is not None:
        lines.append(f"Retry-After: {rule['retry_after']}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _ProxyHandler(socketserver.BaseRequestHandler):
    state: _State
    upstream: Tuple[str, int]

    def handle(self) -> None:
        client: socket.socket = self.request
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.state.lock:
            self.state.connections += 1
        creader = client.makefile("rb")
        upstream: Optional[socket.socket] = None
        ureader = None
        try:
            while True:
                try:
                    start, headers, raw = _read_head(creader)
                except _Closed:
                    return
                parts = start.decode("latin-1").split()
                method, target = parts[0].upper(), parts[1] if len(parts) > 1 else "/"
                version = parts[2] if len(parts) > 2 else "HTTP/1.0"
                expect = (_header(headers, "expect") or "").lower() == "100-continue"
                close = (_header(headers, "connection") or "").lower() == "close" or version == "HTTP/1.0"
                framing, length = _body_framing(headers)
                rule = self.state.decide(method, target)
                action = rule["action"] if rule else None

                if action == "reset":
                    _reset(client)
                    return
                if action == "status":
                    if expect:
                        # The client waits for "100 Continue" before sending its body; a
                        # final answer instead means it never sends it, so we cannot know
                        # where the next request starts: answer and close.
                        client.sendall(_error_answer(rule, close=True))
                        return
                    self._skip_body(creader, framing, length)
                    client.sendall(_error_answer(rule, close=close))
                    if close:
                        return
                    continue

                # Forward. The proxy answers "100 Continue" itself and drops Expect, so
                # the upstream gets one plain request with its body.
                if upstream is None:
                    try:
                        upstream = socket.create_connection(self.upstream, timeout=30)
                    except OSError:
                        _reset(client)  # no upstream: the client sees a dead connection
                        return
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    ureader = upstream.makefile("rb")
                head = start + b"".join(line for line in raw if not line.lower().startswith(b"expect:")) + b"\r\n"
                upstream.sendall(head)
                if expect:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if framing == "chunked":
                    _copy_chunked(creader, upstream)
                elif framing == "length":
                    _copy_exact(creader, upstream, length)

                while True:  # skip interim 1xx answers
                    rstart, rheaders, rraw = _read_head(ureader)
                    status = int(rstart.split()[1])
                    if status >= 200 or status == 101:
                        break
                rframing, rlength = _body_framing(rheaders)
                no_body = method == "HEAD" or status in (204, 304)
                rclose = (_header(rheaders, "connection") or "").lower() == "close"
                client.sendall(rstart + b"".join(rraw) + b"\r\n")
                if action == "reset_mid_body":
                    if not no_body and rframing == "length" and rlength > 1:
                        _copy_exact(ureader, client, rlength // 2)
                    _reset(client)
                    return
                if no_body:
                    pass
                elif rframing == "chunked":
                    _copy_chunked(ureader, client)
                elif rframing == "length":
                    _copy_exact(ureader, client, rlength)
                else:  # delimited by the upstream closing the connection
                    while True:
                        block = ureader.read1(_COPY)
                        if not block:
                            break
                        client.sendall(block)
                    rclose = True
                if rclose:
                    upstream.close()
                    upstream = ureader = None
                if close:
                    return
        except (ConnectionError, OSError, ValueError, IndexError):
            # Either side broke the exchange: end both connections.
            _reset(client)
        finally:
            if upstream is not None:
                upstream.close()
            try:
                client.close()
            except OSError:
                pass

    @staticmethod
    def _skip_body(reader, framing: str, length: int) -> None:
        if framing == "chunked":
            _copy_chunked(reader, None)
        elif framing == "length":
            _copy_exact(reader, None, length)


class _ThreadingTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _control_handler(state: _State):
    class Control(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

        def _answer(self, code: int, value: Any) -> None:
            body = json.dumps(value).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._answer(200, state.snapshot())
            else:
                self._answer(404, {"error": "no such endpoint"})

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                if self.path == "/rules":
                    state.set_rules(json.loads(data or b"{}").get("rules", []))
                elif self.path == "/stats/reset":
                    state.reset_stats()
                else:
                    self._answer(404, {"error": "no such endpoint"})
                    return
            except (ValueError, KeyError, TypeError, re.error) as exc:
                self._answer(400, {"error": str(exc)})
                return
            self._answer(200, state.snapshot())

    return Control


def serve(listen_port: int, upstream: str, control_port: int) -> None:
    host, _, port = upstream.rpartition(":")
    state = _State()
    handler = type("Handler", (_ProxyHandler,), {"state": state, "upstream": (host, int(port))})
    proxy = _ThreadingTCPServer((HOST, listen_port), handler)
    control = http.server.ThreadingHTTPServer((HOST, control_port), _control_handler(state))
    threading.Thread(target=control.serve_forever, daemon=True).start()
    proxy.serve_forever()


# ============================================================================ the test side
class FaultProxy(servers.Server):
    """The proxy as a server subprocess in front of ``upstream`` (``host:port`` or a URL)."""

    name = "faultproxy"
    start_timeout = 20.0

    def __init__(self, upstream: str) -> None:
        super().__init__()
        if "://" in upstream:
            upstream = upstream.split("://", 1)[1].split("/", 1)[0]
        self.upstream = upstream
        self.control_port = servers.free_port()

    def command(self) -> List[str]:
        return [sys.executable, os.path.abspath(__file__), str(self.port), self.upstream,
                str(self.control_port)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _control(self, method: str, path: str, value: Any = None) -> Dict[str, Any]:
        data = None if value is None else json.dumps(value).encode()
        req = urllib.request.Request(f"http://{self.host}:{self.control_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def ready(self) -> bool:
        try:
            self._control("GET", "/stats")
        except OSError:
            return False
        return True

    def set_rules(self, *rules: Dict[str, Any]) -> None:
        """Replace the rules (no rules: a transparent, counting proxy)."""
        self._control("POST", "/rules", {"rules": list(rules)})

    def clear(self) -> None:
        self.set_rules()

    def stats(self) -> Dict[str, Any]:
        return self._control("GET", "/stats")

    def reset_stats(self) -> None:
        self._control("POST", "/stats/reset", {})


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} LISTEN_PORT UPSTREAM_HOST:PORT CONTROL_PORT")
    serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
