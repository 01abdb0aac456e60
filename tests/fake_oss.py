"""A fake of the documented Alibaba OSS requests that cloudpool's ``oss://`` makes.

No OSS is reachable from these machines, so ``oss://`` is tested as a contract of its
exact requests: this in-process server answers, path-style (``/bucket/key``, as oss2
addresses an IP endpoint), PutObject, GetObject with ``Range`` and
``x-oss-range-behavior: standard`` (416 past the end), HeadObject, ListObjects (v1:
prefix, marker, max-keys, delimiter, NextMarker) and DeleteMultipleObjects, with OSS's
XML error bodies (NoSuchKey, NoSuchBucket, InvalidAccessKeyId). It checks the access key
id in the ``Authorization: OSS <id>:<signature>`` header but does not verify signatures,
and records every request. It is not OSS: what it does not model is untested.
"""
from __future__ import annotations

import email.utils
import hashlib
import http.server
import threading
import time
import urllib.parse
from typing import Dict, List, Optional, Tuple
from xml.etree import ElementTree
from xml.sax.saxutils import escape

KEY_ID, KEY_SECRET = "LTAIfakekeyid", "fake-secret"


def _error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{escape(message)}'
            f'</Message><RequestId>fake</RequestId><HostId>fake</HostId></Error>').encode()


class FakeOSS:
    def __init__(self) -> None:
        self.buckets: Dict[str, Dict[str, Tuple[bytes, float]]] = {}
        self.requests: List[Tuple[str, str, Optional[str]]] = []  # method, path, Range header
        self.range_behaviors: List[Optional[str]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                return

            def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> None:
                self.send_response(status)
                self.send_header("x-oss-request-id", "fake")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body and "Content-Type" not in (headers or {}):
                    self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.requests.append((self.command, self.path, self.headers.get("Range")))
                    fake.range_behaviors.append(self.headers.get("x-oss-range-behavior"))
                auth = self.headers.get("Authorization") or ""
                if not auth.startswith(f"OSS {KEY_ID}:"):
                    return self._send(403, _error("InvalidAccessKeyId", "The OSS Access Key Id does not exist."))
                parts = urllib.parse.urlsplit(self.path)
                bucket, _, key = parts.path.lstrip("/").partition("/")
                key = urllib.parse.unquote(key)
                query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
                with fake._lock:
                    objects = fake.buckets.get(bucket)
                    if objects is None:
                        return self._send(404, _error("NoSuchBucket", "The specified bucket does not exist."))
                    if not key and self.command == "GET":
                        return self._send(200, fake._listing(objects, query))
                    if not key and self.command == "POST" and "delete" in query:
                        root = ElementTree.fromstring(body)
                        url_encoded = query.get("encoding-type") == ["url"]
                        for node in root.findall("Object/Key"):
                            name = urllib.parse.unquote(node.text or "") if url_encoded else (node.text or "")
                            objects.pop(name, None)
                        return self._send(200, b'<?xml version="1.0" encoding="UTF-8"?><DeleteResult/>')
                    if self.command == "PUT":
                        objects[key] = (body, time.time())
                        return self._send(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest().upper()}"'})
                    if key not in objects:
                        return self._send(404, _error("NoSuchKey", "The specified key does not exist."))
                    data, mtime = objects[key]
                    meta = {"ETag": f'"{hashlib.md5(data).hexdigest().upper()}"',
                            "Last-Modified": email.utils.formatdate(mtime, usegmt=True),
                            "Content-Type": "application/octet-stream"}
                    if self.command == "HEAD":
                        self.send_response(200)
                        for k, v in meta.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        return None
                    rng = self.headers.get("Range")
                    if rng:
                        first, _, last = rng.partition("=")[2].partition("-")
                        lo = int(first)
                        hi = min(int(last), len(data) - 1) if last else len(data) - 1
                        if lo >= len(data):
                            return self._send(416, _error("InvalidRange", "The requested range cannot be satisfied."))
                        meta["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
                        return self._send(206, data[lo:hi + 1], meta)
                    return self._send(200, data, meta)

            do_GET = do_PUT = do_HEAD = do_POST = _handle

            def do_DELETE(self) -> None:
                self._handle()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _listing(objects: Dict[str, Tuple[bytes, float]], query: Dict[str, List[str]]) -> bytes:
        prefix = query.get("prefix", [""])[0]
        marker = query.get("marker", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        max_keys = int(query.get("max-keys", ["100"])[0])
        # oss2 asks for url-encoded keys (encoding-type=url), as OSS documents.
        enc = (lambda text: urllib.parse.quote(text, safe="")) if query.get("encoding-type") == ["url"] \
            else escape
        contents, prefixes, last = [], [], None
        truncated = False
        for key in sorted(k for k in objects if k.startswith(prefix) and k > marker):
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            entry = ("p", key[:cut + len(delimiter)]) if cut >= 0 else ("k", key)
            if entry[0] == "p" and prefixes and prefixes[-1] == entry[1]:
                continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            (prefixes if entry[0] == "p" else contents).append(entry[1])
            last = entry[1]
        xml = ['<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>',
               f"<Prefix>{escape(prefix)}</Prefix><Marker>{escape(marker)}</Marker>",
               f"<MaxKeys>{max_keys}</MaxKeys><Delimiter>{escape(delimiter)}</Delimiter>",
               f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if enc is not escape:
            xml.append("<EncodingType>url</EncodingType>")
        if truncated and last is not None:
            xml.append(f"<NextMarker>{enc(last)}</NextMarker>")
        for key in contents:
            data, mtime = objects[key]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(mtime))
            xml.append(f"<Contents><Key>{enc(key)}</Key><LastModified>{stamp}</LastModified>"
                       f'<ETag>"{hashlib.md5(data).hexdigest().upper()}"</ETag><Type>Normal</Type>'
                       f"<Size>{len(data)}</Size><StorageClass>Standard</StorageClass></Contents>")
        for p in prefixes:
            xml.append(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>")
        xml.append("</ListBucketResult>")
        return "".join(xml).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
