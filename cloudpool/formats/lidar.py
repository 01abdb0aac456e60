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
  is the automatic part size of ``objects()``, in bytes.
- LAZ: each chunk of the compressed stream decodes on its own, so a part is a run of
  whole chunks and reads exactly their compressed bytes in one GET. ``chunk_size`` is
  compressed bytes per part (a chunk larger than that is a part on its own);
  ``chunks=N`` makes at most ``N`` runs of about equal compressed size; the default is
  the automatic part size, in compressed bytes. Fixed- and variable-size chunk tables both work.

A part carries the header bytes (header + VLRs, a few hundred bytes to a few KiB), so
a worker decodes with the header's point format, scales and offsets without another
request. ``part.points()`` (and iteration, one batch per part) gives a
``laspy.ScaleAwarePointRecord``: ``.x/.y/.z`` are scaled coordinates, ``.X/.Y/.Z`` the
stored integers. A file that is not LAS/LAZ, or a LAZ file without a readable chunk
table, becomes one part that raises ``FormatError`` naming the object when read.
COPC octree nodes are not partitioned yet (a COPC file is LAZ 1.4 with variable-size
chunks and is cut by its chunk table, which gives the same records in file order).
"""
from __future__ import annotations

import io
import struct
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ._grouping import runs
from ._ranged import RangedFile, ReadStats
from .base import ObjectRef, Part, PartitionContext, Partitioner, require

__all__ = ["LidarPartitioner", "LidarPart"]
#: First read at listing: header and VLRs of most files fit.
HEAD_READ = 64 * 1024
LASZIP_USER_ID = "laszip encoded"
LASZIP_RECORD_ID = 22204


def _laspy() -> Any:
    return require("laspy", "lidar", "lidar")


def _lazrs() -> Any:
    return require("lazrs", "lidar", "lidar")


class LidarPart(Part):
    """A range of points of one LAS/LAZ object. Small and picklable; holds no client.

    Attributes (besides ``Part``'s): ``first_point`` and ``num_points`` (the points it
    owns, by index in the file), ``byte_range`` (what it reads), ``compressed`` (LAZ),
    ``chunks`` (LAZ: ``(points, bytes)`` of each of its chunks), ``header_bytes``,
    ``problem`` (set for an object that is not readable LAS/LAZ: reading raises it).
    """

    format = "lidar"

    def __init__(self, obj: ObjectRef, part: int, parts: int, *, first_point: int = 0,
                 num_points: int = 0, byte_range: Tuple[int, int] = (0, 0), header_bytes: bytes = b"",
                 compressed: bool = False, chunks: Sequence[Tuple[int, int]] = (),
                 problem: Optional[str] = None) -> None:
        super().__init__(obj, part, parts)
        self.first_point = first_point
        self.num_points = num_points
        self.byte_range = tuple(byte_range)
        self.header_bytes = header_bytes
        self.compressed = compressed
        self.chunks = tuple(tuple(c) for c in chunks)
        self.problem = problem
        self.stats = ReadStats()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        del state["stats"]  # per-process counters (a lock inside)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stats = ReadStats()

    def _identity(self) -> tuple:
        return super()._identity() + (self.first_point, self.num_points)

    def __repr__(self) -> str:
        what = f"problem {self.problem!r}" if self.problem else \
            f"points [{self.first_point}, {self.first_point + self.num_points})"
        return f"LidarPart({self.url!r}, part {self.part + 1}/{self.parts}, {what})"

    @property
    def header(self) -> Any:
        """The object's ``laspy.LasHeader`` (from the bytes carried by the part)."""
        if self.problem:
            raise self.error(self.problem)
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
                raise self.error(f"corrupt LAZ chunk(s) in bytes [{lo}, {hi}): {exc}") from None
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


def lidar_parts(obj: ObjectRef, ctx: PartitionContext) -> List[LidarPart]:
    """The parts of one LAS or LAZ object (reads its header, VLRs and LAZ chunk table)."""
    laspy = _laspy()
    f = RangedFile(obj.url, obj.size, storage_options=obj.storage_options)

    def broken(problem: str) -> List[LidarPart]:
        return [LidarPart(obj, 0, 1, problem=problem)]

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
        if ctx.chunks is not None:
            n = max(1, min(ctx.chunks, npoints))
            bounds = [npoints * i // n for i in range(n + 1)]
        else:
            limit = ctx.chunk_size if ctx.chunk_size is not None else ctx.part_size
            per = max(1, (limit or 1) // rec)  # whole records, at least one
            bounds = list(range(0, npoints, per)) + [npoints] if npoints else [0, 0]
        nparts = len(bounds) - 1
        return [LidarPart(obj, k, nparts, first_point=bounds[k], num_points=bounds[k + 1] - bounds[k],
                          byte_range=(offset_to_points + bounds[k] * rec,
                                      offset_to_points + bounds[k + 1] * rec),
                          header_bytes=header_bytes) for k in range(nparts)]

    # LAZ: the chunk table.
    lazrs = _lazrs()
    try:
        vlr = lazrs.LazVlr(_laszip_vlr(header).record_data)
    except (ValueError, lazrs.LazrsError) as exc:
        return broken(f"LAZ without a usable laszip VLR ({exc})")
    if npoints == 0:
        return [LidarPart(obj, 0, 1, header_bytes=header_bytes, compressed=True)]
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
    groups = runs(sizes, ctx)
    # An empty chunk (a writer closing a chunk with no points, e.g. at the end) is not
    # worth a part of its own: it joins its neighbour, and lazrs decodes it as nothing.
    merged: List[Tuple[int, int]] = []
    for i, j in groups:
        if merged and (sum(counts[i:j]) == 0 or sum(counts[merged[-1][0]:merged[-1][1]]) == 0):
            merged[-1] = (merged[-1][0], j)
        else:
            merged.append((i, j))
    groups = merged
    point_starts = [0]
    for c in counts:
        point_starts.append(point_starts[-1] + c)
    return [LidarPart(obj, k, len(groups), first_point=point_starts[i],
                      num_points=point_starts[j] - point_starts[i], byte_range=(starts[i], starts[j]),
                      header_bytes=header_bytes, compressed=True,
                      chunks=[(counts[x], sizes[x]) for x in range(i, j)])
            for k, (i, j) in enumerate(groups)]


class LidarPartitioner(Partitioner):
    """``format="lidar"`` (LAS and LAZ, told apart by the header). ``chunk_size`` is bytes
    read per part: point records for LAS, compressed chunks for LAZ."""

    name = "lidar"
    extensions = (".copc.laz", ".laz", ".las")
    magic = (b"LASF",)
    extra = "lidar"
    requires = ("laspy", "lazrs")
    defaults: Dict[str, Any] = {}

    @classmethod
    def sniff(cls, head: bytes, key: str) -> bool:
        """``LASF``, confirmed by the public header block: version 1.0-1.4, a header of at
        least 227 bytes, point data after it, a known point format."""
        if not super().sniff(head, key) or len(head) < 227:
            return False
        major, minor = head[24], head[25]
        (header_size,) = struct.unpack_from("<H", head, 94)
        (offset,) = struct.unpack_from("<I", head, 96)
        return (major == 1 and minor <= 4 and 227 <= header_size <= offset
                and (head[104] & 0x3F) <= 10)

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        return lidar_parts(obj, ctx)
