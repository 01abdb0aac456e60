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

How parts are sized: ``chunk_size`` groups consecutive row groups until their
compressed size (of the projected columns) reaches it, a row group larger than that
being a part on its own; ``chunks=N`` cuts the object into at most ``N`` runs of about
equal compressed size; with neither, each row group is a part.

A broken object (too small, no ``PAR1`` magic, an unreadable footer) does not stop the
listing: it becomes one part that raises ``ValueError`` naming the object and the
problem when it is read, so the other objects' parts still run.
"""
from __future__ import annotations

import struct
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ._ranged import RangedFile, ReadStats

__all__ = ["ParquetPart", "parquet_parts", "MAGIC"]

MAGIC = b"PAR1"
#: First read at listing: the footer of most files fits in it.
TAIL_READ = 64 * 1024


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("format='parquet' needs pyarrow: pip install 'cloudpool[parquet]'") from None
    return pq


def _metadata_from_footer(footer: bytes) -> Any:
    """FileMetaData from the footer bytes (thrift + length + magic), no other read."""
    import pyarrow as pa

    # read_metadata parses from the end of the buffer: a leading magic is all it needs
    # besides the footer itself (the offsets inside stay absolute, for the real object).
    return _pq().read_metadata(pa.BufferReader(MAGIC + footer))


class ParquetPart:
    """One run of row groups of one Parquet object. Small and picklable; holds no client.

    Attributes: ``url``, ``size`` (object size at listing), ``part``/``parts`` (index and
    count among the object's parts), ``row_groups`` (tuple of row-group indices),
    ``first_row`` and ``num_rows`` (its rows' place in the object), ``columns`` (the
    projection, ``None`` for all), ``footer`` (``(offset, length)`` of the footer),
    ``error`` (set when the object is not readable Parquet: reading raises it).

    Iterating yields ``pyarrow.RecordBatch``es; :meth:`table` returns them as one
    ``pyarrow.Table``. ``stats`` counts the requests and bytes this part has read.
    """

    format = "parquet"

    def __init__(self, url: str, size: int, part: int, parts: int, row_groups: Sequence[int],
                 first_row: int, num_rows: int, footer: Tuple[int, int], *,
                 columns: Optional[Sequence[str]] = None, batch_size: int = 65536,
                 storage_options: Optional[Mapping[str, Any]] = None,
                 error: Optional[str] = None) -> None:
        self.url = url
        self.size = size
        self.part = part
        self.parts = parts
        self.row_groups = tuple(row_groups)
        self.first_row = first_row
        self.num_rows = num_rows
        self.footer = tuple(footer)
        self.columns = None if columns is None else tuple(columns)
        self.batch_size = batch_size
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
            f"row groups {list(self.row_groups)}, rows [{self.first_row}, {self.first_row + self.num_rows})"
        return f"ParquetPart({self.url!r}, part {self.part + 1}/{self.parts}, {what})"

    def _file(self) -> Any:
        if self.error:
            raise ValueError(f"{self.url}: {self.error}")
        f = RangedFile(self.url, self.size, storage_options=self.storage_options, stats=self.stats)
        offset, length = self.footer
        footer = f.read_range(offset, offset + length)
        if footer[-4:] != MAGIC:
            raise ValueError(f"{self.url}: no Parquet footer at the end of the object any more "
                             f"(it changed after it was listed); list it again")
        try:
            metadata = _metadata_from_footer(footer)
        except OSError as exc:
            raise ValueError(f"{self.url}: unreadable Parquet footer ({exc})") from None
        return _pq().ParquetFile(f, metadata=metadata)

    def __iter__(self) -> Iterator[Any]:
        """The part's rows as ``pyarrow.RecordBatch``es, in file order."""
        pf = self._file()
        if not self.row_groups:
            return
        yield from pf.iter_batches(batch_size=self.batch_size, row_groups=list(self.row_groups),
                                   columns=None if self.columns is None else list(self.columns))

    def table(self) -> Any:
        """The part's rows as one ``pyarrow.Table`` (an empty one with the schema if none)."""
        pf = self._file()
        columns = None if self.columns is None else list(self.columns)
        if not self.row_groups:
            return pf.schema_arrow.empty_table().select(columns or pf.schema_arrow.names)
        return pf.read_row_groups(list(self.row_groups), columns=columns)

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


def _runs(weights: Sequence[int], chunk_size: Optional[int], chunks: Optional[int]) -> List[List[int]]:
    """Consecutive row-group index runs: by ``chunk_size`` bytes, into ``chunks`` runs, or one each."""
    n = len(weights)
    if n == 0:
        return [[]]
    if chunk_size is not None:
        runs: List[List[int]] = [[]]
        acc = 0
        for i, w in enumerate(weights):
            if runs[-1] and acc + w > chunk_size:
                runs.append([])
                acc = 0
            runs[-1].append(i)
            acc += w
        return runs
    if chunks is None or chunks >= n:
        return [[i] for i in range(n)]
    # Cut where the cumulative size crosses k/chunks of the total, never leaving a run empty.
    if not sum(weights):
        weights = [1] * n  # all-empty row groups: balance by count
    total = sum(weights)
    cum = 0
    cuts = [0]
    for i, w in enumerate(weights):
        cum += w
        k = len(cuts)
        if k < chunks and cum * chunks >= k * total and i + 1 < n:
            cuts.append(i + 1)
    cuts.append(n)
    return [list(range(cuts[k], cuts[k + 1])) for k in range(len(cuts) - 1)]


def parquet_parts(url: str, size: Optional[int] = None, *, chunk_size: Optional[int] = None,
                  chunks: Optional[int] = None, columns: Optional[Sequence[str]] = None,
                  batch_size: int = 65536, storage_options: Optional[Mapping[str, Any]] = None,
                  stats: Optional[ReadStats] = None) -> List[ParquetPart]:
    """The parts of one Parquet object (reads its footer only)."""
    options = dict(storage_options or {})
    f = RangedFile(url, size, storage_options=options, stats=stats)
    footer, problem, md = _read_footer(f)
    if problem is not None:
        return [ParquetPart(url, f.size, 0, 1, (), 0, 0, (0, 0), columns=columns,
                            batch_size=batch_size, storage_options=options, error=problem)]
    assert footer is not None and md is not None
    names = set(md.schema.to_arrow_schema().names)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{url}: no column(s) {missing} in this Parquet file; it has "
                             f"{sorted(names)}")
    wanted = None if columns is None else set(columns)
    weights = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        weights.append(sum(rg.column(j).total_compressed_size for j in range(rg.num_columns)
                           if wanted is None or rg.column(j).path_in_schema.split(".")[0] in wanted))
    runs = _runs(weights, chunk_size, chunks)
    starts = [0]
    for i in range(md.num_row_groups):
        starts.append(starts[-1] + md.row_group(i).num_rows)
    parts = []
    for k, run in enumerate(runs):
        first = starts[run[0]] if run else 0
        rows = sum(md.row_group(i).num_rows for i in run)
        parts.append(ParquetPart(url, f.size, k, len(runs), run, first, rows, footer,
                                 columns=columns, batch_size=batch_size, storage_options=options))
    return parts
