"""Alibaba Cloud OSS (``oss://bucket/prefix``) through the ``oss2`` SDK.

Options: ``endpoint`` (``https://oss-cn-hangzhou.aliyuncs.com``; else ``OSS_ENDPOINT``),
``access_key_id`` / ``access_key_secret`` / ``security_token`` (else ``OSS_ACCESS_KEY_ID``,
``OSS_ACCESS_KEY_SECRET``, ``OSS_SESSION_TOKEN``, the variables oss2's environment
provider reads; all three are secret), ``max_attempts``, ``timeout``.

Requests: ranged GETs with ``x-oss-range-behavior: standard`` (without it OSS answers an
invalid range with the whole object), ListObjects pages with ``marker`` (= StartAfter)
and ``delimiter`` for one level, DeleteMultipleObjects in quiet batches of 1000.
Tested only against a fake of these documented requests (tests/fake_oss.py): no OSS is
reachable here. OSS's S3-compatible endpoint also works with ``s3://`` and
``addressing_style: virtual`` (see the README).

Errors: NoSuchKey / a 404 -> ``FileNotFoundError`` (NoSuchBucket named), AccessDenied,
InvalidAccessKeyId, SignatureDoesNotMatch -> ``PermissionError``, else ``OSError``, each
naming the URL. Network errors, 408, 429 and 5xx are retried with ``StorageRetry``.
"""
from __future__ import annotations

import itertools
import os
import threading
from typing import Any, ClassVar, FrozenSet, Iterable, Iterator, Optional

import oss2
import oss2.exceptions as oexc

from . import declared
from .base import (TRANSIENT_HTTP_STATUSES, Bytes, CommonPrefix, ObjectInfo, StorageBackend, StorageRetry,
                   check_delimiter, positive_int_option)

__all__ = ["OSSStorage"]

_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "SecurityTokenExpired",
                     "InvalidSecurityToken"})


def _transient(exc: BaseException) -> Optional[float]:
    if isinstance(exc, oexc.RequestError):  # no answer: connection refused, reset, time-out
        return 0.0
    if isinstance(exc, oexc.OssError) and exc.status in TRANSIENT_HTTP_STATUSES:
        return 0.0
    return None


class OSSStorage(StorageBackend):
    """One OSS bucket."""

    scheme = "oss"
    option_names: ClassVar[FrozenSet[str]] = declared.OSS.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.OSS.secrets
    list_page_size: ClassVar[int] = 1000

    def __init__(self, bucket: str, **options: Any) -> None:
        super().__init__(bucket, **options)
        if not oss2.is_valid_bucket_name(bucket):
            raise ValueError(f"oss://{bucket}/: {bucket!r} is not a valid OSS bucket name (3-63 lowercase "
                             f"letters, digits and dashes, starting and ending with a letter or digit)")
        self.max_attempts = positive_int_option("oss", "max_attempts", options.get("max_attempts", 6))
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._local = threading.local()

    def _opt(self, name: str, env: str) -> Optional[str]:
        return self.options.get(name) or os.environ.get(env)

    @property
    def oss_bucket(self) -> Any:
        """This thread's ``oss2.Bucket`` (its HTTP session must not cross a fork)."""
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            endpoint = self._opt("endpoint", "OSS_ENDPOINT")
            if not endpoint:
                raise ValueError(f"{self.url()}: no OSS endpoint; set the storage option endpoint "
                                 f"(e.g. https://oss-cn-hangzhou.aliyuncs.com) or OSS_ENDPOINT")
            key_id = self._opt("access_key_id", "OSS_ACCESS_KEY_ID") or ""
            secret = self._opt("access_key_secret", "OSS_ACCESS_KEY_SECRET") or ""
            token = self._opt("security_token", "OSS_SESSION_TOKEN")
            auth = oss2.StsAuth(key_id, secret, token) if token else oss2.Auth(key_id, secret)
            self._local.bucket = oss2.Bucket(auth, endpoint, self.bucket,
                                             connect_timeout=float(self.options.get("timeout", 60)))
            self._local.pid = pid
        return self._local.bucket

    def _call(self, request: Any) -> Any:
        return self._retry.run(request, _transient)

    def _error(self, exc: BaseException, key: str, action: str) -> OSError:
        url = self.url(key)
        if isinstance(exc, oexc.OssError):
            code = getattr(exc, "code", "") or ""
            if code == "NoSuchBucket":
                return self._no_bucket(key)
            if code in _DENIED or exc.status in (401, 403):
                return PermissionError(f"{url}: {action} refused ({code or exc.status}); check the "
                                       f"credentials (OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET or the "
                                       f"storage options) and that they may access bucket {self.bucket!r}")
            if code == "NoSuchKey" or exc.status == 404:
                return FileNotFoundError(f"{url}: no such object")
            if _transient(exc) is not None:
                return OSError(f"{url}: {action} failed (HTTP {exc.status} {code}) after "
                               f"{self._retry.attempts} attempts (the storage option max_attempts sets how many)")
            return OSError(f"{url}: {action} failed (HTTP {exc.status} {code}: {getattr(exc, 'message', '')})")
        return OSError(f"{url}: {action} failed: {type(exc).__name__}: {exc}")

    def _no_bucket(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(f"{self.url(key)}: bucket {self.bucket!r} does not exist; create it or fix "
                                 f"the storage URL")

    def _missing(self, key: str) -> FileNotFoundError:
        """A bare 404 (HEAD has no body): tell a missing bucket apart."""
        try:
            self.oss_bucket.list_objects(max_keys=1)
        except oexc.NoSuchBucket:
            return self._no_bucket(key)
        except oexc.OssError:
            pass
        return FileNotFoundError(f"{self.url(key)}: no such object")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        body = data if isinstance(data, bytes) else bytes(data)
        try:
            self._call(lambda: self.oss_bucket.put_object(key, body))
        except oexc.OssError as exc:
            raise self._error(exc, key, "PUT") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        byte_range = None if (start == 0 and end is None) else (start, None if end is None else end - 1)
        headers = {"x-oss-range-behavior": "standard"} if byte_range else None
        try:
            return self._call(lambda: self.oss_bucket.get_object(key, byte_range=byte_range,
                                                                 headers=headers).read())
        except oexc.OssError as exc:
            if exc.status == 416:  # starts at or past the end
                return b""
            raise self._error(exc, key, "GET") from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            meta = self._call(lambda: self.oss_bucket.head_object(key))
        except oexc.OssError as exc:
            if exc.status == 404:
                raise self._missing(key) from exc
            raise self._error(exc, key, "HEAD") from exc
        return ObjectInfo(key=key, size=int(meta.content_length),
                          etag=(meta.etag or "").strip('"') or None,
                          mtime=float(meta.last_modified) if meta.last_modified else None)

    def _pages(self, prefix: str, start_after: Optional[str], delimiter: str) -> Iterator[Any]:
        marker = start_after or ""
        while True:
            try:
                result = self._call(lambda: self.oss_bucket.list_objects(
                    prefix=prefix, delimiter=delimiter, marker=marker, max_keys=self.list_page_size))
            except oexc.OssError as exc:
                raise self._error(exc, prefix, "LIST") from exc
            entries: list = [ObjectInfo(key=o.key, size=int(o.size), etag=(o.etag or "").strip('"') or None,
                                        mtime=float(o.last_modified) if o.last_modified else None)
                             for o in result.object_list]
            entries += [CommonPrefix(p) for p in result.prefix_list]
            entries.sort(key=lambda e: e.key if isinstance(e, ObjectInfo) else e.prefix)
            yield from entries
            if not result.is_truncated:
                return
            marker = result.next_marker

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        return self._pages(prefix, start_after, "")

    def list_level(self, prefix: str = "", delimiter: str = "/") -> Iterator[Any]:
        return self._pages(prefix, None, check_delimiter(delimiter))

    def delete(self, keys: Iterable[str]) -> None:
        it = iter(keys)
        while True:
            chunk = list(itertools.islice(it, 1000))  # DeleteMultipleObjects' limit
            if not chunk:
                return
            try:
                self._call(lambda: self.oss_bucket.batch_delete_objects(chunk))
            except oexc.OssError as exc:
                raise self._error(exc, chunk[0], "DELETE") from exc

    def check(self) -> None:
        # Listing one key needs only oss:ListObjects, which cloudpool needs anyway.
        try:
            self._call(lambda: self.oss_bucket.list_objects(max_keys=1))
        except oexc.OssError as exc:
            raise self._error(exc, "", "LIST") from exc
