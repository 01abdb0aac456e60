"""Tests of text formats (``cloudpool.formats``): compressed lines, CSV/TSV, detection, the index
cache, bad input, and ``map`` / ``map_reduce`` end to end.

The contract (``TextFormatsContract``) runs on local disk and on S3 (the moto server). Its
property tests compare with the stdlib on generated data: ``gzip``/``bz2`` to compress in
varied member layouts, and ``csv.reader`` over the whole object as the reference rows.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import os
import pickle
import random
import shutil
import tempfile
import unittest
import uuid
from typing import Any, Dict, List
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpool import CloudPoolExecutor, objects
from cloudpool.errors import MissingDependencyError
from cloudpool.formats import FormatError, IndexCache, detect, formats
from cloudpool.formats.csv import CsvPart
from cloudpool.formats.text import LinesPart
from cloudpool.objects import ObjectPart
from cloudpool.storage import clear_cache, storage_for

try:
    import zstandard
except ImportError:  # pragma: no cover - the test extra installs it
    zstandard = None


# ---------------------------------------------------------------------------- data makers
def lines_of(data: bytes) -> List[bytes]:
    """The reference split: records end after each b"\\n" (the last may lack it)."""
    return data.splitlines(keepends=True) if b"\r" not in data else \
        [x for x in data.replace(b"\n", b"\n\0").split(b"\0") if x]


def gzip_layout(data: bytes, cuts: List[int]) -> bytes:
    """``data`` as gzip members cut at the given decompressed offsets."""
    edges = [0] + sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    return b"".join(gzip.compress(data[a:b], mtime=0) for a, b in zip(edges, edges[1:]))


def bz2_layout(data: bytes, cuts: List[int]) -> bytes:
    edges = [0] + sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    return b"".join(bz2.compress(data[a:b]) for a, b in zip(edges, edges[1:]))


def zstd_layout(data: bytes, cuts: List[int]) -> bytes:
    edges = [0] + sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    c = zstandard.ZstdCompressor()
    return b"".join(c.compress(data[a:b]) for a, b in zip(edges, edges[1:]))


LINE_TOKENS = [b"a", b"bb", b"\n", b"\n\n", b"xyz ", b"\r\n", b" "]


def text_data() -> st.SearchStrategy[bytes]:
    token = st.one_of(st.sampled_from(LINE_TOKENS), st.integers(0, 80).map(lambda n: b"y" * n))
    return st.lists(token, max_size=40).map(b"".join)


FIELD = st.one_of(
    st.sampled_from(["", "a", "b c", "x,y", 'say "hi"', "line1\nline2", "\n", '"', "5\" tall",
                     "\r\n", "é", "tab\there"]),
    st.text(alphabet='ab,"\n ', max_size=6),
)


def csv_bytes(rows: List[List[str]], delimiter: str = ",") -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def reference_rows(data: bytes, delimiter: str = ",") -> List[List[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter))


# ---------------------------------------------------------------------------- the contract
class TextFormatsContract:
    base: str
    options: Dict[str, Any] = {}
    examples = 25
    quoted_chunks = range(1, 40)

    def put(self, name: str, data: bytes) -> str:
        url = self.base + name
        backend, key = storage_for(url, self.options)
        backend.put(key, data)
        return url

    def parts(self, url: Any, **kw: Any) -> List[Any]:
        kw.setdefault("index_cache", self.cache_url)
        return list(objects(url, storage_options=self.options, **kw))

    def setUp(self) -> None:
        self.cache_dir = tempfile.mkdtemp(prefix="cloudpool-index-")
        self.addCleanup(shutil.rmtree, self.cache_dir, True)
        self.cache_url = self.cache_dir

    def check_lines(self, data: bytes, parts: List[Any]) -> None:
        clones = [pickle.loads(pickle.dumps(p)) for p in parts]
        self.assertEqual([r for p in clones for r in p], lines_of(data))
        self.assertEqual(b"".join(p.read() for p in parts), data)
        self.assertEqual([p.part for p in parts], list(range(len(parts))))
        self.assertTrue(all(p.parts == len(parts) for p in parts))

    # -- compressed lines
    def test_gzip_lines_property(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(text_data(), st.integers(1, 200), st.lists(st.integers(0, 2000), max_size=6),
               st.booleans())
        def check(data: bytes, chunk: int, cuts: List[int], at_bounds: bool) -> None:
            if at_bounds:  # members that end exactly at part boundaries
                cuts = cuts + list(range(chunk, len(data), chunk))
            url = self.put(f"{uuid.uuid4().hex[:8]}.txt.gz", gzip_layout(data, cuts))
            parts = self.parts(url, chunk_size=chunk)
            self.assertTrue(all(isinstance(p, LinesPart) for p in parts))
            self.check_lines(data, parts)
        check()

    def test_bzip2_and_zstd_lines(self) -> None:
        rng = random.Random(7)
        data = b"".join(b"%d %s\n" % (i, b"w" * rng.randint(0, 30)) for i in range(3000))
        layouts = [("x.txt.bz2", bz2_layout)]
        if zstandard is not None:
            layouts.append(("x.txt.zst", zstd_layout))
        for name, layout in layouts:
            for cuts in ([], [1000, 5000, 20000], list(range(0, len(data), 4096))):
                with self.subTest(name=name, cuts=len(cuts)):
                    url = self.put(uuid.uuid4().hex[:6] + name, layout(data, cuts))
                    for chunk in (1, 999, 10 ** 6):
                        self.check_lines(data, self.parts(url, chunk_size=chunk))

    def test_record_larger_than_chunk_and_tiny_objects(self) -> None:
        big = b"head\n" + b"z" * 5000 + b"\ntail"
        for data in (big, b"", b"x", b"\n", b"\n\n\n"):
            with self.subTest(size=len(data)):
                url = self.put(uuid.uuid4().hex[:8] + ".gz", gzip_layout(data, [7, 2500]))
                parts = self.parts(url, chunk_size=100)
                self.assertGreaterEqual(len(parts), 1)
                self.check_lines(data, parts)
        # An empty file (not even a gzip header) is plain lines: one empty part.
        url = self.put(uuid.uuid4().hex[:8] + ".gz", b"")
        parts = self.parts(url, chunk_size=10)
        self.assertEqual(len(parts), 1)
        self.assertEqual(list(parts[0]), [])

    def test_single_member_gzip_splits_with_a_zran_index(self) -> None:
        import cloudpool.formats.text as text
        rng = random.Random(5)
        data = b"".join(b"%d %s\n" % (i, b"q" * rng.randint(0, 40)) for i in range(40000))
        url = self.put("one.txt.gz", gzip.compress(data, mtime=0))
        with mock.patch.object(text, "ZRAN_MIN_SPACING", 64 * 1024):
            parts = self.parts(url, chunk_size=256 * 1024)
            self.assertGreater(len(parts), 3)  # not one part: seek points inside the member
            self.assertTrue(all(p.zran is not None for p in parts))
            self.check_lines(data, parts)
            again = self.parts(url, chunk_size=256 * 1024)  # index from the cache
            self.assertEqual(again, parts)
        # Without a cache there is nowhere to keep the index: one part, still right.
        single = self.parts(url, chunk_size=256 * 1024, index_cache=False)
        self.assertEqual(len(single), 1)
        self.check_lines(data, single)

    def test_chunks_mode_and_bgzf_like_layout(self) -> None:
        data = b"".join(b"line %06d\n" % i for i in range(20000))
        url = self.put("bgzf.gz", gzip_layout(data, list(range(0, len(data), 65280))))
        parts = self.parts(url, chunks=4)
        self.assertEqual(len(parts), 4)
        self.check_lines(data, parts)

    # -- CSV
    def test_csv_property(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(st.lists(FIELD, min_size=1, max_size=4), min_size=1, max_size=25),
               st.integers(1, 120), st.sampled_from(["plain", "gzip", "multi"]),
               st.sampled_from([",", "\t"]))
        def check(rows: List[List[str]], chunk: int, how: str, delim: str) -> None:
            data = csv_bytes(rows, delim)
            blob = {"plain": data, "gzip": gzip.compress(data, mtime=0),
                    "multi": gzip_layout(data, list(range(0, len(data), 37)))}[how]
            name = uuid.uuid4().hex[:8] + (".tsv" if delim == "\t" else ".csv") + \
                ("" if how == "plain" else ".gz")
            url = self.put(name, blob)
            parts = self.parts(url, chunk_size=chunk, format="tsv" if delim == "\t" else "csv")
            ref = reference_rows(data, delim)
            clones = [pickle.loads(pickle.dumps(p)) for p in parts]
            self.assertEqual([r for p in clones for r in p], ref[1:])
            for p in parts:
                self.assertEqual(p.header, ref[0])
            # Detection leaves CSV to format= (lines, as before formats existed).
            detected = self.parts(url, chunk_size=chunk)
            self.assertEqual(b"".join(r for p in detected for r in p), data)
        check()

    def test_quoted_newlines_at_every_boundary(self) -> None:
        rows = [["id", "text"]] + [[str(i), "a\nb\n" * (i % 4) + "end"] for i in range(60)]
        data = csv_bytes(rows)
        ref = reference_rows(data)
        url = self.put("quoted.csv", data)
        for chunk in self.quoted_chunks:
            parts = self.parts(url, chunk_size=chunk, format="csv")
            self.assertEqual([r for p in parts for r in p], ref[1:], chunk)

    def test_csv_tiny_objects(self) -> None:
        for data in (b"", b"a", b"h\n", b"h1,h2\nx,y", b'h\n"a\nb"', b"\n\n"):
            for blob, suffix in ((data, ".csv"), (gzip.compress(data), ".csv.gz")):
                with self.subTest(data=data, suffix=suffix):
                    url = self.put(uuid.uuid4().hex[:6] + suffix, blob)
                    parts = self.parts(url, chunk_size=1, format="csv")
                    ref = reference_rows(data)
                    self.assertGreaterEqual(len(parts), 1)
                    self.assertEqual([r for p in parts for r in p], ref[1:])
                    self.assertTrue(all(p.header == (ref[0] if ref else None) for p in parts))

    def test_csv_without_header_and_options(self) -> None:
        data = b"a;b\n'x;y';2\n"
        url = self.put("semi.csv", data)
        parts = self.parts(url, chunk_size=3, format="csv", delimiter=";", quotechar="'",
                           header=False)
        self.assertEqual([r for p in parts for r in p], [["a", "b"], ["x;y", "2"]])
        self.assertIsNone(parts[0].header)

    # -- bad input
    def test_truncated_gzip_fails_on_the_last_part_only(self) -> None:
        data = b"".join(b"row %05d\n" % i for i in range(5000))
        blob = gzip_layout(data, list(range(0, len(data), 4000)))
        url = self.put("trunc.txt.gz", blob[:len(blob) - 50])  # cut inside the last member
        parts = self.parts(url, chunk_size=4096)
        self.assertGreater(len(parts), 2)
        good = [list(p) for p in parts[:-1]]
        got = b"".join(r for rs in good for r in rs)
        self.assertTrue(data.startswith(got))
        with self.assertRaises(FormatError) as cm:
            list(parts[-1])
        self.assertIn(url, str(cm.exception))
        self.assertIn("truncated gzip", str(cm.exception))

    def test_unterminated_quote_fails_on_its_part_only(self) -> None:
        head = csv_bytes([["k", "v"]] + [[str(i), "ok"] for i in range(200)])
        data = head + b'201,"never closed\n' + b"202,more\n" * 50
        url = self.put("bad.csv", data)
        parts = self.parts(url, chunk_size=300, format="csv")
        bad_at = len(head)
        good, failed = [], []
        for p in parts:
            try:
                for row in p:  # the failing part yields its good rows first
                    good.append(row)
            except FormatError as exc:
                self.assertIn(url, str(exc))
                self.assertIn("unterminated quote", str(exc))
                self.assertTrue(p.start <= bad_at < p.end, (p, bad_at))
                failed.append(p)
        self.assertEqual(len(failed), 1)
        self.assertEqual(good, [[str(i), "ok"] for i in range(200)])

    # -- detection, options, cache
    def test_detection(self) -> None:
        data = b"a,b\n1,2\n"
        cases = {"d.csv.gz": gzip.compress(data), "d.log.gz": gzip.compress(data),
                 "d.csv": data, "d.txt": data, "noext": gzip.compress(data),
                 "d.tsv.bz2": bz2.compress(data)}
        kinds = {}
        for name, blob in cases.items():
            url = self.put(uuid.uuid4().hex[:6] + name, blob)
            kinds[name] = type(self.parts(url)[0])
        self.assertEqual(kinds, {"d.csv.gz": LinesPart, "d.log.gz": LinesPart, "d.csv": ObjectPart,
                                 "d.txt": ObjectPart, "noext": LinesPart,
                                 "d.tsv.bz2": LinesPart})
        # Text that starts like gzip but is not gzip stays plain lines.
        for blob in (b"\x1f\x8b\x08", b"\x1f\x8b\x08 not really gzip\n" * 40):
            url = self.put(uuid.uuid4().hex[:6] + ".txt", blob)
            parts = self.parts(url)
            self.assertIsInstance(parts[0], ObjectPart)
            self.assertEqual(b"".join(p.read() for p in parts), blob)

    def test_index_is_cached_and_invalidated(self) -> None:
        data = b"".join(b"%d\n" % i for i in range(3000))
        url = self.put("cached.gz", gzip_layout(data, [1000, 9000]))
        cache = IndexCache(self.cache_url, self.options)
        first = list(objects(url, storage_options=self.options, chunk_size=500, index_cache=cache))
        self.assertEqual((cache.hits, cache.misses), (0, 1))
        again = list(objects(url, storage_options=self.options, chunk_size=500, index_cache=cache))
        self.assertEqual((cache.hits, cache.misses), (1, 1))
        self.assertEqual(first, again)
        changed = data + b"more\n" * 10
        self.put("cached.gz", gzip_layout(changed, [100]))
        parts = list(objects(url, storage_options=self.options, chunk_size=500, index_cache=cache))
        self.assertEqual(cache.misses, 2)
        self.check_lines(changed, parts)


class LocalTextFormatsTests(TextFormatsContract, unittest.TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-formats-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.base = "file://" + self.tmp + "/"


class S3TextFormatsTests(TextFormatsContract, unittest.TestCase):
    examples = 6
    quoted_chunks = (1, 5, 17, 33)

    @classmethod
    def setUpClass(cls) -> None:
        from tests.servers import moto_s3
        server = moto_s3()
        env = dict(server.env)
        env.pop("AWS_ENDPOINT_URL", None)
        cls._env = mock.patch.dict(os.environ, env)
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "formats-" + uuid.uuid4().hex[:8]
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=cls.bucket)
        clear_cache()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.stop()
        clear_cache()

    def setUp(self) -> None:
        super().setUp()
        self.base = f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}/"
        # The index cache lives in the bucket too (a user-given cache URL).
        self.cache_url = f"s3://{self.bucket}/index-{uuid.uuid4().hex[:6]}/"


# ---------------------------------------------------------------------------- API errors
class FormatArgumentTests(unittest.TestCase):
    def test_unknown_format_names_the_available_ones(self) -> None:
        with self.assertRaises(ValueError) as cm:
            objects("/tmp/x", format="cvs")
        msg = str(cm.exception)
        self.assertIn("'csv'", msg)       # did you mean
        for name in ("lines", "gzip", "csv", "tsv", "zstd"):
            self.assertIn(name, msg)

    def test_bad_options(self) -> None:
        with self.assertRaises(TypeError) as cm:
            objects("/tmp/x", format="csv", delimeter=";")
        self.assertIn("delimeter", str(cm.exception))
        self.assertIn("delimiter", str(cm.exception))
        with self.assertRaises(TypeError):
            objects("/tmp/x", delimiter=";")  # options need format=
        with self.assertRaises(ValueError):
            objects("/tmp/x", format="csv", delimiter=";;")

    def test_missing_dependency_names_the_extra(self) -> None:
        cls = formats.get("zstd")
        with mock.patch.object(cls, "requires", ("cloudpool_no_such_module",)):
            with self.assertRaises(MissingDependencyError) as cm:
                objects("/tmp/x", format="zstd")
        self.assertIn("cloudpool[zstd]", str(cm.exception))

    def test_detect_prefers_magic_over_extension(self) -> None:
        gz = gzip.compress(b"a,b\n")
        self.assertEqual(detect(gz, "data.txt"), "gzip")
        self.assertEqual(detect(gz, "data.csv.gz"), "gzip")
        self.assertEqual(detect(bz2.compress(b"x"), "x"), "bzip2")
        self.assertEqual(detect(b"a,b\n", "x.tsv"), "lines")
        self.assertEqual(detect(b"\x1f\x8b\x08\x00", "x.gz"), "lines")  # not a whole stream
        self.assertEqual(detect(b"hello", "x.bin"), "lines")


# ---------------------------------------------------------------------------- end to end
def count_words(part: Any) -> int:
    return sum(len(line.split()) for line in part)


def count_rows(part: Any) -> int:
    return sum(1 for _row in part)


def sum_column(part: Any) -> float:
    i = part.header.index("value")
    return sum(float(row[i]) for row in part)


def total(values: List[Any]) -> Any:
    return sum(values)


def fail_or_count(part: Any) -> Any:
    try:
        return count_rows(part)
    except FormatError as exc:
        return f"error: {exc}"


class EndToEndMixin:
    executor_storage: str

    def make_data(self) -> Dict[str, bytes]:
        rng = random.Random(3)
        text = b"".join(b" ".join(b"w%d" % rng.randint(0, 99) for _ in range(rng.randint(0, 12)))
                        + b"\n" for _ in range(4000))
        rows = [["name", "value"]] + [[f"n{i}\nx", str(i)] for i in range(2000)]
        return {"t/a.txt.gz": gzip_layout(text, list(range(0, len(text), 5000))),
                "t/b.txt.bz2": bz2.compress(text),
                "c/one.csv.gz": gzip.compress(csv_bytes(rows)), "c/two.csv": csv_bytes(rows),
                "raw": text}

    def test_map_and_map_reduce(self) -> None:
        blobs = self.make_data()
        for name, blob in blobs.items():
            self.put(name, blob)
        text = blobs["raw"]
        words = len(text.split())
        opts = dict(storage_options=self.options, index_cache=self.cache_url)
        with CloudPoolExecutor(2, storage=self.executor_storage) as ex:
            got = list(ex.map(count_words, objects(self.base + "t/", chunk_size=20000, **opts)))
            self.assertEqual(sum(got), 2 * words)
            self.assertGreater(len(got), 4)
            sums = ex.map_reduce(sum_column, objects(self.base + "c/", chunk_size=5000, format="csv",
                                                     **opts),
                                 total, per_object=True)
            self.assertEqual(list(sums), [self.base + "c/one.csv.gz", self.base + "c/two.csv"])
            self.assertEqual(list(sums.values()), [float(sum(range(2000)))] * 2)
            self.assertEqual(ex.map_reduce(count_words, objects(self.base + "raw", chunks=3, **opts),
                                           total), words)

    def test_bad_part_does_not_lose_other_results(self) -> None:
        data = csv_bytes([["k"]] + [[str(i)] for i in range(500)]) + b'"open\n' + b"x\n" * 20
        url = self.put("bad/x.csv", data)
        with CloudPoolExecutor(2, storage=self.executor_storage) as ex:
            futs = [ex.submit(count_rows, p) for p in objects(
                url, chunk_size=400, format="csv", storage_options=self.options,
                index_cache=self.cache_url)]
            outcomes = []
            for f in futs:
                exc = f.exception(timeout=120)
                outcomes.append(exc if exc is not None else f.result())
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        self.assertEqual(len(errors), 1, outcomes)
        self.assertIsInstance(errors[0], FormatError)
        self.assertIn(url, str(errors[0]))
        # Every other part's result arrived, and equals counting it here.
        local = [fail_or_count(p) for p in objects(url, chunk_size=400, format="csv",
                                                   storage_options=self.options,
                                                   index_cache=self.cache_url)]
        self.assertEqual([o for o in outcomes if isinstance(o, int)],
                         [o for o in local if isinstance(o, int)])
        self.assertGreater(sum(o for o in outcomes if isinstance(o, int)), 400)


class LocalEndToEndTests(EndToEndMixin, unittest.TestCase):
    options: Dict[str, Any] = {}

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-formats-e2e-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.base = "file://" + self.tmp + "/data/"
        self.cache_url = self.tmp + "/index"
        self.executor_storage = "file://" + self.tmp + "/run"

    def put(self, name: str, data: bytes) -> str:
        backend, key = storage_for(self.base + name)
        backend.put(key, data)
        return self.base + name


class S3EndToEndTests(EndToEndMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        from tests.servers import moto_s3
        server = moto_s3()
        cls._env = mock.patch.dict(os.environ, server.env)  # forked workers inherit it
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "formats-e2e-" + uuid.uuid4().hex[:8]
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=cls.bucket)
        clear_cache()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.stop()
        clear_cache()

    def setUp(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.base = f"s3://{self.bucket}/{run}/"
        self.cache_url = f"s3://{self.bucket}/index-{run}/"
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-formats-e2e-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.executor_storage = "file://" + self.tmp + "/run"

    def put(self, name: str, data: bytes) -> str:
        backend, key = storage_for(self.base + name, self.options)
        backend.put(key, data)
        return self.base + name


if __name__ == "__main__":
    unittest.main()
