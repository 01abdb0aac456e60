"""Lithops' ``Storage`` API (``lithops.Storage``, ``lithops.storage.utils``) on cloudpool's storage layer.

This module owns the translation of Lithops' bucket-and-key object calls
(``put_object``/``get_object``/``head_object``/``list_objects``/``list_keys``/
``delete_object(s)``, cloud objects) into calls on the storage backends of
``cloudpool.storage``; it talks to no cloud SDK itself. Lithops' storage names map to
cloudpool schemes (``aws_s3``/``minio``/``ceph`` -> ``s3``, ``ibm_cos`` -> ``cos``,
``gcp_storage`` -> ``gs``, ``azure_storage`` -> ``az``); ``localhost`` buckets are
directories under ``localhost_root()``, the same place ``localhost://bucket/key`` data
URLs of ``FunctionExecutor.map`` read from.

A ``Storage`` is picklable (it is what a function's ``storage`` parameter receives on a
worker); options the backend declares secret are left out, so workers use their own
credential chain, as everywhere in cloudpool.
"""
from __future__ import annotations

import io
import os
import tempfile
import uuid
from typing import Any, BinaryIO, Dict, Iterable, List, Mapping, Optional, Union

from ..storage import get_storage, storages
from ..storage.base import StorageBackend
from ._lithops_config import STORAGES, LithopsCompatError, default_config, extract_storage_config, storage_options

__all__ = ["Storage", "CloudObject", "StorageNoSuchKeyError", "StorageNoSuchBucketError", "localhost_root"]

Body = Union[bytes, bytearray, memoryview, str, BinaryIO]


def localhost_root() -> str:
    """Where Lithops' localhost storage keeps its buckets (``<tmp>/lithops-<user>``)."""
    return os.path.join(os.path.realpath(tempfile.gettempdir()), f"lithops-{os.getenv('USER', 'root')}")


class StorageNoSuchKeyError(FileNotFoundError):
    """No object ``key`` in ``bucket`` (a ``FileNotFoundError``, as cloudpool's storage raises)."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"No such key /{bucket}/{key} found in storage.")
        self.bucket = bucket
        self.key = key

    def __reduce__(self) -> tuple:  # rebuilt from its arguments when a worker's error travels back
        return (type(self), (self.bucket, self.key))


class StorageNoSuchBucketError(FileNotFoundError):
    """No bucket ``bucket``."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"No such bucket {bucket!r} found in storage.")
        self.bucket = bucket

    def __reduce__(self) -> tuple:
        return (type(self), (self.bucket,))


class CloudObject:
    """A reference to one object: ``backend`` (Lithops' storage name), ``bucket``, ``key``."""

    __slots__ = ("backend", "bucket", "key")

    def __init__(self, backend: str, bucket: str, key: str) -> None:
        self.backend = backend
        self.bucket = bucket
        self.key = key

    def __getstate__(self) -> dict:
        return {"backend": self.backend, "bucket": self.bucket, "key": self.key}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CloudObject):
            return NotImplemented
        return (self.backend, self.bucket, self.key) == (other.backend, other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.backend, self.bucket, self.key))

    def __repr__(self) -> str:
        return f"<CloudObject {self.backend}://{self.bucket}/{self.key}>"


def _as_bytes(body: Body) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        data = body.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    raise TypeError(f"body must be bytes, str or a readable file object, not {type(body).__name__}")


def _byte_range(extra_get_args: Optional[Mapping[str, Any]]) -> tuple:
    """``{'Range': 'bytes=A-B'}`` (inclusive, as HTTP) -> ``(A, B + 1)``; no range -> ``(None, None)``."""
    spec = (extra_get_args or {}).get("Range")
    if not spec:
        return None, None
    unit, _, span = str(spec).partition("=")
    first, _, last = span.partition("-")
    if unit.strip() != "bytes" or not first.strip().isdigit() or (last.strip() and not last.strip().isdigit()):
        raise ValueError(f"extra_get_args Range {spec!r} is not of the form 'bytes=FIRST-LAST'")
    return int(first), (int(last) + 1 if last.strip() else None)


class Storage:
    """Lithops' ``Storage``: bucket/key object calls on one configured storage backend.

    ``Storage()`` uses the Lithops config (``default_config()``, localhost without one);
    ``Storage(config=...)`` a Lithops config dict; ``Storage(storage_config=...)`` what
    ``extract_storage_config`` returns; ``backend=`` overrides the storage name.
    ``bucket`` is the section's ``storage_bucket``.
    """

    def __init__(self, config: Optional[Mapping[str, Any]] = None, backend: Optional[str] = None,
                 storage_config: Optional[Mapping[str, Any]] = None, *,
                 localhost_root: Optional[str] = None) -> None:
        if storage_config is None:
            full = default_config(config_data=config) if config else default_config()
            if backend is not None:
                full.setdefault("lithops", {})["storage"] = backend
            storage_config = extract_storage_config(full)
        name = backend or storage_config.get("backend") or "localhost"
        if name not in STORAGES:
            raise LithopsCompatError(f"cloudpool.compat.lithops does not support the storage backend "
                                     f"{name!r}: use one of {', '.join(sorted(STORAGES))}")
        section = dict(storage_config.get(name) or {})
        self.backend = name
        self.bucket: Optional[str] = section.get("storage_bucket") or ("storage" if name == "localhost" else None)
        self.config = {"backend": name, name: section}
        self._scheme = STORAGES[name]
        options = storage_options(name, section)
        secret = storages.get(self._scheme).secret_option_names
        self._options = options
        self._secret = {k for k in options if k in secret}
        self._root = os.path.abspath(localhost_root) if localhost_root else _default_root()
        self.storage_backend = name

    # ------------------------------------------------------------------ plumbing
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_options"] = {k: v for k, v in self._options.items() if k not in self._secret}
        return state

    def __repr__(self) -> str:
        return f"<lithops-compatible Storage {self.backend} bucket={self.bucket!r}>"

    def _store(self, bucket: str) -> StorageBackend:
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket must be a non-empty str, not {bucket!r}")
        if self._scheme == "file":
            return get_storage("file", "", {})
        return get_storage(self._scheme, bucket, self._options)

    def _key(self, bucket: str, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if self._scheme == "file":
            if any(seg in ("..",) for seg in (bucket + "/" + key).split("/")):
                raise ValueError(f"invalid bucket/key {bucket!r}/{key!r}: '..' is not allowed")
            return os.path.join(self._root, bucket, key).lstrip("/")
        return key

    def _prefix_len(self, bucket: str) -> int:
        return len(self._key(bucket, "")) if self._scheme == "file" else 0

    def get_client(self) -> StorageBackend:
        """The cloudpool storage backend of the default bucket."""
        return self._store(self.bucket or "")

    # ------------------------------------------------------------------ objects
    def put_object(self, bucket: str, key: str, body: Body) -> None:
        """Store ``body`` (bytes, str or a readable file object) as ``bucket/key``."""
        self._store(bucket).put(self._key(bucket, key), _as_bytes(body))

    def get_object(self, bucket: str, key: str, stream: bool = False,
                   extra_get_args: Optional[Mapping[str, Any]] = None) -> Any:
        """The object's bytes (``stream=True``: a binary file object); ``extra_get_args``
        may hold an HTTP ``Range`` (``'bytes=1-4'``, inclusive)."""
        start, end = _byte_range(extra_get_args)
        try:
            data = self._store(bucket).get(self._key(bucket, key), start, end)
        except FileNotFoundError:
            raise StorageNoSuchKeyError(bucket, key) from None
        return io.BytesIO(data) if stream else data

    def upload_file(self, file_name: str, bucket: str, key: Optional[str] = None,
                    extra_args: Optional[Mapping[str, Any]] = None) -> None:
        with open(file_name, "rb") as f:
            self.put_object(bucket, key or os.path.basename(file_name), f)

    def download_file(self, bucket: str, key: str, file_name: Optional[str] = None,
                      extra_args: Optional[Mapping[str, Any]] = None) -> None:
        data = self.get_object(bucket, key)
        with open(file_name or os.path.basename(key), "wb") as f:
            f.write(data)

    def head_object(self, bucket: str, key: str) -> Dict[str, str]:
        """The object's metadata, as Lithops gives it: ``content-length`` (a str), ``ETag``, ``LastModified``."""
        try:
            info = self._store(bucket).head(self._key(bucket, key))
        except FileNotFoundError:
            raise StorageNoSuchKeyError(bucket, key) from None
        return {"content-length": str(info.size), "ETag": info.etag or "",
                "LastModified": "" if info.mtime is None else str(info.mtime)}

    def head_bucket(self, bucket: str) -> Dict[str, Any]:
        """``{'ResponseMetadata': {'HTTPStatusCode': 200}}`` when ``bucket`` exists."""
        if self._scheme == "file":
            if not os.path.isdir(os.path.join(self._root, bucket)):
                raise StorageNoSuchBucketError(bucket)
        else:
            try:
                next(iter(self._store(bucket).list("")), None)
            except FileNotFoundError:
                raise StorageNoSuchBucketError(bucket) from None
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def create_bucket(self, bucket: str) -> None:
        if self._scheme == "file":
            os.makedirs(os.path.join(self._root, bucket), exist_ok=True)
        else:
            raise LithopsCompatError(f"cloudpool.compat.lithops does not create buckets: create "
                                     f"{bucket!r} with your provider's tools")

    def list_objects(self, bucket: str, prefix: Optional[str] = None,
                     match_pattern: Optional[str] = None) -> List[Dict[str, Any]]:
        """Objects under the (plain string) ``prefix``: dicts with ``Key``, ``Size``, ``LastModified``."""
        cut = self._prefix_len(bucket)
        out = []
        for info in self._store(bucket).list(self._key(bucket, prefix or "")):
            key = info.key[cut:]
            if key.endswith("/") or (match_pattern is not None and match_pattern not in key):
                continue
            out.append({"Key": key, "Size": info.size, "LastModified": info.mtime, "ETag": info.etag})
        return out

    def list_keys(self, bucket: str, prefix: Optional[str] = None) -> List[str]:
        """Keys under the (plain string) ``prefix``."""
        return [o["Key"] for o in self.list_objects(bucket, prefix)]

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete ``bucket/key``; an absent object is fine (as in object stores)."""
        self.delete_objects(bucket, [key])

    def delete_objects(self, bucket: str, key_list: Iterable[str]) -> None:
        keys = [self._key(bucket, k) for k in key_list]
        if self._scheme == "file":
            # A "directory" of other keys is no object on an object store: nothing to delete.
            keys = [k for k in keys if not os.path.isdir("/" + k)]
        store = self._store(bucket)
        for i in range(0, len(keys), 1000):
            store.delete(keys[i:i + 1000])

    # ------------------------------------------------------------------ cloud objects
    def put_cloudobject(self, body: Body, bucket: Optional[str] = None,
                        key: Optional[str] = None) -> CloudObject:
        """Store ``body``; a ``CloudObject`` naming it (default key: a fresh one under
        ``lithops.cloudobjects/``)."""
        bucket = bucket or self.bucket
        if not bucket:
            raise LithopsCompatError(f"storage {self.backend!r} has no storage_bucket: pass bucket=")
        key = key or f"lithops.cloudobjects/{uuid.uuid4().hex}"
        self.put_object(bucket, key, body)
        return CloudObject(self.backend, bucket, key)

    def get_cloudobject(self, cloudobject: CloudObject, stream: bool = False) -> Any:
        if not isinstance(cloudobject, CloudObject):
            raise TypeError(f"expected a CloudObject (from put_cloudobject), not {type(cloudobject).__name__}")
        return self.get_object(cloudobject.bucket, cloudobject.key, stream=stream)

    def delete_cloudobject(self, cloudobject: CloudObject) -> None:
        self.delete_object(cloudobject.bucket, cloudobject.key)

    def delete_cloudobjects(self, cloudobjects: Iterable[CloudObject]) -> None:
        by_bucket: Dict[str, List[str]] = {}
        for co in cloudobjects:
            by_bucket.setdefault(co.bucket, []).append(co.key)
        for bucket, keys in by_bucket.items():
            self.delete_objects(bucket, keys)


_default_root = localhost_root  # the parameter of Storage() shadows the function's name
