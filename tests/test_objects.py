"""Tests of ``cloudpool.objects``: the partition rule, listing, reading, and their errors.

The partition contract (``PartitionContract``) runs on local disk and on S3 (the moto
server from ``tests/servers.py``). Byte-counting and lazy-listing tests use a real
subclass of ``LocalStorage`` registered under the ``cpcount://`` scheme, which records
every ranged GET and every listed object.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid
from typing import Any, Dict, List, Optional, Tuple
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cloudpool
import cloudpool.objects as objmod
from cloudpool.objects import ObjectPart, Objects, objects, parse_size
from cloudpool.storage import clear_cache, get_storage, storage_for, storages
from cloudpool.storage.local import LocalStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KiB = 1024
MiB = 1024 * 1024


# ---------------------------------------------------------------------------- reference
def reference_records(data: bytes, sep: bytes) -> List[Tuple[int, bytes]]:
    """``(offset, record)`` pairs by the documented rule, computed the slow, obvious way:
    a record starts at 0 and at every offset preceded by the separator."""
    if not data:
        return []
    L = len(sep)
    starts = [0] + [q for q in range(L, len(data)) if data[q - L:q] == sep]
    ends = starts[1:] + [len(data)]
    return [(s, data[s:e]) for s, e in zip(starts, ends)]


TOKENS = [b"a", b"b", b"\n", b"\r", b"\r\n", b"\n\n", b"|", b"||", b"ab", b"aba", b"\x1e"]
SEPARATORS = [b"\n", b"\n", b"\r\n", b"\n\n", b"||", b"aba", b"\x1e", b"ab|"]


def contents(max_tokens: int, max_run: int, sep: bytes = b"\n") -> st.SearchStrategy[bytes]:
    """Random objects: short tokens rich in separator bytes (the separator itself, its
    pieces, runs of it), random bytes, and long runs without any separator (lines longer
    than the chunks)."""
    token = st.one_of(
        st.sampled_from(TOKENS + [sep, sep, sep * 2, sep[:1], sep[1:] or sep]),
        st.binary(max_size=4),
        st.integers(0, max_run).map(lambda n: b"y" * n),
    )
    return st.lists(token, max_size=max_tokens).map(b"".join)


def sep_and_contents(max_tokens: int, max_run: int) -> st.SearchStrategy[Tuple[bytes, bytes]]:
    return st.sampled_from(SEPARATORS).flatmap(
        lambda sep: st.tuples(st.just(sep), contents(max_tokens, max_run, sep)))


# ---------------------------------------------------------------------------- counting backend
class CountingStorage(LocalStorage):
    """Local disk under ``base_dir/<bucket>``, recording every GET and every listed object."""

    scheme = "cpcount"
    option_names = frozenset({"region", "token"})
    secret_option_names = frozenset({"token"})
    base_dir = ""

    def __init__(self, bucket: str = "", **options: Any) -> None:
        super().__init__(bucket, **options)
        self._root = os.path.join(type(self).base_dir, bucket)
        self.gets: List[Tuple[str, Optional[int], Optional[int], int]] = []
        self.listed = 0

    def url(self, key: str = "") -> str:
        return f"cpcount://{self.bucket}/{key}"

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        data = super().get(key, start, end)
        self.gets.append((key, start, end, len(data)))
        return data

    def list(self, prefix: str = "", start_after: Optional[str] = None):
        for info in super().list(prefix, start_after):
            self.listed += 1
            yield info

    def fetched(self) -> int:
        return sum(n for *_rest, n in self.gets)


class CountingStorageCase(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-objects-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        CountingStorage.base_dir = self.tmp
        storages.register("cpcount", CountingStorage, replace=True)
        clear_cache()
        self.addCleanup(clear_cache)
        os.makedirs(os.path.join(self.tmp, "bkt"))
        self.backend: CountingStorage = get_storage("cpcount", "bkt")  # type: ignore[assignment]

    def put(self, key: str, data: bytes) -> str:
        self.backend.put(key, data)
        return f"cpcount://bkt/{key}"


# ---------------------------------------------------------------------------- pure units
class ParseSizeTests(unittest.TestCase):
    def test_units(self) -> None:
        self.assertEqual(parse_size(123), 123)
        self.assertEqual(parse_size("123"), 123)
        self.assertEqual(parse_size("10B"), 10)
        self.assertEqual(parse_size("500KB"), 500_000)
        self.assertEqual(parse_size("500kb"), 500_000)
        self.assertEqual(parse_size("64MiB"), 64 * MiB)
        self.assertEqual(parse_size("64 MiB"), 64 * MiB)
        self.assertEqual(parse_size("2MB"), 2_000_000)
        self.assertEqual(parse_size("1.5GiB"), 3 * 512 * MiB)
        self.assertEqual(parse_size("1GB"), 10 ** 9)
        self.assertEqual(parse_size("1TiB"), 1024 ** 4)
        self.assertEqual(parse_size(".5KiB"), 512)
        self.assertEqual(parse_size(2048.0), 2048)

    def test_invalid(self) -> None:
        for bad in (0, -1, "0", "0MiB", "-5MiB", "abc", "12XB", "", "1.2.3MB", "0.4",
                    float("inf"), float("nan"), True, None, [1], "MiB"):
            with self.subTest(value=bad):
                with self.assertRaises(ValueError) as cm:
                    parse_size(bad)  # type: ignore[arg-type]
                msg = str(cm.exception)
                self.assertIn(repr(bad), msg)
                self.assertIn("MiB", msg)  # names the accepted forms


class GlobTests(unittest.TestCase):
    def match(self, pattern: str, key: str) -> bool:
        return objmod._glob_to_regex(pattern).match(key) is not None

    def test_star_stays_in_segment(self) -> None:
        self.assertTrue(self.match("t/*.txt", "t/a.txt"))
        self.assertFalse(self.match("t/*.txt", "t/sub/a.txt"))
        self.assertFalse(self.match("t/*.txt", "t/a.txt.gz"))

    def test_double_star(self) -> None:
        self.assertTrue(self.match("t/**/*.txt", "t/a.txt"))
        self.assertTrue(self.match("t/**/*.txt", "t/x/y/a.txt"))
        self.assertTrue(self.match("t/**", "t/x/y/a.bin"))
        self.assertFalse(self.match("t/**/*.txt", "u/a.txt"))

    def test_question_mark_and_classes(self) -> None:
        self.assertTrue(self.match("t/part-?.csv", "t/part-3.csv"))
        self.assertFalse(self.match("t/part-?.csv", "t/part-33.csv"))
        self.assertTrue(self.match("t/[ab].csv", "t/a.csv"))
        self.assertFalse(self.match("t/[ab].csv", "t/c.csv"))
        self.assertTrue(self.match("t/[!ab].csv", "t/c.csv"))
        self.assertFalse(self.match("t/[!ab].csv", "t/a.csv"))
        self.assertTrue(self.match("t/x[.csv", "t/x[.csv"))  # unclosed bracket is literal
        self.assertTrue(self.match("t/a+b(1).csv", "t/a+b(1).csv"))  # regex chars are literal


class ArgumentErrorTests(unittest.TestCase):
    def test_bad_chunk_sizes(self) -> None:
        for bad in (0, -1, "0B", "-3MiB", "lots", 1.0e-3):
            with self.subTest(chunk_size=bad):
                with self.assertRaises(ValueError) as cm:
                    objects("/tmp/whatever/", chunk_size=bad)
                self.assertIn(repr(bad), str(cm.exception))

    def test_bad_chunks(self) -> None:
        for bad in (0, -2, 1.5, True):
            with self.subTest(chunks=bad):
                with self.assertRaises(ValueError):
                    objects("/tmp/whatever/", chunks=bad)  # type: ignore[arg-type]

    def test_both_chunk_size_and_chunks(self) -> None:
        with self.assertRaises(ValueError) as cm:
            objects("/tmp/whatever/", chunk_size="1MiB", chunks=4)
        self.assertIn("not both", str(cm.exception))

    def test_malformed_urls(self) -> None:
        for bad in ("s3://", "s3:///key-without-bucket", "file://host/path", ""):
            with self.subTest(url=bad):
                with self.assertRaises(ValueError):
                    objects(bad)
        with self.assertRaises(ValueError):
            objects(["/tmp/ok/", "gs:///nobucket"])
        with self.assertRaises(ValueError) as cm:
            objects("nosuchscheme://bucket/key")
        self.assertIn("nosuchscheme", str(cm.exception))
        with self.assertRaises(ValueError):
            objects([])

    def test_bad_types(self) -> None:
        with self.assertRaises(TypeError):
            objects(b"/tmp/x")  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            objects(["/tmp/x", 3])  # type: ignore[list-item]
        with self.assertRaises(ValueError):
            objects("/tmp/x/", newline=b"")
        with self.assertRaises(ValueError):
            objects("/tmp/x/").with_parallelism(0)

    def test_public_names_in_every_import_order(self) -> None:
        # ``cloudpool.objects`` is both the function and its module's name; each import
        # order must leave ``objects(...)`` callable and ``cloudpool.objects.ObjectPart``.
        self.assertIs(cloudpool.ObjectPart, ObjectPart)
        self.assertIsInstance(cloudpool.objects("/tmp/x/", chunks=2), Objects)
        orders = [
            "from cloudpool import objects; import cloudpool.objects as m",
            "import cloudpool.objects as m; from cloudpool import objects",
            "from cloudpool.objects import objects; import cloudpool as m; m = m.objects",
        ]
        check = ("; o = objects('/tmp/x/', chunk_size='1KiB'); "
                 "assert type(o).__name__ == 'Objects', o; assert m.ObjectPart; "
                 "import cloudpool; assert cloudpool.objects is m")
        for order in orders:
            with self.subTest(order=order):
                proc = subprocess.run([sys.executable, "-c", order + check], cwd=ROOT,
                                      capture_output=True, text=True, timeout=60)
                self.assertEqual(proc.returncode, 0, proc.stderr)


# ---------------------------------------------------------------------------- the contract
class PartitionContract:
    """Run against every storage: subclasses set ``base`` (a prefix URL ending in '/') and
    ``options`` (storage options), and may scale the property tests down."""

    base: str
    options: Dict[str, Any] = {}
    examples = 150
    #: Whether keys ending in "/" (folder markers) can exist in this store.
    folder_markers = False
    max_tokens = 40
    max_run = 120
    min_chunk = 1
    #: Local tests shrink the scan/read blocks so block-boundary code runs on small data.
    small_blocks = True

    # -- helpers
    def put(self, name: str, data: bytes) -> str:
        url = self.base + name
        backend, key = storage_for(url, self.options)
        backend.put(key, data)
        return url

    def fresh(self) -> str:
        return uuid.uuid4().hex[:12] + "/"

    def parts(self, url_or_urls: Any, **kw: Any) -> List[ObjectPart]:
        return list(objects(url_or_urls, storage_options=self.options, **kw))

    def blocks(self, scan: int, read: int):
        if not self.small_blocks:
            return contextlib.nullcontext()
        return mock.patch.multiple(objmod, SCAN_BLOCK=scan, MAX_SCAN_BLOCK=4 * scan,
                                   READ_BLOCK=read)

    def check_parts(self, data: bytes, parts: List[ObjectPart], sep: Optional[bytes]) -> None:
        t = self  # type: Any
        # Nominal ranges tile the object, numbered 0..parts-1.
        t.assertGreaterEqual(len(parts), 1)
        t.assertEqual([p.part for p in parts], list(range(len(parts))))
        t.assertTrue(all(p.parts == len(parts) and p.size == len(data) for p in parts))
        t.assertEqual(parts[0].start, 0)
        t.assertEqual(parts[-1].end, len(data))
        for prev, nxt in zip(parts, parts[1:]):
            t.assertEqual(prev.end, nxt.start)
        reads = [p.read() for p in parts]
        # Every byte in exactly one part.
        t.assertEqual(b"".join(reads), data)
        for p, r in zip(parts, reads):
            with p.open() as f:
                t.assertEqual(f.read(), r)
            t.assertEqual(b"".join(p), r)
            a, b = p.data_range()
            t.assertEqual(b - a, len(r))
            if sep is None:
                t.assertEqual(r, data[p.start:p.end])
        if sep is not None:
            # Each part yields exactly the records that start in its nominal range.
            ref = reference_records(data, sep)
            for p in parts:
                want = [rec for off, rec in ref if p.start <= off < p.end]
                t.assertEqual(list(p), want, p)

    # -- property tests
    def test_records_property(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(sep_data=sep_and_contents(self.max_tokens, self.max_run),
               chunk=st.integers(self.min_chunk, 40), scan=st.integers(1, 9),
               read=st.integers(1, 9))
        def check(sep_data: Tuple[bytes, bytes], chunk: int, scan: int, read: int) -> None:
            sep, data = sep_data
            url = self.put(self.fresh() + "obj.txt", data)
            with self.blocks(scan, read):
                parts = self.parts(url, chunk_size=chunk, newline=sep)
                self.check_parts(data, parts, sep)
        check()

    def test_chunks_property(self) -> None:
        @settings(max_examples=max(5, self.examples // 3), deadline=None)
        @given(data=contents(self.max_tokens, self.max_run, b"\r\n"), n=st.integers(1, 12),
               sep=st.sampled_from([b"\n", b"\r\n"]))
        def check(data: bytes, n: int, sep: bytes) -> None:
            url = self.put(self.fresh() + "obj.txt", data)
            with self.blocks(3, 5):
                parts = self.parts(url, chunks=n, newline=sep)
            self.assertEqual(len(parts), max(1, min(n, len(data))))
            self.check_parts(data, parts, sep)
        check()

    def test_exact_ranges_property(self) -> None:
        @settings(max_examples=max(5, self.examples // 3), deadline=None)
        @given(data=st.binary(max_size=300), chunk=st.integers(max(1, self.min_chunk), 64))
        def check(data: bytes, chunk: int) -> None:
            url = self.put(self.fresh() + "blob.bin", data)
            parts = self.parts(url, chunk_size=chunk, newline=None)
            self.assertEqual(len(parts), max(1, -(-len(data) // chunk)))
            for p in parts:
                self.assertEqual(p.data_range(), (p.start, p.end))
                self.assertLessEqual(p.end - p.start, chunk)
            self.check_parts(data, parts, None)
        check()

    # -- fixed cases
    def test_worked_example(self) -> None:
        data = b"hello\nworld\nthis is a long line\n\nend"
        url = self.put(self.fresh() + "a.txt", data)
        parts = self.parts(url, chunk_size=4)
        self.assertEqual([p.read() for p in parts],
                         [b"hello\n", b"world\n", b"", b"this is a long line\n", b"", b"", b"",
                          b"", b"\nend"])
        self.assertEqual([list(p) for p in parts][-1], [b"\n", b"end"])

    def test_crlf_separator_straddling_the_boundary(self) -> None:
        data = b"ab\r\ncd\r\nef"
        url = self.put(self.fresh() + "crlf.txt", data)
        # Boundary at 3 cuts the first "\r\n" in two, 7 the second one; at 4 and 8 a
        # record starts exactly on the boundary, right after a separator.
        for chunk in (3, 4, 7, 8):
            parts = self.parts(url, chunk_size=chunk, newline=b"\r\n")
            self.assertEqual([r for p in parts for r in p], [b"ab\r\n", b"cd\r\n", b"ef"], chunk)
        parts = self.parts(url, chunk_size=3, newline=b"\r\n")
        self.assertEqual([p.read() for p in parts], [b"ab\r\n", b"cd\r\n", b"ef", b""])
        # With "\n" as separator a CRLF file splits the same way.
        parts = self.parts(url, chunk_size=3)
        self.assertEqual([r for p in parts for r in p], [b"ab\r\n", b"cd\r\n", b"ef"])

    def test_self_overlapping_separator(self) -> None:
        # Every occurrence counts: "a\n\n\nb" has occurrences at 1 and 2.
        data = b"a\n\n\nb"
        url = self.put(self.fresh() + "para.txt", data)
        for chunk in (1, 2, 3, 4, 5):
            parts = self.parts(url, chunk_size=chunk, newline=b"\n\n")
            self.assertEqual([r for p in parts for r in p], [b"a\n\n", b"\n", b"b"], chunk)
        parts = self.parts(url, chunk_size=3, newline=b"\n\n")
        self.assertEqual([list(p) for p in parts], [[b"a\n\n"], [b"\n", b"b"]])
        url = self.put(self.fresh() + "aba.txt", b"xababay")
        parts = self.parts(url, chunk_size=4, newline=b"aba")
        self.assertEqual([r for p in parts for r in p], [b"xaba", b"ba", b"y"])

    def test_line_longer_than_many_chunks(self) -> None:
        data = b"short\n" + b"x" * 1000 + b"\nlast\n"
        url = self.put(self.fresh() + "long.txt", data)
        parts = self.parts(url, chunk_size=100)
        self.assertEqual(len(parts), 11)
        non_empty = [p for p in parts if p.read()]
        self.assertEqual([p.part for p in non_empty], [0, 10])
        self.assertEqual(list(parts[0]), [b"short\n", b"x" * 1000 + b"\n"])
        self.assertEqual(list(parts[10]), [b"last\n"])

    def test_empty_object_gives_one_empty_part(self) -> None:
        url = self.put(self.fresh() + "empty.txt", b"")
        for kw in ({"chunk_size": 10}, {"chunks": 3}, {}, {"newline": None, "chunk_size": 1}):
            with self.subTest(**kw):
                parts = self.parts(url, **kw)
                self.assertEqual(len(parts), 1)
                p = parts[0]
                self.assertEqual((p.start, p.end, p.part, p.parts, p.size), (0, 0, 0, 1, 0))
                self.assertEqual(p.read(), b"")
                self.assertEqual(list(p), [])

    def test_listing_prefix_glob_single_and_lists(self) -> None:
        d = self.fresh()
        names = ["b.txt", "a.txt", "sub/c.txt", "sub/deep/d.txt", "e.csv", "ab.txt"]
        for n in names:
            self.put(d + n, n.encode() + b"\n")
        if self.folder_markers:
            self.put(d + "sub/", b"")
            self.put(d + "sub/deep/", b"")
        keyset = lambda parts: [p.url[len(self.base) + len(d):] for p in parts]  # noqa: E731
        every = sorted(names)
        self.assertEqual(keyset(self.parts(self.base + d)), every)
        self.assertEqual(keyset(self.parts(self.base + d.rstrip("/"))), every)  # no slash
        self.assertEqual(keyset(self.parts(self.base + d + "*.txt")), ["a.txt", "ab.txt", "b.txt"])
        self.assertEqual(keyset(self.parts(self.base + d + "?.txt")), ["a.txt", "b.txt"])
        self.assertEqual(keyset(self.parts(self.base + d + "**/*.txt")),
                         ["a.txt", "ab.txt", "b.txt", "sub/c.txt", "sub/deep/d.txt"])
        self.assertEqual(keyset(self.parts(self.base + d + "sub/**")), ["sub/c.txt", "sub/deep/d.txt"])
        self.assertEqual(keyset(self.parts(self.base + d + "[ae]*")), ["a.txt", "ab.txt", "e.csv"])
        # A single object, and a key that is both a prefix of others and an object.
        self.assertEqual(keyset(self.parts(self.base + d + "a.txt")), ["a.txt"])
        # Explicit lists keep their order; an object named twice is partitioned once.
        got = keyset(self.parts([self.base + d + "sub/", self.base + d + "a.txt",
                                 self.base + d + "*.txt"]))
        self.assertEqual(got, ["sub/c.txt", "sub/deep/d.txt", "a.txt", "ab.txt", "b.txt"])
        p = self.parts(self.base + d + "e.csv")[0]
        self.assertEqual(p.read(), b"e.csv\n")
        self.assertEqual(p.key, storage_for(self.base + d + "e.csv")[1])
        self.assertEqual(p.bucket, storage_for(self.base + d + "e.csv")[0].bucket)

    def test_missing_prefix_raises(self) -> None:
        d = self.fresh()
        self.put(d + "x.txt", b"x\n")
        for missing in (self.base + d + "nothing/", self.base + d + "nothing",
                        self.base + d + "*.csv", self.base + d + "x.tx"):
            with self.subTest(url=missing):
                with self.assertRaises(FileNotFoundError) as cm:
                    self.parts(missing)
                self.assertIn(missing, str(cm.exception))
        # The error comes while iterating, after the parts of earlier URLs.
        it = iter(objects([self.base + d, self.base + d + "nothing/"], chunk_size=100,
                          storage_options=self.options))
        self.assertEqual(next(it).read(), b"x\n")
        with self.assertRaises(FileNotFoundError):
            next(it)

    def test_pickled_part_reads_the_same(self) -> None:
        data = b"".join(b"line %d\n" % i for i in range(200))
        url = self.put(self.fresh() + "p.txt", data)
        parts = self.parts(url, chunk_size=97)
        clones = [pickle.loads(pickle.dumps(p)) for p in parts]
        self.assertEqual(clones, parts)
        self.assertEqual(b"".join(c.read() for c in clones), data)
        self.assertTrue(all(len(pickle.dumps(p)) < 1024 for p in parts))
        self.assertEqual(clones[0].storage_options, dict(self.options))

    def test_auto_mode(self) -> None:
        d = self.fresh()
        self.put(d + "big.txt", b"".join(b"%09d\n" % i for i in range(100)))  # 1000 bytes
        self.put(d + "small.txt", b"tiny\n")
        auto = objects(self.base + d, storage_options=self.options)
        self.assertIsInstance(auto, Objects)
        # With the default 1 MiB floor, small objects are not split at all.
        self.assertEqual(len(list(auto.with_parallelism(64))), 2)
        with mock.patch.object(objmod, "AUTO_MIN_PART_SIZE", 10):
            # total 1005 bytes, 4 x 5 workers -> parts of at most ceil(1005/20) = 51 bytes
            parts = list(auto.with_parallelism(5))
            big = [p for p in parts if p.key.endswith("big.txt")]
            self.assertEqual(len(big), 20)
            self.assertEqual(len(parts), 21)
            self.assertEqual(b"".join(p.read() for p in big),
                             b"".join(b"%09d\n" % i for i in range(100)))
            # with_parallelism returns a configured copy; the original is unchanged.
            self.assertIsNone(auto.parallelism)
            with mock.patch.object(objmod.os, "cpu_count", return_value=1):
                self.assertEqual(len([p for p in auto if p.key.endswith("big.txt")]), 4)
            # The floor wins over the worker count.
            self.assertEqual(len(list(auto.with_parallelism(1000))), 1000 // 10 + 1)


class LocalPartitionTests(PartitionContract, unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.mkdtemp(prefix="cloudpool-objects-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.base = "file://" + tmp + "/"

    def test_plain_paths(self) -> None:
        d = self.base[len("file://"):]
        with open(os.path.join(d, "plain.txt"), "wb") as f:
            f.write(b"1\n2\n3\n")
        parts = list(objects(d + "plain.txt", chunk_size=2))
        self.assertEqual([r for p in parts for r in p], [b"1\n", b"2\n", b"3\n"])
        self.assertEqual(parts[0].url, "file://" + os.path.join(d, "plain.txt"))
        self.assertEqual(parts[0].bucket, "")
        self.assertEqual(len(list(objects(d, chunk_size=2))), 3)
        self.assertEqual(len(list(objects(d + "*.txt", chunk_size=2))), 3)


class S3PartitionTests(PartitionContract, unittest.TestCase):
    """The same contract on S3 (the moto server), with the SDK's real HTTP requests."""

    examples = 25
    folder_markers = True
    max_tokens = 20
    max_run = 60
    min_chunk = 8
    small_blocks = False  # each block would be one more HTTP request

    @classmethod
    def setUpClass(cls) -> None:
        try:
            from tests.servers import moto_s3
        except ImportError:  # tests/ is not a package: pytest put it on sys.path
            from servers import moto_s3  # type: ignore[no-redef]
        server = moto_s3()
        env = dict(server.env)
        env.pop("AWS_ENDPOINT_URL", None)  # the endpoint must come from storage_options
        cls._env = mock.patch.dict(os.environ, env)
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "objects-" + uuid.uuid4().hex[:8]
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=cls.bucket)
        clear_cache()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.stop()
        clear_cache()

    def setUp(self) -> None:
        self.base = f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}/"


# ---------------------------------------------------------------------------- I/O accounting
class RangedReadTests(CountingStorageCase):
    """Parts fetch their own range (plus a little to find boundaries), never the object."""

    def test_parts_read_only_their_range(self) -> None:
        lines = [(b"%d " % i) * (i % 37) + b"\n" for i in range(40000)]
        data = b"".join(lines)
        self.assertGreater(len(data), 2 * MiB)
        url = self.put("data/lines.txt", data)
        chunk = 256 * KiB
        parts = list(objects(url, chunk_size=chunk))
        self.assertEqual(len(parts), -(-len(data) // chunk))
        total = 0
        out = []
        for p in parts:
            clone = pickle.loads(pickle.dumps(p))  # as a worker gets it
            self.backend.gets.clear()
            out.append(clone.read())
            fetched = self.backend.fetched()
            total += fetched
            a, b = clone.data_range()
            # Its own bytes, plus at most one scan block past its end to find the boundary.
            self.assertLessEqual(fetched, (b - a) + objmod.SCAN_BLOCK + 2 * 200, p)
            self.assertLessEqual(max(n for *_r, n in self.backend.gets), chunk + objmod.SCAN_BLOCK)
            self.assertTrue(all(s is not None and e is not None for _k, s, e, _n in self.backend.gets))
        self.assertEqual(b"".join(out), data)
        self.assertLess(total, len(data) + len(parts) * objmod.SCAN_BLOCK)

    def test_iteration_and_open_read_little(self) -> None:
        data = b"".join(b"%07d\n" % i for i in range(200000))  # 1.6 MB
        url = self.put("data/fixed.txt", data)
        parts = list(objects(url, chunks=8))
        for p in parts:
            self.backend.gets.clear()
            n = sum(len(r) for r in p)
            self.assertLess(self.backend.fetched(), n + objmod.SCAN_BLOCK + 16)
            # open() streams: a short read of a fresh part fetches one read block, not the part.
            fresh = pickle.loads(pickle.dumps(p))
            with mock.patch.object(objmod, "READ_BLOCK", 16 * KiB):
                fresh.data_range()
                self.backend.gets.clear()
                with fresh.open() as f:
                    self.assertEqual(len(f.read(10)), 10)
            self.assertLessEqual(self.backend.fetched(), 16 * KiB)

    def test_crlf_iteration_needs_three_gets(self) -> None:
        # Two boundary scans and one GET for the middle: the separator context before the
        # part's first byte comes from the start scan, not from an extra request.
        data = b"".join(b"%07d\r\n" % i for i in range(100000))
        url = self.put("data/crlf.txt", data)
        for p in objects(url, chunks=4, newline=b"\r\n"):
            fresh = pickle.loads(pickle.dumps(p))
            self.backend.gets.clear()
            records = list(fresh)
            self.assertEqual(len(records), 25000)
            self.assertLessEqual(len(self.backend.gets), 3, self.backend.gets)

    def test_part_inside_a_long_line_reads_only_its_nominal_range(self) -> None:
        data = b"head\n" + b"z" * (3 * MiB) + b"\ntail\n"
        url = self.put("data/longline.txt", data)
        parts = list(objects(url, chunk_size=256 * KiB))
        inner = parts[2:-2]
        self.assertTrue(inner)
        for p in inner:
            self.backend.gets.clear()
            self.assertEqual(p.read(), b"")
            self.assertEqual(list(p), [])
            self.assertLessEqual(self.backend.fetched(), (p.end - p.start) + 1)
        self.assertEqual(b"".join(p.read() for p in parts), data)

    def test_multibyte_separator_across_scan_blocks(self) -> None:
        # Part 0 is [0, 20); its end scan starts at 20 - 5 = 15 and its first 64 KiB block
        # ends at 15 + SCAN_BLOCK. The separator starts 2 bytes before that edge, so the
        # scan must carry L-1 bytes from one block to the next.
        sep = b"<END>"
        pos = 15 + objmod.SCAN_BLOCK - 2
        data = b"p" * 10 + sep + b"q" * (pos - 15) + sep + b"rest"
        url = self.put("data/sep.bin", data)
        parts = list(objects(url, chunk_size=20, newline=sep))
        self.assertEqual(parts[0].data_range(), (0, pos + len(sep)))
        records = [r for p in parts for r in p]
        self.assertEqual(records, [b"p" * 10 + sep, b"q" * (pos - 15) + sep, b"rest"])
        self.assertEqual(b"".join(p.read() for p in parts), data)

    def test_secret_options_do_not_travel(self) -> None:
        self.put("data/s.txt", b"a\nb\n")
        opts = {"region": "eu", "token": "s3cr3t"}
        part = next(iter(objects("cpcount://bkt/data/s.txt", chunks=2, storage_options=opts)))
        self.assertEqual(part.storage_options, opts)  # the user's own object keeps them
        blob = pickle.dumps(part)
        self.assertNotIn(b"s3cr3t", blob)
        self.assertEqual(pickle.loads(blob).storage_options, {"region": "eu"})
        self.assertNotIn(b"CountingStorage", blob)  # no backend/client object captured


class LazyListingTests(CountingStorageCase):
    def test_first_part_before_the_listing_ends(self) -> None:
        for i in range(50):
            self.put(f"many/{i:03d}.txt", b"x\n" * 10)
        it = iter(objects("cpcount://bkt/many/", chunk_size=4))
        first = next(it)
        self.assertEqual(first.key, "many/000.txt")
        self.assertLessEqual(self.backend.listed, 2)
        rest = list(it)
        self.assertEqual(self.backend.listed, 50)
        self.assertEqual(len(rest), 50 * 5 - 1)
        keys = [p.key for p in [first] + rest]
        self.assertEqual(keys, sorted(keys))  # deterministic key order

    def test_objects_is_reiterable_and_deterministic(self) -> None:
        for i in (3, 1, 2):
            self.put(f"re/{i}.txt", b"%d\n" % i * 5)
        objs = objects("cpcount://bkt/re/", chunk_size=3)
        self.assertEqual(list(objs), list(objs))
        self.assertEqual([p.key for p in objs if p.part == 0], ["re/1.txt", "re/2.txt", "re/3.txt"])

    def test_auto_mode_lists_everything_first(self) -> None:
        for i in range(5):
            self.put(f"auto/{i}.txt", b"x\n")
        it = iter(objects("cpcount://bkt/auto/"))
        next(it)
        self.assertEqual(self.backend.listed, 5)

    def test_folder_markers_are_skipped(self) -> None:
        self.put("mk/a.txt", b"a\n")
        os.makedirs(os.path.join(self.tmp, "bkt", "mk", "empty"))
        parts = list(objects("cpcount://bkt/mk/", chunk_size=10))
        self.assertEqual([p.key for p in parts], ["mk/a.txt"])
        self.assertEqual(parts[0].url, "cpcount://bkt/mk/a.txt")
        self.assertEqual(parts[0].bucket, "bkt")


if __name__ == "__main__":
    unittest.main()
