"""Write two synthetic Sentinel-2 L2A scenes (B04 red, B08 NIR) as Cloud-Optimised GeoTIFFs.

    python examples/make_sentinel2_scenes.py /tmp/scenes                 # 1100 x 1100 px
    python examples/make_sentinel2_scenes.py s3://bucket/scenes --size 10980

The files have the layout of the public Sentinel-2 COG bucket: one object per band,
``<url>/<scene>/B04.tif`` and ``<url>/<scene>/B08.tif``, uint16 reflectance scaled by
10000 with nodata 0, 10 m pixels on a UTM grid (EPSG:32633, a tile's corner at
300000 E / 5900040 N), DEFLATE-compressed square internal tiles and overviews, written
by rio-cogeo. The second date differs from the first in ways NDVI shows: harvested
fields, a burn scar, a cloud, and a slightly different no-data edge.

The content is generated strip by strip from a fixed seed, so a full-size 10980 px
scene needs about 100 MB of memory, and the same ``--size``/``--seed`` always gives
the same pixels. Any storage URL cloudpool knows works as the destination (a local
directory, ``s3://``, ``gs://``, ``az://``, ``cos://``); the COGs are written to a
temporary local file first and then uploaded with ``cloudpool.Storage``.

Prints one ``scene: URL`` line per scene, ready to hand to ``examples/ndvi_diff.py``.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from typing import List, Sequence, Tuple

try:  # the geo extra, checked first so that a missing package is named with its fix
    import numpy as np
    import rasterio
    import rio_cogeo  # noqa: F401  (used in _write_cog)
except ModuleNotFoundError as _exc:
    _message = (f"{os.path.basename(__file__)} needs the {_exc.name!r} package, from cloudpool's "
                f"geo extra: pip install 'cloudpool[geo]'")
    if __name__ == "__main__":
        sys.exit(_message)
    raise ModuleNotFoundError(_message, name=_exc.name) from None
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

#: The real tiles' georeferencing: UTM zone 33N, 10 m pixels.
EPSG = 32633
ORIGIN = (300000.0, 5900040.0)
PIXEL = 10.0
#: Two acquisition dates of the same tile (names follow the public bucket's scheme).
SCENES = ("S2B_33UUP_20230605_0_L2A", "S2B_33UUP_20230725_0_L2A")
BANDS = ("B04", "B08")
#: Rows generated at once (the seed of a strip's noise depends on its index, so this is
#: part of what makes the output reproducible: do not change it lightly).
STRIP = 512
#: Parcels are squares of this many pixels (500 m), each with one land cover.
PARCEL = 50

# Land covers and their surface reflectance (red, NIR) on the first date.
_COVERS = {
    "crop": (0.04, 0.42),
    "forest": (0.03, 0.30),
    "grass": (0.06, 0.28),
    "bare": (0.16, 0.24),
    "water": (0.02, 0.01),
    "urban": (0.14, 0.18),
}
_COVER_NAMES = tuple(_COVERS)
_COVER_WEIGHTS = (0.34, 0.2, 0.2, 0.1, 0.06, 0.1)


def default_blocksize(size: int) -> int:
    """About an eighth of the scene side as a power of two, capped at the real files' 1024.

    A 10980 px scene gets 1024 px tiles, as in the public bucket; a 1100 px test scene
    gets 128 px tiles, so a window of an 11 x 11 grid spans a few tiles, as it does at
    full size.
    """
    return int(min(1024, max(64, 2 ** math.floor(math.log2(max(1, size) / 8)))))


def _parcel_map(size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-parcel land cover index and whether the parcel is harvested on date 2."""
    n = -(-size // PARCEL)
    rng = np.random.default_rng(seed)
    covers = rng.choice(len(_COVER_NAMES), size=(n, n), p=_COVER_WEIGHTS)
    harvested = (covers == _COVER_NAMES.index("crop")) & (rng.random((n, n)) < 0.35)
    return covers, harvested


def _strip(size: int, row0: int, rows: int, date: int, covers: np.ndarray,
           harvested: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The red and NIR digital numbers (uint16) of rows ``[row0, row0 + rows)``."""
    y, x = np.mgrid[row0:row0 + rows, 0:size].astype(np.float64)
    cover = covers[(y // PARCEL).astype(int), (x // PARCEL).astype(int)]
    red = np.zeros((rows, size))
    nir = np.zeros((rows, size))
    for index, name in enumerate(_COVER_NAMES):
        r, n = _COVERS[name]
        red[cover == index] = r
        nir[cover == index] = n
    # Smooth regional variation (soil moisture, phenology) on a ~5 km scale.
    u, v = x / size, y / size
    vigour = 1.0 + 0.15 * np.sin(2 * math.pi * 1.7 * u + 1.0) * np.cos(2 * math.pi * 1.3 * v)
    nir *= vigour
    if date == 1:
        # Harvest: cut fields look like bare soil.
        cut = harvested[(y // PARCEL).astype(int), (x // PARCEL).astype(int)]
        red[cut], nir[cut] = _COVERS["bare"]
        # A burn scar (a disc) darkens NIR sharply.
        burn = (u - 0.3) ** 2 + (v - 0.65) ** 2 < 0.08 ** 2
        red[burn], nir[burn] = 0.07, 0.09
        # A cloud: bright in both bands, NDVI near zero.
        cloud = np.exp(-(((u - 0.72) / 0.06) ** 2 + ((v - 0.25) / 0.04) ** 2))
        red += 0.6 * cloud
        nir += 0.6 * cloud
    noise = np.random.default_rng([seed, date, row0 // STRIP])
    # Sensor and surface noise, proportional to the signal (dark water stays dark).
    red *= 1.0 + noise.normal(0.0, 0.05, red.shape)
    nir *= 1.0 + noise.normal(0.0, 0.05, nir.shape)
    red_dn = np.clip(np.rint(red * 10000), 1, 65535).astype(np.uint16)
    nir_dn = np.clip(np.rint(nir * 10000), 1, 65535).astype(np.uint16)
    # The edge of the satellite's swath: no data (0) beyond a slanted line, a little
    # further in on the second date (another orbit's footprint).
    edge = 0.86 + 0.08 * v - (0.02 if date == 1 else 0.0)
    outside = u > edge
    red_dn[outside] = 0
    nir_dn[outside] = 0
    return red_dn, nir_dn


def _write_cog(path_tmp: str, dst: str, size: int, blocksize: int, date: int, band: int,
               covers: np.ndarray, harvested: np.ndarray, seed: int) -> None:
    """Write one band: a tiled GeoTIFF first, then rio-cogeo turns it into a COG."""
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": 1, "width": size, "height": size,
        "crs": CRS.from_epsg(EPSG), "transform": Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]),
        "nodata": 0, "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
        "compress": "DEFLATE",
    }
    with rasterio.open(path_tmp, "w", **profile) as out:
        for row0 in range(0, size, STRIP):
            rows = min(STRIP, size - row0)
            red, nir = _strip(size, row0, rows, date, covers, harvested, seed)
            out.write(red if band == 0 else nir, 1, window=Window(0, row0, size, rows))
        out.update_tags(BAND=BANDS[band], SCALE_FACTOR="0.0001", SCENE=SCENES[date])
    cog = cog_profiles.get("deflate")
    cog.update(blockxsize=blocksize, blockysize=blocksize, predictor=2)
    cog_translate(path_tmp, dst, cog, nodata=0, overview_resampling="average", quiet=True,
                  forward_band_tags=True, config={"GDAL_TIFF_OVR_BLOCKSIZE": str(blocksize)})


def make_scenes(url: str, size: int = 1100, blocksize: int = 0, seed: int = 20230605) -> List[str]:
    """Write both scenes under ``url``; returns the two scene prefixes (URLs or paths)."""
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, not {size}")
    blocksize = blocksize or default_blocksize(size)
    if blocksize % 16:
        raise ValueError(f"--blocksize must be a multiple of 16 (GeoTIFF tiles), not {blocksize}")
    covers, harvested = _parcel_map(size, seed)
    remote = "://" in url and not url.startswith("file://")
    base = url.rstrip("/")
    if not remote:
        base = os.path.abspath(base[len("file://"):] if base.startswith("file://") else base)
    prefixes = []
    with tempfile.TemporaryDirectory(prefix="s2-synthetic-") as tmp:
        for date, scene in enumerate(SCENES):
            for band, name in enumerate(BANDS):
                plain = os.path.join(tmp, f"{scene}-{name}-plain.tif")
                cog = os.path.join(tmp, f"{scene}-{name}.tif")
                _write_cog(plain, cog, size, blocksize, date, band, covers, harvested, seed)
                if remote:
                    from cloudpool import Storage

                    with open(cog, "rb") as src, Storage(f"{base}/{scene}").open(f"{name}.tif", "wb") as dst:
                        shutil.copyfileobj(src, dst, 8 << 20)
                else:
                    os.makedirs(os.path.join(base, scene), exist_ok=True)
                    shutil.move(cog, os.path.join(base, scene, f"{name}.tif"))
                os.unlink(plain)
            prefixes.append(f"{base}/{scene}/")
    return prefixes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="where to write: a local directory or a storage URL (s3://bucket/prefix)")
    parser.add_argument("--size", type=int, default=1100, help="scene width and height in pixels "
                        "(default 1100; a real scene is 10980)")
    parser.add_argument("--blocksize", type=int, default=0, help="internal tile size in pixels "
                        "(default: size/8 as a power of two, at most 1024)")
    parser.add_argument("--seed", type=int, default=20230605)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    prefixes = make_scenes(args.url, size=args.size, blocksize=args.blocksize, seed=args.seed)
    elapsed = time.perf_counter() - start
    pixels = 2 * len(BANDS) * args.size ** 2
    print(f"wrote 2 scenes x {len(BANDS)} bands of {args.size} x {args.size} px "
          f"(tiles {args.blocksize or default_blocksize(args.size)} px) in {elapsed:.2f} s, "
          f"{pixels / elapsed / 1e6:.1f} Mpx/s")
    for prefix in prefixes:
        print(f"scene: {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
