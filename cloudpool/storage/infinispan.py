"""Infinispan caches as storage (``infinispan://host:port/CACHE/key``) through its REST API v2.

Layout, as for Redis: the "bucket" is ``host:port``; a key's first segment names the
cache, the rest is the entry's key (``infinispan://127.0.0.1:11222/texts/a.txt`` is
entry ``a.txt`` of cache ``texts``), stored as ``application/octet-stream``. The
requests, all under ``/rest/v2/caches/``:

=========  =====================================================================
put        ``PUT  {cache}/{key}`` with the bytes
get        ``GET  {cache}/{key}`` (the REST API has no ranges: a ranged read fetches
           the entry and slices it, so keep entries small or use an object store)
head       ``HEAD {cache}/{key}`` (``Content-Length``)
list       ``GET  {cache}?action=keys`` (every key of the cache, as JSON), filtered and
           sorted here, then a ``HEAD`` per listed key for its size
delete     ``DELETE {cache}/{key}`` per key (404: already gone)
missing    ``HEAD {cache}`` tells a missing cache from a missing entry
check      ``GET  /rest/v2/caches`` (the cache names)
=========  =====================================================================

Keys are percent-encoded whole (a ``/`` in a key becomes ``%2F``). Authentication:
``username``/``password`` (``password`` is secret; a worker, which never receives it,
takes ``INFINISPAN_USERNAME``/``INFINISPAN_PASSWORD`` from its environment, or the
credentials of a ``user:password@`` URL on the client's own machine) with
``auth="basic"`` (default) or ``"digest"``; ``tls=True`` for HTTPS. Tested only against a fake of these documented
requests (tests/fake_infinispan.py): no Infinispan server runs here.

Errors: 401/403 -> ``PermissionError``, 404 -> ``FileNotFoundError`` (a missing cache
is named), else ``OSError``, each naming the URL. Connection failures, 408, 429 and
5xx are retried with ``StorageRetry``; other 4xx never.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, FrozenSet, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import quote

import requests

from . import _urlauth, declared
from .base import (TRANSIENT_HTTP_STATUSES, Bytes, ObjectInfo, StorageBackend, StorageRetry,
                   positive_int_option)

__all__ = ["InfinispanStorage"]


class _Status(Exception):
    """An HTTP answer other than success, kept for mapping after the retries."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


def _transient(exc: BaseException) -> Optional[float]:
    if isinstance(exc, _Status):
        return 0.0 if exc.status in TRANSIENT_HTTP_STATUSES else None
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return 0.0
    return None


class InfinispanStorage(StorageBackend):
    """Entries of the caches of one Infinispan server."""

    scheme = "infinispan"
    option_names: ClassVar[FrozenSet[str]] = declared.INFINISPAN.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.INFINISPAN.secrets
    head_threads: ClassVar[int] = 8

    def __init__(self, bucket: str, **options: Any) -> None:
        hostport = _urlauth.split("infinispan", bucket)
        super().__init__(hostport, **options)
        if options.get("auth", "basic") not in ("basic", "digest"):
            raise ValueError(f"infinispan:// storage option 'auth' must be 'basic' or 'digest', "
                             f"not {options.get('auth')!r}")
        self.max_attempts = positive_int_option("infinispan", "max_attempts", options.get("max_attempts", 6))
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._root = f"{'https' if options.get('tls') else 'http'}://{hostport}/rest/v2/caches"
        self._local = threading.local()

    # ------------------------------------------------------------------ HTTP
    @property
    def session(self) -> requests.Session:
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            session = requests.Session()
            user, password = self.options.get("username"), self.options.get("password")
            if password is None:
                remembered = _urlauth.lookup("infinispan", self.bucket)
                if remembered:
                    user, password = remembered
            if password is None and os.environ.get("INFINISPAN_PASSWORD") is not None:
                # A worker's own credential chain: the password never travels with parts.
                user = user or os.environ.get("INFINISPAN_USERNAME")
                password = os.environ["INFINISPAN_PASSWORD"]
            if password is not None:
                auth_cls = requests.auth.HTTPDigestAuth if self.options.get("auth") == "digest" \
                    else requests.auth.HTTPBasicAuth
                session.auth = auth_cls(user or "", password)
            self._local.session, self._local.pid = session, pid
        return self._local.session

    def _request(self, method: str, path: str, ok: Tuple[int, ...] = (200, 204), **kwargs: Any
                 ) -> requests.Response:
        def once() -> requests.Response:
            resp = self.session.request(method, f"{self._root}/{path}",
                                        timeout=float(self.options.get("timeout", 60)), **kwargs)
            if resp.status_code not in ok:
                raise _Status(resp.status_code, resp.text)
            return resp

        return self._retry.run(once, _transient)

    def _split(self, key: str) -> Tuple[str, str]:
        cache, sep, rest = key.partition("/")
        if not sep or not cache:
            raise ValueError(f"{self.url(key)}: an infinispan:// key starts with the cache name; write "
                             f"infinispan://{self.bucket}/CACHE/KEY")
        return cache, rest

    def _entry(self, key: str) -> str:
        cache, rest = self._split(key)
        return f"{quote(cache, safe='')}/{quote(rest, safe='')}"

    def url(self, key: str = "") -> str:
        return f"infinispan://{self.bucket}/{key}"

    def _error(self, exc: BaseException, key: str, action: str) -> OSError:
        url = self.url(key)
        status = getattr(exc, "status", None)
        if status in (401, 403):
            return PermissionError(f"{url}: {action} refused (HTTP {status}); check the storage options "
                                   f"username/password (and auth='basic' or 'digest')")
        if status == 404:
            cache = key.partition("/")[0]
            if cache and self._cache_missing(cache):
                return FileNotFoundError(f"{url}: cache {cache!r} does not exist on {self.bucket}; "
                                         f"create it or fix the storage URL")
            return FileNotFoundError(f"{url}: no such object")
        if _transient(exc) is not None:
            return OSError(f"{url}: {action} failed after {self._retry.attempts} attempts, the last with "
                           f"{exc} (the storage option max_attempts sets how many)")
        return OSError(f"{url}: {action} failed: {exc}")

    def _cache_missing(self, cache: str) -> bool:
        try:
            self._request("HEAD", quote(cache, safe=""))
        except _Status as exc:
            return exc.status == 404
        except requests.RequestException:
            return False
        return False

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self._request("PUT", self._entry(key), data=body,
                          headers={"Content-Type": "application/octet-stream"})
        except (_Status, requests.RequestException) as exc:
            raise self._error(exc, key, "PUT") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        try:
            data = self._request("GET", self._entry(key),
                                 headers={"Accept": "application/octet-stream"}).content
        except (_Status, requests.RequestException) as exc:
            raise self._error(exc, key, "GET") from exc
        return data[start:end]

    def head(self, key: str) -> ObjectInfo:
        try:
            resp = self._request("HEAD", self._entry(key))
        except (_Status, requests.RequestException) as exc:
            raise self._error(exc, key, "HEAD") from exc
        return ObjectInfo(key=key, size=int(resp.headers.get("Content-Length", 0)),
                          etag=(resp.headers.get("ETag") or "").strip('"') or None)

    def _caches(self) -> List[str]:
        try:
            return list(self._request("GET", "", headers={"Accept": "application/json"}).json())
        except (_Status, requests.RequestException, ValueError) as exc:
            raise self._error(exc, "", "LIST caches") from exc

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        if "/" in prefix:
            caches = [prefix.partition("/")[0]]
        else:
            caches = [c for c in self._caches() if c.startswith(prefix)]
        for cache in sorted(caches, key=lambda c: c + "/"):
            try:
                names = self._request("GET", quote(cache, safe=""), params={"action": "keys"},
                                      headers={"Accept": "application/json"}).json()
            except (_Status, requests.RequestException, ValueError) as exc:
                raise self._error(exc, f"{cache}/", "LIST") from exc
            keys = sorted(k for k in (f"{cache}/{n}" for n in names)
                          if k.startswith(prefix) and (start_after is None or k > start_after))
            with ThreadPoolExecutor(self.head_threads, thread_name_prefix="cloudpool-infinispan") as pool:
                for info in pool.map(self._head_or_none, keys):
                    if info is not None:
                        yield info

    def _head_or_none(self, key: str) -> Optional[ObjectInfo]:
        try:
            return self.head(key)
        except FileNotFoundError:  # removed since the key listing
            return None

    def _delete_one(self, key: str) -> None:
        try:
            self._request("DELETE", self._entry(key), ok=(200, 204, 404))
        except (_Status, requests.RequestException) as exc:
            raise self._error(exc, key, "DELETE") from exc

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._delete_one(key)

    def check(self) -> None:
        self._caches()
