"""FASTA / FASTQ (``cloudpool/formats/fastx.py``): records never split, on local disk and S3.

Property tests generate records (FASTQ qualities that start with ``@`` or ``+`` and hold
``@``/``+`` anywhere, FASTA sequences wrapped at random widths), write them plain or
compressed in varied gzip/bzip2 layouts, and compare every part's records, in order, with
the generated ones.
"""
from __future__ import annotations

import bz2
import gzip
import os
import pickle
import shutil
import tempfile
import unittest
import uuid
from typing import Any, Dict, List, Tuple
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpool import CloudPoolExecutor, objects
from cloudpool.formats import FormatError, detect
from cloudpool.formats.fastx import FastaRecord, FastqRecord
from cloudpool.storage import clear_cache, storage_for

BASES = "ACGTN"
QUAL = "@+!#I5?ABC"  # qualities full of '@' and '+'


@st.composite
def fastq_records(draw: Any) -> List[Tuple[str, str, str]]:
    out = []
    for i in range(draw(st.integers(0, 25))):
        n = draw(st.integers(0, 30))
        seq = draw(st.text(alphabet=BASES, min_size=n, max_size=n))
        qual = draw(st.text(alphabet=QUAL, min_size=n, max_size=n))
        if n and draw(st.booleans()):  # adversarial: a quality line that looks like a header
            qual = draw(st.sampled_from("@+")) + qual[1:]
        name = draw(st.sampled_from(["r", "@r", "+x", "read one", "q"])) + str(i)
        out.append((name, seq, qual))
    return out


def fastq_bytes(records: List[Tuple[str, str, str]], plus_name: bool = False,
                crlf: bool = False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    return "".join(f"@{n}{nl}{s}{nl}+{n if plus_name else ''}{nl}{q}{nl}"
                   for n, s, q in records).encode("ascii")


@st.composite
def fasta_records(draw: Any) -> List[Tuple[str, str]]:
    out = []
    for i in range(draw(st.integers(0, 20))):
        seq = draw(st.text(alphabet=BASES, max_size=120))
        out.append((f"seq{i} " + draw(st.sampled_from(["", "desc", "a>b"])), seq))
    return out


def fasta_bytes(records: List[Tuple[str, str]], width: int) -> bytes:
    out = []
    for name, seq in records:
        out.append(">" + name + "\n")
        out.extend(seq[k:k + width] + "\n" for k in range(0, len(seq), width))
    return "".join(out).encode("ascii")


def layout(data: bytes, codec: str, cuts: List[int]) -> Tuple[bytes, str]:
    edges = [0] + sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    pieces = [data[a:b] for a, b in zip(edges, edges[1:])]
    if codec == "gz":
        return b"".join(gzip.compress(p, mtime=0) for p in pieces) or gzip.compress(b""), ".gz"
    if codec == "bz2":
        return b"".join(bz2.compress(p) for p in pieces) or bz2.compress(b""), ".bz2"
    return data, ""


def count_records(part: Any) -> int:
    return sum(1 for _ in part)


class FastxContract:
    base: str
    cache_url: str
    options: Dict[str, Any] = {}
    examples = 40

    def put(self, name: str, data: bytes) -> str:
        url = self.base + name
        backend, key = storage_for(url, self.options)
        backend.put(key, data)
        return url

    def parts(self, url: str, **kw: Any) -> List[Any]:
        kw.setdefault("index_cache", self.cache_url)
        return list(objects(url, storage_options=self.options, **kw))

    def records(self, parts: List[Any]) -> List[Any]:
        clones = [pickle.loads(pickle.dumps(p)) for p in parts]
        self.assertEqual([p.part for p in parts], list(range(len(parts))))
        return [r for p in clones for r in p]

    def test_fastq_property(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(fastq_records(), st.integers(1, 300), st.sampled_from(["", "gz", "bz2"]),
               st.lists(st.integers(0, 3000), max_size=4), st.booleans(), st.booleans())
        def check(recs: List[Tuple[str, str, str]], chunk: int, codec: str, cuts: List[int],
                  plus_name: bool, crlf: bool) -> None:
            blob, ext = layout(fastq_bytes(recs, plus_name, crlf), codec, cuts)
            url = self.put(f"{uuid.uuid4().hex[:8]}.fastq{ext}", blob)
            parts = self.parts(url, chunk_size=chunk)  # detected from the extension
            self.assertTrue(all(p.format == "fastq" for p in parts))
            self.assertEqual(self.records(parts), [FastqRecord(*r) for r in recs])
        check()

    def test_fasta_property(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(fasta_records(), st.integers(1, 300), st.sampled_from(["", "gz", "bz2"]),
               st.lists(st.integers(0, 3000), max_size=4), st.integers(1, 80))
        def check(recs: List[Tuple[str, str]], chunk: int, codec: str, cuts: List[int],
                  width: int) -> None:
            blob, ext = layout(fasta_bytes(recs, width), codec, cuts)
            url = self.put(f"{uuid.uuid4().hex[:8]}.fa{ext}", blob)
            parts = self.parts(url, chunk_size=chunk)
            self.assertTrue(all(p.format == "fasta" for p in parts))
            self.assertEqual(self.records(parts),
                             [FastaRecord(n.strip(), s) for n, s in recs])
        check()

    def test_quality_lines_that_look_like_records(self) -> None:
        # Every quality line is a plausible header and every "+" line a plausible
        # quality: only counting lines from the start tells them apart.
        recs = [(f"r{i}", "A" * 3, "@+@" if i % 2 else "+@+") for i in range(300)]
        data = fastq_bytes(recs, plus_name=True)
        url = self.put("tricky.fq", data)
        for chunk in (1, 7, 13, 50, 101):
            with self.subTest(chunk=chunk):
                parts = self.parts(url, chunk_size=chunk, format="fastq")
                self.assertEqual(self.records(parts), [FastqRecord(*r) for r in recs])

    def test_malformed_fastq_fails_on_its_part_only(self) -> None:
        recs = [(f"r{i}", "ACGT", "IIII") for i in range(400)]
        data = bytearray(fastq_bytes(recs))
        at = data.index(b"@r250\n")
        data[at + 6:at + 10] = b"ACG\n"[:4]  # sequence shorter than its quality
        data = bytes(data).replace(b"@r250\nACG\n\n", b"@r250\nACG\n", 1)
        url = self.put("bad.fastq", data)
        parts = self.parts(url, chunk_size=1000)
        good, errors = 0, []
        for p in parts:
            try:
                good += count_records(p)
            except FormatError as exc:
                errors.append(str(exc))
        self.assertEqual(len(errors), 1, errors)
        self.assertIn(url, errors[0])
        self.assertIn("FASTQ", errors[0])
        self.assertGreater(good, 300)

    def test_detection_and_fasta_errors(self) -> None:
        self.assertEqual(detect(b"@r\nA\n+\nI\n", "x/reads.fastq"), "fastq")
        self.assertEqual(detect(gzip.compress(b">a\nAC\n"), "x/genome.fna.gz"), "fasta")
        self.assertEqual(detect(b">a\nAC\n", "x/genome.FASTA"), "fasta")
        self.assertEqual(detect(b">a\nAC\n", "x/genome.txt"), "lines")
        url = self.put("notfasta.fa", b"ACGT\n>a\nAC\n")
        with self.assertRaises(FormatError) as cm:
            [r for p in self.parts(url, chunk_size=100) for r in p]
        self.assertIn("before any '>' header", str(cm.exception))
        empty = self.put("empty.fq", b"")
        self.assertEqual(self.records(self.parts(empty, chunk_size=10)), [])

    def test_count_end_to_end(self) -> None:
        recs = [(f"r{i}", "ACGT" * (i % 9), "@+!I" * (i % 9)) for i in range(3000)]
        data = fastq_bytes(recs)
        blob, _ext = layout(data, "gz", list(range(0, len(data), 5000)))  # BGZF-like members
        url = self.put("e2e/reads.fastq.gz", blob)
        with tempfile.TemporaryDirectory() as tmp:
            with CloudPoolExecutor(2, storage="file://" + tmp + "/run") as ex:
                got = list(ex.map(count_records, objects(url, chunk_size=20000,
                                                         storage_options=self.options,
                                                         index_cache=self.cache_url)))
        self.assertGreater(len(got), 3)
        self.assertEqual(sum(got), len(recs))


class LocalFastxTests(FastxContract, unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cloudpool-fastx-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.base = "file://" + self.tmp + "/data/"
        self.cache_url = self.tmp + "/index"


class S3FastxTests(FastxContract, unittest.TestCase):
    examples = 8

    @classmethod
    def setUpClass(cls) -> None:
        from tests.servers import moto_s3
        server = moto_s3()
        cls._env = mock.patch.dict(os.environ, server.env)  # forked workers inherit it
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "fastx-" + uuid.uuid4().hex[:8]
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


if __name__ == "__main__":
    unittest.main()
