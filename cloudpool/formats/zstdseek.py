"""zstd seekable format: lines parts from the seek table, without a first-use scan.

This module owns reading the seek table of a zstd object written in the *seekable format*
(zstd's ``contrib/seekable_format``) and the parts built from it. The format is ordinary
zstd frames followed by one skippable frame (magic ``0x184D2A5E``) holding the table:
per frame its compressed and decompressed size (and optionally a checksum), then a 9-byte
footer ``frame count (u32 LE) | descriptor (bit 7: checksums present) | 0x8F92EAB1``.

One ranged GET of the object's tail gives the table (no sequential scan, no index to
cache). Parts are groups of whole frames of about ``chunk_size`` decompressed bytes; they
find their own line boundaries the way plain-text parts do: part ``i`` owns the records
starting in ``(x_i, x_{i+1}]`` (part 0 from 0), where ``x_i`` is its first frame's
decompressed offset, so it skips through the first separator at or after ``x_i`` and reads
on, into the next frames, through the first separator at or after ``x_{i+1}``. With a
one-byte separator no left context is needed, so no frame is decompressed for a
boundary it does not own beyond the one holding the next separator.

Used for ``lines`` with a one-byte ``newline`` only; other separators and CSV use the text
index (``text.py``), whose scan needs the decompressed bytes anyway. A table that does not
add up to the object's size is ignored (the text index is used instead).
"""
from __future__ import annotations

import io
import struct
from typing import Any, Iterator, List, Optional, Tuple

from .base import ObjectRef, Part, PartitionContext, split_evenly
from .codecs import Decompressed

__all__ = ["read_seek_table", "seekable_parts", "ZstdSeekablePart", "SKIPPABLE_MAGIC",
           "SEEKABLE_MAGIC"]

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER = 9
#: Bytes of the tail fetched at once: the table of ~5000 frames (with checksums) fits.
TAIL = 64 * 1024


def read_seek_table(obj: ObjectRef) -> Optional[List[Tuple[int, int]]]:
    """``[(compressed size, decompressed size), ...]`` per frame, or None if ``obj`` does
    not end with a consistent seek table."""
    if obj.size < FOOTER + 8:
        return None
    tail = obj.get(max(0, obj.size - TAIL), obj.size)
    count, desc, magic = struct.unpack("<IBI", tail[-FOOTER:])
    if magic != SEEKABLE_MAGIC or desc & 0x7C:  # reserved bits must be zero
        return None
    entry = 12 if desc & 0x80 else 8
    frame_len = 8 + count * entry + FOOTER
    if frame_len > obj.size:
        return None
    if frame_len > len(tail):
        tail = obj.get(obj.size - frame_len, obj.size)
    table = tail[len(tail) - frame_len:]
    skip_magic, size = struct.unpack_from("<II", table, 0)
    if skip_magic != SKIPPABLE_MAGIC or size != frame_len - 8:
        return None
    frames = [struct.unpack_from("<II", table, 8 + i * entry) for i in range(count)]
    if sum(c for c, _d in frames) + frame_len != obj.size:
        return None  # frames or data outside the table: not trusted, scan instead
    return frames


def seekable_parts(obj: ObjectRef, frames: List[Tuple[int, int]], ctx: PartitionContext,
                   newline: bytes) -> List["ZstdSeekablePart"]:
    comp, dec = [0], [0]
    for c, d in frames:
        comp.append(comp[-1] + c)
        dec.append(dec[-1] + d)
    groups = split_evenly([d for _c, d in frames], ctx)
    n = len(groups)
    return [ZstdSeekablePart(obj, i, n, comp=comp[a], dec=dec[a], end=dec[b], total=dec[-1],
                             newline=newline)
            for i, (a, b) in enumerate(groups)]


class ZstdSeekablePart(Part):
    """Lines of a seekable-format zstd object whose start is in ``(dec, end]`` (part 0:
    ``[0, end]``). ``comp``/``dec``: the first frame's compressed/decompressed offsets.
    Iteration yields records with their separator; ``read()`` their bytes joined."""

    format = "lines"

    def __init__(self, obj: ObjectRef, part: int, parts: int, *, comp: int, dec: int,
                 end: int, total: int, newline: bytes = b"\n") -> None:
        super().__init__(obj, part, parts)
        self.codec = "zstd"
        self.comp = comp
        self.dec = dec
        self.end_ = end
        self.total = total
        self.newline = newline
        self.header = None  # as on the text-index parts (CSV sets it)

    @property
    def start(self) -> int:
        return self.dec

    @property
    def end(self) -> int:
        return self.end_

    def _identity(self) -> tuple:
        return super()._identity() + (self.comp, self.dec, self.end_)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.url!r}, part {self.part + 1}/{self.parts}, "
                f"zstd seekable, decompressed bytes ({self.dec}, {self.end_}])")

    def _chunks(self) -> Iterator[bytes]:
        """Runs of whole records this part owns, in order (the last may lack its separator)."""
        sep = self.newline
        stream = Decompressed(self.obj, "zstd", self.comp, self.dec)
        pos = self.dec          # decompressed offset of buf[0]
        buf = b""
        # The first record start we own: 0 for part 0, else after the first separator
        # at or after ``dec`` (a record starting exactly at ``dec`` belongs to the part before).
        cur: Optional[int] = 0 if self.part == 0 else None
        last = self.end_ if self.part + 1 < self.parts else self.total
        for block in stream:
            buf = buf + block if buf else block
            if cur is None:
                p = buf.find(sep)
                if p == -1:
                    pos, buf = pos + len(buf), b""
                    continue
                cur = p + 1
            k = last - pos  # index in buf of the last start we may own
            if cur > k:
                return
            if k < len(buf):
                q = buf.find(sep, max(cur, k))
                if q != -1:  # the record holding offset ``last`` ends here: done
                    yield buf[cur:q + 1]
                    return
            e = buf.rfind(sep, cur) + 1
            if e > cur:
                yield buf[cur:e]
                cur = e
            pos, buf, cur = pos + cur, buf[cur:], 0
        if stream.error is not None:
            raise self.error(stream.error)
        if cur is not None and cur < len(buf) and pos + cur <= last:
            yield buf[cur:]  # the last record, without a separator

    def __iter__(self) -> Iterator[bytes]:
        if self.newline == b"\n":
            for chunk in self._chunks():
                yield from io.BytesIO(chunk)  # splits at b"\n" in C
            return
        sep = self.newline
        for chunk in self._chunks():
            start = 0
            while start < len(chunk):
                p = chunk.find(sep, start)
                end = len(chunk) if p == -1 else p + 1
                yield chunk[start:end]
                start = end

    def read(self) -> bytes:
        return b"".join(self._chunks())

    def open(self) -> io.BufferedIOBase:
        """A binary file object over this part's records' bytes (as ``LinesPart.open``)."""
        return io.BytesIO(self.read())


def try_seekable(obj: ObjectRef, ctx: PartitionContext, newline: Any) -> Optional[List[Any]]:
    """Seekable-format parts for ``lines`` over ``obj``, or None to use the text index."""
    if not isinstance(newline, bytes) or len(newline) != 1:
        return None
    frames = read_seek_table(obj)
    if not frames:
        return None
    return seekable_parts(obj, frames, ctx, newline)
