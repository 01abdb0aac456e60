"""Where format indexes (seek points, record boundaries, chunk tables...) are kept between runs.

An index is built once per object *version* and stored as one blob under a cache URL:
``<cache>/<hash(object url)>/<kind>-<hash(params)>-<hash(version)>``. The version
is the object's ETag, size and mtime, so a changed object gets a new key and its stale
index is never read (stale blobs of the same object, kind and params are deleted on store).

The cache URL is any storage URL (``s3://bucket/cloudpool-index/``, a local directory).
By default it is a directory under the user's cache (``$XDG_CACHE_HOME/cloudpool/index``,
else ``~/.cache/cloudpool/index``): partitioning runs on the client, so that is where the
index is needed. ``index_cache=False`` turns caching off (indexes are rebuilt each time).

A blob that cannot be read or decoded is treated as missing (rebuilt), never as an error:
a cache must not be able to break a run. Failing to *store* is logged, for the same reason.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

from ..storage import get_storage, split_url
from .base import ObjectRef

__all__ = ["IndexCache", "default_cache_url"]

log = logging.getLogger(__name__)


def default_cache_url() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cloudpool", "index")


class IndexCache:
    """A directory of index blobs at ``url`` (any storage URL)."""

    def __init__(self, url: Optional[str] = None, storage_options: Optional[dict] = None) -> None:
        self.url = (url or default_cache_url()).rstrip("/")
        scheme, bucket, prefix = split_url(self.url)
        self._scheme = scheme
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._options = dict(storage_options or {})
        #: Counters for tests and reports.
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"IndexCache({self.url!r})"

    def __getstate__(self) -> dict:
        return {"url": self.url, "storage_options": {}}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    def _dir(self, obj: ObjectRef) -> str:
        digest = hashlib.sha256(obj.url.encode("utf-8")).hexdigest()[:32]
        return f"{self._prefix}/{digest}" if self._prefix else digest

    @staticmethod
    def _stem(kind: str, params: str) -> str:
        return f"{kind}-{hashlib.sha256(params.encode('utf-8')).hexdigest()[:16]}-"

    def _key(self, obj: ObjectRef, kind: str, params: str) -> str:
        version = hashlib.sha256(obj.version().encode("utf-8")).hexdigest()[:32]
        return f"{self._dir(obj)}/{self._stem(kind, params)}{version}"

    def _storage(self):
        return get_storage(self._scheme, self._bucket, self._options)

    def url_of(self, obj: ObjectRef, kind: str, params: str = "") -> str:
        """The storage URL of the blob ``load``/``store`` use (for parts that fetch it)."""
        return self._storage().url(self._key(obj, kind, params))

    @property
    def storage_options(self) -> dict:
        return dict(self._options)

    def load(self, obj: ObjectRef, kind: str, params: str = "") -> Optional[bytes]:
        """The stored index of this version of ``obj``, or ``None``."""
        try:
            data = self._storage().get(self._key(obj, kind, params))
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError as exc:
            log.warning("index cache %s unreadable (%s); rebuilding the index", self.url, exc)
            self.misses += 1
            return None
        self.hits += 1
        return data

    def store(self, obj: ObjectRef, kind: str, data: bytes, params: str = "") -> None:
        """Keep ``data`` as the index of this version of ``obj``; drop older versions' ones."""
        key = self._key(obj, kind, params)
        storage = self._storage()
        try:
            stale = [info.key for info in storage.list(self._dir(obj) + "/")
                     if info.key.rsplit("/", 1)[-1].startswith(self._stem(kind, params))
                     and info.key != key]
            if stale:
                storage.delete(stale)
            storage.put(key, data)
        except OSError as exc:
            log.warning("could not store an index in %s (%s); it will be rebuilt next time",
                        self.url, exc)
