"""Automatic partitioning of object-storage inputs: ``objects()`` and ``ObjectPart``.

This module owns turning "these objects" (a bucket/prefix, a glob, a single object, or a
list of them) into small, picklable ``ObjectPart`` descriptions of byte ranges, and
reading exactly the records of one part on a worker. It talks to object stores only
through the storage registry (``cloudpool.storage``), so every scheme works the same.

The partition rule
------------------
Each object is cut into *nominal* ranges ``[start, end)`` that tile it. With a record
separator ``newline`` of length ``L``, a *record start* is offset 0 and every offset
``q`` (``0 < q < size``) whose ``L`` preceding bytes equal the separator. A part owns
exactly the records that start inside its nominal range, so it reads the bytes
``[c(start), c(end))`` where ``c(x)`` is the first record start at or after ``x`` (or
``size`` if none; ``c(0) = 0``). Adjacent parts share the same ``c`` at their common
boundary and ``c`` never decreases, so the parts' bytes concatenate to the object
exactly, whatever the line lengths; a part whose nominal range lies inside one long
record owns nothing and reads nothing past its own nominal range. Finding ``c(x)``
means reading forward from ``x - L`` (a separator can straddle the boundary) in
blocks of 64 KiB that double, with ranged GETs; no part ever downloads the object.

Separators that can overlap themselves (``b"\\n\\n"``): every occurrence counts, so
``b"a\\n\\n\\nb"`` has records ``b"a\\n\\n"``, ``b"\\n"``, ``b"b"``. This keeps the
boundary decidable from local bytes only (a left-to-right split would need to read
back to the start of an arbitrarily long run). For separators that cannot overlap
themselves (``b"\\n"``, ``b"\\r\\n"``, ``b"\\x1e"``, ...) it is the usual split.

``newline=None`` gives exact byte ranges (binary data). An empty object gives one
empty part, so every listed object is seen by the mapped function at least once.

Why this module is callable
---------------------------
The public function ``cloudpool.objects`` has the same name as this module, and Python
sets ``cloudpool.objects`` to the *module* whenever the submodule is imported, while
``import cloudpool.objects as m`` returns whatever that attribute is. To keep both
meanings working in every import order, the module object itself is callable (calling it
calls :func:`objects`) and the name ``objects`` inside it is bound to the module.
"""
from __future__ import annotations

import inspect
import io
import math
import os
import re
import sys
import types
from typing import (Any, BinaryIO, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

from .config import Config, load_config, open_storage, storage_options as resolve_storage_options
from .storage import ObjectInfo, StorageBackend, get_storage, split_url, storages

__all__ = ["objects", "Objects", "ObjectPart", "parse_size"]

#: Automatic mode aims at this many parts per worker (stragglers even out).
AUTO_PARTS_PER_WORKER = 4
#: ... but never makes parts smaller than this (a part costs an invocation).
AUTO_MIN_PART_SIZE = 1024 * 1024
#: First read when looking for a record boundary; doubles up to the cap below.
SCAN_BLOCK = 64 * 1024
MAX_SCAN_BLOCK = 8 * 1024 * 1024
#: Read size of ``ObjectPart.open()`` and of record iteration.
READ_BLOCK = 8 * 1024 * 1024

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_SIZE_FORMS = ("a positive number of bytes (int) or a string such as '500KB', '64MiB', "
               "'1.5GiB' (units B, KB/MB/GB/TB = powers of 1000, KiB/MiB/GiB/TiB = powers of 1024)")
_GLOB_CHARS = "*?["

UrlOrUrls = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


def parse_size(value: Union[int, float, str]) -> int:
    """A size in bytes from ``int``/``float`` bytes or a string like ``"64MiB"``.

    ``KB``/``MB``/... are powers of 1000, ``KiB``/``MiB``/... powers of 1024 (case is
    ignored). Fractions are rounded down to whole bytes. Raises ``ValueError`` naming the
    value and the accepted forms for anything that is not at least one byte.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected {_SIZE_FORMS}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"invalid size {value!r}: expected {_SIZE_FORMS}")
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"invalid size {value!r}: expected {_SIZE_FORMS}")
        number = match.group(1)
        if "." in number:
            # Exact decimal arithmetic: "1.5GiB" must not depend on float rounding.
            whole, _, frac = number.partition(".")
            size = (int(whole or "0") * 10 ** len(frac) + int(frac or "0")) * _UNITS[unit] \
                // 10 ** len(frac)
        else:
            size = int(number) * _UNITS[unit]
    else:
        raise ValueError(f"invalid size {value!r} of type {type(value).__name__}: "
                         f"expected {_SIZE_FORMS}")
    if size < 1:
        raise ValueError(f"invalid size {value!r}: it is less than one byte; expected {_SIZE_FORMS}")
    return size


def _check_newline(newline: Union[bytes, bytearray, str, None]) -> Optional[bytes]:
    if newline is None:
        return None
    if isinstance(newline, str):
        newline = newline.encode("utf-8")
    if not isinstance(newline, (bytes, bytearray)):
        raise TypeError(f"newline must be bytes (or None for exact byte ranges), not "
                        f"{type(newline).__name__}")
    if not newline:
        raise ValueError("newline must not be empty; use newline=None for exact byte ranges")
    return bytes(newline)


def _glob_to_regex(pattern: str) -> "re.Pattern[str]":
    """Compile a key glob: ``*`` and ``?`` stay within one path segment, ``**`` crosses them.

    ``a/**/b`` also matches ``a/b`` (zero directories), as in pathlib and fsspec.
    """
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            close = pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)
            if close == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:close]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = close
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _secret_free(scheme: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """Options without the ones the scheme's backend declares as credentials."""
    if not options:
        return {}
    secret = storages.get(scheme).secret_option_names
    return {k: v for k, v in options.items() if k not in secret}


class ObjectPart:
    """One byte range of one object, and the records in it. Small and picklable.

    Attributes (read-only): ``url`` (of the object), ``bucket``, ``key``, ``start`` and
    ``end`` (the *nominal* range ``[start, end)``; the records actually owned are those
    that start inside it, see :meth:`data_range`), ``part`` (0-based index among the
    object's parts), ``parts`` (how many parts the object has), ``size`` (object size at
    listing time), ``newline`` (record separator, ``None`` for exact byte ranges) and
    ``storage_options``.

    A part holds no SDK client: on first use it gets the (per-process cached) storage
    backend from the registry. Options that the backend declares as credentials are left
    out when the part is pickled, so workers use their platform's credential chain.
    """

    __slots__ = ("url", "scheme", "bucket", "key", "start", "end", "part", "parts", "size",
                 "newline", "storage_options", "_range", "_cache")

    def __init__(self, url: str, start: int, end: int, part: int, parts: int, size: int, *,
                 newline: Optional[bytes] = b"\n",
                 storage_options: Optional[Mapping[str, Any]] = None) -> None:
        if not 0 <= start <= end <= size:
            raise ValueError(f"invalid range [{start}, {end}) of an object of {size} bytes")
        scheme, bucket, key = split_url(url)
        self.url = url
        self.scheme = scheme
        self.bucket = bucket
        self.key = key
        self.start = start
        self.end = end
        self.part = part
        self.parts = parts
        self.size = size
        self.newline = _check_newline(newline)
        # A part built by hand without options takes the configuration's (env, file);
        # parts from objects() carry options resolved on the client.
        self.storage_options = (resolve_storage_options(scheme) if storage_options is None
                                else dict(storage_options))
        self._range: Optional[Tuple[int, int]] = None
        # (offset, bytes) blocks already fetched while looking for boundaries.
        self._cache: List[Tuple[int, bytes]] = []

    # ------------------------------------------------------------------ pickling / identity
    def __getstate__(self) -> dict:
        return {
            "url": self.url, "scheme": self.scheme, "bucket": self.bucket, "key": self.key,
            "start": self.start, "end": self.end, "part": self.part, "parts": self.parts,
            "size": self.size, "newline": self.newline,
            "storage_options": _secret_free(self.scheme, self.storage_options),
        }

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._range = None
        self._cache = []

    def _identity(self) -> tuple:
        return (self.url, self.start, self.end, self.part, self.parts, self.size, self.newline)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectPart):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return (f"ObjectPart({self.url!r}, part {self.part + 1}/{self.parts}, "
                f"bytes [{self.start}, {self.end}) of {self.size})")

    # ------------------------------------------------------------------ I/O helpers
    @property
    def storage(self) -> StorageBackend:
        """The storage backend holding the object (cached per process by the registry)."""
        return get_storage(self.scheme, self.bucket, self.storage_options)

    def _get(self, lo: int, hi: int) -> bytes:
        data = self.storage.get(self.key, lo, hi)
        if len(data) != hi - lo:
            raise OSError(f"{self.url}: expected {hi - lo} bytes at offset {lo} but got "
                          f"{len(data)}; the object changed after it was listed")
        return data

    def _read_range(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)``, from the boundary-scan cache where possible, else ranged GETs."""
        if hi <= lo:
            return b""
        out = bytearray()
        pos = lo
        for seg_start, seg in sorted(self._cache, key=lambda item: item[0]):
            seg_end = seg_start + len(seg)
            if seg_end <= pos or seg_start >= hi:
                continue
            if seg_start > pos:
                out += self._get(pos, seg_start)
                pos = seg_start
            take_end = min(hi, seg_end)
            out += seg[pos - seg_start:take_end - seg_start]
            pos = take_end
            if pos >= hi:
                break
        if pos < hi:
            out += self._get(pos, hi)
        return bytes(out)

    def _find_record_start(self, x: int, stop: int) -> Optional[int]:
        """The first record start ``q >= x`` with ``q <= stop``, or ``None`` if there is none.

        Reads ``[x - L, ...)`` forward in doubling blocks, never past ``stop``; every block
        read is remembered so the part's own data is not fetched twice.
        """
        sep = self.newline
        assert sep is not None
        keep = len(sep) - 1
        pos = max(0, x - len(sep))
        carry = b""
        carry_start = pos
        block = SCAN_BLOCK
        while pos < stop:
            data = self._get(pos, min(stop, pos + block))
            self._cache.append((pos, data))
            window = carry + data
            i = window.find(sep)
            if i != -1:
                return carry_start + i + len(sep)
            pos += len(data)
            carry = window[len(window) - keep:] if keep else b""
            carry_start = pos - len(carry)
            block = min(block * 2, MAX_SCAN_BLOCK)
        return None

    def data_range(self) -> Tuple[int, int]:
        """The byte range ``[a, b)`` of the records this part owns (may do ranged GETs).

        With ``newline=None`` it is the nominal range. A part that owns no record returns
        the empty range ``(end, end)``.
        """
        if self._range is not None:
            return self._range
        if self.newline is None or self.start >= self.end:
            self._range = (self.start, self.end) if self.newline is None else (self.end, self.end)
            return self._range
        if self.start == 0:
            a: Optional[int] = 0
        else:
            a = self._find_record_start(self.start, self.end)
        if a is None or a >= self.end:
            # No record starts inside [start, end): the part owns nothing.
            self._range = (self.end, self.end)
            self._cache = []
            return self._range
        if self.end >= self.size:
            b = self.size
        else:
            found = self._find_record_start(self.end, self.size)
            b = self.size if found is None else found
        self._range = (a, b)
        # Keep only what read()/iteration can use (L-1 bytes of left context included).
        lo = max(0, a - len(self.newline) + 1)
        self._cache = [(max(s, lo), d[max(s, lo) - s:b - s]) for s, d in self._cache
                       if s + len(d) > lo and s < b]
        return self._range

    # ------------------------------------------------------------------ public reading
    def read(self) -> bytes:
        """The bytes of exactly this part's records (its exact range if ``newline=None``)."""
        a, b = self.data_range()
        data = self._read_range(a, b)
        self._cache = []
        return data

    def open(self) -> BinaryIO:
        """A binary, seekable file object over exactly this part's records."""
        a, b = self.data_range()
        return io.BufferedReader(_PartReader(self, a, b),
                                 buffer_size=max(io.DEFAULT_BUFFER_SIZE, min(READ_BLOCK, b - a)))

    def __iter__(self) -> Iterator[bytes]:
        """This part's records, each with its separator (the last one of an object may lack it).

        With ``newline=None`` there are no records: it yields the part's bytes in blocks.
        """
        a, b = self.data_range()
        if a >= b:
            return
        sep = self.newline
        if sep is None:
            with self.open() as f:
                while True:
                    block = f.read(READ_BLOCK)
                    if not block:
                        return
                    yield block
        if sep == b"\n":
            with self.open() as f:
                yield from f
            return
        yield from self._iter_split(a, b, sep)

    def _iter_split(self, a: int, b: int, sep: bytes) -> Iterator[bytes]:
        # Start L-1 bytes early: with a self-overlapping separator an occurrence that
        # straddles ``a`` ends a (short) record inside this part.
        L = len(sep)
        base = max(0, a - (L - 1))
        reader = io.BufferedReader(_PartReader(self, base, b), buffer_size=READ_BLOCK)
        buf = bytearray()
        cur = a - base     # start of the current record, as an index into buf
        search = 0         # occurrences starting before this index are ruled out
        eof = False
        with reader:
            while True:
                p = buf.find(sep, max(search, cur - L + 1, 0))
                if p != -1:
                    end = p + L
                    yield bytes(buf[cur:end])
                    cur = end
                    search = p + 1
                    continue
                if eof:
                    if cur < len(buf):
                        yield bytes(buf[cur:])
                    return
                search = max(search, len(buf) - L + 1, 0)
                drop = min(cur, search)
                if drop:
                    del buf[:drop]
                    cur -= drop
                    search -= drop
                block = reader.read(READ_BLOCK)
                if block:
                    buf += block
                else:
                    eof = True


class _PartReader(io.RawIOBase):
    """Raw stream over bytes ``[lo, hi)`` of one part's object, through the part's cache."""

    def __init__(self, part: ObjectPart, lo: int, hi: int) -> None:
        super().__init__()
        self._part = part
        self._lo = lo
        self._hi = hi
        self._pos = lo

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._lo

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            base = self._lo
        elif whence == io.SEEK_CUR:
            base = self._pos
        elif whence == io.SEEK_END:
            base = self._hi
        else:
            raise ValueError(f"invalid whence {whence!r}")
        self._pos = min(self._hi, max(self._lo, base + offset))
        return self._pos - self._lo

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._hi - self._pos)
        if want <= 0:
            return 0
        data = self._part._read_range(self._pos, self._pos + want)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        # One ranged GET for the rest, not one per 8 KiB (RawIOBase's default).
        data = self._part._read_range(self._pos, self._hi)
        self._pos = self._hi
        return data


class Objects:
    """A re-iterable set of object partitions; build it with :func:`objects`.

    Iterating lists the objects (page by page, in key order) and yields ``ObjectPart``s.
    In automatic mode (neither ``chunk_size`` nor ``chunks``) the part size depends on the
    total size of all objects, so that mode lists everything before yielding the first
    part; with ``chunk_size`` or ``chunks`` the first part comes after the first listing
    page.
    """

    def __init__(self, urls: Sequence[str], *, chunk_size: Optional[int], chunks: Optional[int],
                 newline: Optional[bytes], storage_options: Mapping[str, Any],
                 parallelism: Optional[int] = None, config: Optional[Config] = None) -> None:
        self.urls = tuple(urls)
        self.chunk_size = chunk_size
        self.chunks = chunks
        self.newline = newline
        #: This call's own options (``objects(storage_options=)``), over ``config``'s sections.
        self.storage_options = dict(storage_options)
        self.parallelism = parallelism
        #: The configuration whose per-scheme sections give the other options: the one
        #: loaded by objects(), or the executor's when it maps over this (``with_parallelism``).
        self.config = config if config is not None else load_config()
        self._resolved: Dict[str, Dict[str, Any]] = {}

    def with_parallelism(self, n: int, config: Optional[Config] = None) -> "Objects":
        """A copy whose automatic mode targets ``n`` workers and, when given, whose
        storage options come from ``config`` (the executor passes its own)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"parallelism must be a positive int, not {n!r}")
        return Objects(self.urls, chunk_size=self.chunk_size, chunks=self.chunks,
                       newline=self.newline, storage_options=self.storage_options, parallelism=n,
                       config=config if config is not None else self.config)

    def options_for(self, scheme: str) -> Dict[str, Any]:
        """The storage options for ``scheme``: this call's over the configuration's section."""
        if scheme not in self._resolved:
            self._resolved[scheme] = resolve_storage_options(
                scheme, self.storage_options, config=self.config,
                origin="keyword argument storage_options of objects()")
        return self._resolved[scheme]

    def __repr__(self) -> str:
        if self.chunk_size is not None:
            how = f"chunk_size={self.chunk_size}"
        elif self.chunks is not None:
            how = f"chunks={self.chunks}"
        else:
            how = f"auto, parallelism={self.parallelism or os.cpu_count() or 1}"
        return f"Objects({list(self.urls)!r}, {how}, newline={self.newline!r})"

    # ------------------------------------------------------------------ listing
    def _backend(self, url: str) -> Tuple[StorageBackend, str]:
        scheme, bucket, key = split_url(url)
        return get_storage(scheme, bucket, self.options_for(scheme)), key

    def _list_url(self, url: str) -> Iterator[Tuple[StorageBackend, ObjectInfo]]:
        """The objects one URL names, in key order; ``FileNotFoundError`` if none."""
        backend, key = self._backend(url)
        scheme = split_url(url)[0]
        found = False
        globbing = scheme not in ("http", "https") and any(c in key for c in _GLOB_CHARS)
        if globbing:
            literal = key[:min(key.find(c) for c in _GLOB_CHARS if c in key)]
            regex = _glob_to_regex(key)
            for info in backend.list(literal):
                if not info.key.endswith("/") and regex.match(info.key):
                    found = True
                    yield backend, info
        elif key and not key.endswith("/"):
            try:
                info = backend.head(key)
            except FileNotFoundError:
                info = None
            if info is not None:
                found = True
                yield backend, info
            else:
                # Not an object: a "directory" named without its trailing slash.
                for info in backend.list(key + "/"):
                    if not info.key.endswith("/"):  # skip S3 console folder markers
                        found = True
                        yield backend, info
        else:
            for info in backend.list(key):
                if not info.key.endswith("/"):
                    found = True
                    yield backend, info
        if not found:
            raise FileNotFoundError(f"{url}: no objects found (no object, prefix or glob match)")

    def _list_all(self) -> Iterator[Tuple[StorageBackend, ObjectInfo]]:
        seen = set()
        for url in self.urls:
            for backend, info in self._list_url(url):
                ident = (backend.scheme, backend.bucket, info.key)
                if ident in seen:  # named twice (overlapping globs/prefixes): one set of parts
                    continue
                seen.add(ident)
                yield backend, info

    # ------------------------------------------------------------------ splitting
    def _bounds(self, size: int, part_size: Optional[int]) -> List[int]:
        if self.chunk_size is not None:
            n = max(1, -(-size // self.chunk_size))
            return [min(size, i * self.chunk_size) for i in range(n)] + [size]
        if self.chunks is not None:
            n = max(1, min(self.chunks, size))
        else:
            assert part_size is not None
            n = max(1, -(-size // part_size))
        return [i * size // n for i in range(n + 1)]

    def _parts_of(self, backend: StorageBackend, info: ObjectInfo,
                  part_size: Optional[int]) -> Iterator[ObjectPart]:
        bounds = self._bounds(info.size, part_size)
        url = backend.url(info.key)
        n = len(bounds) - 1
        for i in range(n):
            yield ObjectPart(url, bounds[i], bounds[i + 1], i, n, info.size,
                             newline=self.newline, storage_options=self.options_for(backend.scheme))

    def __iter__(self) -> Iterator[ObjectPart]:
        if self.chunk_size is not None or self.chunks is not None:
            for backend, info in self._list_all():
                yield from self._parts_of(backend, info, None)
            return
        listed = list(self._list_all())
        total = sum(info.size for _, info in listed)
        workers = self.parallelism or os.cpu_count() or 1
        target = -(-total // (AUTO_PARTS_PER_WORKER * workers))
        part_size = max(AUTO_MIN_PART_SIZE, target)
        for backend, info in listed:
            yield from self._parts_of(backend, info, part_size)


def objects(url_or_urls: UrlOrUrls, *, chunk_size: Union[int, str, None] = None,
            chunks: Optional[int] = None, newline: Union[bytes, str, None] = b"\n",
            storage_options: Optional[Mapping[str, Any]] = None) -> Objects:
    """The partitions of the objects named by ``url_or_urls``, as an iterable of ``ObjectPart``.

    ``url_or_urls`` is one URL or a list of them; each names a bucket or prefix
    (``s3://bucket/texts/``; a key that is not an object is tried as a prefix), a glob
    (``s3://bucket/texts/*.txt``, ``**`` crosses ``/``), or a single object. Objects are
    listed lazily, in key order, URL after URL; an object named twice is partitioned once.

    Exactly one of ``chunk_size`` (bytes, or a string like ``"64MiB"``) and ``chunks``
    (parts per object; objects smaller than that many bytes get one part per byte) may be
    given. With neither, objects are split so that there are about four parts per worker
    (``Objects.with_parallelism``; ``os.cpu_count()`` when iterated directly) and no part
    is smaller than 1 MiB.

    ``newline`` is the record separator (see the module docstring for the rule); ``None``
    gives exact byte ranges. The storage options of each URL's scheme come from
    cloudpool's configuration (``CLOUDPOOL_S3__ENDPOINT_URL``, the config file; inside
    ``CloudPoolExecutor.map`` or ``Pool.map``, that executor's configuration, its
    ``config=`` included); ``storage_options`` overrides them for this call, for every
    URL in it (for example ``{"endpoint_url": "http://127.0.0.1:5000"}`` for S3), and is
    checked against each scheme's declared options now. Options that the backend
    declares as credentials do not travel with the parts: workers use their own.

    Raises ``ValueError`` for a malformed URL, an unknown scheme, or bad sizes at once,
    and ``FileNotFoundError`` naming the URL, while iterating, for a URL that matches no
    object.
    """
    if isinstance(url_or_urls, (str, os.PathLike)):
        raw_urls: Sequence[Any] = [url_or_urls]
    elif isinstance(url_or_urls, Iterable) and not isinstance(url_or_urls, (bytes, bytearray)):
        raw_urls = list(url_or_urls)
    else:
        raise TypeError(f"objects() takes a URL or a list of URLs, not "
                        f"{type(url_or_urls).__name__}")
    urls = []
    for url in raw_urls:
        if isinstance(url, os.PathLike):
            url = os.fspath(url)
        if not isinstance(url, str):
            raise TypeError(f"an object URL must be a str, not {type(url).__name__}: {url!r}")
        scheme, _bucket, _key = split_url(url)  # ValueError when malformed
        storages.get(scheme)  # ValueError for an unknown scheme, ImportError for a missing SDK
        urls.append(url)
    if not urls:
        raise ValueError("objects() needs at least one URL")
    if chunk_size is not None and chunks is not None:
        raise ValueError(f"give chunk_size or chunks, not both (got chunk_size={chunk_size!r}, "
                         f"chunks={chunks!r})")
    size = parse_size(chunk_size) if chunk_size is not None else None
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise ValueError(f"chunks must be a positive int (parts per object), not {chunks!r}")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a mapping, not {type(storage_options).__name__}")
    parts = Objects(urls, chunk_size=size, chunks=chunks, newline=_check_newline(newline),
                    storage_options=storage_options or {})
    for url in urls:  # unknown names and bad values fail now, not while listing
        scheme, bucket, _key = split_url(url)
        open_storage(scheme, bucket, storage_options, config=parts.config,
                     origin="keyword argument storage_options of objects()")
    return parts


class _CallableModule(types.ModuleType):
    """This module's type: calling the module is calling :func:`objects` (see docstring)."""

    def __call__(self, url_or_urls: UrlOrUrls, **kwargs: Any) -> Objects:
        return _objects_function(url_or_urls, **kwargs)


_objects_function = objects
_module = sys.modules[__name__]
_module.__class__ = _CallableModule
_module.__signature__ = inspect.signature(_objects_function)  # type: ignore[attr-defined]
objects = _module  # type: ignore[assignment]  # so ``from cloudpool.objects import objects`` agrees
