"""Every example in ``examples/`` run as a real subprocess, to completion, on small data.

Each example runs with the local default (local worker processes, local-disk storage);
the NDVI example also runs with its scenes, its output tiles and the executor's data on
the moto S3 emulator (``tests/servers.py``), as it would on a cloud. Outputs are checked
against independent computations in this process:

- word counts against ``collections.Counter`` over the same files;
- the pi estimate against the example's own per-call function summed here, and the
  error it prints against the one recomputed from its estimate;
- ``pool_primes.py`` run twice, as written (stdlib ``multiprocessing``) and with only its
  import line replaced by ``import cloudpool.multiprocessing as multiprocessing`` (the
  test makes that substitution and checks that it is the only change), same output;
- the NDVI difference mosaic against a single-process numpy computation from full reads
  of the same scenes (max abs difference < 1e-6, NaN exactly where there is no data),
  the PNG's pixel size with Pillow, and the number of tiles stored.

The windowed-read check uses moto's request recorder (``/moto-api/recorder/``, part of
moto itself): one call of the NDVI function is recorded and every GET of a band file
must be a ranged one, with far fewer bytes than the file holds.
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import unittest
import urllib.request
import uuid
from typing import Dict, List, Optional

import numpy as np

from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCENE_SIZE = 1100  # 11 x 11 windows of 100 px


def run_example(script: str, *args: str, env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                timeout: float = 180) -> str:
    """Run ``script`` with this interpreter; fail with its output unless it exits 0."""
    path = script if os.path.isabs(script) else os.path.join(EXAMPLES, script)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, path, *args], env=full_env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"{os.path.basename(path)} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-5000:]}")
    return proc.stdout


@contextlib.contextmanager
def environ(values: Dict[str, str]):
    """Set environment variables for the block (a worker's credential chain, here)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_example(name: str):
    """Import an example as a module (for its functions), without running its main()."""
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)  # ndvi_diff imports make_sentinel2_scenes by name
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_texts(directory: str, seed: int = 11) -> collections.Counter:
    """A few text files with uneven lines; returns their word counts."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    os.makedirs(directory, exist_ok=True)
    counts: collections.Counter = collections.Counter()
    for i in range(3):
        lines = []
        for _ in range(4000 + 1000 * i):
            line = [words[k] for k in rng.zipf(1.6, rng.integers(0, 15)) % len(words)]
            counts.update(line)
            lines.append(" ".join(line))
        with open(os.path.join(directory, f"t{i}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return counts


class WordCountExampleTest(unittest.TestCase):
    def test_counts_match_a_direct_count(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            expected = write_texts(os.path.join(tmp, "texts"))
            out = run_example("wordcount.py", os.path.join(tmp, "texts") + "/", "--chunk-size", "20KiB",
                              "--top", "100")
        first = out.splitlines()[0]
        self.assertTrue(first.startswith(f"{sum(expected.values()):,} words, {len(expected)} distinct"), out)
        parts = int(re.search(r"(\d+) partitions", first).group(1))
        self.assertGreater(parts, 3)  # several parts per file at 20 KiB
        self.assertIn("MB/s", out)
        got = {m.group(2): int(m.group(1).replace(",", ""))
               for m in re.finditer(r"^\s+([\d,]+)\s+(\S+)$", out, re.M)}
        self.assertEqual(got, dict(expected))

    def test_default_run_generates_sample_text(self) -> None:
        out = run_example("wordcount.py", "--sample-mib", "1", "--top", "3")
        self.assertRegex(out, r"^[\d,]+ words, \d+ distinct, \d+ partitions")
        self.assertIn("throughput:", out)


class MonteCarloPiExampleTest(unittest.TestCase):
    def test_estimate_matches_the_calls_summed_here(self) -> None:
        calls, samples, seed = 8, 20000, 5
        out = run_example("montecarlo_pi.py", "--calls", str(calls), "--samples", str(samples),
                          "--seed", str(seed))
        module = load_example("montecarlo_pi")
        hits = sum(module.hits_in_quarter_circle(s, samples) for s in range(seed, seed + calls))
        estimate = 4.0 * hits / (calls * samples)
        self.assertIn(f"pi ~= {estimate:.6f} from {calls * samples:,} samples", out)
        self.assertIn(f"error: {estimate - math.pi:+.6f}", out)
        self.assertLess(abs(estimate - math.pi), 0.05)
        self.assertRegex(out, r"time: [\d.]+ s, [\d,]+ samples/s")


class PoolPrimesExampleTest(unittest.TestCase):
    STDLIB = "import multiprocessing"
    CLOUDPOOL = "import cloudpool.multiprocessing as multiprocessing"

    def test_cloudpool_by_default_and_the_stdlib_with_a_flag_give_the_same_output(self) -> None:
        with open(os.path.join(EXAMPLES, "pool_primes.py")) as f:
            source = f.read()
        # The swap a user makes is visible in the program: its only imports are the stdlib
        # ones and these two alternatives; nothing else in it is cloudpool-specific.
        body = source.split('"""', 2)[2]
        imports = [line.strip() for line in re.findall(r"^\s*(?:import|from) .*$", body, re.M)]
        self.assertEqual(sorted(imports), sorted(["import argparse", "import time", self.STDLIB, self.CLOUDPOOL]))
        cloud_out = run_example("pool_primes.py", "100000")
        stdlib_out = run_example("pool_primes.py", "--stdlib", "100000")
        self.assertEqual(cloud_out.splitlines()[0], "pool: cloudpool.multiprocessing.Pool")
        self.assertEqual(stdlib_out.splitlines()[0], "pool: multiprocessing.Pool")

        def results(text: str) -> List[str]:
            return [line for line in text.splitlines() if not line.startswith(("time:", "pool:"))]

        self.assertEqual(results(cloud_out), results(stdlib_out))
        self.assertIn("primes below 100000: 9592", cloud_out)  # pi(10^5), a known value
        self.assertIn("largest primes below 10, 100, 1000, 10000, 100000: [7, 97, 997, 9973, 99991]", cloud_out)
        self.assertRegex(cloud_out, r"time: [\d.]+ s, [\d,]+ numbers/s")


class LithopsWordCountExampleTest(unittest.TestCase):
    def test_counts_match_a_direct_count(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            expected = write_texts(os.path.join(tmp, "texts"), seed=5)
            out = run_example("lithops_wordcount.py", os.path.join(tmp, "texts") + "/",
                              "--chunk-size", "30000", "--top", "100")
        self.assertRegex(out, rf"^{sum(expected.values())} words, {len(expected)} distinct, in 3 objects, "
                              r"\d+ calls, [\d.]+ s, [\d.]+ MB/s")
        got = {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s+(\d+)\s+(\S+)$", out, re.M)}
        self.assertEqual(got, dict(expected))

    def test_default_run(self) -> None:
        out = run_example("lithops_wordcount.py")
        self.assertRegex(out, r"^\d+ words, 16 distinct, in 3 objects, \d+ calls")


# ---------------------------------------------------------------------------- NDVI
def reference_ndvi_difference(before: str, after: str, gdal_env: Optional[Dict[str, str]] = None) -> np.ndarray:
    """The whole difference in one process: full reads, the documented formula, float64."""
    import rasterio

    ndvi_diff = load_example("ndvi_diff")
    bands = {}
    with rasterio.Env(**(gdal_env or {})):
        for name, scene in (("before", before), ("after", after)):
            for band in ("B04", "B08"):
                with rasterio.open(ndvi_diff.gdal_path(ndvi_diff.band_url(scene, band + ".tif"))) as src:
                    bands[name, band] = src.read(1)

    def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
        r, n = red * 1e-4, nir * 1e-4
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (n - r) / (n + r)
        out[(red == 0) | (nir == 0) | (n + r == 0)] = np.nan
        return out

    return ndvi(bands["after", "B04"], bands["after", "B08"]) - ndvi(bands["before", "B04"], bands["before", "B08"])


class NDVIChecks:
    def check_outputs(self, out: str, mosaic_path: str, png_path: str, png_size, expected: np.ndarray,
                      calls: int = 121) -> None:
        from PIL import Image

        self.assertIn(f"NDVI difference of {SCENE_SIZE} x {SCENE_SIZE} px scenes (EPSG:32633", out)
        self.assertIn(f"{calls} calls", out)
        self.assertRegex(out, r"map: [\d.]+ s, [\d.]+ Mpx/s")
        mosaic = np.load(mosaic_path)
        self.assertEqual(mosaic.shape, (SCENE_SIZE, SCENE_SIZE))
        self.assertEqual(mosaic.dtype, np.float32)
        nan = np.isnan(expected)
        self.assertTrue(nan.any() and not nan.all())  # the no-data edge is there, and data
        np.testing.assert_array_equal(np.isnan(mosaic), nan)
        self.assertLess(float(np.max(np.abs(mosaic[~nan] - expected[~nan]))), 1e-6)
        self.assertGreater(float(np.max(np.abs(expected[~nan]))), 0.3)  # real change, not all zeros
        valid = int((~nan).sum())
        self.assertIn(f"valid pixels: {valid:,} of {SCENE_SIZE * SCENE_SIZE:,}", out)
        with Image.open(png_path) as img:
            img.load()
            self.assertEqual(img.format, "PNG")
            self.assertEqual(img.size, png_size)


class NDVILocalExampleTest(NDVIChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        gen = run_example("make_sentinel2_scenes.py", os.path.join(cls.tmp.name, "scenes"), "--size", str(SCENE_SIZE))
        cls.scenes = [line.split(" ", 1)[1] for line in gen.splitlines() if line.startswith("scene: ")]
        cls.expected = reference_ndvi_difference(*cls.scenes)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def test_one_command_default_run(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = run_example("ndvi_diff.py", cwd=tmp)
            self.assertIn("121 calls on backend 'local'", out)
            self.assertTrue(os.path.getsize(os.path.join(tmp, "ndvi_diff.png")) > 10000)
            self.assertIn("png: ndvi_diff.png", out)
            # The run's scenes and tiles were temporary: it says so and names no path of them.
            self.assertIn("tiles: 121 .npy files in a temporary directory, removed on exit", out)
            self.assert_printed_paths_exist(out, tmp)
            self.assertEqual(os.listdir(tmp), ["ndvi_diff.png"])

    def assert_printed_paths_exist(self, out: str, cwd: str) -> None:
        """Every absolute path or file:// URL the example printed still exists after it exited."""
        paths = re.findall(r"(?:^|\s)(?:file://)?(/[^\s,()]+)", out, re.M)
        self.assertTrue(all(os.path.isabs(p) for p in paths))
        for path in paths:
            self.assertTrue(os.path.exists(path), f"printed {path!r}, which no longer exists:\n{out}")

    def test_generated_scenes_are_cogs_like_the_real_ones(self) -> None:
        import rasterio
        from rio_cogeo.cogeo import cog_validate

        self.assertEqual(len(self.scenes), 2)
        for scene in self.scenes:
            for band in ("B04.tif", "B08.tif"):
                path = os.path.join(scene, band)
                valid, errors, _warnings = cog_validate(path, quiet=True)
                self.assertTrue(valid, errors)
                with rasterio.open(path) as src:
                    self.assertEqual((src.width, src.height, src.dtypes[0], src.nodata),
                                     (SCENE_SIZE, SCENE_SIZE, "uint16", 0))
                    self.assertEqual(src.crs.to_epsg(), 32633)
                    self.assertEqual(src.res, (10.0, 10.0))
                    self.assertEqual(src.block_shapes[0], (128, 128))  # tiled
                    self.assertEqual(src.overviews(1)[:2], [2, 4])  # overviews, as rio-cogeo makes them

    def test_generated_scenes_mosaic_matches_numpy(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            mosaic, png = os.path.join(tmp, "mosaic.npy"), os.path.join(tmp, "out.png")
            out = run_example("ndvi_diff.py", *self.scenes, "--output", os.path.join(tmp, "tiles"),
                              "--png", png, "--png-size", "640x480", "--save-mosaic", mosaic)
            self.check_outputs(out, mosaic, png, (640, 480), self.expected)
            tiles = [f for _dirpath, _dirs, files in os.walk(os.path.join(tmp, "tiles")) for f in files]
            self.assertEqual(len(tiles), 121)
            printed = re.search(r"^tiles: file://(\S+)/ \(121 \.npy files\)$", out, re.M)
            self.assertIsNotNone(printed, out)
            self.assertEqual(len(os.listdir(printed.group(1))), 121)  # the printed place holds them
            self.assert_printed_paths_exist(out, tmp)

    def test_scenes_over_https_style_urls_read_through_vsicurl(self) -> None:
        # The same files served by a Range-capable HTTP server: http(s):// scene prefixes
        # are read through GDAL's /vsicurl/, as the public bucket's https:// URLs would be.
        http = servers.http_server(self.tmp.name)
        urls = [f"{http.base_url}/scenes/{os.path.basename(s.rstrip('/'))}/" for s in self.scenes]
        with tempfile.TemporaryDirectory() as tmp:
            mosaic, png = os.path.join(tmp, "mosaic.npy"), os.path.join(tmp, "out.png")
            # A 5 x 5 grid (25 calls) keeps the pure-Python test server's share of the run small.
            out = run_example("ndvi_diff.py", *urls, "--output", os.path.join(tmp, "tiles"), "--grid", "5",
                              "--png", png, "--png-size", "500x400", "--save-mosaic", mosaic)
            self.check_outputs(out, mosaic, png, (500, 400), self.expected, calls=25)

    def test_bad_arguments_fail_with_a_message(self) -> None:
        proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "ndvi_diff.py"), "only-one-scene"],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("give two scenes (BEFORE AFTER) or none", proc.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "ndvi_diff.py"),
                                   os.path.join(tmp, "a"), os.path.join(tmp, "b")],
                                  capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("cannot open the before_red band", proc.stderr)  # names what is missing
        self.assertIn(os.path.join(tmp, "a", "B04.tif"), proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


class MissingExtrasTest(unittest.TestCase):
    """Run without an extra's package, an example names it and the pip command, no traceback."""

    def run_without(self, script: str, module: str) -> subprocess.CompletedProcess:
        # None in sys.modules makes `import module` raise ModuleNotFoundError, as when the
        # package is not installed; the example then runs as `python examples/<script> ...`
        # would, in an empty directory it may write to.
        with tempfile.TemporaryDirectory() as tmp:
            args = [os.path.join(tmp, "scenes")] if script == "make_sentinel2_scenes.py" else []
            code = (f"import runpy, sys; sys.modules[{module!r}] = None; "
                    f"sys.argv = {[os.path.join(EXAMPLES, script), *args]!r}; "
                    f"runpy.run_path(sys.argv[0], run_name='__main__')")
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                  env=env, cwd=tmp)
            self.assertEqual(os.listdir(tmp), [])  # stopped before doing anything
            return proc

    def test_each_geo_example_names_what_to_install(self) -> None:
        cases = [("ndvi_diff.py", "numpy", "cloudpool[geo,plot]"), ("ndvi_diff.py", "matplotlib", "cloudpool[geo,plot]"),
                 ("ndvi_diff.py", "rasterio", "cloudpool[geo,plot]"), ("ndvi_diff.py", "rio_cogeo", "cloudpool[geo,plot]"),
                 ("make_sentinel2_scenes.py", "numpy", "cloudpool[geo]"),
                 ("make_sentinel2_scenes.py", "rio_cogeo", "cloudpool[geo]")]
        for script, module, extra in cases:
            with self.subTest(script=script, module=module):
                proc = self.run_without(script, module)
                self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
                self.assertEqual(proc.stderr.strip(), f"{script} needs the {module!r} package, from cloudpool's "
                                 f"{'geo and plot extras' if 'plot' in extra else 'geo extra'}: pip install '{extra}'")
        # With everything installed the same way of running works (the check is not always on).
        proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "ndvi_diff.py"), "--help"],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)


class NDVIHelpersTest(unittest.TestCase):
    def setUp(self) -> None:
        self.nd = load_example("ndvi_diff")

    def test_gdal_paths(self) -> None:
        self.assertEqual(self.nd.gdal_path("s3://b/k/B04.tif"), "/vsis3/b/k/B04.tif")
        self.assertEqual(self.nd.gdal_path("https://h/p/B04.tif"), "/vsicurl/https://h/p/B04.tif")
        self.assertEqual(self.nd.gdal_path("file:///data/B04.tif"), "/data/B04.tif")
        with self.assertRaisesRegex(ValueError, "redis://"):
            self.nd.gdal_path("redis://x/y")

    def test_gdal_options_from_storage_options_and_env_carry_no_credentials(self) -> None:
        opts = self.nd.gdal_options(["s3://b/k"], {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1",
                                                    "aws_secret_access_key": "SECRET"})
        self.assertEqual((opts["AWS_S3_ENDPOINT"], opts["AWS_HTTPS"], opts["AWS_VIRTUAL_HOSTING"], opts["AWS_REGION"]),
                         ("127.0.0.1:9000", "NO", "FALSE", "eu-west-1"))
        self.assertNotIn("SECRET", json.dumps(opts))
        with environ({"AWS_ENDPOINT_URL": "https://s3.example.test:8443", "AWS_SECRET_ACCESS_KEY": "SECRET2"}):
            opts = self.nd.gdal_options(["s3://b/k"], {})
        self.assertEqual((opts["AWS_S3_ENDPOINT"], opts["AWS_HTTPS"]), ("s3.example.test:8443", "YES"))
        self.assertNotIn("SECRET2", json.dumps(opts))
        self.assertNotIn("AWS_S3_ENDPOINT", self.nd.gdal_options(["/local/B04.tif"], {"endpoint_url": "http://x:1"}))

    def test_ndvi_never_divides_by_zero(self) -> None:
        red = np.array([[0, 100, 1000, 500]], dtype=np.uint16)
        nir = np.array([[0, 0, 3000, 1500]], dtype=np.uint16)
        with np.errstate(all="raise"):  # any division by zero would raise here
            plain = self.nd.ndvi(red, nir, 1e-4, 0.0)
            # With the -1000 offset, DN 1000 in both bands is reflectance 0: NIR + RED == 0.
            shifted = self.nd.ndvi(np.array([[1000]], dtype=np.uint16), np.array([[1000]], dtype=np.uint16), 1e-4, -1000.0)
        self.assertTrue(np.isnan(plain[0, 0]) and np.isnan(plain[0, 1]))
        self.assertAlmostEqual(plain[0, 2], 0.5)
        self.assertTrue(np.isnan(shifted[0, 0]))  # NIR + RED == 0 after the offset: NaN, not inf

    def test_grid_windows_tile_the_scene(self) -> None:
        windows = self.nd.grid_windows(10980, 10980, 11)
        self.assertEqual(len(windows), 121)
        covered = np.zeros((11, 11), dtype=int)
        self.assertEqual(sum(h * w for *_ij, _r, _c, h, w in windows), 10980 * 10980)
        for i, j, r0, c0, h, w in windows:
            covered[i, j] += 1
            self.assertIn(h, (998, 999))
        self.assertTrue((covered == 1).all())


class NDVIS3ExampleTest(NDVIChecks, unittest.TestCase):
    """Scenes, tiles and the executor's data on the moto S3 emulator."""

    @classmethod
    def setUpClass(cls) -> None:
        import boto3

        cls.moto = servers.moto_s3()
        cls.env = cls.moto.env
        cls.bucket = f"ndvi-{uuid.uuid4().hex[:10]}"
        cls.s3 = boto3.client("s3", endpoint_url=cls.moto.endpoint_url, region_name=servers.S3_REGION,
                              aws_access_key_id=servers.S3_ACCESS_KEY, aws_secret_access_key=servers.S3_SECRET_KEY)
        cls.s3.create_bucket(Bucket=cls.bucket)
        gen = run_example("make_sentinel2_scenes.py", f"s3://{cls.bucket}/scenes", "--size", str(SCENE_SIZE), env=cls.env)
        cls.scenes = [line.split(" ", 1)[1] for line in gen.splitlines() if line.startswith("scene: ")]

    def gdal_env(self) -> Dict[str, str]:
        # Written out here rather than taken from the example's gdal_options(), so the
        # reference does not share a mistake with the code under test.
        return {"AWS_S3_ENDPOINT": f"{self.moto.host}:{self.moto.port}", "AWS_HTTPS": "NO",
                "AWS_VIRTUAL_HOSTING": "FALSE", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
                "AWS_REGION": servers.S3_REGION}

    def test_scenes_are_in_the_bucket(self) -> None:
        self.assertEqual(self.scenes, [f"s3://{self.bucket}/scenes/S2B_33UUP_20230605_0_L2A/",
                                       f"s3://{self.bucket}/scenes/S2B_33UUP_20230725_0_L2A/"])
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket, Prefix="scenes/")["Contents"]]
        self.assertEqual(len(keys), 4)

    def test_mosaic_on_s3_matches_numpy(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            mosaic, png = os.path.join(tmp, "mosaic.npy"), os.path.join(tmp, "out.png")
            out = run_example("ndvi_diff.py", *self.scenes, "--storage", f"s3://{self.bucket}/cloudpool",
                              "--output", f"s3://{self.bucket}/out/", "--png", png, "--png-size", "800x600",
                              "--save-mosaic", mosaic, env=self.env)
            with environ(self.env):  # credentials for GDAL come from the environment
                expected = reference_ndvi_difference(*self.scenes, gdal_env=self.gdal_env())
            self.check_outputs(out, mosaic, png, (800, 600), expected)
        tiles = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="out/")["Contents"]
        self.assertEqual(len(tiles), 121)
        self.assertTrue(all(t["Key"].endswith(".npy") for t in tiles))
        self.assertIn(f"tiles: s3://{self.bucket}/out/ndvi-diff-", out)

    def _recorder(self, action: str) -> bytes:
        method = "GET" if action == "download-recording" else "POST"
        req = urllib.request.Request(f"{self.moto.endpoint_url}/moto-api/recorder/{action}",
                                     data=None if method == "GET" else b"", method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def test_a_call_reads_only_its_window(self) -> None:
        nd = load_example("ndvi_diff")
        urls = {"before_red": nd.band_url(self.scenes[0], nd.RED), "before_nir": nd.band_url(self.scenes[0], nd.NIR),
                "after_red": nd.band_url(self.scenes[1], nd.RED), "after_nir": nd.band_url(self.scenes[1], nd.NIR)}
        sizes = {nd.gdal_path(u).split(f"/{self.bucket}/", 1)[1]:
                 self.s3.head_object(Bucket=self.bucket, Key=u.split(f"{self.bucket}/", 1)[1])["ContentLength"]
                 for u in urls.values()}
        with environ(self.env):  # the worker's own credential chain; the task carries none
            gdal = nd.gdal_options(list(urls.values()), {})
            i, j, r0, c0, h, w = nd.grid_windows(SCENE_SIZE, SCENE_SIZE, 11)[5 * 11 + 5]
            task = {"row": i, "col": j, "row_off": r0, "col_off": c0, "rows": h, "cols": w,
                    "paths": {k: nd.gdal_path(u) for k, u in urls.items()}, "gdal": gdal,
                    "scale": 1e-4, "offset": 0.0, "output": f"s3://{self.bucket}/window-test",
                    "output_options": {}, "tile_key": "tile.npy", "preview_step": 1}
            self.assertNotIn(servers.S3_SECRET_KEY, json.dumps(task))
            self._recorder("reset-recording")
            self._recorder("start-recording")
            try:
                result = nd.ndvi_window(task)
            finally:
                self._recorder("stop-recording")
            log = self._recorder("download-recording").decode()
        self.assertEqual((result["rows"], result["cols"]), (100, 100))
        requests = [json.loads(line) for line in log.splitlines() if line.strip()]
        read: Dict[str, int] = collections.Counter()
        gets: Dict[str, int] = collections.Counter()
        for r in requests:
            path = urllib.request.urlparse(r["url"]).path
            key = path.split(f"/{self.bucket}/", 1)[-1]
            if r["method"] != "GET" or key not in sizes:
                continue
            rng = r["headers"].get("Range") or r["headers"].get("range")
            self.assertIsNotNone(rng, f"an un-ranged GET of {key}: the whole file was downloaded")
            first, last = (int(v) for v in re.fullmatch(r"bytes=(\d+)-(\d+)", rng).groups())
            read[key] += last - first + 1
            gets[key] += 1
        self.assertEqual(set(gets), set(sizes), requests)  # every band file was read ...
        for key, size in sizes.items():
            # ... with a header GET and a merged GET per tile row of the window ...
            self.assertLessEqual(gets[key], 4, (key, gets[key]))
            # ... and far fewer bytes than the file holds (a window is ~1/121 of the scene).
            self.assertLess(read[key], size * 0.15, (key, read[key], size))
        puts = [r for r in requests if r["method"] == "PUT" and r["url"].endswith("window-test/tile.npy")]
        self.assertEqual(len(puts), 1)


if __name__ == "__main__":
    unittest.main()
