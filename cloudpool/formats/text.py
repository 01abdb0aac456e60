"""Text formats: plain and compressed lines, and the record index that text formats share.

Plain, uncompressed ``lines`` is today's ``ObjectPart`` (``cloudpool/objects.py``): parts
find their own line boundaries with ranged GETs and need no index.

Everything else (compressed lines, CSV/TSV plain or compressed) is partitioned from a
*text index* built by one sequential pass over the (decompressed) data on the client:

- ``points``: seek points ``(compressed offset, decompressed offset)`` at unit starts
  (gzip members, bzip2 blocks -- offsets in bits --, zstd frames; see ``codecs.py``
  and ``bzip2blocks.py``), at least ``g``
  decompressed bytes apart;
- ``starts``: record starts, the first one at or after every multiple of ``g``, found by
  the format's record rule (``LinesRule`` here: the ``ObjectPart`` separator rule; CSV's
  rule parses quotes, see ``csv.py``);
- ``total`` (decompressed size), ``data_start`` (after a CSV header) and ``header``;
- ``error``: where the data turned bad (truncated member, unterminated quote) and why.

Part ``i`` owns the decompressed bytes ``[c(x_i), c(x_{i+1}))`` where ``x_i`` are the
nominal boundaries of ``chunk_size`` decompressed bytes and ``c(x)`` is the first indexed
record start at or after ``x``. Parts therefore tile the data at record starts: every
record belongs to exactly one part. A part decompresses from the last seek point at or
before its start; boundaries are moved on to seek points, so no unit is decompressed by
two parts. A gzip member much longer than a part gets seek points inside it from an
indexed_gzip ("zran") index, built at first use and loaded by the parts from the index
cache (``zran_index``). The index is cached (``IndexCache``) keyed by the object's
version and ``g``.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Tuple

from .base import ObjectRef, Part, PartitionContext, Partitioner, _secret_free
from .codecs import CODECS, Decompressed, codec_for_head

__all__ = ["LinesPartitioner", "GzipLinesPartitioner", "Bzip2LinesPartitioner",
           "ZstdLinesPartitioner", "TextIndex", "TextPart", "LinesPart", "LinesRule",
           "text_parts", "SCAN_READ"]

#: Plain (uncompressed) bytes fetched per ranged GET by the index scan and by parts.
SCAN_READ = 4 * 1024 * 1024
#: Upper bound of the index granularity ``g`` (decompressed bytes).
MAX_GRANULE = 4 * 1024 * 1024
INDEX_VERSION = 2  # 2: bzip2 seek points are block starts, in bits


# ---------------------------------------------------------------------------- the index
@dataclass
class TextIndex:
    codec: Optional[str]
    total: int
    points: List[Tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    starts: List[int] = field(default_factory=list)
    data_start: int = 0
    header: Optional[List[str]] = None
    error: Optional[str] = None
    error_at: Optional[int] = None

    def dumps(self) -> bytes:
        return json.dumps({"v": INDEX_VERSION, **self.__dict__}).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes) -> Optional["TextIndex"]:
        try:
            raw = json.loads(data.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.pop("v", None) != INDEX_VERSION:
            return None
        raw["points"] = [tuple(p) for p in raw["points"]]
        return cls(**raw)


def _plain_blocks(obj: ObjectRef, start: int = 0, end: Optional[int] = None) -> Iterator[bytes]:
    end = obj.size if end is None else end
    pos = start
    while pos < end:
        data = obj.get(pos, min(end, pos + SCAN_READ))
        pos += len(data)
        yield data


class LinesRule:
    """Record starts by a separator (the ``ObjectPart`` rule: every occurrence counts)."""

    def __init__(self, newline: bytes) -> None:
        self.sep = newline

    def params(self) -> str:
        return f"lines:{self.sep!r}"

    def scan(self, blocks: Iterator[bytes], g: int, index: TextIndex) -> None:
        """Fill ``index.starts`` and ``index.total`` from the decompressed blocks."""
        sep, L = self.sep, len(self.sep)
        starts: List[int] = []
        target = g
        off = 0              # absolute offset of the current block
        carry = b""
        for block in blocks:
            window = carry + block
            wabs = off - len(carry)
            end = off + len(block)
            while target <= end:
                p = window.find(sep, max(0, target - L - wabs))
                if p == -1:
                    break
                q = wabs + p + L
                starts.append(q)
                target = (q // g + 1) * g
            off = end
            carry = window[len(window) - (L - 1):] if L > 1 else b""
        index.total = off
        index.starts = [q for q in starts if q < off]


# ---------------------------------------------------------------------------- building
def granule(obj: ObjectRef, ctx: PartitionContext) -> int:
    """The index granularity ``g``: an eighth of the wanted part size, within bounds."""
    if ctx.chunks is not None:
        want = max(1, obj.size // ctx.chunks)  # compressed size: a lower bound, so finer
    else:
        want = ctx.target(obj.size)
    return max(1, min(MAX_GRANULE, want // 8))


def build_index(obj: ObjectRef, codec: Optional[str], rule: Any, g: int) -> TextIndex:
    """One sequential pass over ``obj``: seek points, record starts, errors."""
    index = TextIndex(codec=codec, total=0)
    if codec is None:
        rule.scan(_plain_blocks(obj), g, index)
        return index
    stream = Decompressed(obj, codec)
    rule.scan(iter(stream), g, index)
    points: List[Tuple[int, int]] = []
    for comp, dec in stream.points:
        if not points or dec - points[-1][1] >= g:
            points.append((comp, dec))
    index.points = points or [(0, 0)]
    if stream.error is not None and index.error is None:
        index.error, index.error_at = stream.error, stream.error_at
    return index


def load_or_build(obj: ObjectRef, codec: Optional[str], rule: Any, ctx: PartitionContext) -> TextIndex:
    g = granule(obj, ctx)
    params = f"text|codec={codec}|g={g}|{rule.params()}"
    cache = ctx.index_cache
    if cache is not None:
        blob = cache.load(obj, "text", params)
        if blob is not None:
            index = TextIndex.loads(blob)
            if index is not None:
                return index
    index = build_index(obj, codec, rule, g)
    if cache is not None:
        cache.store(obj, "text", index.dumps(), params)
    return index


#: A gzip unit longer than this many granules gets an indexed_gzip (zran) index.
ZRAN_MIN_GRANULES = 4
#: Smallest zran seek-point spacing (each point stores a 32 KiB window).
ZRAN_MIN_SPACING = 1024 * 1024


def zran_index(obj: ObjectRef, index: TextIndex, ctx: PartitionContext) -> Optional[Tuple[str, dict]]:
    """For gzip with members much longer than a part, seek points *inside* members.

    Built once (one more sequential decompression, by ``indexed_gzip``) and stored in the
    index cache, from where every part of the object loads it. Returns ``(blob URL,
    storage options)`` and replaces ``index.points`` with the finer points, or ``None`` if
    not needed or not possible (no ``indexed_gzip``, caching off, or bad data).
    """
    if index.codec != "gzip" or ctx.index_cache is None or index.error is not None:
        return None
    g = granule(obj, ctx)
    spacing = max(ZRAN_MIN_SPACING, g)
    offsets = [d for _c, d in index.points] + [index.total]
    if max(b - a for a, b in zip(offsets, offsets[1:])) <= max(ZRAN_MIN_GRANULES * g, 2 * spacing):
        return None  # member starts are close enough (BGZF, multi-member)
    try:
        import indexed_gzip
    except ImportError:
        return None
    cache = ctx.index_cache
    params = f"zran|spacing={spacing}"
    blob = cache.load(obj, "zran", params)
    if blob is None:
        with obj.open() as raw:
            f = indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=spacing, auto_build=True)
            try:
                # build_full_index, not read(): large reads bypass the point building.
                f.build_full_index()
                out = io.BytesIO()
                f.export_index(fileobj=out)
            finally:
                f.close()
        blob = out.getvalue()
        cache.store(obj, "zran", blob, params)
    with obj.open() as raw:
        f = indexed_gzip.IndexedGzipFile(fileobj=raw, auto_build=False)
        try:
            f.import_index(fileobj=io.BytesIO(blob))
            points = sorted({(int(c), int(d)) for d, c in f.seek_points()} | set(index.points),
                            key=lambda p: p[1])
        finally:
            f.close()
    index.points = points
    url = cache.url_of(obj, "zran", params)
    return url, _secret_free(url.split("://", 1)[0], cache.storage_options)


def text_parts(obj: ObjectRef, codec: Optional[str], index: TextIndex, ctx: PartitionContext,
               make: Any) -> List["TextPart"]:
    """Parts tiling ``[data_start, total)`` at indexed record starts; ``make(**fields)``."""
    import bisect

    zran = zran_index(obj, index, ctx)
    lo, total = index.data_start, index.total
    nominal = [lo + x for x in ctx.bounds(max(0, total - lo))]
    point_offsets = [d for _c, d in index.points]
    if codec is not None:
        # A part can only start decompressing at a seek point: move each boundary on to
        # the next one, so no two parts decompress the same unit (a single-member gzip
        # becomes one part; BGZF or multi-member data hardly moves).
        snapped = [lo]
        for x in nominal[1:-1]:
            k = bisect.bisect_left(point_offsets, x)
            y = point_offsets[k] if k < len(point_offsets) else total
            if y > snapped[-1] and y < total:
                snapped.append(y)
        nominal = snapped + [total]
    starts = [s for s in index.starts if s > lo]

    def c(x: int) -> int:
        if x <= lo:
            return lo
        i = bisect.bisect_left(starts, x)
        return starts[i] if i < len(starts) else total

    cuts = [c(x) for x in nominal]
    cuts[-1] = total
    n = len(cuts) - 1
    points = index.points
    out = []
    for i in range(n):
        ra, rb = cuts[i], cuts[i + 1]
        j = bisect.bisect_right(point_offsets, ra) - 1
        comp, dec = points[max(0, j)]
        error = None
        if index.error is not None and index.error_at is not None:
            at = index.error_at
            if ra <= at < rb or (i == n - 1 and at >= rb) or (ra == rb == at):
                error = (index.error, at)
        part = make(obj=obj, part=i, parts=n, codec=codec, comp=comp, dec=dec,
                    ra=ra, rb=rb, error=error, header=index.header)
        part.zran = zran
        out.append(part)
    return out


# ---------------------------------------------------------------------------- parts
class TextPart(Part):
    """Decompressed bytes ``[ra, rb)`` of one object (records that start there).

    ``start``/``end`` are ``ra``/``rb`` (decompressed offsets). ``read()`` returns those
    bytes; iteration yields records (subclasses). ``error`` is the index's finding of bad
    data (``(sentence, decompressed offset)``) if it falls in this part: the part raises
    ``FormatError`` when it gets there, after the good records before it.
    """

    format = "lines"

    def __init__(self, obj: ObjectRef, part: int, parts: int, *, codec: Optional[str],
                 comp: int, dec: int, ra: int, rb: int,
                 error: Optional[Tuple[str, int]] = None,
                 header: Optional[List[str]] = None) -> None:
        super().__init__(obj, part, parts)
        self.codec = codec
        self.comp = comp
        self.dec = dec
        self.ra = ra
        self.rb = rb
        self.error_info = error
        self.header = header
        #: (URL of the indexed_gzip index blob, its storage options) for seeks inside members.
        self.zran: Optional[Tuple[str, dict]] = None

    @property
    def start(self) -> int:
        return self.ra

    @property
    def end(self) -> int:
        return self.rb

    def _identity(self) -> tuple:
        return super()._identity() + (self.codec, self.ra, self.rb)

    def __repr__(self) -> str:
        what = f"{self.codec} " if self.codec else ""
        return (f"{type(self).__name__}({self.url!r}, part {self.part + 1}/{self.parts}, "
                f"{what}decompressed bytes [{self.ra}, {self.rb}))" if self.codec else
                f"{type(self).__name__}({self.url!r}, part {self.part + 1}/{self.parts}, "
                f"bytes [{self.ra}, {self.rb}))")

    def blocks(self, lo: Optional[int] = None) -> Iterator[bytes]:
        """Decompressed blocks covering exactly ``[lo, rb)`` (``lo`` defaults to ``ra``,
        and may be a little before it, not before the seek point)."""
        lo = self.ra if lo is None else lo
        hi = self.rb
        if hi <= lo:
            return
        if self.codec is None:
            yield from _plain_blocks(self.obj, lo, hi)
            return
        if self.zran is not None:
            yield from self._zran_blocks(lo, hi)
            return
        stream = Decompressed(self.obj, self.codec, self.comp, self.dec)
        pos = self.dec
        for block in stream:
            bend = pos + len(block)
            if bend > lo:
                yield block[max(0, lo - pos):hi - pos]
            pos = bend
            if pos >= hi:
                return
        if pos < hi:
            if stream.error is not None:
                raise self.error(stream.error)
            raise self.error(f"the decompressed data ends at byte {pos}, before this part's "
                             f"end {hi}; the object changed after it was indexed")

    def _zran_blocks(self, lo: int, hi: int) -> Iterator[bytes]:
        from ..storage import get_storage, split_url
        from .base import require
        indexed_gzip = require("indexed_gzip", "gzip", "gzip")
        url, options = self.zran  # type: ignore[misc]
        scheme, bucket, key = split_url(url)
        try:
            blob = get_storage(scheme, bucket, options or self.obj.storage_options).get(key)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.url}: the gzip seek index {url} is gone (or not reachable from this "
                f"worker); partition again, with index_cache= on storage the workers "
                f"can read") from None
        with self.obj.open() as raw:
            # auto_build: past the last seek point the reader must be allowed to go on.
            f = indexed_gzip.IndexedGzipFile(fileobj=raw, auto_build=True)
            try:
                f.import_index(fileobj=io.BytesIO(blob))
                f.seek(lo)
                pos = lo
                while pos < hi:
                    data = f.read(min(SCAN_READ, hi - pos))
                    if not data:
                        raise self.error(f"the decompressed data ends at byte {pos}, before "
                                         f"this part's end {hi}")
                    pos += len(data)
                    yield data
            finally:
                f.close()

    def check_error(self, offset: int) -> None:
        """Raise the indexed error if the data reached ``offset`` or beyond."""
        if self.error_info is not None and offset >= self.error_info[1]:
            raise self.error(self.error_info[0])

    def read(self) -> bytes:
        data = b"".join(self.blocks())
        self.check_error(self.rb)
        return data

    def open(self) -> io.BufferedIOBase:
        """A binary file object over this part's (decompressed) bytes."""
        return io.BytesIO(self.read())


class LinesPart(TextPart):
    """Compressed lines: iteration yields records with their separator, as ``ObjectPart``."""

    format = "lines"

    def __init__(self, *args: Any, newline: bytes = b"\n", **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.newline = newline

    def __iter__(self) -> Iterator[bytes]:
        if self.newline == b"\n":
            yield from self._iter_newlines()
            return
        sep, L = self.newline, len(self.newline)
        # L-1 bytes of left context: an occurrence straddling ra ends a record inside us.
        base = max(self.dec if self.codec else 0, self.ra - (L - 1))
        buf = bytearray()
        cur = self.ra - base
        search = 0
        for block in self.blocks(base):
            buf += block
            while True:
                p = buf.find(sep, max(search, cur - L + 1, 0))
                if p == -1:
                    break
                end = p + L
                search = p + 1
                if end <= cur:
                    continue
                yield bytes(buf[cur:end])
                cur = end
            keep = max(0, min(cur, len(buf) - L + 1))
            if keep:
                del buf[:keep]
                cur -= keep
                search = max(0, search - keep)
        if cur < len(buf):
            yield bytes(buf[cur:])
        self.check_error(self.rb)


    def _iter_newlines(self) -> Iterator[bytes]:
        # ``ra`` is a record start, so no left context is needed; BytesIO splits the
        # whole lines of each block in C.
        carry = b""
        for block in self.blocks():
            data = carry + block if carry else block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield from io.BytesIO(data[:cut])
            carry = data[cut:]
        if carry:
            yield carry
        self.check_error(self.rb)

# ---------------------------------------------------------------------------- partitioners
class LinesPartitioner(Partitioner):
    """Lines (records ending with ``newline``), plain or compressed (gzip/bzip2/zstd)."""

    name = "lines"
    extensions = (".txt", ".log", ".text")
    compressible = True
    defaults = {"newline": b"\n", "compression": "infer"}

    def check_options(self) -> None:
        comp = self.options["compression"]
        if comp not in ("infer", None) and comp not in CODECS:
            raise ValueError(f"compression must be 'infer', None or one of "
                             f"{', '.join(CODECS)}; got {comp!r}")

    def codec_of(self, obj: ObjectRef) -> Optional[str]:
        comp = self.options["compression"]
        if comp != "infer":
            return comp
        if obj.size == 0:
            return None
        return codec_for_head(obj.get(0, 16))

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        codec = self.codec_of(obj)
        newline = self.options["newline"]
        if codec is None or newline is None:
            from ..objects import ObjectPart  # the historical plain-text part
            bounds = _object_bounds(obj.size, ctx)
            n = len(bounds) - 1
            return [ObjectPart(obj.url, bounds[i], bounds[i + 1], i, n, obj.size,
                               newline=newline, storage_options=obj.storage_options)
                    for i in range(n)]
        if codec == "zstd":
            # A seekable-format seek table gives the frames with one GET: no scan.
            from .zstdseek import try_seekable
            seekable = try_seekable(obj, ctx, newline)
            if seekable is not None:
                return seekable
        index = load_or_build(obj, codec, LinesRule(newline), ctx)
        return text_parts(obj, codec, index, ctx,
                          lambda **kw: LinesPart(kw.pop("obj"), kw.pop("part"), kw.pop("parts"),
                                                 newline=newline, **{k: v for k, v in kw.items()
                                                                     if k != "header"}))


def _object_bounds(size: int, ctx: PartitionContext) -> List[int]:
    # Today's splitting of plain objects (chunks capped at one part per byte).
    return ctx.bounds(size)


class _CompressedLines(LinesPartitioner):
    magic: Any = ()

    def __init__(self, **options: Any) -> None:
        options.setdefault("compression", self.codec)
        super().__init__(**options)

    @classmethod
    def sniff(cls, head: bytes, key: str) -> bool:
        """Magic bytes, confirmed by decompressing the head: plain text that happens to
        start with ``\x1f\x8b\x08`` must stay plain lines."""
        if not super().sniff(head, key):
            return False
        from . import SNIFF_BYTES
        try:
            unit = CODECS[cls.codec][2]()
        except ImportError:
            return True  # cannot confirm without the library; the magic decides
        try:
            unit.decompress(head)
        except Exception:  # noqa: BLE001 - any decoder error means "not this codec"
            return False
        # A whole object shorter than the sniff window must be a complete stream.
        return len(head) >= SNIFF_BYTES or bool(unit.eof)


class GzipLinesPartitioner(_CompressedLines):
    name = "gzip"
    codec = "gzip"
    magic = CODECS["gzip"][0]
    extensions = CODECS["gzip"][1]


class Bzip2LinesPartitioner(_CompressedLines):
    name = "bzip2"
    codec = "bzip2"
    magic = CODECS["bzip2"][0]
    extensions = CODECS["bzip2"][1]


class ZstdLinesPartitioner(_CompressedLines):
    name = "zstd"
    codec = "zstd"
    magic = CODECS["zstd"][0]
    extensions = CODECS["zstd"][1]
    extra = "zstd"
    requires = ("zstandard",)

