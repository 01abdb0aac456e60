"""The partitioner ABC, the part base class, and the object/context records they share.

This module owns the contract every data format implements (see
``/work/notes/formats-interface.md`` for the prose version):

- ``ObjectRef``: one listed object (URL, size, ETag, mtime, storage options). Small and
  picklable; ``get(lo, hi)`` and ``open(start, end)`` read through the storage registry
  with ranged GETs, so a format never sees an SDK.
- ``PartitionContext``: how the user asked to split (``chunk_size`` / ``chunks`` / the
  automatic part size), the format options, and the ``IndexCache``.
- ``Partitioner``: one per format. Class attributes say how to recognise the format
  (``magic``, ``extensions``) and what it needs (``extra``, ``requires``);
  ``parts(obj, ctx)`` returns the parts of one object. It runs on the client.
- ``Part``: one unit of work. Small, picklable, no client; it reads on the worker through
  ``self.obj``. Iterating yields records, ``read()`` returns bytes.
- ``FormatError``: bad data, raised by the part that meets it, naming the object.

Modules that implement a format import only the stdlib at module level (detection imports
every registered partitioner class); heavy dependencies are imported inside methods via
``require()``, which turns a missing package into ``MissingDependencyError`` naming the extra.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, BinaryIO, ClassVar, Dict, Iterator, List,
                    Mapping, Optional, Sequence, Tuple)

from ..errors import MissingDependencyError
from ..storage import StorageBackend, get_storage, split_url, storages

if TYPE_CHECKING:  # pragma: no cover
    from .indexcache import IndexCache

__all__ = ["ObjectRef", "PartitionContext", "Partitioner", "Part", "FormatError", "require",
           "split_evenly"]


class FormatError(ValueError):
    """The data of an object is not valid for its format (truncated, unterminated quote...).

    Raised by the part that meets the problem; the message starts with the object's URL
    and the part, and says what is wrong.
    """


def require(module: str, extra: Optional[str], fmt: str) -> Any:
    """Import ``module`` for format ``fmt``, or raise ``MissingDependencyError`` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = f"pip install 'cloudpool[{extra}]'" if extra else f"install {module}"
        raise MissingDependencyError(
            f"the format {fmt!r} needs the package {module.split('.')[0]!r}, which is not "
            f"installed: {how} (or 'cloudpool[formats]' for every format)") from exc


def _secret_free(scheme: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    if not options:
        return {}
    secret = storages.get(scheme).secret_option_names
    return {k: v for k, v in options.items() if k not in secret}


@dataclass(frozen=True)
class ObjectRef:
    """One object as listed: where it is, how big, and which version (for index keys).

    Picklable; credentials declared by the storage backend are dropped when pickled.
    """

    url: str
    size: int
    etag: Optional[str] = None
    mtime: Optional[float] = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __getstate__(self) -> dict:
        scheme = split_url(self.url)[0]
        return {"url": self.url, "size": self.size, "etag": self.etag, "mtime": self.mtime,
                "storage_options": _secret_free(scheme, self.storage_options)}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @property
    def key(self) -> str:
        return split_url(self.url)[2]

    @property
    def storage(self) -> StorageBackend:
        """The storage backend holding the object (cached per process by the registry)."""
        scheme, bucket, _key = split_url(self.url)
        return get_storage(scheme, bucket, self.storage_options)

    def version(self) -> str:
        """What identifies this version of the object: ETag, size and mtime."""
        return f"etag={self.etag}|size={self.size}|mtime={self.mtime}"

    def get(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` (clipped to the object) with one ranged GET."""
        hi = min(hi, self.size)
        if hi <= lo:
            return b""
        data = self.storage.get(self.key, lo, hi)
        if len(data) != hi - lo:
            raise OSError(f"{self.url}: expected {hi - lo} bytes at offset {lo} but got "
                          f"{len(data)}; the object changed after it was listed")
        return data

    def open(self, start: int = 0, end: Optional[int] = None) -> BinaryIO:
        """A buffered, streaming reader over bytes ``[start, end)`` (ranged GETs)."""
        return self.storage.open(self.key, "rb", start=start,
                                 end=self.size if end is None else min(end, self.size))


@dataclass
class PartitionContext:
    """How to split, given to ``Partitioner.parts``.

    Exactly one of ``chunk_size`` (units of work per part: bytes, or decompressed bytes
    for compressed objects; a format may define its own unit and must document it),
    ``chunks`` (parts per object) and ``part_size`` (automatic mode: a size in the same
    unit as ``chunk_size``) is set. ``index_cache`` is ``None`` when caching is off.
    """

    chunk_size: Optional[int] = None
    chunks: Optional[int] = None
    part_size: Optional[int] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    index_cache: Optional["IndexCache"] = None

    def target(self, total: int) -> int:
        """The wanted size of one part for an object of ``total`` units."""
        if self.chunk_size is not None:
            return self.chunk_size
        if self.chunks is not None:
            return max(1, -(-total // self.chunks))
        assert self.part_size is not None
        return self.part_size

    def bounds(self, total: int) -> List[int]:
        """Nominal boundaries ``[0, ..., total]`` that tile ``total`` units (at least one part)."""
        if self.chunk_size is not None:
            n = max(1, -(-total // self.chunk_size))
            return [min(total, i * self.chunk_size) for i in range(n)] + [total]
        if self.chunks is not None:
            n = max(1, min(self.chunks, total))
        else:
            assert self.part_size is not None
            n = max(1, -(-total // self.part_size))
        return [i * total // n for i in range(n + 1)]


def split_evenly(weights: Sequence[int], ctx: PartitionContext) -> List[Tuple[int, int]]:
    """Group consecutive items (row groups, chunks, frames...) into ``[i, j)`` index ranges of
    about ``ctx.target(sum(weights))`` each; at least one group, never an empty one unless
    there are no items."""
    if not weights:
        return [(0, 0)]
    total = sum(weights)
    if ctx.chunks is not None:
        n = max(1, min(ctx.chunks, len(weights)))
        goal = total / n
    else:
        goal = ctx.target(total)
    groups: List[Tuple[int, int]] = []
    start, acc = 0, 0
    for i, w in enumerate(weights):
        acc += w
        if acc >= goal and i + 1 < len(weights):
            groups.append((start, i + 1))
            start, acc = i + 1, 0
    groups.append((start, len(weights)))
    return groups


class Part(ABC):
    """One unit of work of one object. Small and picklable; holds no client.

    Subclasses add the fields that say what the part covers (a byte range, row groups,
    a window...) and implement ``__iter__`` (records) and ``read`` (bytes). They read only
    through ``self.obj`` (ranged GETs). Common attributes: ``obj`` (``ObjectRef``), ``url``,
    ``bucket``, ``key``, ``size``, ``part`` (0-based), ``parts`` (how many the object has),
    ``format`` (registry name).
    """

    format: ClassVar[str] = ""

    def __init__(self, obj: ObjectRef, part: int, parts: int) -> None:
        self.obj = obj
        self.part = part
        self.parts = parts

    @property
    def url(self) -> str:
        return self.obj.url

    @property
    def bucket(self) -> str:
        return split_url(self.obj.url)[1]

    @property
    def key(self) -> str:
        return self.obj.key

    @property
    def size(self) -> int:
        return self.obj.size

    @property
    def storage_options(self) -> Mapping[str, Any]:
        return self.obj.storage_options

    def _identity(self) -> tuple:
        return (type(self), self.obj.url, self.obj.size, self.part, self.parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Part):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, part {self.part + 1}/{self.parts})"

    def error(self, problem: str) -> FormatError:
        """A ``FormatError`` whose message names the object, the part and ``problem``."""
        return FormatError(f"{self.url} (part {self.part + 1}/{self.parts}, format "
                           f"{self.format!r}): {problem}")

    @abstractmethod
    def __iter__(self) -> Iterator[Any]:
        """The records of this part (lines, rows, record batches, arrays...)."""

    def read(self) -> Any:
        """The part's data as one value; by default the records joined as bytes."""
        return b"".join(self)


class Partitioner(ABC):
    """One data format: how to recognise it and how to cut an object into parts.

    Subclasses set the class attributes and implement ``parts``. An instance is built
    per ``objects()`` call with the user's format options (validated in ``__init__``
    against ``option_names``, so a typo fails early).
    """

    #: Registry name (``format="name"``).
    name: ClassVar[str] = ""
    #: Lower-case key suffixes that suggest this format (".csv", ".laz"...), longest first.
    extensions: ClassVar[Tuple[str, ...]] = ()
    #: Byte strings one of which starts every object of this format.
    magic: ClassVar[Tuple[bytes, ...]] = ()
    #: The cloudpool extra that installs the dependencies, and the modules it provides.
    extra: ClassVar[Optional[str]] = None
    requires: ClassVar[Tuple[str, ...]] = ()
    #: Format options accepted as keyword arguments of ``objects()``, with defaults.
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: Set by compression formats (gzip, bzip2, zstd): the codec their magic announces.
    codec: ClassVar[Optional[str]] = None
    #: True for text formats that read compressed objects too (``data.csv.gz`` is csv).
    compressible: ClassVar[bool] = False
    #: Whether ``format=None`` may pick this format from the key's extension alone. CSV
    #: and TSV say no: rows instead of lines would change what existing code receives.
    detect_by_extension: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise TypeError(f"format {self.name!r} got unknown option(s) "
                            f"{', '.join(unknown)}; its options are: {known}")
        self.options: Dict[str, Any] = {**self.defaults, **options}
        self.check_options()

    def check_options(self) -> None:
        """Validate ``self.options`` (raise ``ValueError``/``TypeError`` naming the option)."""

    @classmethod
    def check_available(cls) -> None:
        """Raise ``MissingDependencyError`` naming the extra if a dependency is missing."""
        for module in cls.requires:
            require(module, cls.extra, cls.name)

    @classmethod
    def sniff(cls, head: bytes, key: str) -> bool:
        """Whether the object's first bytes say it is this format (magic bytes only).

        ``head`` is the first ``SNIFF_BYTES`` bytes (fewer for small objects).
        """
        return any(head.startswith(m) for m in cls.magic)

    @classmethod
    def matches_extension(cls, key: str) -> bool:
        lower = key.lower()
        return any(lower.endswith(ext) for ext in cls.extensions)

    def spans_objects(self) -> bool:
        """Whether parts hold several objects at once (COG ``align=True``). Then
        ``objects()`` lists every object first and calls :meth:`parts_of_all` once,
        instead of :meth:`parts` per object. An optional capability: False by default."""
        return False

    def parts_of_all(self, objs: Sequence[ObjectRef], ctx: PartitionContext) -> List[Any]:
        """The parts of all listed objects together (only if :meth:`spans_objects`)."""
        raise NotImplementedError(f"format {self.name!r} partitions objects one by one")

    @abstractmethod
    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        """The parts of one object, in order; at least one (an empty object gives one
        part that yields nothing). Runs on the client; may read the object (ranged GETs)
        and use ``ctx.index_cache``. Must not raise for bad *data* when a part can raise
        instead (so other parts' results are not lost)."""
