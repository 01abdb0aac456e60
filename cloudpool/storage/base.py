"""The storage ABC: what every object store (local disk, S3, COS, GCS, Azure, HTTP) offers.

A ``StorageBackend`` instance is bound to one bucket (container, or for local disk the
filesystem root). Five primitives are abstract -- ``put``, ``get`` (with a byte range),
``head``, ``list`` and ``delete`` -- and everything else (streaming reads, writers,
JSON helpers, prefix deletion, existence checks) is built on them here, so a new
backend is small. A backend overrides a derived method only to do it faster (say,
multipart uploads in ``put_file``, or ``list_level`` with the store's own delimiter).

``list_level(prefix, delimiter)`` is the one-level listing of ``aws s3 ls``: objects right
under ``prefix`` and one ``CommonPrefix`` per "folder" below it. The default here folds
the full listing; S3/COS, GCS, Azure and local disk ask their store for one level.

Errors: every backend turns its SDK's errors into the ``OSError`` family with the
object's URL in the message: ``FileNotFoundError`` for a missing key or bucket,
``PermissionError`` for refused credentials, plain ``OSError`` otherwise.

Transient failures (a reset connection, a time-out, 5xx, 429/SlowDown) are retried
inside each primitive, a bounded number of times with jittered exponential back-off,
so callers see an ``OSError`` only once the store stayed unusable. Where the SDK has
its own retry machinery (botocore, google-api-core, azure-core) that does the work,
configured per backend; ``StorageRetry`` below covers what the SDKs leave out (a body
cut off after the answer began, a bare 429) and stores without an SDK (plain HTTP).
Errors that another attempt cannot fix -- 4xx such as a missing bucket or refused
credentials -- are never retried.
"""
from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import (Any, BinaryIO, Callable, ClassVar, FrozenSet, Generic, Iterable, Iterator,
                    Optional, TypeVar, Union)

T = TypeVar("T")

Bytes = Union[bytes, bytearray, memoryview]

#: Reads through ``open()`` fetch this much per ranged GET.
DEFAULT_READ_BLOCK = 8 * 1024 * 1024

#: HTTP statuses that mean "try again": time-out, throttling, server-side trouble.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def positive_int_option(scheme: str, name: str, value: Any) -> int:
    """Validate an integer storage option (``max_attempts``...), naming it on error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{scheme}:// storage option {name!r} must be an integer >= 1, not {value!r}")
    return value


@dataclass(frozen=True)
class StorageRetry:
    """Bounded retries of one storage request that failed transiently.

    ``attempts`` tries in all (the first included), never more than ``total_seconds``
    of waiting, each wait drawn from the upper half of an exponentially growing window
    (``backoff`` doubled per retry, at most ``backoff_max``): by default the five
    retries wait 7.75 to 15.5 s in all. Drawing from the upper half
    rather than from zero ("equal jitter") still spreads out the clients that failed
    together, yet guarantees the retries span a minimum time, which is what lets a
    store that restarts in a few seconds come back before the attempts run out.
    """

    attempts: int = 6
    backoff: float = 0.5
    backoff_max: float = 8.0
    total_seconds: float = 60.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        window = min(self.backoff_max, self.backoff * (2 ** (retry - 1)))
        return random.uniform(window / 2, window)

    def run(self, request: Callable[[], T], transient: Callable[[BaseException], Optional[float]]) -> T:
        """``request()``, tried again while ``transient(exc)`` says the failure may pass.

        ``transient`` returns None for a permanent failure (raised at once), else the
        least number of seconds to wait (a server's Retry-After, capped at
        ``backoff_max``; 0 for none).
        """
        started = time.monotonic()
        attempt = 1
        while True:
            try:
                return request()
            except Exception as exc:  # noqa: BLE001 - classified right here, re-raised unless transient
                at_least = transient(exc)
                if at_least is None or attempt >= self.attempts:
                    raise
                wait = max(self.delay(attempt), min(at_least, self.backoff_max))
                if time.monotonic() - started + wait > self.total_seconds:
                    raise
                time.sleep(wait)
                attempt += 1


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD tells about one object."""

    key: str
    size: int
    etag: Optional[str] = None
    mtime: Optional[float] = None


@dataclass(frozen=True)
class CommonPrefix:
    """A "folder" in a one-level listing: ``prefix`` ends with the delimiter, and every
    key under it starts with it (S3's CommonPrefixes, GCS's prefixes, Azure's BlobPrefix)."""

    prefix: str


def fold_level(entries: Iterable[ObjectInfo], prefix: str, delimiter: str
               ) -> Iterator[Union[ObjectInfo, "CommonPrefix"]]:
    """One level of a key-ordered full listing: keys sharing a folder are contiguous in
    key order, so each folder is reported once, when its first key goes by."""
    last = None
    for info in entries:
        cut = info.key.find(delimiter, len(prefix))
        if cut < 0:
            yield info
            continue
        folder = info.key[:cut + len(delimiter)]
        if folder != last:
            last = folder
            yield CommonPrefix(folder)


def check_delimiter(delimiter: str) -> str:
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(f"the listing delimiter must be a non-empty string such as '/', not {delimiter!r}")
    return delimiter


class PerProcess(Generic[T]):
    """A value built on first use in each process: SDK clients and their pooled
    connections must not be shared across a ``fork`` (the local backend forks workers)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._value: Optional[T] = None
        self._pid: Optional[int] = None

    def get(self) -> T:
        pid = os.getpid()
        if self._pid == pid:
            return self._value  # type: ignore[return-value]
        with self._lock:
            if self._pid != pid:
                self._value = self._factory()
                self._pid = pid
            return self._value  # type: ignore[return-value]


class StorageBackend(ABC):
    """One bucket of one object store. Subclasses implement the five primitives."""

    #: URL scheme(s) this backend serves, e.g. ``"s3"``.
    scheme: ClassVar[str] = ""
    #: Options a user may set in config or as keyword arguments (e.g. ``endpoint_url``).
    option_names: ClassVar[FrozenSet[str]] = frozenset()
    #: The subset of ``option_names`` that are credentials: never written into payloads.
    secret_option_names: ClassVar[FrozenSet[str]] = frozenset()
    #: False for read-only stores (plain HTTP).
    writable: ClassVar[bool] = True
    #: True when a call costs a network round trip (the manager then fetches in parallel).
    remote: ClassVar[bool] = True

    def __init__(self, bucket: str, **options: Any) -> None:
        unknown = set(options) - set(self.option_names)
        if unknown:
            from ..config import unknown_options_error  # here: config is not needed otherwise

            raise unknown_options_error(f"{self.scheme}:// storage", unknown, self.option_names)
        self.bucket = bucket
        self.options = dict(options)

    # ------------------------------------------------------------------ primitives
    @abstractmethod
    def put(self, key: str, data: Bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there (atomically)."""

    @abstractmethod
    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        """Return bytes ``[start, end)`` of the object (the whole object by default).

        A range past the end is clipped (an empty ``bytes`` when ``start >= size``).
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and metadata of one object; ``FileNotFoundError`` when it is absent."""

    @abstractmethod
    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order, fetched page by page.

        ``start_after`` skips keys ``<=`` it (S3's StartAfter), which keeps a poll of a
        growing prefix from re-reading what it has already seen.
        """

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete these keys, in as few requests as the store allows; absent keys are fine."""

    # ------------------------------------------------------------------ built on them
    def list_level(self, prefix: str = "", delimiter: str = "/"
                   ) -> Iterator[Union[ObjectInfo, CommonPrefix]]:
        """One level under ``prefix``, in key order, like ``aws s3 ls``.

        Yields an ``ObjectInfo`` for each object whose key has no ``delimiter`` after
        ``prefix``, and a ``CommonPrefix`` for each distinct ``prefix + name + delimiter``
        that has objects below it. ``prefix`` is a string prefix, not a folder: ``"a"``
        matches the object ``"ab"`` and the folder ``"a/"``.
        """
        check_delimiter(delimiter)
        return fold_level(self.list(prefix), prefix, delimiter)

    def url(self, key: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def public_options(self) -> dict:
        """The options that may travel to workers (credentials removed)."""
        return {k: v for k, v in self.options.items() if k not in self.secret_option_names}

    def check(self) -> None:
        """Raise early (``FileNotFoundError``/``PermissionError``) if the bucket is unusable."""
        next(iter(self.list("", None)), None)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except FileNotFoundError:
            return False
        return True

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        """Upload a readable binary file; backends with multipart uploads override this."""
        self.put(key, fileobj.read())

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, separators=(",", ":")).encode())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many there were."""
        keys = [info.key for info in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            self.delete(keys[i:i + 1000])
        return len(keys)

    def open(self, key: str, mode: str = "rb", *, start: int = 0, end: Optional[int] = None,
             block_size: int = DEFAULT_READ_BLOCK) -> BinaryIO:
        """A file object: ``"rb"`` streams ``[start, end)`` with ranged GETs, ``"wb"`` uploads on close."""
        if mode == "rb":
            if end is None:
                end = self.head(key).size
            raw = RangeReader(self, key, start, end)
            return io.BufferedReader(raw, buffer_size=block_size)
        if mode == "wb":
            if not self.writable:
                raise PermissionError(f"{self.url(key)}: {self.scheme}:// storage is read-only")
            return ObjectWriter(self, key)
        raise ValueError(f"mode must be 'rb' or 'wb', not {mode!r}")


class RangeReader(io.RawIOBase):
    """A raw stream over bytes ``[start, end)`` of one object, one ranged GET per read."""

    def __init__(self, storage: StorageBackend, key: str, start: int, end: int) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._start = start
        self._end = end
        self._pos = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = max(self._start, base + offset)
        return self._pos - self._start

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._end - self._pos)
        if want <= 0:
            return 0
        data = self._storage.get(self._key, self._pos, self._pos + want)
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n


class ObjectWriter(io.BytesIO):
    """Collects written bytes and stores them as one object when closed."""

    def __init__(self, storage: StorageBackend, key: str) -> None:
        super().__init__()
        self._storage = storage
        self._key = key

    def close(self) -> None:
        if self.closed:
            return
        # Upload a separate buffer and close ourselves first: some SDKs (boto3's
        # upload_fileobj) close the file they were given, which would re-enter here.
        data = io.BytesIO(self.getvalue())
        super().close()
        self._storage.put_file(self._key, data)
