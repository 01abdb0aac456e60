"""LiDAR partitioning: LAS by point ranges, LAZ by its chunk table (laspy + lazrs).

This module owns cutting LAS/LAZ objects into ``LidarPart``s and decoding one part on a
worker. Listing reads the header and VLRs (one ranged GET, a second if they are longer
than the first read) and, for LAZ, the chunk table (its offset is the first 8 bytes of
the point data, or the last 8 bytes of the object when a streaming writer left -1;
usually one more small GET).

- LAS: point records have a fixed size after the header, so a part is a range of point
  indices ``[first, first + count)`` and reads exactly those bytes in one GET.
  ``chunk_size`` is bytes of point records per part (rounded down to whole records, at
  least one record); ``chunks=N`` cuts the points into ``N`` equal ranges; the default
  is ``DEFAULT_POINTS`` points per part.
- LAZ: each chunk of the compressed stream decodes on its own, so a part is a run of
  whole chunks and reads exactly their compressed bytes in one GET. ``chunk_size`` is
  compressed bytes per part (a chunk larger than that is a part on its own);
  ``chunks=N`` makes at most ``N`` runs of about equal point counts; the default is one
  LAZ chunk per part. Fixed- and variable-size chunk tables both work.

A part carries the header bytes (header + VLRs, a few hundred bytes to a few KiB), so
a worker decodes with the header's point format, scales and offsets without another
request. ``part.points()`` (and iteration, one batch per part) gives a
``laspy.ScaleAwarePointRecord``: ``.x/.y/.z`` are scaled coordinates, ``.X/.Y/.Z`` the
stored integers. A file that is not LAS/LAZ, or a LAZ file without a readable chunk
table, becomes one part that raises ``ValueError`` naming the object when read.
COPC octree nodes are not partitioned yet (a COPC file is LAZ 1.4 with variable-size
chunks and is cut by its chunk table, which gives the same records in file order).
"""
from __future__ import annotations

import io
import struct
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ._ranged import RangedFile, ReadStats

__all__ = ["LidarPart", "lidar_parts", "DEFAULT_POINTS"]

#: LAS points per part when neither chunk_size nor chunks is given.
DEFAULT_POINTS = 1_000_000
#: First read at listing: header and VLRs of most files fit.
HEAD_READ = 64 * 1024
LASZIP_USER_ID = "laszip encoded"
LASZIP_RECORD_ID = 22204


def _laspy() -> Any:
    try:
        import laspy
    except ImportError:
        raise ImportError("format='las'/'laz' needs laspy and lazrs: pip install 'cloudpool[lidar]'") from None
    return laspy


def _lazrs() -> Any:
    try:
        import lazrs
    except ImportError:
        raise ImportError("format='laz' needs lazrs: pip install 'cloudpool[lidar]'") from None
    return lazrs


class LidarPart:
    """A range of points of one LAS/LAZ object. Small and picklable; holds no client.

    Attributes: ``url``, ``size``, ``part``/``parts``, ``first_point`` and ``num_points``
    (the points it owns, by index in the file), ``byte_range`` (what it reads),
    ``compressed`` (LAZ), ``chunks`` (LAZ: ``(points, bytes)`` of each of its chunks),
    ``error`` (set for an object that is not readable LAS/LAZ: reading raises it).
    """

    format = "lidar"

    def __init__(self, url: str, size: int, part: int, parts: int, first_point: int, num_points: int,
                 byte_range: Tuple[int, int], header_bytes: bytes, *, compressed: bool = False,
                 chunks: Sequence[Tuple[int, int]] = (),
                 storage_options: Optional[Mapping[str, Any]] = None,
                 error: Optional[str] = None) -> None:
        self.url = url
        self.size = size
        self.part = part
        self.parts = parts
        self.first_point = first_point
        self.num_points = num_points
        self.byte_range = tuple(byte_range)
        self.header_bytes = header_bytes
        self.compressed = compressed
        self.chunks = tuple(tuple(c) for c in chunks)
        self.storage_options = dict(storage_options or {})
        self.error = error
        self.stats = ReadStats()

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
        what = f"error {self.error!r}" if self.error else \
            f"points [{self.first_point}, {self.first_point + self.num_points})"
        return f"LidarPart({self.url!r}, part {self.part + 1}/{self.parts}, {what})"

    @property
    def header(self) -> Any:
        """The object's ``laspy.LasHeader`` (from the bytes carried by the part)."""
        if self.error:
            raise ValueError(f"{self.url}: {self.error}")
        return _laspy().LasHeader.read_from(io.BytesIO(self.header_bytes))

    def points(self) -> Any:
        """The part's points as a ``laspy.ScaleAwarePointRecord`` (one ranged GET)."""
        laspy = _laspy()
        header = self.header
        fmt = header.point_format
        lo, hi = self.byte_range
        data = RangedFile(self.url, self.size, storage_options=self.storage_options,
                          stats=self.stats).read_range(lo, hi) if hi > lo else b""
        if self.compressed and self.num_points:
            lazrs = _lazrs()
            vlr = _laszip_vlr(header)
            out = bytearray(self.num_points * fmt.size)
            try:
                lazrs.decompress_points_with_chunk_table(data, vlr.record_data, out, list(self.chunks))
            except lazrs.LazrsError as exc:
                raise ValueError(f"{self.url}: corrupt LAZ chunk(s) in bytes [{lo}, {hi}): {exc}") from None
            data = bytes(out)
        record = laspy.PackedPointRecord.from_buffer(bytearray(data), fmt, self.num_points)
        return laspy.ScaleAwarePointRecord(record.array, fmt, header.scales, header.offsets)

    read = points

    def __iter__(self) -> Iterator[Any]:
        yield self.points()


def _laszip_vlr(header: Any) -> Any:
    for vlr in header.vlrs:
        if vlr.user_id == LASZIP_USER_ID and vlr.record_id == LASZIP_RECORD_ID:
            return vlr
    raise ValueError("a LAZ file without its laszip VLR (user id 'laszip encoded', record 22204)")


def _group(sizes: Sequence[int], counts: Sequence[int], chunk_size: Optional[int],
           chunks: Optional[int]) -> List[List[int]]:
    """Runs of consecutive LAZ chunk indices."""
    n = len(sizes)
    if chunk_size is not None:
        runs: List[List[int]] = [[]]
        acc = 0
        for i, s in enumerate(sizes):
            if runs[-1] and acc + s > chunk_size:
                runs.append([])
                acc = 0
            runs[-1].append(i)
            acc += s
        return runs
    if chunks is None or chunks >= n:
        return [[i] for i in range(n)]
    total = sum(counts) or n
    runs, cum = [[]], 0
    for i, c in enumerate(counts):
        if runs[-1] and cum * chunks >= len(runs) * total and len(runs) < chunks:
            runs.append([])
        runs[-1].append(i)
        cum += c or 1
    return runs


def lidar_parts(url: str, size: Optional[int] = None, *, chunk_size: Optional[int] = None,
                chunks: Optional[int] = None, storage_options: Optional[Mapping[str, Any]] = None,
                stats: Optional[ReadStats] = None) -> List[LidarPart]:
    """The parts of one LAS or LAZ object (reads its header, VLRs and LAZ chunk table)."""
    laspy = _laspy()
    options = dict(storage_options or {})
    f = RangedFile(url, size, storage_options=options, stats=stats)

    def broken(problem: str) -> List[LidarPart]:
        return [LidarPart(url, f.size, 0, 1, 0, 0, (0, 0), b"", storage_options=options, error=problem)]

    head = f.read_range(0, HEAD_READ)
    if head[:4] != b"LASF":
        return broken(f"not a LAS/LAZ file: it does not start with b'LASF' (got {head[:4]!r})")
    if len(head) < 100:
        return broken(f"truncated LAS header: {len(head)} bytes")
    (offset_to_points,) = struct.unpack_from("<I", head, 96)
    if offset_to_points > len(head):
        head += f.read_range(len(head), offset_to_points)
    header_bytes = head[:offset_to_points]
    try:
        header = laspy.LasHeader.read_from(io.BytesIO(header_bytes))
    except (laspy.errors.LaspyException, ValueError, struct.error) as exc:
        return broken(f"unreadable LAS header ({exc})")
    npoints = header.point_count
    rec = header.point_format.size
    compressed = bool(head[104] & 0x80)  # LAZ sets the top bit of the point format id
    if not compressed:
        end = offset_to_points + npoints * rec
        if end > f.size:
            return broken(f"truncated: the header promises {npoints} points of {rec} bytes "
                          f"ending at byte {end}, but the object has {f.size} bytes")
        if chunks is not None:
            n = max(1, min(chunks, npoints))
            bounds = [npoints * i // n for i in range(n + 1)]
        else:
            per = DEFAULT_POINTS if chunk_size is None else max(1, chunk_size // rec)
            bounds = list(range(0, npoints, per)) + [npoints] if npoints else [0, 0]
        nparts = len(bounds) - 1
        return [LidarPart(url, f.size, k, nparts, bounds[k], bounds[k + 1] - bounds[k],
                          (offset_to_points + bounds[k] * rec, offset_to_points + bounds[k + 1] * rec),
                          header_bytes, storage_options=options) for k in range(nparts)]

    # LAZ: the chunk table.
    lazrs = _lazrs()
    try:
        vlr = lazrs.LazVlr(_laszip_vlr(header).record_data)
    except (ValueError, lazrs.LazrsError) as exc:
        return broken(f"LAZ without a usable laszip VLR ({exc})")
    if npoints == 0:
        return [LidarPart(url, f.size, 0, 1, 0, 0, (0, 0), header_bytes, compressed=True,
                          storage_options=options)]
    (table_offset,) = struct.unpack("<q", f.read_range(offset_to_points, offset_to_points + 8))
    if table_offset == -1:  # written by a streaming writer: the offset is at the very end
        (table_offset,) = struct.unpack("<q", f.read_range(f.size - 8, f.size))
    if not offset_to_points + 8 <= table_offset < f.size:
        return broken(f"LAZ chunk table offset {table_offset} is outside the object "
                      f"({f.size} bytes): truncated or not written")
    try:
        f.seek(table_offset)
        table = lazrs.read_chunk_table_only(io.BufferedReader(f, buffer_size=64 * 1024), vlr)
    except (lazrs.LazrsError, OSError, ValueError) as exc:
        return broken(f"unreadable LAZ chunk table at byte {table_offset} ({exc})")
    fixed = not vlr.uses_variable_size_chunks()
    counts, sizes = [], []
    left = npoints
    for pts, nbytes in table:
        c = min(left, vlr.chunk_size()) if fixed else pts
        counts.append(c)
        sizes.append(nbytes)
        left -= c
    starts = [offset_to_points + 8]
    for s in sizes:
        starts.append(starts[-1] + s)
    if left != 0 or starts[-1] > table_offset:
        return broken(f"LAZ chunk table does not match the header ({npoints} points, "
                      f"{sum(counts)} in the table, chunks end at {starts[-1]}, table at {table_offset})")
    runs = _group(sizes, counts, chunk_size, chunks)
    point_starts = [0]
    for c in counts:
        point_starts.append(point_starts[-1] + c)
    return [LidarPart(url, f.size, k, len(runs), point_starts[r[0]], sum(counts[i] for i in r),
                      (starts[r[0]], starts[r[-1] + 1]), header_bytes, compressed=True,
                      chunks=[(counts[i], sizes[i]) for i in r], storage_options=options)
            for k, r in enumerate(runs)]
