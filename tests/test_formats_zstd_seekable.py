"""zstd seekable format (``cloudpool/formats/zstdseek.py``): parts from the seek table.

The objects are written by ``seekable()`` below, following the format documented in the
zstd repository (``contrib/seekable_format/zstd_seekable_compression_format.md``): frames
compressed with ``zstandard``, then a skippable frame holding the seek table. Every test
compares with ``bytes.splitlines`` of the original data; the contract runs on local disk
and on S3 (the moto server).
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import struct
import tempfile
import unittest
import uuid
from typing import Any, Dict, List
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpool import CloudPoolExecutor, objects
from cloudpool.formats import FormatError
from cloudpool.formats.text import LinesPart
from cloudpool.formats.zstdseek import ZstdSeekablePart
from cloudpool.storage import clear_cache, storage_for

import zstandard  # the test extra installs it: a missing one fails loudly, never skips


def seekable(data: bytes, cuts: List[int], checksums: bool = False) -> bytes:
    """``data`` in the zstd seekable format, one frame per ``[cut, next cut)``."""
    edges = [0] + sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    cctx = zstandard.ZstdCompressor(write_checksum=checksums)
    frames = [cctx.compress(data[a:b]) for a, b in zip(edges, edges[1:])]
    entries = b""
    for (a, b), f in zip(zip(edges, edges[1:]), frames):
        entries += struct.pack("<II", len(f), b - a)
        if checksums:
            entries += f[-4:]  # the frame's content checksum (low 32 bits of XXH64)
    footer = struct.pack("<IBI", len(frames), 0x80 if checksums else 0, 0x8F92EAB1)
    table = struct.pack("<II", 0x184D2A5E, len(entries) + len(footer)) + entries + footer
    return b"".join(frames) + table


def count_words(part: Any) -> int:
    return sum(len(line.split()) for line in part)


TOKENS = [b"a", b"bb", b"\n", b"\n\n", b"xyz ", b" "]


def text_data() -> st.SearchStrategy[bytes]:
    token = st.one_of(st.sampled_from(TOKENS), st.integers(0, 300).map(lambda n: b"y" * n))
    return st.lists(token, max_size=60).map(b"".join)


class ZstdSeekableContract:
    base: str
    options: Dict[str, Any] = {}
    examples = 40

    def put(self, name: str, data: bytes) -> str:
        url = self.base + name
        backend, key = storage_for(url, self.options)
        backend.put(key, data)
        return url

    def parts(self, url: str, **kw: Any) -> List[Any]:
        return list(objects(url, storage_options=self.options, index_cache=False, **kw))

    def check_lines(self, data: bytes, parts: List[Any]) -> None:
        clones = [pickle.loads(pickle.dumps(p)) for p in parts]
        self.assertEqual([r for p in clones for r in p], data.splitlines(keepends=True))
        self.assertEqual(b"".join(p.read() for p in parts), data)
        self.assertEqual([p.part for p in parts], list(range(len(parts))))

    def test_property_against_splitlines(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(text_data(), st.lists(st.integers(0, 3000), max_size=8), st.integers(1, 400),
               st.booleans(), st.booleans())
        def check(data: bytes, cuts: List[int], chunk: int, checksums: bool,
                  at_newlines: bool) -> None:
            if at_newlines:  # frames that end exactly at (and just after) a separator
                cuts = cuts + [i for i, b in enumerate(data) if b == 10][:5]
                cuts = cuts + [c + 1 for c in cuts]
            url = self.put(f"{uuid.uuid4().hex[:8]}.txt.zst", seekable(data, cuts, checksums))
            parts = self.parts(url, chunk_size=chunk)
            self.assertTrue(all(isinstance(p, ZstdSeekablePart) for p in parts))
            self.check_lines(data, parts)
        check()

    def test_table_read_with_one_get_and_no_scan(self) -> None:
        data = b"".join(b"%d %s\n" % (i, b"v" * (i % 50)) for i in range(20000))
        url = self.put("big.txt.zst", seekable(data, list(range(0, len(data), 64 * 1024))))
        import cloudpool.formats.text as text
        with mock.patch.object(text, "build_index", side_effect=AssertionError("scanned")):
            parts = self.parts(url, chunk_size=128 * 1024)
        self.assertGreater(len(parts), 4)
        self.check_lines(data, parts)
        # Another one-byte separator (not split by io.BytesIO).
        semi = data.replace(b"\n", b";")
        url = self.put("semi.txt.zst", seekable(semi, list(range(0, len(semi), 50000))))
        parts = self.parts(url, chunk_size=100000, newline=b";")
        self.assertTrue(all(isinstance(p, ZstdSeekablePart) for p in parts))
        self.assertEqual([r for p in parts for r in p],
                         [x + b";" for x in semi.split(b";")[:-1]])

    def test_not_seekable_uses_the_text_index(self) -> None:
        data = b"".join(b"%d\n" % i for i in range(5000))
        c = zstandard.ZstdCompressor()
        plain = c.compress(data[:9000]) + c.compress(data[9000:])
        broken = seekable(data, [100, 5000])[:-20] + b"\0" * 20  # footer damaged
        for name, blob in (("plain.zst", plain), ("broken.zst", broken)):
            with self.subTest(name):
                parts = self.parts(self.put(name, blob), chunk_size=4000)
                self.assertTrue(all(isinstance(p, LinesPart) for p in parts))
                self.assertEqual([r for p in parts for r in p], data.splitlines(keepends=True))
        # A multi-byte separator cannot be resolved without left context: text index.
        crlf = data.replace(b"\n", b"\r\n")
        url = self.put("crlf.zst", seekable(crlf, [7, 5000]))
        parts = self.parts(url, chunk_size=4000, newline=b"\r\n")
        self.assertTrue(all(isinstance(p, LinesPart) for p in parts))
        self.assertEqual(b"".join(r for p in parts for r in p), crlf)

    def test_corrupt_frame_fails_on_its_part(self) -> None:
        data = b"".join(b"%d\n" % i for i in range(20000))
        # With frame checksums: without them zstd may decode damaged literals silently.
        blob = bytearray(seekable(data, list(range(0, len(data), 10000)), checksums=True))
        blob[len(blob) // 2:len(blob) // 2 + 40] = b"\xff" * 40
        url = self.put("bad.txt.zst", bytes(blob))
        parts = self.parts(url, chunk_size=10000)
        outcomes = []
        for p in parts:
            try:
                outcomes.append(len(list(p)))
            except FormatError as exc:
                self.assertIn(url, str(exc))
                outcomes.append(None)
        self.assertIn(None, outcomes)
        self.assertGreater(len([o for o in outcomes if o]), len(parts) // 3)

    def test_word_count_end_to_end(self) -> None:
        rng = random.Random(3)
        data = b"".join(b" ".join(b"w%d" % rng.randint(0, 99) for _ in range(rng.randint(0, 9)))
                        + b"\n" for _ in range(6000))
        url = self.put("e2e/words.txt.zst", seekable(data, list(range(0, len(data), 7000))))
        with tempfile.TemporaryDirectory() as tmp:
            with CloudPoolExecutor(2, storage="file://" + tmp + "/run") as ex:
                got = list(ex.map(count_words, objects(url, chunk_size=20000,
                                                       storage_options=self.options)))
        self.assertGreater(len(got), 3)
        self.assertEqual(sum(got), len(data.split()))


class LocalZstdSeekableTests(ZstdSeekableContract, unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-zst-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.base = "file://" + self.tmp + "/"


class S3ZstdSeekableTests(ZstdSeekableContract, unittest.TestCase):
    examples = 10

    @classmethod
    def setUpClass(cls) -> None:
        from tests.servers import moto_s3
        server = moto_s3()
        cls._env = mock.patch.dict(os.environ, server.env)  # forked workers inherit it
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "zstseek-" + uuid.uuid4().hex[:8]
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=cls.bucket)
        clear_cache()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.stop()
        clear_cache()

    def setUp(self) -> None:
        self.base = f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}/"


if __name__ == "__main__":
    unittest.main()
