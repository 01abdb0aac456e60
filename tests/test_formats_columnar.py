"""Parquet partitioning (``cloudpool.formats.parquet``) on local disk and on S3 (moto).

Files are written by pyarrow itself with chosen row-group layouts; every check compares
with ``pyarrow.parquet.read_table`` of the whole object in this process. Bytes are
counted by the parts' own ``stats`` (every read goes through one ranged GET).
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import os
import pickle
import unittest
from typing import Any, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpool import CloudPoolExecutor, objects
from cloudpool.formats import FormatError
from cloudpool.formats.parquet import ParquetPart

try:
    from tests._format_stores import LocalStore, S3Store
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _format_stores import LocalStore, S3Store  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parquet_bytes(n: int, row_group_size: int, *, wide: bool = False, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    cols = {"id": pa.array(np.arange(n, dtype=np.int64)),
            "x": pa.array(rng.random(n))}
    if wide:  # two big columns a projection should never fetch
        cols["pad1"] = pa.array(rng.integers(0, 2 ** 62, n))
        cols["pad2"] = pa.array([f"{i:08d}-{rng.integers(1 << 30)}" for i in range(n)])
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, row_group_size=max(1, row_group_size), compression="none")
    return buf.getvalue()


def column_sum(part: ParquetPart) -> float:
    """Runs on a worker: the sum of column x over the part's rows."""
    return float(sum(pc.sum(batch.column("x")).as_py() or 0.0 for batch in part))


class ParquetContract:
    """Checks every store runs (mixed with a store and ``unittest.TestCase``)."""

    examples = 15

    def parts(self, url: Any, **kw: Any) -> List[ParquetPart]:
        return list(objects(url, format="parquet", storage_options=self.options, **kw))

    def whole(self, data: bytes) -> pa.Table:
        return pq.read_table(pa.BufferReader(data))

    def test_every_row_in_exactly_one_part(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(n=st.integers(0, 3000), rg=st.integers(1, 1200),
               how=st.sampled_from(["each", "chunks", "chunk_size"]), k=st.integers(1, 9))
        def check(n: int, rg: int, how: str, k: int) -> None:
            data = parquet_bytes(n, rg)
            url = self.put("t.parquet", data)
            kw = {"each": {"chunk_size": 1}, "chunks": {"chunks": k},
                  "chunk_size": {"chunk_size": k * 4000}}[how]
            parts = self.parts(url, **kw)
            md = pq.read_metadata(pa.BufferReader(data))
            self.assertEqual(sorted(g for p in parts for g in p.row_groups), list(range(md.num_row_groups)))
            if how == "chunks":
                self.assertLessEqual(len(parts), max(1, k))
            tables = [pickle.loads(pickle.dumps(p)).table() for p in parts]
            got = pa.concat_tables(tables)
            self.assertTrue(got.equals(self.whole(data)), (n, rg, how, k))
            ids = got.column("id").to_pylist()
            self.assertEqual(ids, list(range(n)))  # each row once, in order
            for p, t in zip(parts, tables):
                self.assertEqual((p.num_rows, t.num_rows), (t.num_rows, p.num_rows))
                if t.num_rows:
                    self.assertEqual(t.column("id")[0].as_py(), p.first_row)

        check()

    def test_projection_reads_only_footer_and_own_column_chunks(self) -> None:
        data = parquet_bytes(40000, 5000, wide=True)
        url = self.put("wide.parquet", data)
        md = pq.read_metadata(pa.BufferReader(data))
        parts = self.parts(url, columns=["x"], chunks=3)
        self.assertEqual(len(parts), 3)
        for p in parts:
            clone = pickle.loads(pickle.dumps(p))
            table = clone.table()
            self.assertEqual(table.column_names, ["x"])
            own = sum(md.row_group(g).column(1).total_compressed_size for g in p.row_groups)
            everything = sum(md.row_group(g).total_byte_size for g in p.row_groups)
            footer = p.footer[1]
            # the footer (one exact GET) + its x chunks; pyarrow may coalesce a small gap
            self.assertGreaterEqual(clone.stats.bytes, own)
            self.assertLessEqual(clone.stats.bytes, footer + own + 8 * 1024 * len(p.row_groups), p)
            self.assertLess(clone.stats.bytes, everything / 2)
            self.assertLessEqual(clone.stats.requests, 1 + len(p.row_groups))
        expected = self.whole(data).column("x")
        got = pa.concat_arrays([c for p in parts for c in p.table().column("x").chunks])
        self.assertTrue(got.equals(pa.concat_arrays(expected.chunks)))

    def test_iteration_yields_record_batches(self) -> None:
        data = parquet_bytes(1000, 300)
        url = self.put("b.parquet", data)
        batches = [b for p in self.parts(url, chunk_size=1) for b in p]
        self.assertTrue(all(isinstance(b, pa.RecordBatch) for b in batches))
        self.assertEqual(sum(b.num_rows for b in batches), 1000)

    def test_one_row_group_and_empty_file(self) -> None:
        one = self.put("one.parquet", parquet_bytes(500, 10_000))
        parts = self.parts(one, chunks=8)
        self.assertEqual(len(parts), 1)
        self.assertEqual(parts[0].table().num_rows, 500)
        empty = self.put("empty.parquet", parquet_bytes(0, 10))
        parts = self.parts(empty, chunks=4)
        self.assertEqual(sum(p.table().num_rows for p in parts), 0)
        self.assertEqual(parts[0].table().column_names, ["id", "x"])

    def test_unknown_column_is_named_at_listing(self) -> None:
        url = self.put("c.parquet", parquet_bytes(10, 5))
        with self.assertRaisesRegex(ValueError, r"no column\(s\) \['nope'\].*'id', 'x'"):
            self.parts(url, columns=["nope"])

    def test_file_without_footer_fails_on_its_own_part_only(self) -> None:
        good = parquet_bytes(3000, 1000)
        good_url = self.put("good.parquet", good)
        bad_url = self.put("cut.parquet", good[:-50])       # footer cut off
        tiny_url = self.put("tiny.parquet", b"PAR1")        # smaller than header + footer
        parts = self.parts([good_url, bad_url, tiny_url], chunk_size=1)
        self.assertEqual(len(parts), 5)
        for url, what in ((bad_url, "footer magic"), (tiny_url, "too small")):
            part = next(p for p in parts if p.url.endswith(url))
            with self.assertRaises(FormatError) as ctx:  # a ValueError
                part.table()
            self.assertIn(url, str(ctx.exception))
            self.assertIn(what, str(ctx.exception))
        with CloudPoolExecutor(2) as ex:
            futures = {ex.submit(column_sum, p): p for p in parts}
            cf.wait(futures)
        ok = [f.result() for f, p in futures.items() if p.url.endswith(good_url)]
        self.assertEqual(len(ok), 3)  # no other part's result lost
        self.assertAlmostEqual(sum(ok), pc.sum(self.whole(good).column("x")).as_py())
        failed = [f.exception() for f, p in futures.items() if not p.url.endswith(good_url)]
        self.assertTrue(all(isinstance(e, ValueError) for e in failed), failed)
        self.assertTrue(all("format 'parquet'" in str(e) for e in failed), failed)

    def test_detected_by_magic_bytes_without_format(self) -> None:
        # A misleading extension: the magic bytes decide.
        url = self.put("data.bin", parquet_bytes(10, 5))
        parts = list(objects(url, storage_options=self.options))
        self.assertTrue(parts and all(isinstance(p, ParquetPart) for p in parts), parts)

    def test_corrupt_row_group_fails_on_its_own_part(self) -> None:
        data = bytearray(parquet_bytes(4000, 1000))
        md = pq.read_metadata(pa.BufferReader(bytes(data)))
        at = md.row_group(2).column(1).data_page_offset
        data[at:at + 12] = b"\xff" * 12  # the page header of x in row group 2
        url = self.put("corrupt.parquet", bytes(data))
        parts = self.parts(url, chunk_size=1)
        self.assertEqual(len(parts), 4)
        for p in parts:
            if p.row_groups == (2,):
                with self.assertRaisesRegex(FormatError, r"part 3/4.*corrupt data in row group\(s\) \[2\]"):
                    p.table()
                with self.assertRaises(FormatError):
                    list(p)
            else:
                self.assertEqual(p.table().num_rows, 1000)

    def test_end_to_end_column_sum_through_the_executor(self) -> None:
        data = parquet_bytes(20000, 2500, seed=3)
        url = self.put("sum.parquet", data)
        with CloudPoolExecutor(2) as ex:
            sums = list(ex.map(column_sum, self.parts(url, columns=["x"], chunk_size=60_000)))
        self.assertGreater(len(sums), 1)
        self.assertAlmostEqual(sum(sums), pc.sum(self.whole(data).column("x")).as_py(), places=6)


class LocalParquetTests(LocalStore, ParquetContract, unittest.TestCase):
    pass


class S3ParquetTests(S3Store, ParquetContract, unittest.TestCase):
    examples = 5


if __name__ == "__main__":
    unittest.main()


class MissingDependencyTests(unittest.TestCase):
    """Each binary format names its extra when its library is missing (simulated by
    blocking the import in a child interpreter, so this process keeps its modules)."""

    def test_each_format_names_its_extra(self) -> None:
        import subprocess
        import sys

        cases = {"parquet": ("pyarrow", "parquet"), "cog": ("rasterio", "geo"),
                 "lidar": ("laspy", "lidar"), "imzml": ("pyimzml", "imzml")}
        for fmt, (module, extra) in cases.items():
            code = (f"import sys; sys.modules[{module!r}] = None\n"
                    f"from cloudpool import objects\n"
                    f"try:\n    objects('x.bin', format={fmt!r})\n"
                    f"except ImportError as e:\n    print(type(e).__name__, e)\n")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
            self.assertIn("MissingDependencyError", out.stdout, (fmt, out.stderr))
            self.assertIn(f"pip install 'cloudpool[{extra}]'", out.stdout, fmt)
