"""Compressed streams read in pieces: gzip, bzip2 and zstd, cut at member/stream/frame starts.

This module owns decompressing an object *from a byte offset where a member starts* and
finding those offsets. Every codec here is a concatenation of independent units -- gzip
members (BGZF is 64 KiB members), bzip2 streams (pbzip2, lbzip2 write many), zstd frames
(``zstd -B``/``--rsyncable``, the seekable format's frames) -- each starting on a byte
boundary with a fresh decompressor, so a seek point is just ``(compressed offset,
decompressed offset)`` and needs no saved window. One sequential pass finds them all.

Limit: inside one gzip member or zstd frame there is no seek point here (deflate blocks
start at bit offsets and need the previous 32 KiB window). bzip2 is the exception: its
blocks are independent, and ``bzip2blocks.py`` reads them one by one, so bzip2 seek points
are at every block, with *bit* offsets as compressed offsets. Parts are placed at unit
starts (``text.py``), so all parts together decompress each unit once; long gzip members
get finer seek points from an indexed_gzip index instead (``text.zran_index``).

zstd skippable frames (magic ``0x184D2A5?``, used by the seekable format's seek table)
are skipped.
"""
from __future__ import annotations

import bz2
import struct
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .base import ObjectRef, require

try:
    from isal.isal_zlib import error as _IsalError
except ImportError:  # pragma: no cover - isal is optional
    class _IsalError(Exception):  # type: ignore[no-redef]
        """Never raised: stands in for isal's error type when isal is absent."""

__all__ = ["CODECS", "codec_for_head", "Decompressed", "READ_BLOCK"]

#: Compressed bytes fetched per ranged GET while decompressing.
READ_BLOCK = 1024 * 1024


def _gzip() -> Any:
    # python-isal (ISA-L) decompresses ~2.8x faster than zlib here, with the same API
    # (measured: 379 vs 136 MB/s on 52 MB of text); it is optional (extra "gzip").
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.decompressobj(31)
    return isal_zlib.decompressobj(31)


def _bzip2() -> Any:
    return bz2.BZ2Decompressor()


def _zstd() -> Any:
    zstandard = require("zstandard", "zstd", "zstd")
    return _ZstdUnit(zstandard.ZstdDecompressor().decompressobj())


class _ZstdUnit:
    """zstandard's decompressobj with the ``max_length`` interface of zlib/bz2."""

    def __init__(self, d: Any) -> None:
        self._d = d

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes) -> bytes:
        return self._d.decompress(data)


#: codec name -> (magic prefixes, extensions, decompressor factory)
CODECS: Dict[str, Tuple[Tuple[bytes, ...], Tuple[str, ...], Callable[[], Any]]] = {
    "gzip": ((b"\x1f\x8b\x08",), (".gz", ".gzip", ".bgz", ".bgzf"), _gzip),
    "bzip2": (tuple(b"BZh" + bytes([c]) for c in b"123456789"), (".bz2", ".bzip2"), _bzip2),
    "zstd": ((b"\x28\xb5\x2f\xfd",) + tuple(bytes([0x50 + i, 0x2A, 0x4D, 0x18]) for i in range(16)),
             (".zst", ".zstd"), _zstd),
}


def codec_for_head(head: bytes) -> Optional[str]:
    for name, (magic, _exts, _f) in CODECS.items():
        if any(head.startswith(m) for m in magic):
            return name
    return None


def _skippable(buf: bytes) -> Optional[int]:
    """Length of a zstd skippable frame at the start of ``buf`` (None if it is not one)."""
    if len(buf) >= 8 and buf[1:4] == b"\x2a\x4d\x18" and 0x50 <= buf[0] <= 0x5F:
        return 8 + struct.unpack_from("<I", buf, 4)[0]
    return None


class Decompressed:
    """Decompressed bytes of ``obj`` from compressed offset ``comp`` (a unit start).

    Iterating yields decompressed blocks; ``points`` collects ``(comp, decomp)`` of every
    unit start met (``decomp`` counted from ``decomp0``). A stream that ends inside a unit,
    or bytes after a unit that start no unit, end the iteration and set ``error`` (a
    sentence) and ``error_at`` (decompressed offset); nothing is raised here, so the
    caller decides which part reports it.
    """

    def __init__(self, obj: ObjectRef, codec: str, comp: int = 0, decomp0: int = 0,
                 read_block: int = READ_BLOCK) -> None:
        self.obj = obj
        self.codec = codec
        self.comp = comp
        self.decomp0 = decomp0
        self.read_block = read_block
        self.points: List[Tuple[int, int]] = []
        self.error: Optional[str] = None
        self.error_at: Optional[int] = None

    def __iter__(self) -> Iterator[bytes]:
        if self.codec == "bzip2":
            # bzip2 is read block by block (seek points inside a stream; offsets in bits).
            from .bzip2blocks import Bzip2Blocks
            blocks = Bzip2Blocks(self.obj, self.comp, self.decomp0, self.read_block)
            self.points = blocks.points
            try:
                yield from blocks
            finally:
                self.error, self.error_at = blocks.error, blocks.error_at
            return
        factory = CODECS[self.codec][2]
        magic = CODECS[self.codec][0]
        size = self.obj.size
        pos = self.comp          # compressed offset of buf[0]
        dpos = self.decomp0      # decompressed offset reached
        buf = b""
        unit: Any = None         # the current unit's decompressor (None between units)
        while True:
            if not buf or (unit is None and len(buf) < 8 and pos + len(buf) < size):
                if pos + len(buf) >= size:
                    if unit is not None:
                        self.error = (f"truncated {self.codec} data: the object ends inside the "
                                      f"unit (member/stream/frame) that started at byte "
                                      f"{self._unit_start} (compressed)")
                        self.error_at = dpos
                    return
                buf += self.obj.get(pos + len(buf), pos + len(buf) + self.read_block)
                continue
            if unit is None:
                skip = _skippable(buf) if self.codec == "zstd" else None
                if skip is not None:
                    if len(buf) >= skip:
                        buf, pos = buf[skip:], pos + skip
                    else:
                        gap = skip - len(buf)
                        buf, pos = b"", pos + len(buf) + gap
                        if pos > size:
                            self.error = "truncated zstd skippable frame"
                            self.error_at = dpos
                            return
                    continue
                if not any(buf.startswith(m[:len(buf)]) for m in magic):
                    if not buf.strip(b"\x00"):  # zero padding after the last unit (tape/dd)
                        if pos + len(buf) >= size:
                            return
                        buf, pos = b"", pos + len(buf)
                        continue
                    self.error = (f"byte {pos} (compressed) starts no {self.codec} "
                                  f"member/stream/frame: corrupt data or trailing garbage")
                    self.error_at = dpos
                    return
                unit = factory()
                self._unit_start = pos
                self.points.append((pos, dpos))
            try:
                # No max_length: bz2 and zstd do not offer zlib's unconsumed_tail, and the
                # input is at most read_block bytes.
                out = unit.decompress(buf)
            except (OSError, zlib.error, EOFError, ValueError, _IsalError) as exc:
                self.error = f"corrupt {self.codec} data in the unit starting at byte {self._unit_start}: {exc}"
                self.error_at = dpos
                return
            except Exception as exc:  # noqa: BLE001 - zstandard.ZstdError is not an OSError
                if type(exc).__name__ != "ZstdError":
                    raise
                self.error = f"corrupt zstd data in the frame starting at byte {self._unit_start}: {exc}"
                self.error_at = dpos
                return
            if unit.eof:
                rest = unit.unused_data
                pos += len(buf) - len(rest)
                buf = rest
                unit = None
            else:
                pos += len(buf)
                buf = b""
            if out:
                dpos += len(out)
                yield out
