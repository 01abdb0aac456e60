"""NDVI change between two Sentinel-2 L2A scenes, one cloudpool call per window.

    python examples/ndvi_diff.py                    # makes two small synthetic scenes, runs locally
    python examples/ndvi_diff.py BEFORE AFTER --output s3://bucket/ndvi/ --backend aws_lambda

BEFORE and AFTER are scene prefixes holding one Cloud-Optimised GeoTIFF per band, as
in the public Sentinel-2 COG bucket (``<prefix>/B04.tif`` red, ``<prefix>/B08.tif``
near infrared): local directories, ``s3://bucket/.../S2B_..._L2A/`` or
``https://host/.../S2B_..._L2A/``. Both scenes must be on the same grid (the same
tile on two dates).

The four band files are handed to ``cloudpool.objects(..., format="cog", grid=(g, g),
align=True)``, which reads their headers once and cuts them into a ``--grid`` x
``--grid`` grid of windows (11 x 11 = 121 calls by default); each part holds the same
window of all four bands. Each call reads only its window's internal tiles (ranged
GETs through cloudpool's storage layer: no GDAL network configuration, any storage
cloudpool knows), computes ``NDVI = (NIR - RED) / (NIR + RED)`` for both dates from the
reflectances ``(DN + offset) * scale``, and stores ``NDVI(after) - NDVI(before)`` as a
float32 ``.npy`` tile under ``--output``. Pixels that are no data (DN 0 in any band) or
whose ``NIR + RED`` is zero are NaN: the division is never done for them. Each call also
returns a decimated preview of its tile, from which the client draws the PNG with a
colour bar (matplotlib, Agg); ``--save-mosaic`` assembles the full-resolution
difference from the stored tiles into one ``.npy`` file.

The band files are read with the executor's storage options for their scheme (an S3
endpoint or region from the cloudpool config, ``CLOUDPOOL_S3__ENDPOINT_URL`` or boto3's
own ``AWS_ENDPOINT_URL``); credentials never travel with the calls: the workers' storage
clients find them in the workers' environment or credential chain. The run prints the
bytes each window read against its own compressed tiles.
"""
from __future__ import annotations

import argparse
import functools
import io
import math
import os
import sys
import tempfile
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple


def _missing_extra(exc: ModuleNotFoundError) -> str:
    return (f"{os.path.basename(__file__)} needs the {exc.name!r} package, from cloudpool's "
            f"geo and plot extras: pip install 'cloudpool[geo,plot]'")


try:  # needed wherever this module runs; the other extras are checked at the start of main()
    import numpy as np
except ModuleNotFoundError as _exc:
    if __name__ == "__main__":
        sys.exit(_missing_extra(_exc))
    raise ModuleNotFoundError(_missing_extra(_exc), name=_exc.name) from None

from cloudpool import CloudPoolExecutor, Storage

RED, NIR = "B04.tif", "B08.tif"


# ---------------------------------------------------------------------------- paths
def band_url(scene: str, band: str) -> str:
    """The URL of one band file of a scene prefix."""
    if "://" in scene:
        return scene.rstrip("/") + "/" + band
    return os.path.join(os.path.abspath(scene), band)


# ---------------------------------------------------------------------------- the computation
def ndvi(red_dn: np.ndarray, nir_dn: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """NDVI in float64; NaN where a band is no data (0) or ``NIR + RED`` is zero."""
    red = (red_dn.astype(np.float64) + offset) * scale
    nir = (nir_dn.astype(np.float64) + offset) * scale
    total = nir + red
    valid = (red_dn != 0) & (nir_dn != 0) & (total != 0)
    out = np.full(red.shape, np.nan)
    # Only valid pixels are divided: no division by zero, no warnings to silence.
    np.divide(nir - red, total, out=out, where=valid)
    return out


BANDS = ("before_red", "before_nir", "after_red", "after_nir")


def ndvi_window(part: Any, job: Dict[str, Any]) -> Dict[str, Any]:
    """Runs on a worker: one window's NDVI difference, stored as a tile; returns a summary.

    ``part`` is a ``cloudpool`` COG part holding the same window of the four bands, in
    the order of ``BANDS``; ``job`` holds the settings shared by every window.
    """
    started = time.perf_counter()
    # Only this window's tiles are fetched: one GET for each file's header and one per
    # run of contiguous tiles (usually one per tile row the window touches).
    bands = dict(zip(BANDS, part.read(1)))
    before = ndvi(bands["before_red"], bands["before_nir"], job["scale"], job["offset"])
    after = ndvi(bands["after_red"], bands["after_nir"], job["scale"], job["offset"])
    diff = (after - before).astype(np.float32)  # NaN wherever either date is NaN

    buf = io.BytesIO()
    np.save(buf, diff, allow_pickle=False)
    tile_key = f"{job['prefix']}/r{part.row:03d}c{part.col:03d}.npy"
    out = Storage(job["output"], **job["output_options"])
    out.put(tile_key, buf.getvalue())

    step = job["preview_step"]
    r0 = -part.row_off % step  # keep the rows/cols on the global decimation lattice
    c0 = -part.col_off % step
    valid = np.isfinite(diff)
    return {
        "row": part.row, "col": part.col, "key": tile_key,
        "row_off": part.row_off, "col_off": part.col_off,
        "rows": part.height, "cols": part.width,
        "valid": int(valid.sum()),
        "sum": float(diff[valid].sum(dtype=np.float64)),
        "preview": diff[r0::step, c0::step].copy(),
        "seconds": time.perf_counter() - started,
        "bytes_read": part.stats.bytes, "requests": part.stats.requests,
        "tile_bytes": sum(hi - lo for ranges in part.tile_ranges for lo, hi in ranges),
    }


# ---------------------------------------------------------------------------- client side
def check_bands_exist(urls: Mapping[str, str], options: Mapping[str, Any]) -> None:
    """Every band file must exist; say which one is missing and what a scene holds."""
    from cloudpool.storage import get_storage, split_url

    for name, url in urls.items():
        scheme, bucket, key = split_url(url)
        try:
            get_storage(scheme, bucket, options).head(key)
        except (FileNotFoundError, PermissionError, OSError) as exc:
            raise FileNotFoundError(
                f"cannot open the {name} band {url} ({exc}); a scene prefix must hold "
                f"{RED} and {NIR}, and remote ones need credentials where the storage client "
                f"finds them") from None


def save_png(preview: np.ndarray, path: str, size: Tuple[int, int], bounds: Tuple[float, ...],
             crs: Any, title: str) -> float:
    """Draw the difference with a diverging colour map and a colour bar; returns the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = preview[np.isfinite(preview)]
    # Symmetric limits from the 99th percentile of |change|, so a few extreme pixels do
    # not wash out the map; at least 0.1 so noise on an unchanged scene is not amplified.
    limit = float(max(0.1, np.percentile(np.abs(finite), 99))) if finite.size else 1.0
    dpi = 100
    fig = plt.figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    ax = fig.add_axes((0.1, 0.1, 0.7, 0.8))
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("0.75")  # no data: grey
    left, bottom, right, top = bounds
    image = ax.imshow(np.ma.masked_invalid(preview), cmap=cmap, vmin=-limit, vmax=limit,
                      extent=(left / 1000, right / 1000, bottom / 1000, top / 1000),
                      interpolation="nearest")
    crs_name = crs.to_string() if crs is not None else "pixel grid"
    ax.set_xlabel(f"easting (km, {crs_name})")
    ax.set_ylabel("northing (km)")
    ax.set_title(title, fontsize=9)
    cax = fig.add_axes((0.83, 0.1, 0.03, 0.8))
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("NDVI change (after - before); grey: no data")
    fig.savefig(path, dpi=dpi)  # no bbox_inches="tight": the PNG is exactly `size`
    plt.close(fig)
    return limit


def save_mosaic(results: Sequence[Dict[str, Any]], output: Storage, path: str,
                shape: Tuple[int, int]) -> None:
    """Assemble the full-resolution difference from the stored tiles into a .npy file."""
    mosaic = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for r in results:
        tile = np.load(io.BytesIO(output.get(r["key"])), allow_pickle=False)
        mosaic[r["row_off"]:r["row_off"] + r["rows"], r["col_off"]:r["col_off"] + r["cols"]] = tile
    mosaic.flush()
    del mosaic


def _crs(text: Optional[str]) -> Any:
    """A CRS object for the axis label, from the string the parts carry."""
    if not text:
        return None
    from rasterio.crs import CRS

    return CRS.from_string(text)


def _png_size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--png-size takes WIDTHxHEIGHT in pixels, e.g. 1000x850, not {text!r}") from None
    if w < 100 or h < 100:
        raise argparse.ArgumentTypeError(f"--png-size must be at least 100x100, not {text!r}")
    return w, h


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenes", nargs="*", metavar="SCENE",
                        help="BEFORE and AFTER scene prefixes holding B04.tif and B08.tif "
                        "(default: generate two synthetic scenes locally)")
    parser.add_argument("--output", default=None, help="where the difference tiles go "
                        "(a directory or storage URL; default: a temporary directory removed on exit)")
    parser.add_argument("--png", default="ndvi_diff.png", help="the picture to write (local path)")
    parser.add_argument("--png-size", type=_png_size, default=(1000, 850), help="WIDTHxHEIGHT in px")
    parser.add_argument("--save-mosaic", default=None, metavar="PATH",
                        help="also assemble the full-resolution difference into this .npy file")
    parser.add_argument("--grid", type=int, default=11, help="windows per side (default 11: 121 calls)")
    parser.add_argument("--preview-max", type=int, default=1200,
                        help="largest side of the preview drawn in the PNG, in pixels")
    parser.add_argument("--scale", type=float, default=1e-4, help="reflectance per digital number")
    parser.add_argument("--offset", type=float, default=0.0, help="added to digital numbers before "
                        "scaling (-1000 for unharmonised processing baseline >= 04.00 products)")
    parser.add_argument("--size", type=int, default=1100, help="side of generated scenes (no SCENEs given)")
    parser.add_argument("--backend", default=None, help="compute backend (default: config, else local)")
    parser.add_argument("--storage", default=None, help="storage URL for job data (default: config, else local)")
    parser.add_argument("--workers", type=int, default=None, help="max_workers")
    args = parser.parse_args(argv)
    try:  # the rest of the extras, before any work: the PNG, the reads, the generated scenes
        import matplotlib  # noqa: F401
        import rasterio  # noqa: F401
        import rio_cogeo  # noqa: F401
    except ModuleNotFoundError as exc:
        sys.exit(_missing_extra(exc))
    if len(args.scenes) not in (0, 2):
        parser.error(f"give two scenes (BEFORE AFTER) or none, not {len(args.scenes)}")
    if args.grid < 1:
        parser.error("--grid must be at least 1")

    with tempfile.TemporaryDirectory(prefix="cloudpool-ndvi-") as tmp:
        if args.scenes:
            before, after = args.scenes
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import make_sentinel2_scenes

            before, after = make_sentinel2_scenes.make_scenes(os.path.join(tmp, "scenes"), size=args.size)
            print(f"generated two {args.size} x {args.size} px synthetic scenes in a temporary directory "
                  f"(removed on exit; examples/make_sentinel2_scenes.py DIR keeps them)")
        # Without --output the tiles go to the temporary directory too, and so are not
        # named in the output: a path printed here must still exist when the user looks.
        output_url = args.output or os.path.join(tmp, "tiles")
        try:
            return run(args, before, after, output_url, keep_tiles=args.output is not None)
        except (FileNotFoundError, PermissionError, ValueError) as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 2


def run(args: argparse.Namespace, before: str, after: str, output_url: str, keep_tiles: bool = True) -> int:
    from cloudpool import objects
    from cloudpool.storage import split_url, storages

    urls = {"before_red": band_url(before, RED), "before_nir": band_url(before, NIR),
            "after_red": band_url(after, RED), "after_nir": band_url(after, NIR)}
    start = time.perf_counter()
    with CloudPoolExecutor(args.workers, backend=args.backend, storage=args.storage) as ex:
        band_scheme = split_url(urls["before_red"])[0]
        band_options = ex.config.section(band_scheme)
        check_bands_exist(urls, band_options)
        # One header read per band file at listing; align=True checks the four share one
        # grid and puts the same window of all four in each part, in the order of BANDS.
        parts = list(objects([urls[b] for b in BANDS], format="cog", grid=(args.grid, args.grid),
                             align=True, storage_options=band_options))
        first = parts[0]
        if first.problem:  # e.g. a band stored in strips, not as a COG
            raise ValueError(first.problem)
        height = max(p.row_off + p.height for p in parts)
        width = max(p.col_off + p.width for p in parts)
        scheme = split_url(output_url)[0]
        secret = storages.get(scheme).secret_option_names
        # The output store's non-secret options (an endpoint, a region) go with the calls.
        client_output_options = ex.config.section(scheme)
        output_options = {k: v for k, v in client_output_options.items() if k not in secret}
        step = max(1, math.ceil(max(height, width) / args.preview_max))
        job = {"scale": args.scale, "offset": args.offset, "output": output_url,
               "output_options": output_options, "preview_step": step,
               "prefix": f"ndvi-diff-{time.strftime('%Y%m%dT%H%M%S')}"}
        mapped = time.perf_counter()
        results = list(ex.map(functools.partial(ndvi_window, job=job), parts))
        elapsed = time.perf_counter() - mapped
        backend = ex.config["backend"]

    a, b, c, d, e, f = first.transform  # the first window starts at the raster's origin
    info = {"crs": _crs(first.crs),
            "bounds": (c, f + e * height, c + a * width, f)}
    preview = np.full((-(-height // step), -(-width // step)), np.nan, dtype=np.float32)
    for r in results:
        p = r["preview"]
        pr, pc = -(-r["row_off"] // step), -(-r["col_off"] // step)
        preview[pr:pr + p.shape[0], pc:pc + p.shape[1]] = p
    valid = sum(r["valid"] for r in results)
    mean = sum(r["sum"] for r in results) / valid if valid else float("nan")
    title = (f"NDVI change {os.path.basename(before.rstrip('/'))} -> "
             f"{os.path.basename(after.rstrip('/'))}\n{len(results)} windows on {backend}")
    limit = save_png(preview, args.png, args.png_size, info["bounds"], info["crs"], title)
    output = Storage(output_url, **client_output_options)
    if args.save_mosaic:
        save_mosaic(results, output, args.save_mosaic, (height, width))
    total = time.perf_counter() - start

    pixels = height * width
    call_times = sorted(r["seconds"] for r in results)
    print(f"NDVI difference of {height} x {width} px scenes ({first.crs}): "
          f"{len(results)} calls on backend {backend!r}, one {args.grid} x {args.grid} grid window each")
    print(f"valid pixels: {valid:,} of {pixels:,} ({100 * valid / pixels:.1f}%), mean change {mean:+.4f}")
    print(f"map: {elapsed:.2f} s, {4 * pixels / elapsed / 1e6:.1f} Mpx/s read (4 bands); "
          f"median call {call_times[len(call_times) // 2] * 1000:.0f} ms; total {total:.2f} s")
    ratios = sorted(r["bytes_read"] / r["tile_bytes"] for r in results if r["tile_bytes"])
    read = sum(r["bytes_read"] for r in results)
    print(f"reads: {read / 1e6:.1f} MB in {sum(r['requests'] for r in results)} ranged GETs, "
          f"{read / max(1, sum(r['tile_bytes'] for r in results)):.3f}x the windows' own compressed "
          f"tiles (median window {ratios[len(ratios) // 2]:.3f}x, max {ratios[-1]:.3f}x)")
    if keep_tiles:
        print(f"tiles: {output.url(results[0]['key'].rsplit('/', 1)[0])}/ ({len(results)} .npy files)")
    else:
        print(f"tiles: {len(results)} .npy files in a temporary directory, removed on exit (--output keeps them)")
    print(f"png: {args.png} ({args.png_size[0]} x {args.png_size[1]} px, colour limits +/-{limit:.2f}, "
          f"preview 1:{step})")
    if args.save_mosaic:
        print(f"mosaic: {args.save_mosaic} (float32 {height} x {width})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
