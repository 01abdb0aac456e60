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
as a GeoTIFF, becomes one part that raises ``ValueError`` naming the object and the
problem when read, so other objects' windows still run.
"""
from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ._ranged import RangedFile, ReadStats

__all__ = ["CogPart", "cog_parts", "RasterInfo"]

#: Tiles whose byte ranges are closer than this are fetched in one GET (the gap is read;
#: GDAL's COG driver puts 8 bytes of size leader/trailer between consecutive tiles).
MERGE_GAP = 1024
_counter = itertools.count()
_counter_lock = threading.Lock()


def _rasterio() -> Any:
    try:
        import rasterio
    except ImportError:
        raise ImportError("format='cog' needs rasterio: pip install 'cloudpool[geo]'") from None
    return rasterio


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


def raster_info(url: str, size: Optional[int] = None, *,
                storage_options: Optional[Mapping[str, Any]] = None,
                stats: Optional[ReadStats] = None) -> RasterInfo:
    """Open ``url``'s header (ranged GETs) and describe it; ``error`` set if it is no COG."""
    rasterio = _rasterio()
    f = _LoggingFile(url, size, storage_options=storage_options, stats=stats)
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


class CogPart:
    """One window of one raster, or the same window of several aligned rasters.

    Attributes: ``urls`` (one per raster; ``url`` is the first), ``part``/``parts``,
    ``row``/``col`` (the window's place in the grid), ``row_off``/``col_off``/``height``/
    ``width`` (pixels), ``transform`` (the window's affine transform, 6 numbers),
    ``crs``, ``error`` (set for a raster that cannot be read by windows: reading raises).

    :meth:`read` returns one numpy array per raster, each ``(bands, height, width)`` (or
    ``(height, width)`` with an int ``indexes``); iterating yields the same arrays.
    ``stats`` counts the requests and bytes this part read.
    """

    format = "cog"

    def __init__(self, urls: Sequence[str], sizes: Sequence[int], part: int, parts: int,
                 row: int, col: int, row_off: int, col_off: int, height: int, width: int, *,
                 header_ends: Sequence[int] = (), tile_ranges: Sequence[Sequence[Tuple[int, int]]] = (),
                 transform: Tuple[float, ...] = (), crs: Optional[str] = None,
                 storage_options: Optional[Mapping[str, Any]] = None,
                 error: Optional[str] = None) -> None:
        self.urls = tuple(urls)
        self.sizes = tuple(sizes)
        self.part = part
        self.parts = parts
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
        self.storage_options = dict(storage_options or {})
        self.error = error
        self.stats = ReadStats()

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def window(self) -> Any:
        """The window as a ``rasterio.windows.Window``."""
        from rasterio.windows import Window

        return Window(self.col_off, self.row_off, self.width, self.height)

    def __getstate__(self) -> Dict[str, Any]:
        from ..objects import _secret_free
        from ..storage import split_url

        state = dict(self.__dict__)
        state["storage_options"] = _secret_free(split_url(self.url)[0], self.storage_options)
        del state["stats"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stats = ReadStats()

    def __repr__(self) -> str:
        what = f"error {self.error!r}" if self.error else (
            f"window r{self.row}c{self.col} rows [{self.row_off}, {self.row_off + self.height}) "
            f"cols [{self.col_off}, {self.col_off + self.width})")
        return f"CogPart({list(self.urls)!r}, part {self.part + 1}/{self.parts}, {what})"

    def read(self, indexes: Any = None, *, masked: bool = False) -> List[Any]:
        """This window of every raster: a list of numpy arrays, one per URL."""
        if self.error:
            raise ValueError(self.error)
        rasterio = _rasterio()
        out = []
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            for url, size, header_end, ranges in zip(self.urls, self.sizes, self.header_ends,
                                                     self.tile_ranges):
                f = _PrefetchedFile(url, size, storage_options=self.storage_options, stats=self.stats)
                f.prefetch([(0, header_end)] + list(ranges))
                with _open(f, url.rsplit("/", 1)[-1]) as src:
                    out.append(src.read(indexes, window=self.window, masked=masked))
        return out

    def __iter__(self) -> Iterator[Any]:
        yield from self.read()


def cog_parts(urls: Sequence[str], sizes: Optional[Sequence[Optional[int]]] = None, *,
              grid: Optional[Tuple[int, int]] = None, blocks: Tuple[int, int] = (1, 1),
              block_aligned: bool = False, align: bool = False,
              storage_options: Optional[Mapping[str, Any]] = None,
              stats: Optional[ReadStats] = None) -> List[CogPart]:
    """The window parts of ``urls`` (each object separately, or aligned with ``align=True``)."""
    if grid is not None:
        if (not isinstance(grid, tuple) or len(grid) != 2
                or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
            raise ValueError(f"grid must be (rows, cols) of positive ints, e.g. (11, 11), not {grid!r}")
    if (not isinstance(blocks, tuple) or len(blocks) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks)):
        raise ValueError(f"blocks must be (rows, cols) of internal tiles per window, not {blocks!r}")
    options = dict(storage_options or {})
    sizes = list(sizes) if sizes is not None else [None] * len(urls)
    infos = [raster_info(u, s, storage_options=options, stats=stats) for u, s in zip(urls, sizes)]
    groups = [infos] if align else [[i] for i in infos]
    parts: List[CogPart] = []
    for group in groups:
        bad = [i for i in group if i.error]
        if bad:
            problem = "; ".join(f"{i.url}: {i.error}" for i in bad)
            parts.append(CogPart([i.url for i in group], [i.size for i in group], 0, 1, 0, 0, 0, 0, 0, 0,
                                 storage_options=options, error=problem))
            continue
        first = group[0]
        for other in group[1:]:
            for field in ("width", "height", "transform", "crs"):
                if getattr(other, field) != getattr(first, field):
                    raise ValueError(
                        f"align=True needs rasters on one grid, but {other.url} has {field} "
                        f"{getattr(other, field)} and {first.url} has {getattr(first, field)}; "
                        f"resample them to one grid, or list them without align=True")
        wins = windows(first, grid, blocks, block_aligned)
        a, b, c, d, e, f = first.transform
        for k, (i, j, r0, c0, h, w) in enumerate(wins):
            parts.append(CogPart(
                [g.url for g in group], [g.size for g in group], k, len(wins), i, j, r0, c0, h, w,
                header_ends=[g.header_end for g in group],
                tile_ranges=[g.tile_ranges(r0, c0, h, w) for g in group],
                transform=(a, b, c + a * c0 + b * r0, d, e, f + d * c0 + e * r0),
                crs=first.crs, storage_options=options))
    return parts
