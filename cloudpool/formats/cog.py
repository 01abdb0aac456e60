"""Cloud-Optimized GeoTIFF partitioning: windows of a raster (or of aligned rasters) as parts.

This module owns cutting COG objects into ``CogPart`` windows and reading one window on a
worker with rasterio, through cloudpool's storage layer (rasterio's ``opener=`` hook over
``cloudpool.formats._ranged.RangedFile``), so every storage scheme works without GDAL
configuration and no credentials travel.

Listing opens each object's header once (a few small ranged GETs): size, georeferencing,
internal tiling, and the byte range of every full-resolution tile. A part carries its
window, how long the header is, and the merged byte ranges of the tiles its window
touches; on the worker it fetches the header in one GET and those tile ranges (one GET
per run of contiguous tiles, usually one per tile row), then lets rasterio decode the
window from memory. So a window costs its own compressed tiles plus the header, and a
read GDAL asks for beyond that (it should not) is still served, with a ranged GET.

Windows: ``grid=(rows, cols)`` cuts the raster into that many windows (``(11, 11)`` gives
121), as equal as integer pixel edges allow; ``block_aligned=True`` moves the grid's edges
to the nearest internal tile boundary so no tile is read by two windows. Without a grid,
each window is ``blocks=(r, c)`` internal tiles (default one tile). Windows tile the
raster exactly: every pixel is in exactly one part.

``align=True`` with several URLs (bands or dates of one tile): all must share size,
transform and CRS (else ``ValueError`` at listing) and each part holds the same window of
every object, in the order given. A GeoTIFF stored in strips, or a file GDAL cannot open
as a GeoTIFF, becomes one part that raises ``FormatError`` (a ``ValueError``) naming the
object and the problem when read, so other objects' windows still run.

Detection (``format=None``): TIFF or BigTIFF magic, confirmed by the first IFD.
``chunk_size``/``chunks`` do not apply (refused with a message): the grid decides.
"""
from __future__ import annotations

import itertools
import os
import struct
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ._ranged import RangedFile, ReadStats
from .base import ObjectRef, Part, PartitionContext, Partitioner, require

__all__ = ["CogPartitioner", "CogPart", "RasterInfo"]

#: Tiles whose byte ranges are closer than this are fetched in one GET (the gap is read;
#: GDAL's COG driver puts 8 bytes of size leader/trailer between consecutive tiles).
MERGE_GAP = 1024
_counter = itertools.count()
_counter_lock = threading.Lock()


def _rasterio() -> Any:
    return require("rasterio", "geo", "cog")


class _LoggingFile(RangedFile):
    """A RangedFile that remembers which ranges were read (to find the header's extent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ranges: List[Tuple[int, int]] = []

    def read_range(self, lo: int, hi: int) -> bytes:
        data = super().read_range(lo, hi)
        self.ranges.append((lo, lo + len(data)))
        return data


class _PrefetchedFile(RangedFile):
    """A RangedFile that serves reads from segments fetched up front, else with a GET."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.segments: List[Tuple[int, bytes]] = []
        self.misses = 0

    def prefetch(self, ranges: Sequence[Tuple[int, int]]) -> None:
        for lo, hi in ranges:
            self.segments.append((lo, RangedFile.read_range(self, lo, hi)))

    def read_range(self, lo: int, hi: int) -> bytes:
        hi = min(hi, self.size)
        for start, data in self.segments:
            if start <= lo and hi <= start + len(data):
                return data[lo - start:hi - start]
        self.misses += 1
        return super().read_range(lo, hi)


def _open(f: RangedFile, name: str) -> Any:
    """rasterio dataset over ``f``; the opener hands GDAL this file and nothing else."""
    rasterio = _rasterio()
    with _counter_lock:
        # A unique path per open: rasterio allows one opener per (path, mode) at a time.
        path = f"/cloudpool-{os.getpid()}-{next(_counter)}/{name}"

    def opener(p: str, mode: str = "rb") -> Any:
        if p != path:
            raise FileNotFoundError(p)  # no sidecar files (.ovr, .aux.xml, .msk)
        f.seek(0)
        return f

    return rasterio.open(path, opener=opener)


class RasterInfo:
    """What listing learned from one object's header (picklable, no dataset)."""

    def __init__(self, url: str, size: int, width: int, height: int, count: int,
                 block: Tuple[int, int], transform: Tuple[float, ...], crs: Optional[str],
                 header_end: int, tiles: Dict[Tuple[int, int], List[Tuple[int, int]]],
                 error: Optional[str] = None) -> None:
        self.url = url
        self.size = size
        self.width = width
        self.height = height
        self.count = count
        self.block = block  # (rows, cols) of an internal tile
        self.transform = transform
        self.crs = crs
        self.header_end = header_end
        self.tiles = tiles  # (tile row, tile col) -> byte ranges (one per band plane)
        self.error = error

    def tile_ranges(self, row_off: int, col_off: int, height: int, width: int) -> List[Tuple[int, int]]:
        """Merged byte ranges of the tiles a window touches, in file order."""
        br, bc = self.block
        ranges = []
        for r in range(row_off // br, (row_off + height - 1) // br + 1):
            for c in range(col_off // bc, (col_off + width - 1) // bc + 1):
                ranges.extend(self.tiles.get((r, c), []))
        ranges.sort()
        merged: List[List[int]] = []
        for lo, hi in ranges:
            if hi <= lo:
                continue  # a sparse (empty) tile
            if merged and lo <= merged[-1][1] + MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return [(lo, hi) for lo, hi in merged]


def raster_info(obj: ObjectRef, stats: Optional[ReadStats] = None) -> RasterInfo:
    """Open ``obj``'s header (ranged GETs) and describe it; ``error`` set if it is no COG."""
    rasterio = _rasterio()
    url = obj.url
    f = _LoggingFile(url, obj.size, storage_options=obj.storage_options, stats=stats)
    name = url.rstrip("/").rsplit("/", 1)[-1] or "raster.tif"
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        try:
            src = _open(f, name)
        except rasterio.errors.RasterioIOError as exc:
            return RasterInfo(url, f.size, 0, 0, 0, (0, 0), (), None, 0, {},
                              error=f"not a GeoTIFF GDAL can open ({exc})")
        with src:
            if src.driver != "GTiff":
                return RasterInfo(url, f.size, 0, 0, 0, (0, 0), (), None, 0, {},
                                  error=f"not a GeoTIFF (GDAL reads it as {src.driver})")
            br, bc = src.block_shapes[0]
            common = (url, f.size, src.width, src.height, src.count, (br, bc),
                      tuple(src.transform)[:6], src.crs.to_string() if src.crs else None)
            if not src.profile.get("tiled", False):
                return RasterInfo(*common, 0, {}, error=(
                    f"not a Cloud-Optimized GeoTIFF: stored in strips of {br} row(s), not in "
                    f"internal tiles, so a window cannot be read on its own; convert it with "
                    f"`rio cogeo create` (or gdal_translate -of COG)"))
            tiles: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
            separate = src.count > 1 and src.profile.get("interleave") == "band"
            bands = range(1, src.count + 1) if separate else [1]
            for r in range(-(-src.height // br)):
                for c in range(-(-src.width // bc)):
                    ranges = []
                    for b in bands:
                        off = src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=b)
                        n = src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=b)
                        if off is not None and n is not None:
                            ranges.append((int(off), int(off) + int(n)))
                    tiles[(r, c)] = ranges
            first_tile = min((lo for rs in tiles.values() for lo, hi in rs if hi > lo), default=f.size)
            header = [hi for lo, hi in f.ranges if lo < first_tile]
            header_end = min(max(header, default=0), f.size)
            return RasterInfo(*common, header_end, tiles)


def _edges(total: int, n: int) -> List[int]:
    return [total * i // n for i in range(n + 1)]


def _snap(edges: List[int], block: int, total: int) -> List[int]:
    """Move inner edges to the nearest multiple of ``block``; drop duplicates."""
    out = [0]
    for e in edges[1:-1]:
        s = min(total, int(round(e / block)) * block)
        if out[-1] < s < total:
            out.append(s)
    out.append(total)
    return out


def windows(info: RasterInfo, grid: Optional[Tuple[int, int]] = None,
            blocks: Tuple[int, int] = (1, 1), block_aligned: bool = False
            ) -> List[Tuple[int, int, int, int, int, int]]:
    """``(grid row, grid col, row_off, col_off, height, width)`` tiling the raster."""
    br, bc = info.block
    if grid is not None:
        gr, gc = grid
        rows = _edges(info.height, min(gr, info.height))
        cols = _edges(info.width, min(gc, info.width))
        if block_aligned:
            rows, cols = _snap(rows, br, info.height), _snap(cols, bc, info.width)
    else:
        rows = list(range(0, info.height, br * blocks[0])) + [info.height]
        cols = list(range(0, info.width, bc * blocks[1])) + [info.width]
    return [(i, j, rows[i], cols[j], rows[i + 1] - rows[i], cols[j + 1] - cols[j])
            for i in range(len(rows) - 1) for j in range(len(cols) - 1)]


class CogPart(Part):
    """One window of one raster, or the same window of several aligned rasters.

    Attributes (besides ``Part``'s, which describe the first raster): ``objs`` (one
    ``ObjectRef`` per raster), ``urls``, ``row``/``col`` (the window's place in the grid),
    ``row_off``/``col_off``/``height``/``width`` (pixels), ``window`` (a rasterio
    ``Window``), ``transform`` (the window's affine transform, 6 numbers), ``crs``
    (string), ``header_ends`` and ``tile_ranges`` (what it reads of each raster),
    ``problem`` (set for a raster that cannot be read by windows: reading raises it).

    :meth:`read` returns one numpy array per raster, each ``(bands, height, width)`` (or
    ``(height, width)`` with an int ``indexes``); iterating yields the same arrays.
    ``stats`` counts the requests and bytes this part read.
    """

    format = "cog"

    def __init__(self, objs: Sequence[ObjectRef], part: int, parts: int, *, row: int = 0,
                 col: int = 0, row_off: int = 0, col_off: int = 0, height: int = 0, width: int = 0,
                 header_ends: Sequence[int] = (), tile_ranges: Sequence[Sequence[Tuple[int, int]]] = (),
                 transform: Tuple[float, ...] = (), crs: Optional[str] = None,
                 problem: Optional[str] = None) -> None:
        super().__init__(objs[0], part, parts)
        self.objs = tuple(objs)
        self.row = row
        self.col = col
        self.row_off = row_off
        self.col_off = col_off
        self.height = height
        self.width = width
        self.header_ends = tuple(header_ends)
        self.tile_ranges = tuple(tuple(r) for r in tile_ranges)
        self.transform = tuple(transform)
        self.crs = crs
        self.problem = problem
        self.stats = ReadStats()

    @property
    def urls(self) -> Tuple[str, ...]:
        return tuple(o.url for o in self.objs)

    @property
    def window(self) -> Any:
        """The window as a ``rasterio.windows.Window``."""
        windows = require("rasterio.windows", "geo", "cog")
        return windows.Window(self.col_off, self.row_off, self.width, self.height)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        del state["stats"]  # per-process counters (a lock inside)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stats = ReadStats()

    def _identity(self) -> tuple:
        return super()._identity() + (self.urls, self.row_off, self.col_off, self.height, self.width)

    def __repr__(self) -> str:
        what = f"problem {self.problem!r}" if self.problem else (
            f"window r{self.row}c{self.col} rows [{self.row_off}, {self.row_off + self.height}) "
            f"cols [{self.col_off}, {self.col_off + self.width})")
        return f"CogPart({list(self.urls)!r}, part {self.part + 1}/{self.parts}, {what})"

    def read(self, indexes: Any = None, *, masked: bool = False) -> List[Any]:
        """This window of every raster: a list of numpy arrays, one per URL."""
        if self.problem:
            raise self.error(self.problem)
        rasterio = _rasterio()
        out = []
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            for obj, header_end, ranges in zip(self.objs, self.header_ends, self.tile_ranges):
                f = _PrefetchedFile(obj.url, obj.size, storage_options=obj.storage_options,
                                    stats=self.stats)
                f.prefetch([(0, header_end)] + list(ranges))
                try:
                    with _open(f, obj.key.rsplit("/", 1)[-1]) as src:
                        out.append(src.read(indexes, window=self.window, masked=masked))
                except rasterio.errors.RasterioIOError as exc:
                    raise self.error(f"cannot read the window of {obj.url}: {exc}") from None
        return out

    def __iter__(self) -> Iterator[Any]:
        yield from self.read()


def _pair(name: str, value: Any) -> Tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise ValueError(f"format 'cog' option {name} must be (rows, cols) of positive ints, "
                         f"e.g. (11, 11), not {value!r}")
    return (value[0], value[1])


class CogPartitioner(Partitioner):
    """``format="cog"``: options ``grid=(rows, cols)`` (windows per raster),
    ``blocks=(r, c)`` (internal tiles per window when there is no grid),
    ``block_aligned`` (snap grid edges to tiles) and ``align`` (one part holds the same
    window of every listed raster). ``chunk_size``/``chunks`` do not apply: the grid or
    the tiling decides the windows."""

    name = "cog"
    extensions = (".tif", ".tiff")
    # Classic and BigTIFF, both byte orders.
    magic = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    extra = "geo"
    requires = ("rasterio",)
    defaults = {"grid": None, "blocks": (1, 1), "block_aligned": False, "align": False}

    @classmethod
    def sniff(cls, head: bytes, key: str) -> bool:
        """TIFF magic, confirmed by the header: four bytes of magic alone are too easily
        met by other data. A first IFD inside ``head`` must look like one (a sane entry
        count, tags ascending, valid field types, ImageWidth among them); an IFD past
        ``head`` is only possible if the object is longer than ``head``."""
        from . import SNIFF_BYTES

        if not super().sniff(head, key) or len(head) < 8:
            return False
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        if big:
            if len(head) < 16 or struct.unpack(order + "HH", head[4:8]) != (8, 0):
                return False
            (ifd,) = struct.unpack(order + "Q", head[8:16])
            count_fmt, entry_size, count_size, first = "Q", 20, 8, 16
        else:
            (ifd,) = struct.unpack(order + "I", head[4:8])
            count_fmt, entry_size, count_size, first = "H", 12, 2, 8
        if ifd < first:
            return False
        if ifd + count_size > len(head):
            return len(head) >= SNIFF_BYTES  # the IFD lies beyond what was sniffed
        (n,) = struct.unpack(order + count_fmt, head[ifd:ifd + count_size])
        if not 1 <= n <= 4096:
            return False
        tags = []
        for k in range(n):
            at = ifd + count_size + k * entry_size
            if at + 4 > len(head):
                break
            tag, ftype = struct.unpack(order + "HH", head[at:at + 4])
            if not 1 <= ftype <= 18 or (tags and tag <= tags[-1]):
                return False
            tags.append(tag)
        return 256 in tags or (len(tags) < n and (not tags or tags[-1] < 256))

    def check_options(self) -> None:
        if self.options["grid"] is not None:
            self.options["grid"] = _pair("grid", self.options["grid"])
        self.options["blocks"] = _pair("blocks", self.options["blocks"])
        for flag in ("block_aligned", "align"):
            if not isinstance(self.options[flag], bool):
                raise TypeError(f"format 'cog' option {flag} must be True or False, "
                                f"not {self.options[flag]!r}")

    def spans_objects(self) -> bool:
        return bool(self.options["align"])

    @staticmethod
    def _check_sizing(ctx: PartitionContext) -> None:
        if ctx.chunk_size is not None or ctx.chunks is not None:
            raise ValueError("format 'cog' cuts rasters into windows given by grid=(rows, cols) "
                             "or blocks=(r, c) tiles per window; chunk_size and chunks do not "
                             "apply to it, leave them out")

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        self._check_sizing(ctx)
        return self._windows([raster_info(obj)], [obj])

    def parts_of_all(self, objs: Sequence[ObjectRef], ctx: PartitionContext) -> List[Any]:
        self._check_sizing(ctx)
        return self._windows([raster_info(o) for o in objs], list(objs))

    def _windows(self, infos: List[RasterInfo], objs: List[ObjectRef]) -> List[Any]:
        """The windows of rasters on one grid (all of ``infos``), one part each."""
        bad = [i for i in infos if i.error]
        if bad:
            problem = "; ".join(f"{i.url}: {i.error}" if len(infos) > 1 else i.error for i in bad)
            return [CogPart(objs, 0, 1, problem=problem)]
        first = infos[0]
        for other in infos[1:]:
            for field in ("width", "height", "transform", "crs"):
                if getattr(other, field) != getattr(first, field):
                    # A user error (the wrong files listed together): say it at listing.
                    raise ValueError(
                        f"align=True needs rasters on one grid, but {other.url} has {field} "
                        f"{getattr(other, field)} and {first.url} has {getattr(first, field)}; "
                        f"resample them to one grid, or list them without align=True")
        wins = windows(first, self.options["grid"], self.options["blocks"],
                       self.options["block_aligned"])
        a, b, c, d, e, f = first.transform
        return [CogPart(objs, k, len(wins), row=i, col=j, row_off=r0, col_off=c0, height=h, width=w,
                        header_ends=[g.header_end for g in infos],
                        tile_ranges=[g.tile_ranges(r0, c0, h, w) for g in infos],
                        transform=(a, b, c + a * c0 + b * r0, d, e, f + d * c0 + e * r0),
                        crs=first.crs)
                for k, (i, j, r0, c0, h, w) in enumerate(wins)]
