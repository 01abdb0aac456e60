"""imzML partitioning (``cloudpool.formats.imzml``) on local disk and S3 (moto).

Images are written by pyimzml's own writer (processed and continuous modes); every
check compares with ``pyimzml``'s parser reading the same files in this process. The
offsets index goes to an index cache in a temporary directory, so the tests can see
it being built once, reused, and rebuilt when the XML changes.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import tempfile
import unittest
from typing import Any, Dict, List, Tuple

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyimzml.ImzMLParser import ImzMLParser
from pyimzml.ImzMLWriter import ImzMLWriter

from cloudpool import CloudPoolExecutor, objects
from cloudpool.formats import FormatError, IndexCache
from cloudpool.formats.imzml import ImzmlPart

try:
    from tests._format_stores import LocalStore, S3Store
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _format_stores import LocalStore, S3Store  # type: ignore[no-redef]


def imzml_files(shape: Tuple[int, int], mode: str = "processed", seed: int = 0) -> Tuple[bytes, bytes]:
    """``(.imzML bytes, .ibd bytes)`` of an image of ``shape`` pixels, by pyimzml's writer."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image.imzML")
        shared = np.sort(rng.uniform(100, 1000, 12))
        with ImzMLWriter(path, mode=mode) as w:
            for y in range(1, shape[0] + 1):
                for x in range(1, shape[1] + 1):
                    n = int(rng.integers(1, 40)) if mode == "processed" else len(shared)
                    mz = np.sort(rng.uniform(100, 1000, n)) if mode == "processed" else shared
                    w.addSpectrum(mz, rng.random(n).astype(np.float32), (x, y, 1))
        with open(path, "rb") as f:
            xml = f.read()
        with open(os.path.join(tmp, "image.ibd"), "rb") as f:
            ibd = f.read()
    return xml, ibd


def reference(xml: bytes, ibd: bytes) -> List[Tuple[Any, Any, Any]]:
    import io

    p = ImzMLParser(io.BytesIO(xml), ibd_file=io.BytesIO(ibd))
    return [(tuple(p.coordinates[i]),) + tuple(p.getspectrum(i)) for i in range(len(p.coordinates))]


def tic(part: ImzmlPart) -> Dict[Tuple[int, ...], float]:
    """Runs on a worker: total ion count per pixel."""
    return {tuple(c): float(i.sum(dtype=np.float64)) for c, _mz, i in part}


class ImzmlContract:
    examples = 8

    def setUp(self) -> None:
        self._cache_dir = tempfile.TemporaryDirectory()
        self.cache = IndexCache(self._cache_dir.name)

    def tearDown(self) -> None:
        self._cache_dir.cleanup()

    def put_image(self, xml: bytes, ibd: bytes) -> str:
        url = self.put("image.imzML", xml)
        base = url[:-len("image.imzML")]
        if base.startswith("s3://"):
            bucket, key = base[len("s3://"):].split("/", 1)
            self.s3.put_object(Bucket=bucket, Key=key + "image.ibd", Body=ibd)
        else:
            with open(base + "image.ibd", "wb") as f:
                f.write(ibd)
        return url

    def parts(self, url: Any, **kw: Any) -> List[ImzmlPart]:
        return list(objects(url, format="imzml", storage_options=self.options,
                            index_cache=self.cache, **kw))

    def check_all(self, xml: bytes, ibd: bytes, parts: List[ImzmlPart]) -> None:
        expected = reference(xml, ibd)
        got = [s for p in parts for s in pickle.loads(pickle.dumps(p))]
        self.assertEqual(len(got), len(expected))
        for (c, mz, i), (ec, emz, ei) in zip(got, expected):
            self.assertEqual(c, ec)
            np.testing.assert_array_equal(mz, emz)
            np.testing.assert_array_equal(i, ei)
        self.assertEqual([p.first for p in parts], [sum(q.count for q in parts[:k]) for k in range(len(parts))])

    def test_every_spectrum_in_exactly_one_part(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(h=st.integers(1, 6), w=st.integers(1, 6), mode=st.sampled_from(["processed", "continuous"]),
               how=st.sampled_from(["chunks", "chunk_size"]), k=st.integers(1, 12))
        def check(h: int, w: int, mode: str, how: str, k: int) -> None:
            xml, ibd = imzml_files((h, w), mode)
            url = self.put_image(xml, ibd)
            parts = self.parts(url, **({"chunks": k} if how == "chunks" else {"chunk_size": k * 100}))
            if how == "chunks":
                self.assertLessEqual(len(parts), k)
            self.check_all(xml, ibd, parts)

        check()

    def test_a_part_reads_only_its_spectra_in_one_get(self) -> None:
        xml, ibd = imzml_files((10, 10))
        url = self.put_image(xml, ibd)
        parts = self.parts(url, chunks=5)
        self.assertEqual(len(parts), 5)
        for p in parts:
            clone = pickle.loads(pickle.dumps(p))
            spectra = list(clone)
            own = sum(mz.nbytes + i.nbytes for _c, mz, i in spectra)
            self.assertEqual(clone.stats.requests, 1)
            self.assertEqual(clone.stats.bytes, own)  # contiguous: exactly its arrays
            self.assertLess(len(pickle.dumps(p)), 200 * p.count + 2000)  # small parts

    def test_the_xml_is_parsed_once_and_the_index_reused(self) -> None:
        xml, ibd = imzml_files((4, 5))
        url = self.put_image(xml, ibd)
        self.check_all(xml, ibd, self.parts(url, chunks=3))
        self.assertEqual((self.cache.hits, self.cache.misses), (0, 1))
        self.check_all(xml, ibd, self.parts(url, chunks=3))
        self.assertEqual((self.cache.hits, self.cache.misses), (1, 1))
        # A changed image (a new XML and binary) invalidates the stored index.
        xml2, ibd2 = imzml_files((3, 3), seed=9)
        base = url[:-len("image.imzML")]
        if base.startswith("s3://"):
            bucket, key = base[len("s3://"):].split("/", 1)
            self.s3.put_object(Bucket=bucket, Key=key + "image.imzML", Body=xml2)
            self.s3.put_object(Bucket=bucket, Key=key + "image.ibd", Body=ibd2)
        else:
            for name, data in (("image.imzML", xml2), ("image.ibd", ibd2)):
                with open(base + name, "wb") as f:
                    f.write(data)
        self.check_all(xml2, ibd2, self.parts(url, chunks=3))
        self.assertEqual((self.cache.hits, self.cache.misses), (1, 2))

    def test_listing_a_folder_gives_parts_per_image_not_per_ibd(self) -> None:
        xml, ibd = imzml_files((2, 3))
        url = self.put_image(xml, ibd)
        folder = url[:-len("image.imzML")]
        parts = self.parts(folder, chunks=2)
        self.assertEqual(len(parts), 2)
        self.assertTrue(all(p.url.endswith("image.imzML") for p in parts))

    def test_bad_images_fail_on_their_own_part(self) -> None:
        xml, ibd = imzml_files((3, 3))
        good = self.put_image(xml, ibd)
        lonely = self.put("lonely.imzML", xml)           # no .ibd beside it
        broken = self.put_image(b"<not xml", ibd)
        parts = self.parts([good, lonely, broken], chunks=2)
        self.assertEqual(len(parts), 4)
        for url, what in ((lonely, "no .ibd object beside it"), (broken, "cannot parse the imzML XML")):
            part = next(p for p in parts if p.url.endswith(url))
            with self.assertRaises(FormatError) as ctx:
                list(part)
            self.assertIn(url, str(ctx.exception))
            self.assertIn(what, str(ctx.exception))
        with CloudPoolExecutor(2) as ex:
            futures = {ex.submit(tic, p): p for p in parts}
            cf.wait(futures)
        ok = {}
        for f, p in futures.items():
            if p.url.endswith(good):
                ok.update(f.result())
            else:
                self.assertIsInstance(f.exception(), ValueError)
        expected = {c: float(i.sum(dtype=np.float64)) for c, _mz, i in reference(xml, ibd)}
        self.assertEqual(ok, expected)


class LocalImzmlTests(LocalStore, ImzmlContract, unittest.TestCase):
    pass


class S3ImzmlTests(S3Store, ImzmlContract, unittest.TestCase):
    examples = 3


if __name__ == "__main__":
    unittest.main()
