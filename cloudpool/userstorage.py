"""``cloudpool.Storage``: a small object-store API for user code, in clients and in workers.

This module owns the user-facing wrapper only: ``Storage("s3://bucket/out")`` binds a
storage backend from the registry (``cloudpool.storage``) to a key prefix, and every
method takes keys *relative to that prefix*. It imports no cloud SDK of its own, so the
same code works on every scheme the registry knows (``file://`` and plain paths, ``s3://``,
``cos://``, ``gs://``, ``az://``, read-only ``http(s)://``)::

    out = Storage("s3://bucket/results")
    out.put(f"counts/{part.part}.json", json.dumps(counts))
    for key in out.list("counts/"):          # "counts/0.json", "counts/1.json", ...
        print(key, len(out.get(key)))

The URL's key is always taken as a directory-like prefix (``s3://b/out`` and
``s3://b/out/`` are the same Storage). Options are the keyword arguments over the
configuration's section for the scheme (``CLOUDPOOL_S3__ENDPOINT_URL``, the config file),
resolved where the Storage is built. A Storage is picklable (it travels inside
closures to workers); options its backend declares as credentials are left out when it is
pickled, so workers use their platform's own credential chain.
"""
from __future__ import annotations

import io
from typing import Any, BinaryIO, Iterable, Iterator, Optional, Union

from .config import open_storage
from .storage import split_url
from .storage import ObjectInfo, StorageBackend, get_storage, storages

__all__ = ["Storage"]

Data = Union[bytes, bytearray, memoryview, str]


class Storage:
    """Objects under one URL prefix. Keys given to and returned by methods are relative."""

    def __init__(self, url: str, **options: Any) -> None:
        scheme, bucket, key = split_url(url)
        storages.get(scheme)  # fail now on an unknown scheme or a missing SDK
        self._scheme = scheme
        self._bucket = bucket
        self._prefix = key if not key or key.endswith("/") else key + "/"
        # Keyword options over the configuration's section for this scheme (env, file),
        # as the executor resolves its own storage; unknown names fail here.
        # Built now (and cached by the registry), so a bad value fails here, naming where
        # it was set; looked up again on first use, so a Storage made before a
        # cloudpool.testing.local_cloud() is entered still follows its redirection.
        _backend, self._options = open_storage(scheme, bucket, options, origin="keyword argument of Storage()")
        self._backend_obj: Optional[StorageBackend] = None

    # ------------------------------------------------------------------ plumbing
    @property
    def backend(self) -> StorageBackend:
        """The registry's (per-process cached) backend for this bucket."""
        if self._backend_obj is None:
            self._backend_obj = get_storage(self._scheme, self._bucket, self._options)
        return self._backend_obj

    @property
    def prefix(self) -> str:
        """The full key prefix (empty, or ending in ``/``) that relative keys are joined to."""
        return self._prefix

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"a key must be a str, not {type(key).__name__}")
        if not key or key.startswith("/") or key.endswith("/"):
            raise ValueError(f"invalid key {key!r}: use a non-empty relative key such as "
                             f"'out/part-0.json' (no leading or trailing '/')")
        if any(seg in ("", ".", "..") for seg in key.split("/")):
            # Local disk would resolve these and escape the prefix; object stores would not.
            raise ValueError(f"invalid key {key!r}: empty, '.' and '..' path segments are "
                             f"not allowed")
        return self._prefix + key

    def __getstate__(self) -> dict:
        secret = storages.get(self._scheme).secret_option_names
        # "user:password@host" (redis://, ftp://...): the backend keeps the password, the
        # pickle gets the host only.
        return {"scheme": self._scheme, "bucket": self._bucket.rpartition("@")[2], "prefix": self._prefix,
                "options": {k: v for k, v in self._options.items() if k not in secret}}

    def __setstate__(self, state: dict) -> None:
        self._scheme = state["scheme"]
        self._bucket = state["bucket"]
        self._prefix = state["prefix"]
        self._options = state["options"]
        self._backend_obj = None

    def __repr__(self) -> str:
        return f"Storage({self.url()!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Storage):
            return NotImplemented
        return (self._scheme, self._bucket, self._prefix, self._options) == \
            (other._scheme, other._bucket, other._prefix, other._options)

    def __hash__(self) -> int:
        return hash((self._scheme, self._bucket, self._prefix))

    # ------------------------------------------------------------------ the API
    def url(self, key: str = "") -> str:
        """The full URL of ``key`` (of the prefix itself when ``key`` is empty)."""
        return self.backend.url(self._key(key) if key else self._prefix)

    def put(self, key: str, data: Data) -> None:
        """Store ``data`` (bytes-like, or ``str`` stored as UTF-8) under ``key``, replacing it."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like or str, not {type(data).__name__}")
        self.backend.put(self._key(key), data)

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (all of it by default); ``FileNotFoundError`` if absent."""
        for name, value in (("start", start), ("end", end)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, not {value!r}")
        if start is not None and end is not None and end < start:
            raise ValueError(f"end ({end}) must not be less than start ({start})")
        return self.backend.get(self._key(key), start, end)

    def open(self, key: str, mode: str = "rb") -> BinaryIO:
        """A binary file: ``"rb"`` streams with ranged GETs, ``"wb"`` stores the object on close."""
        if mode == "wb":
            if not self.backend.writable:
                raise PermissionError(f"{self.url(key)}: {self._scheme}:// storage is read-only")
            return _Writer(self.backend, self._key(key))  # type: ignore[return-value]
        return self.backend.open(self._key(key), mode)

    def info(self, key: str) -> ObjectInfo:
        """Size and metadata of ``key`` (its ``key`` field relative); ``FileNotFoundError`` if absent."""
        info = self.backend.head(self._key(key))
        return ObjectInfo(key=key, size=info.size, etag=info.etag, mtime=info.mtime)

    def exists(self, key: str) -> bool:
        return self.backend.exists(self._key(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Relative keys of the objects under ``prefix`` (relative too), in key order, lazily.

        ``prefix`` is a plain string prefix: ``list("counts/")`` and ``list("counts/1")``
        both work. Folder marker objects (keys ending in ``/``) are skipped.
        """
        if not isinstance(prefix, str) or prefix.startswith("/"):
            raise ValueError(f"invalid prefix {prefix!r}: use a relative prefix such as 'counts/'")
        cut = len(self._prefix)
        for info in self.backend.list(self._prefix + prefix):
            if not info.key.endswith("/"):
                yield info.key[cut:]

    def delete(self, key_or_keys: Union[str, Iterable[str]]) -> None:
        """Delete one key or many (absent keys are fine)."""
        keys = [key_or_keys] if isinstance(key_or_keys, str) else list(key_or_keys)
        full = [self._key(k) for k in keys]
        for i in range(0, len(full), 1000):
            self.backend.delete(full[i:i + 1000])


class _Writer(io.BytesIO):
    """Collects writes; on close, uploads them with the backend's ``put_file``.

    The upload reads a *separate* stream: SDK transfer managers (boto3's) close the file
    object they upload, and closing this writer again from inside its own upload must
    not start a second upload.
    """

    def __init__(self, backend: StorageBackend, key: str) -> None:
        super().__init__()
        self._backend = backend
        self._key = key

    def close(self) -> None:
        if self.closed:
            return
        data = self.getvalue()
        super().close()
        self._backend.put_file(self._key, io.BytesIO(data))
