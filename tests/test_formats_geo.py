"""Cloud-Optimized GeoTIFF windows (``cloudpool.formats.cog``) on local disk and S3 (moto).

Rasters are written by rasterio itself (GDAL's COG driver for tiled files, the GTiff
driver in strips for the bad case); every window is compared with rasterio's read of
the whole raster in this process, and bytes are counted by the parts' own ``stats``.
"""
from __future__ import annotations

import concurrent.futures as cf
import pickle
import unittest
from typing import Any, List

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.windows import transform as window_transform

from cloudpool import CloudPoolExecutor, objects
from cloudpool.formats import FormatError
from cloudpool.formats.cog import CogPart

try:
    from tests._format_stores import LocalStore, S3Store
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _format_stores import LocalStore, S3Store  # type: ignore[no-redef]


def raster(height: int, width: int, count: int = 1, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth-ish values so DEFLATE compresses the tiles unevenly, like real scenes.
    base = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint16)
    return np.stack([base + rng.integers(0, 50, (height, width), dtype=np.uint16) * (b + 1)
                     for b in range(count)])


def geotiff_bytes(data: np.ndarray, *, block: int = 64, cog: bool = True, interleave: str = "pixel",
                  origin: float = 300000.0) -> bytes:
    """A COG (GDAL's COG driver, pixel-interleaved, tiles of 128 px or more); for smaller
    tiles or ``interleave="band"`` a tiled GeoTIFF (GTiff driver: not the COG layout, still
    windowable); with ``cog=False`` a GeoTIFF in strips."""
    count, height, width = data.shape
    profile = dict(width=width, height=height, count=count, dtype=str(data.dtype), crs="EPSG:32633",
                   transform=from_origin(origin, 5900040.0, 10, 10), compress="deflate")
    if cog and (interleave == "band" or block < 128):
        # GDAL's COG driver wants tiles of 128 px or more and writes pixel interleave.
        profile.update(driver="GTiff", tiled=True, blockxsize=block, blockysize=block,
                       interleave=interleave)
    elif cog:
        profile.update(driver="COG", blocksize=block)
    else:
        profile.update(driver="GTiff", tiled=False)  # strips
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        return mem.read()


def window_sum(part: CogPart) -> float:
    """Runs on a worker: the sum of the window over every raster of the part."""
    return float(sum(a.astype(np.float64).sum() for a in part.read()))


class CogContract:
    examples = 12
    window_stride = 1  # check every window (S3: every n-th, each costs 3 HTTP requests)

    def parts(self, urls: Any, **kw: Any) -> List[CogPart]:
        return list(objects(urls, format="cog", storage_options=self.options, **kw))

    def test_every_pixel_in_exactly_one_window(self) -> None:
        @settings(max_examples=self.examples, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(h=st.integers(1, 300), w=st.integers(1, 300), block=st.sampled_from([16, 32, 128]),
               grid=st.one_of(st.none(), st.tuples(st.integers(1, 12), st.integers(1, 12))),
               blocks=st.tuples(st.integers(1, 3), st.integers(1, 3)), snapped=st.booleans(),
               count=st.integers(1, 3), interleave=st.sampled_from(["band", "pixel"]))
        def check(h: int, w: int, block: int, grid: Any, blocks: Any, snapped: bool, count: int,
                  interleave: str) -> None:
            data = raster(h, w, count)
            url = self.put("r.tif", geotiff_bytes(data, block=block, interleave=interleave))
            parts = self.parts(url, grid=grid, blocks=blocks, block_aligned=snapped)
            seen = np.zeros((h, w), dtype=int)
            out = np.zeros_like(data)
            for p in parts:
                clone = pickle.loads(pickle.dumps(p))
                (arr,) = clone.read()
                self.assertEqual(arr.shape, (count, p.height, p.width))
                out[:, p.row_off:p.row_off + p.height, p.col_off:p.col_off + p.width] = arr
                seen[p.row_off:p.row_off + p.height, p.col_off:p.col_off + p.width] += 1
                if snapped or grid is None:  # window edges on tile boundaries (or the raster's)
                    for edge, total in ((p.row_off, h), (p.col_off, w)):
                        self.assertTrue(edge % block == 0 or edge == total, (edge, block))
            self.assertTrue((seen == 1).all())
            np.testing.assert_array_equal(out, data)
            if grid is not None and not snapped:
                self.assertEqual(len(parts), min(grid[0], h) * min(grid[1], w))

        check()

    def test_window_reads_only_its_tiles(self) -> None:
        data = raster(1100, 1100, seed=1)
        url = self.put("B04.tif", geotiff_bytes(data, block=128))
        parts = self.parts(url, grid=(11, 11))
        self.assertEqual(len(parts), 121)
        total_read = total_tiles = 0
        for p in parts[::self.window_stride]:
            clone = pickle.loads(pickle.dumps(p))
            (arr,) = clone.read(1)
            np.testing.assert_array_equal(arr, data[0, p.row_off:p.row_off + 100, p.col_off:p.col_off + 100])
            tiles = sum(hi - lo for lo, hi in p.tile_ranges[0])
            # The header plus exactly the window's tiles; one GET for the header and one
            # per run of contiguous tiles (at most one per tile row it touches).
            self.assertLessEqual(clone.stats.bytes, 1.2 * tiles, p)
            self.assertLessEqual(clone.stats.requests, 1 + 2, p)
            total_read += clone.stats.bytes
            total_tiles += tiles
        self.assertLess(total_read, 1.2 * total_tiles)

    def test_aligned_bands_share_windows(self) -> None:
        red, nir = raster(150, 130, seed=2), raster(150, 130, seed=3)
        urls = [self.put("B04.tif", geotiff_bytes(red, block=32)),
                self.put("B08.tif", geotiff_bytes(nir, block=32))]
        parts = self.parts(urls, grid=(3, 4), align=True)
        self.assertEqual(len(parts), 12)
        for p in parts:
            self.assertEqual(len(p.urls), 2)
            self.assertTrue(all(u.endswith(v) for u, v in zip(p.urls, urls)), p.urls)
            a, b = p.read(1)
            win = np.s_[p.row_off:p.row_off + p.height, p.col_off:p.col_off + p.width]
            np.testing.assert_array_equal(a, red[0][win])
            np.testing.assert_array_equal(b, nir[0][win])
            expected = window_transform(p.window, from_origin(300000.0, 5900040.0, 10, 10))
            self.assertEqual(p.transform, tuple(expected)[:6])
        # Separately (no align): each raster gets its own 12 windows.
        self.assertEqual(len(self.parts(urls, grid=(3, 4))), 24)

    def test_align_refuses_rasters_on_different_grids(self) -> None:
        a = self.put("a.tif", geotiff_bytes(raster(40, 40), block=16))
        b = self.put("b.tif", geotiff_bytes(raster(40, 40), block=16, origin=300010.0))
        with self.assertRaisesRegex(ValueError, "align=True needs rasters on one grid.*transform"):
            self.parts([a, b], grid=(2, 2), align=True)

    def test_bad_arguments(self) -> None:
        url = self.put("g.tif", geotiff_bytes(raster(20, 20), block=16))
        for grid in ((0, 3), (2,), "11x11", (1.5, 2)):
            with self.assertRaisesRegex(ValueError, "format 'cog' option grid must be"):
                self.parts(url, grid=grid)
        with self.assertRaisesRegex(ValueError, "chunk_size and chunks do not apply"):
            self.parts(url, chunks=4)
        with self.assertRaisesRegex(TypeError, "option align must be True or False"):
            self.parts(url, align="yes")

    def test_non_tiled_geotiff_fails_on_its_own_part_only(self) -> None:
        good_data = raster(100, 100)
        good = self.put("good.tif", geotiff_bytes(good_data, block=32))
        strips = self.put("strips.tif", geotiff_bytes(raster(100, 100), cog=False))
        junk = self.put("junk.tif", b"II*\x00" + b"\x00" * 100)
        parts = self.parts([good, strips, junk], grid=(2, 2))
        self.assertEqual(len(parts), 4 + 1 + 1)
        for url, what in ((strips, "not a Cloud-Optimized GeoTIFF: stored in strips"),
                          (junk, "not a GeoTIFF")):
            part = next(p for p in parts if p.url.endswith(url))
            with self.assertRaises(FormatError) as ctx:  # a ValueError
                part.read()
            self.assertIn(url, str(ctx.exception))
            self.assertIn(what, str(ctx.exception))
        with CloudPoolExecutor(2) as ex:
            futures = {ex.submit(window_sum, p): p for p in parts}
            cf.wait(futures)
        ok = [f.result() for f, p in futures.items() if p.url.endswith(good)]
        self.assertEqual(len(ok), 4)  # no other part's result lost
        self.assertEqual(sum(ok), float(good_data.astype(np.float64).sum()))
        self.assertTrue(all(isinstance(f.exception(), ValueError) for f, p in futures.items() if not p.url.endswith(good)))

    def test_one_pixel_raster_and_grid_larger_than_raster(self) -> None:
        data = raster(1, 1)
        url = self.put("px.tif", geotiff_bytes(data, block=16))
        parts = self.parts(url, grid=(11, 11))
        self.assertEqual(len(parts), 1)
        np.testing.assert_array_equal(parts[0].read()[0], data)

    def test_detected_by_magic_bytes_without_format(self) -> None:
        # A misleading extension: the magic bytes decide.
        url = self.put("data.bin", geotiff_bytes(raster(20, 20), block=16))
        parts = list(objects(url, storage_options=self.options))
        self.assertTrue(parts and all(isinstance(p, CogPart) for p in parts), parts)

    def test_end_to_end_through_the_executor(self) -> None:
        data = [raster(300, 260, seed=s) for s in (4, 5)]
        urls = [self.put(f"B{i}.tif", geotiff_bytes(d, block=64)) for i, d in enumerate(data)]
        with CloudPoolExecutor(2) as ex:
            sums = list(ex.map(window_sum, self.parts(urls, grid=(11, 11), align=True)))
        self.assertEqual(len(sums), 121)
        self.assertEqual(sum(sums), float(sum(d.astype(np.float64).sum() for d in data)))


class LocalCogTests(LocalStore, CogContract, unittest.TestCase):
    pass


class S3CogTests(S3Store, CogContract, unittest.TestCase):
    examples = 4
    window_stride = 6


if __name__ == "__main__":
    unittest.main()
