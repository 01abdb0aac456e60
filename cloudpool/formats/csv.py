"""CSV and TSV: parts yield rows (lists of str, ``csv`` module semantics), plain or compressed.

Where can a part start? A newline ends a record only outside quotes, and whether a byte is
inside quotes depends on everything before it: no local look-around can decide it (a part
starting in the middle of a long quoted field sees text that parses as records). So the
record starts come from one sequential scan of the object on the client, with the same
parser the parts use, recorded in the text index (``text.py``) and cached by object version:

- a stretch of whole lines that contains no quote (and no escape) character is split at
  its newlines directly (fast: ``bytes.find``);
- a line that contains one is parsed by ``csv.reader`` row by row until the scan is at a
  record start again, so quoted newlines, doubled quotes and quotes inside unquoted
  fields (``5" tall``) follow exactly the ``csv`` module's rules.

An unterminated quote swallows the rest of the object into one record; the scan records
where that record starts and the part that owns it raises ``FormatError`` there (after
yielding its good rows). The header (``header=True``, the default) is the first record: it
is excluded from the parts and set as ``part.header`` (a list of str) on every part.

Limits: records end with ``\\n`` or ``\\r\\n`` (a lone ``\\r`` line ending is not
supported); the encoding must keep ``\\n`` a single byte (UTF-8, Latin-1, ASCII...).
"""
from __future__ import annotations

import csv as _csv
import io
from typing import Any, Iterator, List, Optional

from .base import ObjectRef, PartitionContext
from .text import LinesPartitioner, TextIndex, TextPart, load_or_build, text_parts

__all__ = ["CsvPartitioner", "TsvPartitioner", "CsvPart", "CsvRule"]


def _reader_kwargs(options: dict) -> dict:
    kw = {"delimiter": options["delimiter"], "quotechar": options["quotechar"],
          "escapechar": options["escapechar"], "doublequote": options["doublequote"],
          "skipinitialspace": options["skipinitialspace"], "strict": options["strict"]}
    if options["quotechar"] is None:
        kw["quoting"] = _csv.QUOTE_NONE
    return kw


class CsvRule:
    """Record starts of CSV data, by the ``csv`` module's rules (see the module docstring)."""

    def __init__(self, options: dict) -> None:
        self.options = options
        self.kw = _reader_kwargs(options)
        self.encoding = options["encoding"]
        specials = [c for c in (options["quotechar"], options["escapechar"]) if c]
        self.special = [c.encode(self.encoding) for c in specials]

    def params(self) -> str:
        return f"csv:{sorted(self.kw.items())!r}|{self.encoding}|header={self.options['header']}"

    def scan(self, blocks: Iterator[bytes], g: int, index: TextIndex) -> None:
        buf = bytearray()
        base = 0            # absolute offset of buf[0]; always a record start
        eof = False
        it = iter(blocks)
        starts: List[int] = []
        target = g
        want_header = bool(self.options["header"])

        def more() -> bool:
            nonlocal eof
            if eof:
                return False
            for block in it:
                if block:
                    buf.extend(block)
                    return True
            eof = True
            return False

        def note(q: int) -> None:
            nonlocal target
            if q >= target:
                starts.append(q)
                target = (q // g + 1) * g

        while True:
            if not buf and not more():
                break
            # Whole lines without special characters: every newline ends a record.
            nl = buf.rfind(b"\n")
            if nl == -1:
                if more():
                    continue
                nl = len(buf) - 1          # the last, unterminated record
            first_special = min((i for i in (buf.find(s, 0, nl + 1) for s in self.special)
                                 if i != -1), default=-1)
            if want_header or first_special == 0 or (
                    first_special != -1 and buf.rfind(b"\n", 0, first_special) == -1):
                # The current record has a special character (or is the header): parse it.
                if not self._parse_one(buf, base, more, index, want_header):
                    break
                consumed = self._consumed
                if want_header:
                    index.data_start = base + consumed
                    want_header = False
                del buf[:consumed]
                base += consumed
                note(base)
                continue
            upto = nl + 1 if first_special == -1 else buf.rfind(b"\n", 0, first_special) + 1
            # Record starts in [base, base+upto]: after every newline of this stretch.
            while target <= base + upto:
                i = buf.find(b"\n", max(0, target - base - 1), upto)
                if i == -1:
                    break
                note(base + i + 1)
            del buf[:upto]
            base += upto
        index.total = base + len(buf)
        index.starts = [q for q in starts if q < index.total and q > index.data_start]

    def _parse_one(self, buf: bytearray, base: int, more: Any, index: TextIndex,
                   header: bool) -> bool:
        """Parse the record at ``buf[0]``; sets ``self._consumed``. False at the end of data."""
        pos = 0
        state = {"pos": 0}
        enc = self.encoding

        def lines() -> Iterator[str]:
            p = state["pos"]
            while True:
                i = buf.find(b"\n", p)
                while i == -1:
                    if not more():
                        if p < len(buf):
                            state["pos"] = len(buf)
                            yield bytes(buf[p:]).decode(enc, "surrogateescape")
                        return
                    i = buf.find(b"\n", p)
                state["pos"] = i + 1
                yield bytes(buf[p:i + 1]).decode(enc, "surrogateescape")
                p = i + 1

        reader = _csv.reader(lines(), **self.kw)
        try:
            row = next(reader)
        except StopIteration:
            self._consumed = 0
            return False
        except _csv.Error as exc:
            index.error = f"CSV error in the record starting at byte {base}: {exc}"
            index.error_at = base
            while more():  # the size of the rest is still needed; its records are lost
                pass
            self._consumed = len(buf)
            return False
        consumed = state["pos"]
        if consumed >= len(buf) and not more() and self._unterminated(bytes(buf[pos:consumed])):
            index.error = (f"unterminated quote: the record starting at byte {base} opens a "
                           f"quoted field that never closes before the end of the data")
            index.error_at = base
        if header:
            index.header = row
        self._consumed = consumed
        return True

    def _unterminated(self, text: bytes) -> bool:
        """Whether the last record (up to the end of data) ends inside a quoted field."""
        if not self.options["quotechar"]:
            return False
        kw = dict(self.kw, strict=True)
        try:
            list(_csv.reader([text.decode(self.encoding, "surrogateescape")], **kw))
        except _csv.Error as exc:
            return "unexpected end of data" in str(exc)
        return False


class CsvPart(TextPart):
    """Rows ``[ra, rb)`` of one CSV object. ``header`` is the header row (or None)."""

    format = "csv"

    def __init__(self, *args: Any, options: Optional[dict] = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.options = dict(options or {})

    def __iter__(self) -> Iterator[List[str]]:
        if self.error_info is None:
            yield from self._fast_rows()
            return
        yield from self._tracked_rows()

    def _fast_rows(self) -> Iterator[List[str]]:
        # One decode and csv.reader over an in-memory text: the reader's C loop does the
        # line splitting (about 5x faster than feeding it line by line from Python). A
        # part holds about chunk_size bytes, which is the work size the user chose.
        text = self.read().decode(self.options["encoding"], "surrogateescape")
        reader = _csv.reader(io.StringIO(text, newline=""), **_reader_kwargs(self.options))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except _csv.Error as exc:
                raise self.error(f"CSV error at line {reader.line_num} of this part: "
                                 f"{exc}") from exc
            yield row

    def _tracked_rows(self) -> Iterator[List[str]]:
        """Rows with their byte offsets, to stop at the indexed error's record."""
        enc = self.options["encoding"]
        offset = {"at": self.ra}
        err_at = self.error_info[1] if self.error_info else None

        def lines() -> Iterator[str]:
            buf = b""
            pos = self.ra
            for block in self.blocks():
                buf += block
                start = 0
                while True:
                    i = buf.find(b"\n", start)
                    if i == -1:
                        break
                    # Offset first: csv.reader reads no further than the row it returns,
                    # so after a row the offset is that row's end.
                    pos += i + 1 - start
                    offset["at"] = pos
                    yield buf[start:i + 1].decode(enc, "surrogateescape")
                    start = i + 1
                buf = buf[start:]
            if buf:
                offset["at"] = pos + len(buf)
                yield buf.decode(enc, "surrogateescape")

        row_start = self.ra
        reader = _csv.reader(lines(), **_reader_kwargs(self.options))
        while True:
            if err_at is not None and row_start >= err_at:
                raise self.error(self.error_info[0])  # type: ignore[index]
            try:
                row = next(reader)
            except StopIteration:
                break
            except _csv.Error as exc:
                raise self.error(f"CSV error in the record starting at byte {row_start}: "
                                 f"{exc}") from exc
            yield row
            row_start = offset["at"]
        self.check_error(self.rb)


class CsvPartitioner(LinesPartitioner):
    """``format="csv"``: options ``delimiter``, ``quotechar`` (None: no quoting),
    ``escapechar``, ``doublequote``, ``skipinitialspace``, ``strict`` (as in ``csv``),
    ``header`` (first record is a header; default True), ``encoding``, ``compression``."""

    name = "csv"
    extensions = (".csv",)
    compressible = True
    detect_by_extension = False
    defaults = {"delimiter": ",", "quotechar": '"', "escapechar": None, "doublequote": True,
                "skipinitialspace": False, "strict": False, "header": True,
                "encoding": "utf-8", "compression": "infer"}

    def check_options(self) -> None:
        super().check_options()
        try:
            _csv.reader([], **_reader_kwargs(self.options))
        except (TypeError, _csv.Error) as exc:
            raise ValueError(f"format {self.name!r}: bad CSV options: {exc}") from None
        if not isinstance(self.options["header"], bool):
            raise TypeError(f"header must be True or False, not {self.options['header']!r}")
        "\n".encode(self.options["encoding"])  # LookupError for an unknown encoding

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        codec = self.codec_of(obj)
        index = load_or_build(obj, codec, CsvRule(self.options), ctx)
        fmt = self.name
        options = self.options

        def make(**kw: Any) -> CsvPart:
            p = CsvPart(kw.pop("obj"), kw.pop("part"), kw.pop("parts"), options=options, **kw)
            p.format = fmt  # type: ignore[misc]
            return p
        return text_parts(obj, codec, index, ctx, make)


class TsvPartitioner(CsvPartitioner):
    """``format="tsv"``: CSV with a tab delimiter."""

    name = "tsv"
    extensions = (".tsv", ".tab")
    defaults = {**CsvPartitioner.defaults, "delimiter": "\t"}
