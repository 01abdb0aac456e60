"""A seekable, read-only file object over one stored object, read with ranged GETs.

This module owns the bridge between readers that want a Python file (pyarrow, rasterio's
``opener=``, laspy) and cloudpool's storage layer: every ``read`` becomes one ranged
``StorageBackend.get`` of exactly the bytes asked for, so the format libraries decide
what to fetch and nothing downloads a whole object. It also counts requests and bytes,
which the tests and benchmarks use to show that a part reads only what it needs.
"""
from __future__ import annotations

import io
import threading
from typing import Any, Mapping, Optional

from ..storage import StorageBackend, get_storage, split_url


class ReadStats:
    """Requests and bytes read through :class:`RangedFile` objects sharing this counter."""

    __slots__ = ("requests", "bytes", "_lock")

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()  # GDAL may read from several threads

    def add(self, n: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += n

    def __repr__(self) -> str:
        return f"ReadStats(requests={self.requests}, bytes={self.bytes})"


class RangedFile(io.RawIOBase):
    """Bytes ``[0, size)`` of ``url``; each read is one ranged GET (no read-ahead)."""

    def __init__(self, url: str, size: Optional[int] = None, *,
                 storage_options: Optional[Mapping[str, Any]] = None,
                 stats: Optional[ReadStats] = None,
                 backend: Optional[StorageBackend] = None) -> None:
        super().__init__()
        scheme, bucket, key = split_url(url)
        self.url = url
        self._backend = backend or get_storage(scheme, bucket, dict(storage_options or {}))
        self._key = key
        self.size = self._backend.head(key).size if size is None else size
        self.stats = stats if stats is not None else ReadStats()
        self.storage_error: Optional[BaseException] = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise OSError(f"{self.url}: seek to negative offset {pos}")
        self._pos = pos
        return pos

    def read_range(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` clipped to the object, as one GET; does not move the position."""
        hi = min(hi, self.size)
        if hi <= lo:
            return b""
        try:
            data = self._backend.get(self._key, lo, hi)
        except OSError as exc:
            # Remembered so a reader's caller can tell a storage failure from bad data
            # when a library (pyarrow) re-raises both as a plain OSError.
            self.storage_error = exc
            raise
        self.stats.add(len(data))
        if len(data) != hi - lo:
            raise OSError(f"{self.url}: expected {hi - lo} bytes at offset {lo} but got "
                          f"{len(data)}; the object changed after it was listed")
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read_range(self._pos, self._pos + len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        # One GET per call, whatever its size (RawIOBase's default goes through readinto
        # with a preallocated buffer, which is fine, but readall would loop in 8 KiB steps).
        hi = self.size if size is None or size < 0 else self._pos + size
        data = self.read_range(self._pos, hi)
        self._pos += len(data)
        return data

    readall = read
