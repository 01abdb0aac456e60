"""FASTA and FASTQ: parts yield sequence records, plain or compressed; records never split.

Both use the text index (``text.py``): one sequential pass over the (decompressed) data
on the client records where records start, the index is cached by object version, and
parts tile the data at those starts.

- FASTA: a record starts at a line beginning with ``>``. Parts yield
  ``FastaRecord(name, sequence)``: ``name`` is the header line after ``>`` (description
  included), ``sequence`` the following lines joined without line breaks.
- FASTQ: records are exactly 4 lines (``@name``, sequence, ``+[name]``, quality). A
  quality string may itself start with ``@`` or ``+``, so no local look at the bytes
  can tell a record start from a quality line. The scan therefore counts lines from the
  start of the object (``bytes.count`` in C) and records only starts of lines whose index
  is a multiple of 4: exact, with no guessing. Parts check every record's structure
  (``@``, ``+``, ``len(sequence) == len(quality)``) and raise ``FormatError`` at the first
  one that breaks it, after yielding the good records before it. Parts yield
  ``FastqRecord(name, sequence, quality)``.

Text is decoded as ASCII (Latin-1, so any byte passes); ``\\r\\n`` line ends are accepted.
Limit: multi-line (wrapped) FASTQ is not supported (it fails the 4-line check).
"""
from __future__ import annotations

from typing import Any, Iterator, List, NamedTuple, Optional

from .base import ObjectRef, PartitionContext
from .text import LinesPartitioner, TextIndex, TextPart, load_or_build, text_parts

__all__ = ["FastaPartitioner", "FastqPartitioner", "FastaPart", "FastqPart", "FastaRecord",
           "FastqRecord", "FastaRule", "FastqRule"]


class FastaRecord(NamedTuple):
    name: str
    sequence: str


class FastqRecord(NamedTuple):
    name: str
    sequence: str
    quality: str


# ---------------------------------------------------------------------------- scan rules
class FastaRule:
    """Record starts: a ``>`` at the start of a line."""

    def params(self) -> str:
        return "fasta:1"

    def scan(self, blocks: Iterator[bytes], g: int, index: TextIndex) -> None:
        starts: List[int] = []
        target = g
        off = 0
        carry = b""  # the previous block's last byte: "\n>" may straddle blocks
        for block in blocks:
            window = carry + block
            wabs = off - len(carry)
            end = off + len(block)
            while target <= end:
                p = window.find(b"\n>", max(0, target - 1 - wabs))
                if p == -1:
                    break
                q = wabs + p + 1
                starts.append(q)
                target = (q // g + 1) * g
            off = end
            carry = window[-1:]
        index.total = off
        index.starts = [q for q in starts if q < off]


class FastqRule:
    """Record starts: starts of lines whose index (from the object's start) is 0 mod 4."""

    def params(self) -> str:
        return "fastq:1"

    def scan(self, blocks: Iterator[bytes], g: int, index: TextIndex) -> None:
        starts: List[int] = []
        target = g
        off = 0
        lines = 0                # newlines before the cursor
        need: Optional[int] = None  # newlines still to pass to reach a record start
        for block in blocks:
            i = 0
            n = len(block)
            while i < n:
                if need is None:
                    j = target - off
                    if j >= n:
                        break
                    if j > i:
                        lines += block.count(b"\n", i, j)
                        i = j
                    # The line holding the cursor has index ``lines``; the next record
                    # starts after the newline that begins line ``lines + m``, m >= 1.
                    need = (-lines - 1) % 4 + 1
                p = block.find(b"\n", i)
                if p == -1:
                    break
                lines += 1
                i = p + 1
                need -= 1
                if need == 0:
                    q = off + i
                    starts.append(q)
                    target = (q // g + 1) * g
                    need = None
            lines += block.count(b"\n", i)
            off += n
        index.total = off
        index.starts = [q for q in starts if q < off]


# ---------------------------------------------------------------------------- parts
def _lines(data: bytes) -> List[str]:
    text = data.decode("latin-1")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # after the final newline
    return [x[:-1] if x.endswith("\r") else x for x in lines]


class FastaPart(TextPart):
    """Records ``FastaRecord(name, sequence)`` starting in decompressed bytes ``[ra, rb)``."""

    format = "fasta"

    def __iter__(self) -> Iterator[FastaRecord]:
        data = b"".join(self.blocks())
        name: Optional[str] = None
        seq: List[str] = []
        for k, line in enumerate(_lines(data)):
            if line.startswith(">"):
                if name is not None:
                    yield FastaRecord(name, "".join(seq))
                name, seq = line[1:].strip(), []
            elif name is None:
                if line.strip() and not line.startswith(";"):  # ';': old-style comments
                    raise self.error(f"line {k + 1} of this part is sequence data before any "
                                     f"'>' header: not FASTA (use format='lines' for "
                                     f"plain text)")
            else:
                seq.append(line.strip())
        if name is not None:
            yield FastaRecord(name, "".join(seq))
        self.check_error(self.rb)


class FastqPart(TextPart):
    """Records ``FastqRecord(name, sequence, quality)`` starting in ``[ra, rb)``."""

    format = "fastq"

    def __iter__(self) -> Iterator[FastqRecord]:
        data = b"".join(self.blocks())
        lines = _lines(data)
        while len(lines) % 4 and not lines[-1].strip():
            lines.pop()  # blank lines at the end of the object (an empty read is 4 lines)
        for k in range(0, len(lines), 4):
            rec = lines[k:k + 4]
            problem = None
            if len(rec) < 4:
                problem = f"an incomplete record ({len(rec)} of 4 lines)"
            elif not rec[0].startswith("@"):
                problem = f"line {k + 1} should start a record with '@': {rec[0][:40]!r}"
            elif not rec[2].startswith("+"):
                problem = f"line {k + 3} should be the '+' separator: {rec[2][:40]!r}"
            elif len(rec[1]) != len(rec[3]):
                problem = (f"the record at line {k + 1} has a sequence of {len(rec[1])} and a "
                           f"quality of {len(rec[3])} characters")
            if problem is not None:
                self.check_error(self.rb)  # truncated data explains it better
                raise self.error(f"not 4-line FASTQ: {problem} (multi-line FASTQ is not "
                                 f"supported)")
            yield FastqRecord(rec[0][1:].strip(), rec[1], rec[3])
        self.check_error(self.rb)


# ---------------------------------------------------------------------------- partitioners
class _FastxPartitioner(LinesPartitioner):
    compressible = True
    defaults = {"compression": "infer"}
    rule: Any = None
    part_class: Any = None

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        codec = self.codec_of(obj)
        index = load_or_build(obj, codec, self.rule(), ctx)
        cls = self.part_class
        return text_parts(obj, codec, index, ctx,
                          lambda **kw: cls(kw.pop("obj"), kw.pop("part"), kw.pop("parts"),
                                           **{k: v for k, v in kw.items() if k != "header"}))


class FastaPartitioner(_FastxPartitioner):
    """``format="fasta"`` (``.fa``, ``.fasta``, ``.fna``, optionally compressed): parts yield
    ``FastaRecord(name, sequence)``; option ``compression``."""

    name = "fasta"
    extensions = (".fa", ".fasta", ".fna")
    rule = FastaRule
    part_class = FastaPart


class FastqPartitioner(_FastxPartitioner):
    """``format="fastq"`` (``.fq``, ``.fastq``, optionally compressed): parts yield
    ``FastqRecord(name, sequence, quality)``; option ``compression``."""

    name = "fastq"
    extensions = (".fq", ".fastq")
    rule = FastqRule
    part_class = FastqPart
