"""NDVI change between two Sentinel-2 L2A scenes, one cloudpool call per window.

    python examples/ndvi_diff.py                    # makes two small synthetic scenes, runs locally
    python examples/ndvi_diff.py BEFORE AFTER --output s3://bucket/ndvi/ --backend aws_lambda

BEFORE and AFTER are scene prefixes holding one Cloud-Optimised GeoTIFF per band, as
in the public Sentinel-2 COG bucket (``<prefix>/B04.tif`` red, ``<prefix>/B08.tif``
near infrared): local directories, ``s3://bucket/.../S2B_..._L2A/`` or
``https://host/.../S2B_..._L2A/``. Both scenes must be on the same grid (the same
tile on two dates).

The scene is cut into a ``--grid`` x ``--grid`` grid of windows (11 x 11 = 121 calls
by default). Each call reads only its window of the four band files through rasterio
(GDAL ranged reads: ``/vsis3/`` for ``s3://``, ``/vsicurl/`` for ``https://``),
computes ``NDVI = (NIR - RED) / (NIR + RED)`` for both dates from the reflectances
``(DN + offset) * scale``, and stores ``NDVI(after) - NDVI(before)`` as a float32
``.npy`` tile under ``--output``. Pixels that are no data (DN 0 in any band) or whose
``NIR + RED`` is zero are NaN: the division is never done for them. Each call also
returns a decimated preview of its tile, from which the client draws the PNG with a
colour bar (matplotlib, Agg); ``--save-mosaic`` assembles the full-resolution
difference from the stored tiles into one ``.npy`` file.

GDAL gets the S3 endpoint settings (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``,
``AWS_VIRTUAL_HOSTING``, ``AWS_REGION``) derived from the executor's ``s3`` storage
options or from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; these travel with the
calls, credentials never do: GDAL on the workers finds them in the workers'
environment or credential chain, as boto3 does. For the public bucket, which needs no
credentials, pass ``--no-sign-request``.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit


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


# ---------------------------------------------------------------------------- paths and GDAL
def gdal_path(url: str) -> str:
    """The path GDAL opens for a storage URL (a virtual file system path for remote ones)."""
    if url.startswith("s3://"):
        return "/vsis3/" + url[len("s3://"):]
    if url.startswith(("https://", "http://")):
        return "/vsicurl/" + url
    if url.startswith("gs://"):
        return "/vsigs/" + url[len("gs://"):]
    if url.startswith("az://"):
        return "/vsiaz/" + url[len("az://"):]
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" in url:
        raise ValueError(f"{url}: GDAL cannot read {url.split('://')[0]}:// URLs here; use a "
                         f"local path, s3://, gs://, az:// or https:// (for IBM COS, s3:// with "
                         f"the COS endpoint in the s3 options)")
    return os.path.abspath(url)


def band_url(scene: str, band: str) -> str:
    """The URL of one band file of a scene prefix."""
    if "://" in scene:
        return scene.rstrip("/") + "/" + band
    return os.path.join(os.path.abspath(scene), band)


def gdal_options(urls: Sequence[str], s3_options: Mapping[str, Any],
                 no_sign_request: bool = False) -> Dict[str, str]:
    """GDAL configuration for reading ``urls``: endpoints and tuning, never credentials.

    The S3 endpoint comes from the storage options (``s3: {endpoint_url: ...}`` in the
    cloudpool config, or ``CLOUDPOOL_S3__ENDPOINT_URL``), else from the variables boto3
    itself reads (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``); with none, GDAL talks
    to AWS. A non-AWS endpoint is addressed by path (``AWS_VIRTUAL_HOSTING=FALSE``).
    """
    options = {
        # Without it GDAL lists the "directory" of every file it opens: a LIST per open.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # Adjacent tiles of one window become one ranged GET.
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }
    if any(u.startswith("s3://") for u in urls):
        endpoint = (s3_options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
            options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
            options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"
        region = (s3_options.get("region") or os.environ.get("AWS_REGION")
                  or os.environ.get("AWS_DEFAULT_REGION"))
        if region:
            options["AWS_REGION"] = region
        if no_sign_request:
            options["AWS_NO_SIGN_REQUEST"] = "YES"
    return options


def grid_windows(height: int, width: int, grid: int) -> List[Tuple[int, int, int, int, int, int]]:
    """``(row, col, row_off, col_off, rows, cols)`` of a ``grid`` x ``grid`` tiling."""
    rows = [height * i // grid for i in range(grid + 1)]
    cols = [width * j // grid for j in range(grid + 1)]
    return [(i, j, rows[i], cols[j], rows[i + 1] - rows[i], cols[j + 1] - cols[j])
            for i in range(grid) for j in range(grid)]


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


def ndvi_window(task: Dict[str, Any]) -> Dict[str, Any]:
    """Runs on a worker: one window's NDVI difference, stored as a tile; returns a summary."""
    import rasterio
    from rasterio.windows import Window

    started = time.perf_counter()
    window = Window(task["col_off"], task["row_off"], task["cols"], task["rows"])
    bands = {}
    with rasterio.Env(**task["gdal"]):
        for name, path in task["paths"].items():
            with rasterio.open(path) as src:
                bands[name] = src.read(1, window=window)  # only this window's tiles are fetched
    before = ndvi(bands["before_red"], bands["before_nir"], task["scale"], task["offset"])
    after = ndvi(bands["after_red"], bands["after_nir"], task["scale"], task["offset"])
    diff = (after - before).astype(np.float32)  # NaN wherever either date is NaN

    buf = io.BytesIO()
    np.save(buf, diff, allow_pickle=False)
    out = Storage(task["output"], **task["output_options"])
    out.put(task["tile_key"], buf.getvalue())

    step = task["preview_step"]
    r0 = -task["row_off"] % step  # keep the rows/cols on the global decimation lattice
    c0 = -task["col_off"] % step
    valid = np.isfinite(diff)
    return {
        "row": task["row"], "col": task["col"], "key": task["tile_key"],
        "row_off": task["row_off"], "col_off": task["col_off"],
        "rows": task["rows"], "cols": task["cols"],
        "valid": int(valid.sum()),
        "sum": float(diff[valid].sum(dtype=np.float64)),
        "preview": diff[r0::step, c0::step].copy(),
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------- client side
def check_same_grid(paths: Mapping[str, str], gdal: Mapping[str, str]) -> Dict[str, Any]:
    """Open every band's header: all must share size, CRS and transform."""
    import rasterio

    from rasterio.errors import RasterioIOError

    info: Dict[str, Any] = {}
    with rasterio.Env(**gdal):
        for name, path in paths.items():
            try:
                with rasterio.open(path) as src:
                    here = {"height": src.height, "width": src.width, "crs": src.crs,
                            "transform": src.transform, "dtype": src.dtypes[0],
                            "bounds": tuple(src.bounds), "block": src.block_shapes[0]}
            except RasterioIOError as exc:
                raise FileNotFoundError(
                    f"cannot open the {name} band {path} ({exc}); a scene prefix must hold "
                    f"{RED} and {NIR}, and remote ones need credentials where GDAL finds them "
                    f"(or --no-sign-request for public buckets)") from None
            if not info:
                info = dict(here, first=name)
                continue
            for field in ("height", "width", "crs", "transform"):
                if here[field] != info[field]:
                    raise ValueError(
                        f"{name} ({path}) has {field} {here[field]} but {info['first']} has "
                        f"{info[field]}: NDVI change needs two dates of the same tile on the "
                        f"same grid (B04 and B08, both 10 m)")
    return info


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
    parser.add_argument("--no-sign-request", action="store_true",
                        help="read public S3 buckets anonymously (GDAL's AWS_NO_SIGN_REQUEST)")
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
    from cloudpool.storage import split_url, storages

    urls = {"before_red": band_url(before, RED), "before_nir": band_url(before, NIR),
            "after_red": band_url(after, RED), "after_nir": band_url(after, NIR)}
    start = time.perf_counter()
    with CloudPoolExecutor(args.workers, backend=args.backend, storage=args.storage) as ex:
        gdal = gdal_options(list(urls.values()), ex.config.section("s3"), args.no_sign_request)
        paths = {name: gdal_path(url) for name, url in urls.items()}
        info = check_same_grid(paths, gdal)
        height, width = info["height"], info["width"]
        scheme = split_url(output_url)[0]
        secret = storages.get(scheme).secret_option_names
        # The output store's non-secret options (an endpoint, a region) go with the calls.
        client_output_options = ex.config.section(scheme)
        output_options = {k: v for k, v in client_output_options.items() if k not in secret}
        step = max(1, math.ceil(max(height, width) / args.preview_max))
        run_id = time.strftime("%Y%m%dT%H%M%S")
        tasks = [{
            "row": i, "col": j, "row_off": r0, "col_off": c0, "rows": h, "cols": w,
            "paths": paths, "gdal": gdal, "scale": args.scale, "offset": args.offset,
            "output": output_url, "output_options": output_options,
            "tile_key": f"ndvi-diff-{run_id}/r{i:03d}c{j:03d}.npy", "preview_step": step,
        } for i, j, r0, c0, h, w in grid_windows(height, width, args.grid)]
        mapped = time.perf_counter()
        results = list(ex.map(ndvi_window, tasks))
        elapsed = time.perf_counter() - mapped
        backend = ex.config["backend"]

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
    print(f"NDVI difference of {height} x {width} px scenes ({info['crs']}, tiles {info['block']}): "
          f"{len(results)} calls on backend {backend!r}, one {args.grid} x {args.grid} grid window each")
    print(f"valid pixels: {valid:,} of {pixels:,} ({100 * valid / pixels:.1f}%), mean change {mean:+.4f}")
    print(f"map: {elapsed:.2f} s, {4 * pixels / elapsed / 1e6:.1f} Mpx/s read (4 bands); "
          f"median call {call_times[len(call_times) // 2] * 1000:.0f} ms; total {total:.2f} s")
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
