"""LAS/LAZ partitioning (``cloudpool.formats.lidar``) on local disk and S3 (moto).

Files are written by laspy (LAZ through lazrs) with chosen point counts and chunk
sizes; every check compares with ``laspy.read`` of the whole object in this process.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import pickle
import unittest
from typing import Any, List

import laspy
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudpool import CloudPoolExecutor, objects
from cloudpool.formats import FormatError
from cloudpool.formats.lidar import LidarPart

try:
    from tests._format_stores import LocalStore, S3Store
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _format_stores import LocalStore, S3Store  # type: ignore[no-redef]


def las_bytes(n: int, *, laz: bool = False, point_format: int = 3, seed: int = 0) -> bytes:
    """A LAS (or LAZ, lazrs: 50 000-point chunks) file of ``n`` known points."""
    header = laspy.LasHeader(point_format=point_format, version="1.4" if point_format >= 6 else "1.2")
    header.scales = np.array([0.01, 0.01, 0.001])
    header.offsets = np.array([300000.0, 5900000.0, 0.0])
    las = laspy.LasData(header)
    rng = np.random.default_rng(seed)
    las.x = 300000.0 + rng.uniform(0, 1000, n)
    las.y = 5900000.0 + rng.uniform(0, 1000, n)
    las.z = rng.uniform(0, 60, n)
    las.intensity = np.arange(n) % 65535
    las.point_source_id = np.arange(n) // 65535
    buf = io.BytesIO()
    if laz:
        las.write(buf, do_compress=True, laz_backend=laspy.LazBackend.Lazrs)
    else:
        las.write(buf)
    return buf.getvalue()


def laz_variable_chunks(sizes: List[int], seed: int = 0) -> bytes:
    """A LAZ file with variable-size chunks of ``sizes`` points (as COPC files have),
    through laspy's lazrs writer with the VLR switched to variable-size chunks and a
    chunk closed after each batch."""
    from unittest import mock

    import lazrs
    from laspy._compression import lazrsbackend

    data = laspy.read(io.BytesIO(las_bytes(sum(sizes), seed=seed)))
    new_vlr = lazrs.LazVlr.new_for_compression

    def variable(point_format_id: int, num_extra_bytes: int) -> Any:
        return new_vlr(point_format_id, num_extra_bytes, use_variable_size_chunks=True)

    def write_points(self: Any, points: Any) -> None:
        self.compressor.compress_many(np.frombuffer(points.array, np.uint8))
        self.compressor.finish_current_chunk()

    buf = io.BytesIO()
    with mock.patch.object(lazrs.LazVlr, "new_for_compression", staticmethod(variable)), \
            mock.patch.object(lazrsbackend.LazrsPointWriter, "write_points", write_points):
        with laspy.LasWriter(buf, data.header, do_compress=True, laz_backend=laspy.LazBackend.Lazrs,
                             closefd=False) as w:
            start = 0
            for n in sizes:
                w.write_points(data.points[start:start + n])
                start += n
    return buf.getvalue()


def intensity_sum(part: LidarPart) -> int:
    """Runs on a worker: the sum of intensities over the part's points."""
    total = 0
    for record in part:
        total += int(np.asarray(record.intensity, dtype=np.int64).sum())
    return total


class LidarContract:
    examples = 12

    def parts(self, url: Any, **kw: Any) -> List[LidarPart]:
        return list(objects(url, format="lidar", storage_options=self.options, **kw))

    def check_all(self, data: bytes, parts: List[LidarPart]) -> None:
        ref = laspy.read(io.BytesIO(data))
        records = [pickle.loads(pickle.dumps(p)).points() for p in parts]
        self.assertEqual(sum(len(r) for r in records), len(ref.points))
        first = 0
        for p, r in zip(parts, records):
            self.assertEqual((p.first_point, p.num_points), (first, len(r)))
            first += len(r)
        if len(ref.points):
            for dim in ("x", "y", "z", "X", "intensity", "point_source_id"):
                got = np.concatenate([np.asarray(getattr(r, dim)) for r in records])
                np.testing.assert_array_equal(got, np.asarray(getattr(ref, dim)), dim)

    def test_las_every_point_in_exactly_one_part(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(n=st.integers(0, 2000), how=st.sampled_from(["chunks", "chunk_size"]), k=st.integers(1, 40),
               fmt=st.sampled_from([1, 3, 6]))
        def check(n: int, how: str, k: int, fmt: int) -> None:
            data = las_bytes(n, point_format=fmt)
            url = self.put("t.las", data)
            parts = self.parts(url, **({"chunks": k} if how == "chunks" else {"chunk_size": k * 1000}))
            self.check_all(data, parts)
            rec = parts[0].header.point_format.size
            for p in parts:  # each part reads exactly its records, in one GET
                clone = pickle.loads(pickle.dumps(p))
                clone.points()
                self.assertEqual(clone.stats.bytes, p.num_points * rec)
                self.assertLessEqual(clone.stats.requests, 1)

        check()

    def test_laz_parts_are_chunks(self) -> None:
        n = 120_001  # lazrs' default chunk is 50 000 points: 3 chunks, a short last one
        data = las_bytes(n, laz=True)
        url = self.put("t.laz", data)
        parts = self.parts(url, chunk_size=1)  # every chunk is bigger: one chunk per part
        self.assertEqual([p.num_points for p in parts], [50000, 50000, 20001])
        self.check_all(data, parts)
        grouped = self.parts(url, chunks=2)
        self.assertEqual(len(grouped), 2)
        self.check_all(data, grouped)
        for p in parts:
            clone = pickle.loads(pickle.dumps(p))
            clone.points()
            self.assertEqual(clone.stats.bytes, p.byte_range[1] - p.byte_range[0])
            self.assertLess(clone.stats.bytes, len(data) / 2)

    def test_las_and_laz_are_names_for_the_same_format(self) -> None:
        las_url, laz_url = self.put("a.las", las_bytes(100)), self.put("a.laz", las_bytes(100, laz=True))
        for fmt in ("las", "laz", "lidar"):
            for url in (las_url, laz_url):
                parts = list(objects(url, format=fmt, storage_options=self.options))
                self.assertEqual(sum(len(p.points()) for p in parts), 100, (fmt, url))
        detected = list(objects([las_url, laz_url], storage_options=self.options))
        self.assertEqual([(type(p).__name__, p.compressed) for p in detected],
                         [("LidarPart", False), ("LidarPart", True)])

    def test_laz_with_variable_size_chunks(self) -> None:
        sizes = [7, 3000, 1, 450, 12]
        data = laz_variable_chunks(sizes)
        url = self.put("v.laz", data)
        parts = self.parts(url, chunk_size=1)
        self.assertEqual([p.num_points for p in parts], sizes)
        self.check_all(data, parts)
        self.check_all(data, self.parts(url, chunks=2))

    def test_adversarial_layouts(self) -> None:
        for name, data, kw in (("one.las", las_bytes(1), {"chunks": 8}),
                               ("empty.las", las_bytes(0), {}),
                               ("one.laz", las_bytes(1, laz=True), {"chunks": 4}),
                               ("onechunk.laz", las_bytes(777, laz=True), {"chunks": 4}),
                               ("empty.laz", las_bytes(0, laz=True), {}),
                               ("fmt6.laz", las_bytes(1234, laz=True, point_format=6), {"chunks": 3})):
            url = self.put(name, data)
            parts = self.parts(url, **kw)
            self.assertEqual(len(parts), 1, name)
            self.check_all(data, parts)

    def test_bad_files_fail_on_their_own_part(self) -> None:
        good = las_bytes(3000)
        good_url = self.put("good.las", good)
        laz = las_bytes(1000, laz=True)
        bad = {self.put("junk.las", b"not a las file at all" * 10): "does not start with b'LASF'",
               self.put("short.las", good[:len(good) // 2]): "truncated",
               self.put("cut.laz", laz[:len(laz) - 40]): "chunk table"}
        parts = self.parts(good_url, chunks=3) + self.parts(list(bad))
        self.assertEqual(len(parts), 6)
        for url, what in bad.items():
            part = next(p for p in parts if p.url.endswith(url))
            with self.assertRaises(FormatError) as ctx:  # a ValueError
                part.points()
            self.assertIn(url, str(ctx.exception))
            self.assertIn(what, str(ctx.exception))
        with CloudPoolExecutor(2) as ex:
            futures = {ex.submit(intensity_sum, p): p for p in parts}
            cf.wait(futures)
        ok = [f.result() for f, p in futures.items() if p.url.endswith(good_url)]
        self.assertEqual(sum(ok), int(laspy.read(io.BytesIO(good)).intensity.astype(np.int64).sum()))
        self.assertTrue(all(isinstance(f.exception(), ValueError) for f, p in futures.items() if not p.url.endswith(good_url)))

    def test_detected_by_magic_bytes_without_format(self) -> None:
        # A misleading extension: the magic bytes decide.
        url = self.put("data.bin", las_bytes(10))
        parts = list(objects(url, storage_options=self.options))
        self.assertTrue(parts and all(isinstance(p, LidarPart) for p in parts), parts)

    def test_end_to_end_through_the_executor(self) -> None:
        data = las_bytes(110_000, laz=True, seed=7)
        url = self.put("e.laz", data)
        with CloudPoolExecutor(2) as ex:
            sums = list(ex.map(intensity_sum, self.parts(url, chunk_size=1)))
        self.assertEqual(len(sums), 3)
        self.assertEqual(sum(sums), int(laspy.read(io.BytesIO(data)).intensity.astype(np.int64).sum()))


class LocalLidarTests(LocalStore, LidarContract, unittest.TestCase):
    pass


class S3LidarTests(S3Store, LidarContract, unittest.TestCase):
    examples = 4


if __name__ == "__main__":
    unittest.main()
