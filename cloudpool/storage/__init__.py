"""Storage registry: URL scheme -> ``StorageBackend`` class, and URL parsing.

``storage_for("s3://bucket/some/key")`` returns the backend instance for that bucket
(cached per process, so clients and workers reuse SDK clients) and the key. The SDK
behind a scheme is imported only when the scheme is first used.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ..registry import Registry
from .base import ObjectInfo, StorageBackend

__all__ = ["storages", "split_url", "storage_for", "get_storage", "StorageBackend", "ObjectInfo"]

storages: Registry[StorageBackend] = Registry("storage", "cloudpool.storage")
_D = "cloudpool.storage.declared:"
storages.register("file", "cloudpool.storage.local:LocalStorage", declared=_D + "LOCAL")
storages.register("s3", "cloudpool.storage.s3:S3Storage", "aws", declared=_D + "S3")
storages.register("cos", "cloudpool.storage.cos:COSStorage", "ibm", declared=_D + "COS")
storages.register("gs", "cloudpool.storage.gcs:GCSStorage", "gcp", declared=_D + "GCS")
storages.register("az", "cloudpool.storage.azure:AzureBlobStorage", "azure", declared=_D + "AZURE")
storages.register("http", "cloudpool.storage.http:HTTPStorage", "http", declared=_D + "HTTP")
storages.register("https", "cloudpool.storage.http:HTTPSStorage", "http", declared=_D + "HTTP")
storages.register("redis", "cloudpool.storage.redisdb:RedisStorage", "redis", declared=_D + "REDIS")
storages.register("swift", "cloudpool.storage.swift:SwiftStorage", "swift", declared=_D + "SWIFT")
storages.register("oss", "cloudpool.storage.oss:OSSStorage", "oss", declared=_D + "OSS")
storages.register("infinispan", "cloudpool.storage.infinispan:InfinispanStorage", "http",
                  declared=_D + "INFINISPAN")
# Any other scheme fsspec knows (memory://, ftp://, sftp://, webdav://...), when installed.
storages.set_fallback("cloudpool.storage.fsspec_bridge:storage_class_for", "fsspec")

_cache: Dict[Tuple[str, str, str], StorageBackend] = {}
_cache_lock = threading.Lock()


def split_url(url: str) -> Tuple[str, str, str]:
    """Split a storage URL into ``(scheme, bucket, key)``.

    Plain paths and ``file://`` URLs give scheme ``"file"``, bucket ``""`` and the
    absolute path (without its leading slash) as the key.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"a storage URL must be a non-empty string, not {url!r}")
    if "://" not in url:
        # 's3:/bucket/x', 's3//bucket/x', 'gs:b/x' are typos of URLs, not local paths:
        # taking them for relative paths would silently put data under './s3:/...'.
        typo = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)(:/?|//)", url)
        if typo and typo.group(1).lower() in set(storages.names()) | {"file"}:
            scheme = typo.group(1).lower()
            form = "file:///ABSOLUTE/PATH" if scheme == "file" else f"{scheme}://BUCKET/PREFIX"
            raise ValueError(f"malformed URL {url!r}: write {form} (or ./{url} for a local path)")
        return "file", "", os.path.abspath(os.path.expanduser(url)).lstrip("/")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        parts = urlsplit(url)  # only HTTP has queries and fragments
        if not parts.netloc:
            raise ValueError(f"malformed URL {url!r}: it names no host")
        key = parts.path.lstrip("/")
        return scheme, parts.netloc, f"{key}?{parts.query}" if parts.query else key
    # Object keys may contain '?' and '#' (and globs use '?'): split on '/' only.
    bucket, _, key = rest.partition("/")
    if scheme == "file":
        if bucket not in ("", "localhost"):
            raise ValueError(f"malformed URL {url!r}: use file:///absolute/path (three slashes)")
        return "file", "", os.path.abspath("/" + key).lstrip("/")
    if not scheme.isidentifier():
        raise ValueError(f"malformed URL {url!r}: {scheme!r} is not a URL scheme")
    if not bucket:
        raise ValueError(
            f"malformed URL {url!r}: it names no bucket; write {scheme}://BUCKET/PREFIX"
        )
    return scheme, bucket, key


def get_storage(scheme: str, bucket: str, options: Optional[Mapping[str, Any]] = None) -> StorageBackend:
    """The (cached) backend instance for one bucket with these options."""
    opts = dict(options or {})
    cache_key = (scheme, bucket, repr(sorted(opts.items())))
    with _cache_lock:
        backend = _cache.get(cache_key)
    if backend is None:
        cls = storages.get(scheme)
        backend = cls(bucket, **opts)
        with _cache_lock:
            backend = _cache.setdefault(cache_key, backend)
    return backend


def storage_for(url: str, options: Optional[Mapping[str, Any]] = None) -> Tuple[StorageBackend, str]:
    """``(backend, key)`` for a storage URL."""
    scheme, bucket, key = split_url(url)
    return get_storage(scheme, bucket, options), key


def clear_cache() -> None:
    """Forget cached backends (after a fork, or when tests restart a server)."""
    with _cache_lock:
        _cache.clear()


# cloudpool.testing hook: a process started inside `local_cloud()` (a spawned worker, a
# subprocess) finds the local cloud in its environment and redirects the same way.
if os.environ.get("_CLOUDPOOL_LOCAL_CLOUD"):
    from .. import _redirect

    _redirect.activate_from_environment()
