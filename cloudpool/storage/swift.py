"""OpenStack Swift (``swift://container/prefix``) through python-swiftclient.

Authentication: tempauth / v1 (``auth_url``, ``user``, ``key``) or Keystone v3
(``auth_version="3"`` with ``project_name``, ``user_domain_name``,
``project_domain_name``, ``region_name``), or a ready ``storage_url`` + ``auth_token``.
Absent options come from the environment the ``swift`` command line reads (``ST_AUTH``,
``ST_USER``, ``ST_KEY``) or from the OpenStack variables (``OS_AUTH_URL``,
``OS_USERNAME``, ``OS_PASSWORD``, ``OS_PROJECT_NAME``, ``OS_USER_DOMAIN_NAME``,
``OS_PROJECT_DOMAIN_NAME``, ``OS_REGION_NAME``, ``OS_STORAGE_URL``, ``OS_AUTH_TOKEN``).
``key`` and ``auth_token`` are secret options: never in payloads; workers use their
environment.

Requests: ranged GETs with a ``Range`` header (a 416 for a start past the end is an empty
read), listings page by page with ``marker`` (Swift's marker is S3's StartAfter) and
``delimiter`` for one level, deletes one request per key from a few threads. Large
objects -- static (SLO) and dynamic (DLO) manifests -- are read through the proxy, which
joins their segments, ranges included. A container listing shows a DLO manifest as 0
bytes, so an empty listing entry is checked with a HEAD (its real size) before it is
reported.

Errors and retries: 404 -> ``FileNotFoundError`` (a missing container is told apart),
401/403 -> ``PermissionError``, else ``OSError``, each naming the URL. Connection
failures, 408, 429 and 5xx are retried with ``StorageRetry``; swiftclient's own retries
are off so that the bound is one. Other 4xx never are.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Dict, FrozenSet, Iterable, Iterator, Optional

import requests
import swiftclient
from swiftclient.exceptions import ClientException

from . import declared
from .base import (TRANSIENT_HTTP_STATUSES, Bytes, CommonPrefix, ObjectInfo, StorageBackend, StorageRetry,
                   check_delimiter, positive_int_option)

__all__ = ["SwiftStorage"]

#: Option -> environment variables consulted when the option is absent, in order.
_ENV = {
    "auth_url": ("ST_AUTH", "OS_AUTH_URL"),
    "user": ("ST_USER", "OS_USERNAME"),
    "key": ("ST_KEY", "OS_PASSWORD"),
    "project_name": ("OS_PROJECT_NAME", "OS_TENANT_NAME"),
    "user_domain_name": ("OS_USER_DOMAIN_NAME",),
    "project_domain_name": ("OS_PROJECT_DOMAIN_NAME",),
    "region_name": ("OS_REGION_NAME",),
    "storage_url": ("OS_STORAGE_URL",),
    "auth_token": ("OS_AUTH_TOKEN",),
    "auth_version": ("ST_AUTH_VERSION", "OS_AUTH_VERSION", "OS_IDENTITY_API_VERSION"),
}


def _transient(exc: BaseException) -> Optional[float]:
    if isinstance(exc, ClientException):
        status = exc.http_status
        return 0.0 if status is None or status in TRANSIENT_HTTP_STATUSES else None
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return 0.0
    return None


class SwiftStorage(StorageBackend):
    """One Swift container."""

    scheme = "swift"
    option_names: ClassVar[FrozenSet[str]] = declared.SWIFT.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.SWIFT.secrets
    #: Objects per listing request (Swift's default and maximum: 10000).
    list_page_size: ClassVar[int] = 10000
    delete_threads: ClassVar[int] = 8

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        self.max_attempts = positive_int_option("swift", "max_attempts", options.get("max_attempts", 6))
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._local = threading.local()

    # ------------------------------------------------------------------ connection
    def _option(self, name: str) -> Optional[str]:
        if self.options.get(name) is not None:
            return self.options[name]
        for var in _ENV.get(name, ()):
            if os.environ.get(var):
                return os.environ[var]
        return None

    @property
    def conn(self) -> Any:
        """This thread's connection (swiftclient's is not thread-safe; none crosses a fork)."""
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            version = str(self._option("auth_version") or "1")
            os_options = {k: v for k, v in (
                ("project_name", self._option("project_name")),
                ("user_domain_name", self._option("user_domain_name")),
                ("project_domain_name", self._option("project_domain_name")),
                ("region_name", self._option("region_name")),
            ) if v}
            self._local.conn = swiftclient.Connection(
                authurl=self._option("auth_url"), user=self._option("user"), key=self._option("key"),
                preauthurl=self._option("storage_url"), preauthtoken=self._option("auth_token"),
                auth_version="3" if version.startswith("3") else "2.0" if version.startswith("2") else "1.0",
                os_options=os_options, retries=0, timeout=float(self.options.get("timeout", 60)),
                retry_on_ratelimit=False)
            if not self._option("auth_token"):
                # Authenticate now: a refused key found mid-upload ends in swiftclient's
                # "no ability to reset contents" instead of a 401 we can name.
                self._local.conn.get_auth()
            self._local.pid = pid
        return self._local.conn

    def _call(self, request: Any) -> Any:
        return self._retry.run(request, _transient)

    # ------------------------------------------------------------------ errors
    def _error(self, exc: BaseException, key: str, action: str) -> OSError:
        url = self.url(key)
        if isinstance(exc, ClientException):
            status = exc.http_status
            if status == 404:
                if self._container_missing():
                    return self._no_container(key)
                return FileNotFoundError(f"{url}: no such object")
            if status in (401, 403):
                return PermissionError(f"{url}: {action} refused (HTTP {status}); check the credentials "
                                       f"(storage options key/user/auth_url, or ST_*/OS_* variables)")
            if status in TRANSIENT_HTTP_STATUSES:
                return OSError(f"{url}: {action} failed (HTTP {status}) after {self.max_attempts} attempts "
                               f"(the storage option max_attempts sets how many)")
            if status is None and "auth" in str(exc).lower():
                return PermissionError(f"{url}: {action} failed to authenticate: {exc}")
            return OSError(f"{url}: {action} failed: {exc}")
        if _transient(exc) is not None:
            return OSError(f"{url}: {action} failed after {self.max_attempts} attempts, the last with "
                           f"{type(exc).__name__}: {exc} (the storage option max_attempts sets how many)")
        return OSError(f"{url}: {action} failed: {type(exc).__name__}: {exc}")

    def _container_missing(self) -> bool:
        try:
            self.conn.head_container(self.bucket)
        except ClientException as exc:
            return exc.http_status == 404
        except (requests.RequestException, OSError):
            return False
        return False

    def _no_container(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(f"{self.url(key)}: container {self.bucket!r} does not exist; create it "
                                 f"(swift post {self.bucket}) or fix the storage URL")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self._call(lambda: self.conn.put_object(self.bucket, key, body))
        except (ClientException, requests.RequestException, OSError) as exc:
            raise self._error(exc, key, "PUT") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            _headers, body = self._call(lambda: self.conn.get_object(self.bucket, key, headers=headers))
        except ClientException as exc:
            if exc.http_status == 416:  # the range starts at or past the end
                return b""
            raise self._error(exc, key, "GET") from exc
        except (requests.RequestException, OSError) as exc:
            raise self._error(exc, key, "GET") from exc
        return bytes(body)

    def head(self, key: str) -> ObjectInfo:
        try:
            headers = self._call(lambda: self.conn.head_object(self.bucket, key))
        except (ClientException, requests.RequestException, OSError) as exc:
            raise self._error(exc, key, "HEAD") from exc
        return self._info(key, headers)

    @staticmethod
    def _info(key: str, headers: Dict[str, str]) -> ObjectInfo:
        stamp = headers.get("x-timestamp")
        return ObjectInfo(key=key, size=int(headers.get("content-length", 0)),
                          etag=(headers.get("etag") or "").strip('"') or None,
                          mtime=float(stamp) if stamp else None)

    def _pages(self, prefix: str, start_after: Optional[str], delimiter: Optional[str]) -> Iterator[Any]:
        marker = start_after or ""
        while True:  # one request per page, made when reached
            try:
                _h, page = self._call(lambda: self.conn.get_container(
                    self.bucket, marker=marker, limit=self.list_page_size, prefix=prefix or None,
                    delimiter=delimiter))
            except (ClientException, requests.RequestException, OSError) as exc:
                raise self._error(exc, prefix, "LIST") from exc
            if not page:
                return
            for item in page:
                if "subdir" in item:
                    yield CommonPrefix(item["subdir"])
                elif item.get("bytes") == 0 and "hash" in item:
                    # A DLO manifest lists as 0 bytes: its HEAD tells the joined size.
                    yield self.head(item["name"])
                else:
                    yield ObjectInfo(key=item["name"], size=int(item["bytes"]),
                                     etag=item.get("hash") or None)
            last = page[-1]
            marker = last.get("name") or last.get("subdir")
            if len(page) < self.list_page_size:
                return

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        return self._pages(prefix, start_after, None)

    def list_level(self, prefix: str = "", delimiter: str = "/") -> Iterator[Any]:
        return self._pages(prefix, None, check_delimiter(delimiter))

    def _delete_one(self, key: str) -> None:
        try:
            self._call(lambda: self.conn.delete_object(self.bucket, key))
        except ClientException as exc:
            if exc.http_status == 404:
                return  # already gone
            raise self._error(exc, key, "DELETE") from exc
        except (requests.RequestException, OSError) as exc:
            raise self._error(exc, key, "DELETE") from exc

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if len(keys) <= 1:
            for key in keys:
                self._delete_one(key)
            return
        with ThreadPoolExecutor(min(self.delete_threads, len(keys)),
                                thread_name_prefix="cloudpool-swift-delete") as pool:
            for _ in pool.map(self._delete_one, keys):
                pass

    def check(self) -> None:
        try:
            self._call(lambda: self.conn.head_container(self.bucket))
        except (ClientException, requests.RequestException, OSError) as exc:
            if isinstance(exc, ClientException) and exc.http_status == 404:
                raise self._no_container("") from exc
            raise self._error(exc, "", "HEAD container") from exc
