"""bzip2 split at blocks (``cloudpool/formats/bzip2blocks.py``): a single-stream ``.bz2``
becomes many parts, each decompressing only its own blocks.

Data comes from the stdlib ``bz2`` module at ``compresslevel=1`` (100 kB blocks), so a few
hundred kB of text is several blocks; every test compares with ``bz2.decompress`` and
``bytes.splitlines``. The contract runs on local disk and on S3 (the moto server).
"""
from __future__ import annotations

import bz2
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
from cloudpool.formats import FormatError, IndexCache
from cloudpool.formats import bzip2blocks
from cloudpool.formats.bzip2blocks import Bzip2Blocks
from cloudpool.formats.text import LinesPart
from cloudpool.storage import clear_cache, storage_for


def count_words(part: Any) -> int:
    return sum(len(line.split()) for line in part)


def text(rng: random.Random, n_lines: int, long_line: int = 0) -> bytes:
    lines = [b"%d %s\n" % (i, b" ".join(b"w%x" % rng.getrandbits(20)
                                        for _ in range(rng.randint(0, 12))))
             for i in range(n_lines)]
    if long_line:  # one line longer than a 100 kB block, hard to compress
        at = rng.randint(0, n_lines)
        lines.insert(at, b"L" + bytes(rng.getrandbits(8) | 0x80 for _ in range(long_line)) + b"\n")
    return b"".join(lines)


class Bzip2BlocksContract:
    base: str
    cache_url: str
    options: Dict[str, Any] = {}
    examples = 8

    def put(self, name: str, data: bytes) -> str:
        url = self.base + name
        backend, key = storage_for(url, self.options)
        backend.put(key, data)
        return url

    def parts(self, url: str, **kw: Any) -> List[Any]:
        kw.setdefault("index_cache", self.cache_url)
        return list(objects(url, storage_options=self.options, **kw))

    def check_lines(self, data: bytes, parts: List[Any]) -> None:
        clones = [pickle.loads(pickle.dumps(p)) for p in parts]
        self.assertEqual([r for p in clones for r in p], data.splitlines(keepends=True))
        self.assertEqual(b"".join(p.read() for p in parts), data)
        self.assertEqual([p.part for p in parts], list(range(len(parts))))

    def test_single_stream_splits_at_blocks_property(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.integers(0, 2 ** 32), st.integers(2000, 9000), st.sampled_from([0, 0, 250_000]),
               st.sampled_from([30_000, 70_000, 150_000, 10 ** 7]), st.booleans())
        def check(seed: int, n_lines: int, long_line: int, chunk: int, two_streams: bool) -> None:
            data = text(random.Random(seed), n_lines, long_line)
            blob = bz2.compress(data, 1)
            if two_streams:  # a second stream (pbzip2/lbzip2 layout) after the first
                cut = len(data) // 3
                blob = bz2.compress(data[:cut], 1) + bz2.compress(data[cut:], 1)
            url = self.put(f"{uuid.uuid4().hex[:8]}.txt.bz2", blob)
            parts = self.parts(url, chunk_size=chunk)
            self.assertTrue(all(isinstance(p, LinesPart) for p in parts))
            self.check_lines(data, parts)
            if chunk <= 70_000 and len(data) > 200_000:
                # Not one part: a single stream is cut at its (100 kB) blocks.
                self.assertGreaterEqual(len(parts), 2, (len(data), chunk))
        check()

    def test_blocks_decompressed_about_once(self) -> None:
        # Each part decompresses from the block holding its first record to the block
        # holding the end of its last one: at most one block more than its own bytes.
        data = text(random.Random(1), 12000)
        url = self.put("once.txt.bz2", bz2.compress(data, 1))
        parts = self.parts(url, chunk_size=100_000)
        self.assertGreater(len(parts), 3)
        produced = []
        real = bzip2blocks.decompress_block

        def counting(buf: bytes, start: int, end: int) -> Any:
            out = real(buf, start, end)
            if out is not None:
                produced.append(len(out))
            return out
        with mock.patch.object(bzip2blocks, "decompress_block", counting):
            got = [line for p in parts for line in p]
        self.assertEqual(got, data.splitlines(keepends=True))
        self.assertGreaterEqual(sum(produced), len(data))
        self.assertLessEqual(sum(produced), len(data) + (len(parts) - 1) * max(produced))

    def test_chance_magic_inside_a_block_is_rejected(self) -> None:
        # A false candidate end (as a chance 0x314159265359 in compressed data would give)
        # must be rejected by decompression and the search go on to the real end.
        data = text(random.Random(2), 6000)
        url = self.put("false.txt.bz2", bz2.compress(data, 1))
        real = bzip2blocks.find_magic
        fakes = []

        def with_fakes(buf: bytes, start: int) -> Any:
            hit = real(buf, start)
            if hit is not None and hit[0] - start > 5000:
                fakes.append(start + 4321)
                return (start + 4321, bzip2blocks.BLOCK_MAGIC)
            return hit
        with mock.patch.object(bzip2blocks, "find_magic", with_fakes):
            parts = self.parts(url, chunk_size=50_000, index_cache=False)
            self.check_lines(data, parts)
        self.assertGreater(len(fakes), 3)
        self.assertGreater(len(parts), 2)

    def test_truncated_stream_fails_on_the_last_part_only(self) -> None:
        data = text(random.Random(3), 10000)
        blob = bz2.compress(data, 1)
        url = self.put("cut.txt.bz2", blob[:-2000])
        parts = self.parts(url, chunk_size=60_000)
        self.assertGreater(len(parts), 2)
        got = [r for p in parts[:-1] for r in p]
        self.assertEqual(got, data.splitlines(keepends=True)[:len(got)])
        with self.assertRaises(FormatError) as cm:
            list(parts[-1])
        self.assertIn(url, str(cm.exception))
        self.assertIn("bzip2", str(cm.exception))

    def test_index_cached(self) -> None:
        data = text(random.Random(4), 5000)
        url = self.put("cached.txt.bz2", bz2.compress(data, 1))
        cache = IndexCache(self.cache_url, self.options)
        first = self.parts(url, chunk_size=40_000, index_cache=cache)
        again = self.parts(url, chunk_size=40_000, index_cache=cache)
        self.assertEqual((cache.hits, cache.misses), (1, 1))
        self.assertEqual(first, again)
        self.assertGreater(len(first), 2)
        self.check_lines(data, again)

    def test_word_count_end_to_end(self) -> None:
        data = text(random.Random(5), 9000, long_line=120_000)
        url = self.put("e2e/words.txt.bz2", bz2.compress(data, 1))
        with tempfile.TemporaryDirectory() as tmp:
            with CloudPoolExecutor(2, storage="file://" + tmp + "/run") as ex:
                got = list(ex.map(count_words, objects(url, chunk_size=60_000,
                                                       storage_options=self.options,
                                                       index_cache=self.cache_url)))
        self.assertGreater(len(got), 2)
        self.assertEqual(sum(got), len(data.split()))


class LocalBzip2BlocksTests(Bzip2BlocksContract, unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-bz2-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.base = "file://" + self.tmp + "/data/"
        self.cache_url = self.tmp + "/index"


class S3Bzip2BlocksTests(Bzip2BlocksContract, unittest.TestCase):
    examples = 4

    @classmethod
    def setUpClass(cls) -> None:
        from tests.servers import moto_s3
        server = moto_s3()
        cls._env = mock.patch.dict(os.environ, server.env)  # forked workers inherit it
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "bz2blocks-" + uuid.uuid4().hex[:8]
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


class BlockReaderTests(unittest.TestCase):
    """The reader alone, against ``bz2.decompress``, from every seek point."""

    class Obj:
        def __init__(self, data: bytes) -> None:
            self.data, self.size = data, len(data)

        def get(self, lo: int, hi: int) -> bytes:
            return self.data[lo:min(hi, self.size)]

    def test_from_every_point_with_small_reads(self) -> None:
        data = text(random.Random(6), 6000)
        blob = bz2.compress(data, 1) + bz2.compress(b"") + bz2.compress(data[:999], 9)
        ref = bz2.decompress(blob)
        whole = Bzip2Blocks(self.Obj(blob), read_block=4096)
        self.assertEqual(b"".join(whole), ref)
        self.assertIsNone(whole.error)
        self.assertGreater(len(whole.points), 4)
        self.assertTrue(any(c % 8 for c, _d in whole.points))  # bit-aligned block starts
        for comp, dec in whole.points:
            self.assertEqual(b"".join(Bzip2Blocks(self.Obj(blob), comp, dec)), ref[dec:])
        padded = Bzip2Blocks(self.Obj(blob + b"\0" * 10))
        self.assertEqual(b"".join(padded), ref)
        self.assertIsNone(padded.error)
        junk = Bzip2Blocks(self.Obj(blob + b"junk"))
        self.assertEqual(b"".join(junk), ref)
        self.assertIn("trailing garbage", junk.error)


if __name__ == "__main__":
    unittest.main()
