"""Read-only storage over plain HTTP(S) (``http://host[:port]/path``) through requests.

Any web server that answers Range requests is a source of input data: ``get`` is a
ranged GET, ``head`` a HEAD (its ``Content-Length``). The "bucket" is ``host[:port]``
and the key is the path (with the query string, if any), so presigned URLs work.

A web server has no listing, so ``list(prefix)`` yields the one object the prefix
names, if it exists, and nothing otherwise. Nothing can be written: ``put`` and
``delete`` raise ``PermissionError`` (``writable = False``).

Transient failures are retried with ``StorageRetry`` (``max_attempts`` tries in all, 6 by
default, jittered back-off over 7.75-15.5 s in all, Retry-After honoured up to 8 s): refused, reset or timed-out
connections -- also when the body is cut off after the answer began, which urllib3's
own retries cannot see -- and answers 408, 429, 500, 502, 503, 504. GET and HEAD are
idempotent, so a retry is always safe. 4xx answers are never retried.
"""
from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, FrozenSet, Iterable, Iterator, NoReturn, Optional

import requests
import requests.adapters

from . import declared
from .base import (TRANSIENT_HTTP_STATUSES, Bytes, ObjectInfo, PerProcess, StorageBackend, StorageRetry,
                   positive_int_option)

__all__ = ["HTTPStorage", "HTTPSStorage"]

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
DEFAULT_MAX_ATTEMPTS = 6


class _TransientAnswer(Exception):
    """The server answered with a status worth another try (kept to report it if none works)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _transient(exc: BaseException) -> Optional[float]:
    """Seconds to wait at least before retrying ``exc``, or None when it is permanent."""
    if isinstance(exc, _TransientAnswer):
        try:
            return float(exc.response.headers.get("Retry-After", 0))
        except ValueError:
            return 0.0  # an HTTP date: our own back-off will do
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.InvalidURL,
                        requests.exceptions.TooManyRedirects)):
        return None
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        requests.exceptions.ChunkedEncodingError)):
        return 0.0  # refused, reset (also mid-body), timed out, cut short
    return None


class HTTPStorage(StorageBackend):
    """``http://`` objects, read-only."""

    scheme = "http"
    writable = False
    option_names: ClassVar[FrozenSet[str]] = declared.HTTP.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.HTTP.secrets
    max_pool_connections: ClassVar[int] = 64

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        self._session: PerProcess[requests.Session] = PerProcess(self._make_session)
        self._timeout = float(options.get("timeout", 60))
        self.max_attempts = positive_int_option(self.scheme, "max_attempts",
                                                options.get("max_attempts", DEFAULT_MAX_ATTEMPTS))
        self._retry = StorageRetry(attempts=self.max_attempts)

    # ------------------------------------------------------------------ session
    @property
    def session(self) -> requests.Session:
        """A pooled session, one per process (see ``PerProcess``)."""
        return self._session.get()

    def _make_session(self) -> requests.Session:
        session = requests.Session()
        # No urllib3 retries: _request retries the whole exchange, body included.
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=self.max_pool_connections, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Ranges and sizes must refer to the stored bytes, not to a gzip of them.
        session.headers["Accept-Encoding"] = "identity"
        session.headers.update(self.options.get("headers") or {})
        return session

    def _request(self, method: str, key: str, headers: Optional[dict] = None) -> requests.Response:
        """One request, its body read in full, retried while it fails transiently."""

        def once() -> requests.Response:
            # stream=False (the default): the body is read here, so a connection that
            # breaks mid-body fails this attempt and is retried like any other.
            response = self.session.request(method, self.url(key), headers=headers,
                                            timeout=self._timeout, allow_redirects=True)
            if response.status_code in TRANSIENT_HTTP_STATUSES:
                raise _TransientAnswer(response)
            return response

        try:
            return self._retry.run(once, _transient)
        except _TransientAnswer as exc:
            return exc.response  # _raise_for reports the status
        except requests.RequestException as exc:
            raise OSError(f"{self.url(key)}: {method} failed after {self.max_attempts} attempts "
                          f"(the storage option max_attempts sets how many): {exc}") from exc

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
        if status in TRANSIENT_HTTP_STATUSES:
            raise OSError(f"{url}: {method} failed (HTTP {status} {response.reason}) after "
                          f"{self.max_attempts} attempts (the storage option max_attempts sets how many)")
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
