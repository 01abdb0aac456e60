"""Format registry and detection: which ``Partitioner`` cuts a given object into parts.

``formats`` is a ``Registry`` (the same machinery as storages and backends): name ->
``"module:Class"`` imported on first use, plus the entry-point group ``cloudpool.formats``
through which another package adds a format. ``objects(..., format=None)`` calls
:func:`detect` per object: magic bytes first (the first ``SNIFF_BYTES`` bytes, one ranged
GET), then the key's extension, else plain ``lines``. CSV/TSV are never picked by
detection (``format="csv"`` is explicit): a ``.csv`` object stays plain lines, as before
formats existed, and a ``.csv.gz`` is compressed lines. Compression magic is confirmed by
decompressing the head, so text that merely starts with those bytes stays plain.

Partitioner modules import only the stdlib at module level, so detection can import every
registered class without pulling in pyarrow or rasterio; a missing dependency surfaces as
``MissingDependencyError`` (an ``ImportError``) naming the extra when the format is used.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Mapping, Optional, Tuple, Type

from ..errors import MissingDependencyError
from ..registry import Registry
from .base import (FormatError, ObjectRef, Part, PartitionContext, Partitioner, require,
                   split_evenly)
from .indexcache import IndexCache

__all__ = ["formats", "detect", "get_partitioner", "describe", "SNIFF_BYTES", "Partitioner",
           "Part", "ObjectRef", "PartitionContext", "FormatError", "IndexCache", "require",
           "split_evenly"]

log = logging.getLogger(__name__)

#: Bytes read from the start of an object for magic-byte detection.
SNIFF_BYTES = 512

formats: Registry[Partitioner] = Registry("format", "cloudpool.formats")
# Order matters for detection: earlier names are tried first.
formats.register("lines", "cloudpool.formats.text:LinesPartitioner")
formats.register("gzip", "cloudpool.formats.text:GzipLinesPartitioner")
formats.register("bzip2", "cloudpool.formats.text:Bzip2LinesPartitioner")
formats.register("zstd", "cloudpool.formats.text:ZstdLinesPartitioner", "zstd")
formats.register("csv", "cloudpool.formats.csv:CsvPartitioner")
formats.register("tsv", "cloudpool.formats.csv:TsvPartitioner")
# -- formats registered by the formats-geo work (parquet, cog, lidar, imzml) go below --
formats.register("parquet", "cloudpool.formats.parquet:ParquetPartitioner", "parquet")
formats.register("cog", "cloudpool.formats.cog:CogPartitioner", "geo")
formats.register("lidar", "cloudpool.formats.lidar:LidarPartitioner", "lidar")
# The same partitioner under the names users know the files by (it tells LAS from LAZ).
formats.register("las", "cloudpool.formats.lidar:LidarPartitioner", "lidar")
formats.register("laz", "cloudpool.formats.lidar:LidarPartitioner", "lidar")
formats.register("imzml", "cloudpool.formats.imzml:ImzmlPartitioner", "imzml")
formats.register("fasta", "cloudpool.formats.fastx:FastaPartitioner")
formats.register("fastq", "cloudpool.formats.fastx:FastqPartitioner")


def _classes() -> List[Tuple[str, Type[Partitioner]]]:
    out = []
    for name in formats.names():
        try:
            out.append((name, formats.get(name)))
        except ImportError as exc:
            # A broken third-party plugin must not stop detection of the others.
            log.warning("format %r cannot be imported for detection: %s", name, exc)
    return out


def _in_order() -> List[Tuple[str, Type[Partitioner]]]:
    builtin = list(formats._known)  # registration order
    classes = dict(_classes())
    names = [n for n in builtin if n in classes] + sorted(n for n in classes if n not in builtin)
    return [(n, classes[n]) for n in names]


def detect(head: bytes, key: str) -> str:
    """The format name for an object whose first bytes are ``head`` and key is ``key``."""
    ordered = _in_order()
    found: Optional[str] = None
    for name, cls in ordered:
        if cls.magic and cls.sniff(head, key):
            found = name
            break
    if found is not None:
        cls = dict(ordered)[found]
        codec_exts = cls.extensions if cls.codec else ()
        if cls.codec:
            inner = key
            for ext in codec_exts:
                if inner.lower().endswith(ext):
                    inner = inner[:-len(ext)]
                    break
            for name, other in ordered:
                if other.compressible and not other.codec and name != "lines" \
                        and other.detect_by_extension and other.matches_extension(inner):
                    return name
        return found
    for name, cls in ordered:
        if cls.extensions and not cls.magic and cls.detect_by_extension \
                and cls.matches_extension(key):
            return name
    return "lines"


def get_partitioner(name: str, options: Mapping[str, Any]) -> Partitioner:
    """An instance of format ``name`` with ``options``.

    Unknown names raise ``ValueError`` listing every format and the extra each needs.
    """
    if not isinstance(name, str):
        raise TypeError(f"format must be a str (one of {describe()}) or None, not "
                        f"{type(name).__name__}")
    try:
        cls = formats.get(name)
    except MissingDependencyError:
        raise
    except ValueError as exc:
        raise ValueError(f"{exc}. Available formats: {describe()}") from None
    cls.check_available()
    return cls(**options)


def describe() -> str:
    """``"lines, gzip, ..., parquet (pip install 'cloudpool[parquet]')"``: names and extras."""
    out = []
    for name in formats.names():
        extra = formats._known.get(name, ("", None))[1]
        out.append(f"{name} (pip install 'cloudpool[{extra}]')" if extra else name)
    return ", ".join(out)


# ---------------------------------------------------------------------------- objects() glue
def check_request(fmt: Optional[str], options: Mapping[str, Any], newline: Optional[bytes]) -> None:
    """Validate ``objects(format=..., **options)`` at call time (unknown format or option)."""
    if fmt is None:
        if options:
            raise TypeError(f"objects() got format option(s) {', '.join(sorted(options))} "
                            f"without format=; name the format (one of {describe()})")
        return
    get_partitioner(fmt, _with_newline(fmt, options, newline))


def _with_newline(fmt: str, options: Mapping[str, Any], newline: Optional[bytes]) -> dict:
    opts = dict(options)
    cls = formats.get(fmt)
    if "newline" in cls.defaults and "newline" not in opts:
        opts["newline"] = newline
    return opts


def _cache_for(spec: Any, storage_options: Mapping[str, Any]) -> Optional[IndexCache]:
    if spec is False:
        return None
    if spec is None or spec is True:
        return IndexCache()
    if isinstance(spec, IndexCache):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"index_cache must be a storage URL, None or False, not {spec!r}")
    return IndexCache(spec, dict(storage_options))


def _options_of(objs: Any, url: str) -> Mapping[str, Any]:
    """Storage options for ``url``: the configuration's section under the call's own
    (``objects(storage_options=)``), as ``Objects`` resolves them for listing."""
    if hasattr(objs, "options_for"):
        return objs.options_for(url.split("://", 1)[0] if "://" in url else "file")
    return objs.storage_options


def partition_object(objs: Any, url: str, info: Any, part_size: Optional[int]) -> Optional[list]:
    """The parts of one listed object for an ``Objects``; ``None`` means plain lines with
    today's ``ObjectPart`` splitting (the caller does that)."""
    fmt = objs.format
    options = _options_of(objs, url)
    obj = ObjectRef(url, info.size, info.etag, info.mtime, options)
    if fmt is None:
        if objs.newline is None:
            return None
        head = obj.get(0, SNIFF_BYTES) if info.size else b""
        fmt = detect(head, info.key)
        if fmt == "lines":
            return None
    partitioner = get_partitioner(fmt, _with_newline(fmt, objs.format_options, objs.newline))
    ctx = PartitionContext(chunk_size=objs.chunk_size, chunks=objs.chunks,
                           part_size=None if (objs.chunk_size or objs.chunks) else part_size,
                           options=partitioner.options,
                           index_cache=_cache_for(objs.index_cache, options))
    return list(partitioner.parts(obj, ctx))


def with_executor_cache(objs: Any, storage: Any) -> Any:
    """``objs`` with its default index cache moved to a remote executor's storage.

    With a cloud backend the workers cannot read the client's cache directory, and an
    index that parts load (gzip zran) must be where they can: under ``cloudpool-index/``
    in the executor's bucket, which outlives each executor's own prefix. Local storage
    keeps the per-user cache directory (shared by every run on the machine).
    """
    if objs.index_cache is not None or not storage.remote or not storage.writable:
        return objs
    import copy
    out = copy.copy(objs)
    out.index_cache = IndexCache(storage.url("cloudpool-index"), storage.options)
    return out


def spans_objects(objs: Any) -> bool:
    """Whether ``objs``' explicit format makes parts that hold several objects at once
    (COG windows with ``align=True``); ``objects()`` then lists everything first."""
    if objs.format is None:
        return False
    return get_partitioner(objs.format, _with_newline(objs.format, objs.format_options,
                                                      objs.newline)).spans_objects()


def partition_all(objs: Any, listed: List[Tuple[str, Any]]) -> list:
    """The parts of all listed ``(url, ObjectInfo)`` at once, for a format that
    :func:`spans_objects`."""
    fmt = objs.format
    partitioner = get_partitioner(fmt, _with_newline(fmt, objs.format_options, objs.newline))
    refs = [ObjectRef(url, info.size, info.etag, info.mtime, _options_of(objs, url))
            for url, info in listed]
    part_size = None
    if not (objs.chunk_size or objs.chunks):  # the automatic size, as Objects computes it
        from ..objects import AUTO_MIN_PART_SIZE, AUTO_PARTS_PER_WORKER
        workers = objs.parallelism or os.cpu_count() or 1
        total = sum(info.size for _url, info in listed)
        part_size = max(AUTO_MIN_PART_SIZE, -(-total // (AUTO_PARTS_PER_WORKER * workers)))
    ctx = PartitionContext(chunk_size=objs.chunk_size, chunks=objs.chunks, part_size=part_size,
                           options=partitioner.options,
                           index_cache=_cache_for(objs.index_cache, _options_of(objs, listed[0][0]) if listed else {}))
    return list(partitioner.parts_of_all(refs, ctx))
