"""A fake of the documented Infinispan REST API v2 requests that cloudpool makes.

No Infinispan server can run on these machines, so ``infinispan://`` is tested as a
contract of its exact requests: this in-process server answers only the calls
documented for REST v2 that the storage uses (cache list and existence, ``?action=keys``,
entry PUT/GET/HEAD/DELETE with percent-encoded keys, BASIC authentication), records
every request, and can be told to fail the next requests with a status (for retries).
It is not Infinispan: behaviour it does not model (digest auth, encodings, clustering,
expiry) is untested.
"""
from __future__ import annotations

import base64
import http.server
import json
import threading
import urllib.parse
from typing import Dict, List, Tuple

USER, PASSWORD = "admin", "infinispan-secret"


class FakeInfinispan:
    def __init__(self) -> None:
        self.caches: Dict[str, Dict[str, bytes]] = {}
        self.requests: List[Tuple[str, str]] = []
        self._fail: List[int] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                return

            def _send(self, status: int, body: bytes = b"", ctype: str = "application/octet-stream") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.requests.append((self.command, self.path))
                    failing = fake._fail.pop(0) if fake._fail else None
                if failing:
                    return self._send(failing, b"injected failure", "text/plain")
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._send(401, b"unauthorized", "text/plain")
                parts = urllib.parse.urlsplit(self.path)
                segs = parts.path.split("/")
                if segs[:4] != ["", "rest", "v2", "caches"]:
                    return self._send(404)
                query = urllib.parse.parse_qs(parts.query)
                with fake._lock:
                    if len(segs) == 4 or segs[4] == "":
                        if self.command == "GET":
                            return self._send(200, json.dumps(sorted(fake.caches)).encode(), "application/json")
                        return self._send(405)
                    cache = urllib.parse.unquote(segs[4])
                    entries = fake.caches.get(cache)
                    if len(segs) == 5:
                        if entries is None:
                            return self._send(404)
                        if self.command == "HEAD":
                            return self._send(200)
                        if self.command == "GET" and query.get("action") == ["keys"]:
                            return self._send(200, json.dumps(list(entries)).encode(), "application/json")
                        return self._send(400)
                    key = urllib.parse.unquote("/".join(segs[5:]))
                    if entries is None:
                        return self._send(404)
                    if self.command == "PUT":
                        entries[key] = body
                        return self._send(204)
                    if self.command in ("GET", "HEAD"):
                        if key not in entries:
                            return self._send(404)
                        return self._send(200, entries[key])
                    if self.command == "DELETE":
                        return self._send(204 if entries.pop(key, None) is not None else 404)
                return self._send(405)

            do_GET = do_PUT = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._fail.extend([status] * times)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
