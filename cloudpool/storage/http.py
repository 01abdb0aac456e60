"""Read-only storage over plain HTTP(S) (``http://host[:port]/path``) through requests.

Any web server that answers Range requests is a source of input data: ``get`` is a
ranged GET, ``head`` a HEAD (its ``Content-Length``). The "bucket" is ``host[:port]``
and the key is the path (with the query string, if any), so presigned URLs work.

A web server has no listing, so ``list(prefix)`` yields the one object the prefix
names, if it exists, and nothing otherwise. Nothing can be written: ``put`` and
``delete`` raise ``PermissionError`` (``writable = False``).
"""
from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, FrozenSet, Iterable, Iterator, NoReturn, Optional

import requests
import requests.adapters
from urllib3.util.retry import Retry

from .base import Bytes, ObjectInfo, PerProcess, StorageBackend

__all__ = ["HTTPStorage", "HTTPSStorage"]

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class HTTPStorage(StorageBackend):
    """``http://`` objects, read-only."""

    scheme = "http"
    writable = False
    option_names: ClassVar[FrozenSet[str]] = frozenset({"timeout", "headers"})
    #: Headers may carry an Authorization token.
    secret_option_names: ClassVar[FrozenSet[str]] = frozenset({"headers"})
    max_pool_connections: ClassVar[int] = 64

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        self._session: PerProcess[requests.Session] = PerProcess(self._make_session)
        self._timeout = float(options.get("timeout", 60))

    # ------------------------------------------------------------------ session
    @property
    def session(self) -> requests.Session:
        """A pooled session, one per process (see ``PerProcess``)."""
        return self._session.get()

    def _make_session(self) -> requests.Session:
        session = requests.Session()
        # GET and HEAD are idempotent: retry dropped connections and 5xx.
        retry = Retry(total=4, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504),
                      allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False)
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=self.max_pool_connections, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Ranges and sizes must refer to the stored bytes, not to a gzip of them.
        session.headers["Accept-Encoding"] = "identity"
        session.headers.update(self.options.get("headers") or {})
        return session

    def _request(self, method: str, key: str, headers: Optional[dict] = None) -> requests.Response:
        try:
            return self.session.request(method, self.url(key), headers=headers,
                                        timeout=self._timeout, allow_redirects=True)
        except requests.RequestException as exc:
            raise OSError(f"{self.url(key)}: {method} failed: {exc}") from exc

    def _raise_for(self, response: requests.Response, key: str, method: str) -> None:
        status = response.status_code
        if status < 400:
            return
        url = self.url(key)
        if status in (404, 410):
            raise FileNotFoundError(f"{url}: no such object (HTTP {status})")
        if status in (401, 403):
            raise PermissionError(
                f"{url}: {method} refused (HTTP {status}); the URL may need a token "
                f"(a presigned URL, or an Authorization header in the 'headers' option)"
            )
        raise OSError(f"{url}: {method} failed (HTTP {status} {response.reason})")

    # ------------------------------------------------------------------ primitives
    def _read_only(self, key: str) -> NoReturn:
        raise PermissionError(
            f"{self.url(key)}: {self.scheme}:// storage is read-only; write results to "
            f"an object store (s3://, gs://, az://, cos://) or a local path instead"
        )

    def put(self, key: str, data: Bytes) -> None:
        self._read_only(key)

    def put_file(self, key: str, fileobj: Any) -> None:
        self._read_only(key)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._read_only(key)

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        headers = None
        if start or end is not None:
            headers = {"Range": f"bytes={start}-" + ("" if end is None else str(end - 1))}
        response = self._request("GET", key, headers)
        with response:
            if response.status_code == 416:
                return b""  # starts at or past the end
            self._raise_for(response, key, "GET")
            if headers is not None and response.status_code == 200:
                # The server ignored Range and sent the whole object: cut it here.
                return response.content[start:end]
            return response.content

    def head(self, key: str) -> ObjectInfo:
        response = self._request("HEAD", key)
        with response:
            if response.status_code in (405, 501):
                return self._head_by_get(key)
            self._raise_for(response, key, "HEAD")
            length = response.headers.get("Content-Length")
            if length is None:
                return self._head_by_get(key)
            return self._info(key, int(length), response)

    def _head_by_get(self, key: str) -> ObjectInfo:
        """For servers without HEAD: a one-byte ranged GET tells the size in Content-Range."""
        response = self._request("GET", key, {"Range": "bytes=0-0"})
        with response:
            if response.status_code == 416:
                return self._info(key, 0, response)  # an empty object
            self._raise_for(response, key, "GET")
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if response.status_code == 206 and match and match.group(3) != "*":
                return self._info(key, int(match.group(3)), response)
            return self._info(key, len(response.content), response)

    @staticmethod
    def _info(key: str, size: int, response: requests.Response) -> ObjectInfo:
        mtime = None
        modified = response.headers.get("Last-Modified")
        if modified:
            try:
                mtime = parsedate_to_datetime(modified).timestamp()
            except (TypeError, ValueError):
                mtime = None  # a malformed date is no reason to fail
        etag = (response.headers.get("ETag") or "").strip('"') or None
        return ObjectInfo(key=key, size=size, etag=etag, mtime=mtime)

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        # No listing over HTTP: the prefix is either one object's full key or nothing.
        if not prefix or (start_after is not None and prefix <= start_after):
            return
        try:
            info = self.head(prefix)
        except FileNotFoundError:
            return
        yield info

    def check(self) -> None:
        # Only reachability can be checked; any HTTP answer (even 404) will do.
        with self._request("HEAD", ""):
            return None


class HTTPSStorage(HTTPStorage):
    """``https://`` objects, read-only."""

    scheme = "https"
