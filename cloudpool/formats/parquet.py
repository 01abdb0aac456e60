"""Parquet partitioning: row groups, or byte-balanced runs of them, as parts.

This module owns cutting a Parquet object into ``ParquetPart``s and reading one part on
a worker. Listing reads only the object's footer (one ranged GET of the tail, a second
one if the footer is longer than that). A part carries the row-group indices it owns
and where the footer lies, so on a worker it reads the footer (one exact GET) and then
only the column chunks of its row groups and of the projected ``columns`` (pyarrow
decides the ranges and coalesces neighbours; every read goes through
``cloudpool.formats._ranged.RangedFile``, so any storage scheme works and the bytes
can be counted). Row groups are disjoint and each belongs to exactly one part, so every
row of the object is in exactly one part.

How parts are sized: ``chunk_size`` groups consecutive row groups while their
compressed size (of the projected columns) stays within it, a row group larger than
that being a part on its own; ``chunks=N`` cuts the object into at most ``N`` runs of
about equal compressed size; with neither, the automatic part size of ``objects()`` is
used as ``chunk_size``. A row group is never split.

A broken object (too small, no ``PAR1`` magic, an unreadable footer) does not stop the
listing: it becomes one part that raises ``FormatError`` (a ``ValueError``) naming the
object and the problem when it is read, so the other objects' parts still run.
"""
from __future__ import annotations

import struct
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ._ranged import RangedFile, ReadStats
from ._grouping import runs
from .base import ObjectRef, Part, PartitionContext, Partitioner, require

__all__ = ["ParquetPartitioner", "ParquetPart", "MAGIC"]

MAGIC = b"PAR1"
#: First read at listing: the footer of most files fits in it.
TAIL_READ = 64 * 1024


def _pq() -> Any:
    return require("pyarrow.parquet", "parquet", "parquet")


def _metadata_from_footer(footer: bytes) -> Any:
    """FileMetaData from the footer bytes (thrift + length + magic), no other read."""
    pa = require("pyarrow", "parquet", "parquet")
    # read_metadata parses from the end of the buffer: a leading magic is all it needs
    # besides the footer itself (the offsets inside stay absolute, for the real object).
    return _pq().read_metadata(pa.BufferReader(MAGIC + footer))


class ParquetPart(Part):
    """One run of row groups of one Parquet object. Small and picklable; holds no client.

    Attributes (besides ``Part``'s ``url``, ``size``, ``part``, ``parts``...):
    ``row_groups`` (tuple of row-group indices), ``first_row`` and ``num_rows`` (its rows'
    place in the object), ``columns`` (the projection, ``None`` for all), ``footer``
    (``(offset, length)`` of the footer), ``problem`` (set when the object is not readable
    Parquet: reading raises ``FormatError`` with it).

    Iterating yields ``pyarrow.RecordBatch``es; :meth:`table` (and :meth:`read`) returns
    them as one ``pyarrow.Table``. ``stats`` counts the requests and bytes this part read.
    """

    format = "parquet"

    def __init__(self, obj: ObjectRef, part: int, parts: int, *, row_groups: Sequence[int] = (),
                 first_row: int = 0, num_rows: int = 0, footer: Tuple[int, int] = (0, 0),
                 columns: Optional[Sequence[str]] = None, batch_size: int = 65536,
                 problem: Optional[str] = None) -> None:
        super().__init__(obj, part, parts)
        self.row_groups = tuple(row_groups)
        self.first_row = first_row
        self.num_rows = num_rows
        self.footer = tuple(footer)
        self.columns = None if columns is None else tuple(columns)
        self.batch_size = batch_size
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
        return super()._identity() + (self.row_groups, self.columns)

    def __repr__(self) -> str:
        what = f"problem {self.problem!r}" if self.problem else \
            f"row groups {list(self.row_groups)}, rows [{self.first_row}, {self.first_row + self.num_rows})"
        return f"ParquetPart({self.url!r}, part {self.part + 1}/{self.parts}, {what})"

    def _file(self) -> Tuple[Any, RangedFile]:
        """``(ParquetFile, the RangedFile under it)`` from one exact GET of the footer."""
        if self.problem:
            raise self.error(self.problem)
        f = RangedFile(self.url, self.size, storage_options=self.storage_options, stats=self.stats)
        offset, length = self.footer
        footer = f.read_range(offset, offset + length)
        if footer[-4:] != MAGIC:
            raise self.error("no Parquet footer at the end of the object any more (it changed "
                             "after it was listed); list it again")
        try:
            metadata = _metadata_from_footer(footer)
        except OSError as exc:
            raise self.error(f"unreadable Parquet footer ({exc})") from None
        return _pq().ParquetFile(f, metadata=metadata), f

    def _corrupt(self, f: RangedFile, exc: OSError) -> Exception:
        """A storage failure as it is; anything else pyarrow raised as OSError is bad data."""
        if f.storage_error is not None:
            return exc
        return self.error(f"corrupt data in row group(s) {list(self.row_groups)}: {exc}")

    def __iter__(self) -> Iterator[Any]:
        """The part's rows as ``pyarrow.RecordBatch``es, in file order."""
        pf, f = self._file()
        if not self.row_groups:
            return
        try:
            yield from pf.iter_batches(batch_size=self.batch_size, row_groups=list(self.row_groups),
                                       columns=None if self.columns is None else list(self.columns))
        except OSError as exc:
            raise self._corrupt(f, exc) from exc

    def table(self) -> Any:
        """The part's rows as one ``pyarrow.Table`` (an empty one with the schema if none)."""
        pf, f = self._file()
        columns = None if self.columns is None else list(self.columns)
        if not self.row_groups:
            return pf.schema_arrow.empty_table().select(columns or pf.schema_arrow.names)
        try:
            return pf.read_row_groups(list(self.row_groups), columns=columns)
        except OSError as exc:
            raise self._corrupt(f, exc) from exc

    read = table


def _read_footer(f: RangedFile) -> Tuple[Optional[Tuple[int, int]], Optional[str], Any]:
    """``(footer range, None, metadata)`` or ``(None, problem, None)``; reads the tail only."""
    if f.size < 12:
        return None, (f"not a Parquet file: {f.size} bytes is too small to hold the header "
                      f"and footer magic {MAGIC!r}"), None
    tail_lo = max(0, f.size - TAIL_READ)
    tail = f.read_range(tail_lo, f.size)
    if tail[-4:] != MAGIC:
        return None, (f"not a Parquet file or truncated: it does not end with the footer magic "
                      f"{MAGIC!r} (got {tail[-4:]!r}); a file cut short loses its footer, "
                      f"rewrite it"), None
    (length,) = struct.unpack("<i", tail[-8:-4])
    offset = f.size - 8 - length
    if length <= 0 or offset < 4:
        return None, f"corrupt Parquet footer length {length} for an object of {f.size} bytes", None
    if offset >= tail_lo:
        footer = tail[offset - tail_lo:]
    else:
        footer = f.read_range(offset, tail_lo) + tail
    try:
        metadata = _metadata_from_footer(footer)
    except OSError as exc:
        return None, f"unreadable Parquet footer ({exc})", None
    return (offset, length + 8), None, metadata


class ParquetPartitioner(Partitioner):
    """``format="parquet"``: options ``columns`` (projection) and ``batch_size`` (rows per
    record batch when iterating). ``chunk_size`` is compressed bytes of the projected
    columns per part; see the module docstring."""

    name = "parquet"
    extensions = (".parquet", ".parq", ".pq")
    magic = (MAGIC,)
    extra = "parquet"
    requires = ("pyarrow",)
    defaults = {"columns": None, "batch_size": 65536}

    @classmethod
    def sniff(cls, head: bytes, key: str) -> bool:
        """``PAR1`` at the start; an object short enough to be all in ``head`` must also
        be a whole Parquet file (footer magic and a footer that parses), so that short
        text which happens to start with ``PAR1`` stays text."""
        from . import SNIFF_BYTES

        if not super().sniff(head, key):
            return False
        if len(head) >= SNIFF_BYTES:
            return True
        if len(head) < 12 or head[-4:] != MAGIC:
            return False
        (length,) = struct.unpack("<i", head[-8:-4])
        if not 0 < length <= len(head) - 12:
            return False
        try:
            _metadata_from_footer(head[-8 - length:])
        except ImportError:
            return True  # pyarrow missing: the structure checked out; parts() will say so
        except (OSError, ValueError):
            return False
        return True

    def check_options(self) -> None:
        columns = self.options["columns"]
        if columns is not None and (isinstance(columns, (str, bytes))
                                    or not all(isinstance(c, str) for c in columns)):
            raise TypeError(f"format 'parquet' option columns must be a list of column names, "
                            f"not {columns!r}")
        if columns is not None:
            self.options["columns"] = tuple(columns)
        size = self.options["batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"format 'parquet' option batch_size must be a positive int, not {size!r}")

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        columns = self.options["columns"]
        batch_size = self.options["batch_size"]
        f = RangedFile(obj.url, obj.size, storage_options=obj.storage_options)
        footer, problem, md = _read_footer(f)
        if problem is not None:
            return [ParquetPart(obj, 0, 1, columns=columns, batch_size=batch_size, problem=problem)]
        assert footer is not None and md is not None
        names = md.schema.to_arrow_schema().names
        if columns is not None:
            missing = [c for c in columns if c not in names]
            if missing:
                # A user error, not bad data: every part would fail, so say it now.
                raise ValueError(f"{obj.url}: no column(s) {missing} in this Parquet file; it "
                                 f"has {names}")
        wanted = None if columns is None else set(columns)
        weights, starts = [], [0]
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            weights.append(sum(rg.column(j).total_compressed_size for j in range(rg.num_columns)
                               if wanted is None or rg.column(j).path_in_schema.split(".")[0] in wanted))
            starts.append(starts[-1] + rg.num_rows)
        groups = runs(weights, ctx)
        return [ParquetPart(obj, k, len(groups), row_groups=range(i, j), first_row=starts[i],
                            num_rows=starts[j] - starts[i], footer=footer, columns=columns,
                            batch_size=batch_size)
                for k, (i, j) in enumerate(groups)]
