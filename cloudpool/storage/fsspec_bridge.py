"""Any URL scheme fsspec knows, as a cloudpool storage (``ftp://``, ``sftp://``, ``memory://``...).

The storage registry falls back to this module for a scheme with no native backend:
``storage_class_for(scheme)`` returns a ``FsspecStorage`` subclass when fsspec has an
implementation for the scheme (and names the package to install when that
implementation's own dependency is missing). Native backends always win: ``s3://``,
``gs://``, ``az://``, ``http(s)://`` and ``file://`` never come here.

Mapping. The URL's first component is the "bucket" and is given to fsspec as written
(``ftp://host:port/...``, ``memory://name/...``); each key becomes the path fsspec's
``_strip_protocol`` makes of the full URL, so the same bridge serves stores whose first
component is a host and stores whose first component is a bucket. Ranged reads are
``cat_file(path, start, end)``; writes go to a temporary sibling renamed into place
where the filesystem can rename, so a reader never sees half an object; listings are
``find`` (every file below the prefix's directory) sorted by key, fetched at once.

Options. Whatever the implementation's constructor takes (``username``, ``timeout``,
``key_filename``...), as storage options. The ones named in ``SECRET_OPTIONS`` are never
pickled into parts or payloads; ``user:password@`` in a URL is kept out of every URL
cloudpool writes down (see ``_urlauth``).

Errors and retries: ``FileNotFoundError``, ``PermissionError`` (also FTP's 530 "not logged
in") and ``OSError``, naming the URL. Dropped connections, time-outs and FTP's 4xx
replies (FTP's own "transient negative completion") are retried with ``StorageRetry``;
FTP's 5xx replies are permanent and never retried.

``memory://`` lives in one process's memory: use it client-side (``Storage``, iterating
``objects()``), not as the executor's storage or as input to workers in other processes.
"""
from __future__ import annotations

import ftplib
import os
import secrets
import socket
import threading
from typing import Any, ClassVar, Dict, FrozenSet, Iterable, Iterator, Optional, Type

import fsspec
from fsspec.registry import known_implementations

from ..errors import MissingDependencyError
from . import _urlauth
from .base import Bytes, ObjectInfo, StorageBackend, StorageRetry, positive_int_option

__all__ = ["FsspecStorage", "storage_class_for", "SECRET_OPTIONS"]

#: Constructor arguments of fsspec implementations that carry credentials.
SECRET_OPTIONS: FrozenSet[str] = frozenset({
    "password", "passwd", "passphrase", "key", "secret", "token", "client_secret",
    "account_key", "sas_token", "connection_string", "credentials", "pkey", "private_key",
    "secret_access_key", "aws_secret_access_key", "session_token", "api_key",
})
_TMP_MARK = ".cloudpool-tmp-"
#: Options of this bridge itself; everything else goes to the fsspec implementation.
_OWN_OPTIONS = frozenset({"max_attempts"})


def storage_class_for(scheme: str) -> Optional[Type["FsspecStorage"]]:
    """The storage class for ``scheme`` if fsspec knows it, else None (registry fallback)."""
    if scheme not in known_implementations and scheme not in fsspec.registry:
        return None
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        hint = known_implementations.get(scheme, {}).get("err") or str(exc)
        raise MissingDependencyError(
            f"the storage {scheme!r} is served through fsspec, whose implementation for it is not "
            f"installed: {hint}") from exc
    return type(f"FsspecStorage_{scheme}", (FsspecStorage,), {"scheme": scheme, "__module__": __name__})


def _transient(exc: BaseException) -> Optional[float]:
    if isinstance(exc, ftplib.error_temp):  # FTP 4xx: "try again later"
        return 0.0
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, EOFError, ftplib.error_reply)):
        return 0.0
    return None


class FsspecStorage(StorageBackend):
    """One fsspec filesystem at one URL root (``scheme://bucket``)."""

    scheme = "fsspec"  # each generated subclass sets its own
    secret_option_names: ClassVar[FrozenSet[str]] = SECRET_OPTIONS

    def __init__(self, bucket: str, **options: Any) -> None:
        # Options are the implementation's own: not checked against a fixed list here.
        super().__init__(_urlauth.split(self.scheme, bucket))
        self.options = dict(options)
        self.max_attempts = positive_int_option(self.scheme, "max_attempts", options.get("max_attempts", 6))
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._cls = fsspec.get_filesystem_class(self.scheme)
        self._local = threading.local()

    # ------------------------------------------------------------------ filesystem
    @property
    def fs(self) -> Any:
        """This thread's filesystem instance (FTP and SFTP sessions are not thread-safe,
        and no connection may cross a fork)."""
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            kwargs: Dict[str, Any] = dict(self._cls._get_kwargs_from_urls(f"{self.scheme}://{self.bucket}/"))
            auth = _urlauth.lookup(self.scheme, self.bucket)
            if auth is not None:
                user, password = auth
                if user:
                    kwargs.setdefault("username", user)
                if password:
                    kwargs.setdefault("password", password)
            kwargs.update({k: v for k, v in self.options.items() if k not in _OWN_OPTIONS})
            # fsspec caches directory listings per instance; other writers (workers, other
            # threads) would stay invisible to list/head/exists.
            kwargs.setdefault("use_listings_cache", False)
            self._local.fs = self._cls(skip_instance_cache=True, **kwargs)
            self._local.pid = pid
        return self._local.fs

    def _path(self, key: str) -> str:
        return self._cls._strip_protocol(f"{self.scheme}://{self.bucket}/{key}")

    def _key(self, path: str) -> str:
        root = self._path("")
        path = self._cls._strip_protocol(path)
        return path[len(root):].lstrip("/") if path.startswith(root) else path.lstrip("/")

    def _call(self, request: Any) -> Any:
        try:
            return self._retry.run(request, _transient)
        except Exception:
            # A session that failed may be half-closed: the next call starts a new one.
            self._local.pid = None
            raise

    def _error(self, exc: BaseException, key: str, action: str) -> OSError:
        url = self.url(key)
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(f"{url}: no such object")
        if isinstance(exc, PermissionError) or (
                isinstance(exc, ftplib.error_perm) and str(exc)[:3] in ("530", "532")):
            return PermissionError(f"{url}: {action} refused ({exc}); check the credentials "
                                   f"(user:password@ in the URL or the storage options)")
        if isinstance(exc, ftplib.error_perm) and str(exc)[:3] == "550":
            return FileNotFoundError(f"{url}: no such object ({exc})")
        if _transient(exc) is not None:
            return OSError(f"{url}: {action} failed after {self.max_attempts} attempts, the last with "
                           f"{type(exc).__name__}: {exc} (the storage option max_attempts sets how many)")
        return OSError(f"{url}: {action} failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        path = self._path(key)
        body = data if isinstance(data, bytes) else bytes(data)
        tmp = f"{path}{_TMP_MARK}{secrets.token_hex(4)}"

        def write() -> None:
            fs = self.fs
            _ensure_dir(fs, fs._parent(path))
            try:
                fs.pipe_file(tmp, body)
                fs.mv(tmp, path)
            except NotImplementedError:  # no rename here: write in place
                fs.pipe_file(path, body)

        try:
            self._call(write)
        except Exception as exc:  # noqa: BLE001 - every failure is mapped to the OSError family
            raise self._error(exc, key, "PUT") from exc

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        path = self._path(key)

        def read() -> bytes:
            if start == 0 and end is None:
                return self.fs.cat_file(path)
            # Past the end, implementations differ (an error, a short read): ask the size.
            size = self._size(path)
            if start >= size:
                return b""
            return self.fs.cat_file(path, start, min(end, size) if end is not None else size)

        try:
            return bytes(self._call(read))
        except Exception as exc:  # noqa: BLE001 - mapped to the OSError family
            raise self._error(exc, key, "GET") from exc

    def _size(self, path: str) -> int:
        info = self.fs.info(path)
        if info.get("type") == "directory":
            raise FileNotFoundError(path)
        return int(info.get("size") or 0)

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            info = self._call(lambda: self.fs.info(path))
        except Exception as exc:  # noqa: BLE001 - mapped to the OSError family
            raise self._error(exc, key, "HEAD") from exc
        if info.get("type") == "directory":
            raise FileNotFoundError(f"{self.url(key)}: no such object (it is a directory)")
        return ObjectInfo(key=key, size=int(info.get("size") or 0), mtime=_mtime(info))

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        # No prefix listing in fsspec: every file below the prefix's directory, filtered.
        top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        path = self._path(top)

        def find() -> Dict[str, Any]:
            try:
                return self.fs.find(path, withdirs=False, detail=True)
            except FileNotFoundError:
                return {}

        try:
            found = self._call(find)
        except Exception as exc:  # noqa: BLE001 - mapped to the OSError family
            raise self._error(exc, prefix, "LIST") from exc
        entries = []
        for name, info in found.items():
            key = self._key(name)
            if _TMP_MARK in key or info.get("type") == "directory" or not key.startswith(prefix):
                continue
            if start_after is not None and key <= start_after:
                continue
            entries.append(ObjectInfo(key=key, size=int(info.get("size") or 0), mtime=_mtime(info)))
        entries.sort(key=lambda e: e.key)
        return iter(entries)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)

            def remove(path: str = path) -> None:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    return
                except ftplib.error_perm as exc:
                    if str(exc)[:3] != "550":  # 550: no such file, already gone
                        raise

            try:
                self._call(remove)
            except Exception as exc:  # noqa: BLE001 - mapped to the OSError family
                raise self._error(exc, key, "DELETE") from exc

    def check(self) -> None:
        # fsspec has no buckets: a missing root is fine (writes create it), refused
        # credentials or an unreachable server are not.
        path = self._path("")

        def probe() -> None:
            try:  # not fs.exists(): it answers False for every failure, refusals included
                self.fs.info(path)
            except FileNotFoundError:
                return

        try:
            self._call(probe)
        except Exception as exc:  # noqa: BLE001 - mapped to the OSError family
            raise self._error(exc, "", "check") from exc


def _ensure_dir(fs: Any, path: str, depth: int = 0) -> None:
    """``path`` and its parents, tolerating other writers creating them at the same time
    (``makedirs`` would fail on whichever level another thread made first: FTP's 550)."""
    if not path or path == fs._parent(path) or depth > 256 or fs.exists(path):
        return
    _ensure_dir(fs, fs._parent(path), depth + 1)
    try:
        fs.mkdir(path, create_parents=False)
    except Exception:  # noqa: BLE001 - fine if someone else made it meanwhile
        if not fs.exists(path):
            raise


def _mtime(info: Dict[str, Any]) -> Optional[float]:
    modify = info.get("modify")  # FTP's MLSD fact: YYYYMMDDHHMMSS[.sss] in UTC
    if isinstance(modify, str) and len(modify) >= 14 and modify[:14].isdigit():
        import calendar
        import time
        return float(calendar.timegm(time.strptime(modify[:14], "%Y%m%d%H%M%S")))
    for name in ("mtime", "modified", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
    return None
