"""Word-count benchmark: the same counting function over the same text through five data paths.

    python3 bench/bench_wordcount.py                  # ~200 MB of text, 3 repetitions
    python3 bench/bench_wordcount.py --size-mb 20 --repeat 1   # a quick run
    python3 bench/bench_wordcount.py --variants baseline,ppe,cloudpool

Variants (2 workers each; every one calls ``count_bytes(data)`` = ``len(data),
Counter(WORD.findall(data.lower()))`` on whole lines, so only the data path differs):

* ``baseline``     -- one process: read each file whole, count.
* ``ppe``          -- the hand-written ``ProcessPoolExecutor`` version: cut each file into
                      ``--chunk-mb`` byte ranges; a worker opens the file, seeks to its range,
                      skips the partial first line, reads its range and completes the last line.
* ``lithops``      -- Lithops localhost with its own partitioner:
                      ``FunctionExecutor.map(fn, '/abs/dir', obj_chunk_size=...)`` (Lithops takes
                      absolute local paths as object inputs in localhost mode); ``fn(obj)`` counts
                      ``obj.data_stream.read()``.
* ``cloudpool``    -- ``CloudPoolExecutor(2).map(fn, objects(dir, chunk_size=...))``; ``fn(part)``
                      counts ``part.read()``.
* ``cloudpool_s3`` -- the text in a bucket on a moto S3 server and the executor's own storage there
                      too (``storage="s3://bucket/tmp"``); ``objects("s3://bucket/texts/", ...)``.

The text (``--size-mb``, default 200, in 4 files) is generated once per run into a temporary
directory, deterministically (a seeded pool of pseudo-English lines written in blocks). Each
measurement is a fresh interpreter; the clock runs from the executor's construction (or the
first read, for the baseline) to the end of its shutdown, and includes merging the partial
counts. Variants are interleaved in a rotating order. Every variant's total word counts are
compared with the baseline's; a mismatch fails the run. Reported: MB/s (10^6 bytes of input
per second) and each variant's time relative to the others.

Results: markdown on stdout and ``bench/results/wordcount.md``; everything in ``wordcount.json``.
"""
from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _common as C  # noqa: E402

WORD = re.compile(rb"[A-Za-z']+")
FILES = 4
BUCKET = "bench-wordcount"
VARIANTS = ["baseline", "ppe", "lithops", "cloudpool", "cloudpool_s3"]
LABELS = {"baseline": "single process", "ppe": "ProcessPoolExecutor, hand-written ranges",
          "lithops": "Lithops localhost partitioner", "cloudpool": "cloudpool, local storage",
          "cloudpool_s3": "cloudpool, data + executor storage on S3 (moto)"}


# ---------------------------------------------------------------------------- the one counting body
def count_bytes(data: bytes):
    """What every variant runs on whole lines: (bytes, word counts)."""
    return len(data), collections.Counter(WORD.findall(data.lower()))


def count_part(part):
    """cloudpool: one ``ObjectPart``."""
    return count_bytes(part.read())


def count_lithops(obj):
    """Lithops: its partition object (the parameter must be named ``obj``)."""
    return count_bytes(obj.data_stream.read())


def count_range(path: str, start: int, end: int):
    """The hand-written worker: the lines that *start* in ``[start, end)`` of ``path``."""
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            f.readline()            # skip the line that began before our range
        pos = f.tell()
        if pos >= end:              # a line longer than the range: nothing starts here
            return count_bytes(b"")
        data = f.read(end - pos)
        if data and not data.endswith(b"\n"):
            data += f.readline()    # complete our last line past the range's end
        return count_bytes(data)


# ---------------------------------------------------------------------------- data
VOCABULARY = ("the of and to in a is that for it as was with be by on not he i this are or his "
              "from at which but have an they you were her she there been one all we their "
              "cloud pool object storage serverless function worker result partition "
              "Lambda Bucket Range Counter Python Lithops can't won't it's").split()


def generate(directory: str, size_mb: float, files: int = FILES, seed: int = 42) -> List[str]:
    """``size_mb`` * 10^6 bytes of lines in ``files`` files, the same bytes for the same arguments."""
    weights = [1.0 / (rank + 1) for rank in range(len(VOCABULARY))]
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(VOCABULARY, weights, k=rng.randint(1, 40))) + "\n" for _ in range(20000)]
    per_file = int(size_mb * 1e6) // files
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(files):
        path = os.path.join(directory, f"text-{i:02d}.txt")
        with open(path, "w") as f:
            written = 0
            while written < per_file:
                block = "".join(rng.choices(lines, k=2000))
                f.write(block)
                written += len(block)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- child side
def _merge(results):
    total = collections.Counter()
    nbytes = parts = 0
    for n, counts in results:
        total.update(counts)
        nbytes += n
        parts += 1
    return total, nbytes, parts


def child_main(argv: List[str]) -> None:
    variant, data_dir, chunk, workers = argv[0], argv[1], int(argv[2]), int(argv[3])
    endpoint = argv[4] if len(argv) > 4 else ""
    t = time.perf_counter()
    if variant == "ppe":
        from concurrent.futures import ProcessPoolExecutor
    elif variant in ("cloudpool", "cloudpool_s3"):
        from cloudpool import CloudPoolExecutor, objects
    elif variant == "lithops":
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        import lithops
    import_seconds = time.perf_counter() - t
    paths = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir))
    gc.collect()
    t0 = time.perf_counter()
    if variant == "baseline":
        results = []
        for p in paths:
            with open(p, "rb") as f:
                results.append(count_bytes(f.read()))
        total, nbytes, parts = _merge(results)
    elif variant == "ppe":
        with ProcessPoolExecutor(max_workers=workers) as ex:
            starts, ends, files = [], [], []
            for p in paths:
                size = os.path.getsize(p)
                for s in range(0, size, chunk):
                    files.append(p)
                    starts.append(s)
                    ends.append(min(s + chunk, size))
            total, nbytes, parts = _merge(ex.map(count_range, files, starts, ends))
    elif variant == "cloudpool":
        with CloudPoolExecutor(max_workers=workers) as ex:
            total, nbytes, parts = _merge(ex.map(count_part, objects(data_dir, chunk_size=chunk)))
    elif variant == "cloudpool_s3":
        with CloudPoolExecutor(max_workers=workers, storage=f"s3://{BUCKET}/tmp",
                               config={"s3": {"endpoint_url": endpoint}}) as ex:
            inputs = objects(f"s3://{BUCKET}/texts/", chunk_size=chunk,
                             storage_options={"endpoint_url": endpoint})
            total, nbytes, parts = _merge(ex.map(count_part, inputs))
    elif variant == "lithops":
        with lithops.FunctionExecutor(config=C.lithops_config(workers)) as fe:
            futures = fe.map(count_lithops, os.path.abspath(data_dir), obj_chunk_size=chunk)
            total, nbytes, parts = _merge(fe.get_result(futures, show_progressbar=False))
    else:
        raise ValueError(variant)
    t1 = time.perf_counter()
    digest = hashlib.sha256(json.dumps(sorted((k.decode(), v) for k, v in total.items())).encode()).hexdigest()
    C.emit_result({"seconds": t1 - t0, "import_seconds": import_seconds, "bytes": nbytes, "parts": parts,
                   "words": sum(total.values()), "distinct": len(total), "digest": digest})


# ---------------------------------------------------------------------------- parent side
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=200.0, help="text size, 10^6 bytes (default 200)")
    p.add_argument("--chunk-mb", type=float, default=16.0,
                   help="partition size in MiB for ppe, lithops and cloudpool (default 16)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--data-dir", default=None, help="reuse/keep the text here (default: a temp dir, removed)")
    p.add_argument("--output", default="wordcount")
    a = p.parse_args(argv)
    a.variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        p.error("unknown variant(s): " + ", ".join(bad))
    return a


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def s3_setup(data_dir: str) -> Dict[str, str]:
    """Start moto, upload the text to s3://BUCKET/texts/; return the env the children need."""
    sys.path.insert(0, C.REPO_ROOT)
    from tests.servers import moto_s3
    import boto3
    server = moto_s3()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    os.environ.update(creds)
    s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for name in sorted(os.listdir(data_dir)):
        s3.upload_file(os.path.join(data_dir, name), BUCKET, f"texts/{name}")
    env = dict(creds)
    env.update(server.env)
    env["BENCH_S3_ENDPOINT"] = server.endpoint_url
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    chunk = int(args.chunk_mb * 1024 * 1024)
    own_dir = args.data_dir is None
    root = tempfile.mkdtemp(prefix="bench-wordcount-") if own_dir else None
    data_dir = os.path.join(root, "texts") if own_dir else args.data_dir
    skipped: Dict[str, str] = {}
    # A private TMPDIR for the children and for Lithops' state (see bench_pool.isolate_tmpdir).
    private_tmp = tempfile.mkdtemp(prefix="bench-wordcount-tmp-")
    os.environ["TMPDIR"] = private_tmp
    tempfile.tempdir = None
    try:
        if not (os.path.isdir(data_dir) and os.listdir(data_dir)):
            t = time.perf_counter()
            generate(data_dir, args.size_mb)
            log(f"generated {args.size_mb:g} MB in {FILES} files in {time.perf_counter() - t:.1f} s: {data_dir}")
        total_bytes = sum(os.path.getsize(os.path.join(data_dir, f)) for f in os.listdir(data_dir))
        variants = list(args.variants)
        if "lithops" in variants and C.PEERS["lithops"].available():
            skipped["lithops"] = C.PEERS["lithops"].available()
            variants.remove("lithops")
        s3_env: Dict[str, str] = {}
        if "cloudpool_s3" in variants:
            try:
                t = time.perf_counter()
                s3_env = s3_setup(data_dir)
                log(f"uploaded to moto in {time.perf_counter() - t:.1f} s")
            except Exception as exc:  # noqa: BLE001
                skipped["cloudpool_s3"] = f"could not set up the S3 emulator: {exc!r}"
                variants.remove("cloudpool_s3")
        peers_for_info = [p for p in ("cloudpool", "ppe", "lithops") if p in C.PEERS]
        info = C.machine_info(peers_for_info)
        samples = {v: [] for v in variants}
        errors = {v: [] for v in variants}
        started = time.monotonic()
        for rep in range(args.repeat):
            for v in C.rotated(variants, rep):
                cmd = [sys.executable, os.path.abspath(__file__), "child", v, data_dir, str(chunk), str(args.workers)]
                if v == "cloudpool_s3":
                    cmd.append(s3_env["BENCH_S3_ENDPOINT"])
                after = C.PEERS["lithops"].after_measurement if v == "lithops" else None
                try:
                    out = C.run_child(cmd, args.timeout, v, env_extra=s3_env if v == "cloudpool_s3" else None,
                                      after=after)
                except C.MeasurementError as exc:
                    errors[v].append(str(exc))
                    log(f"[rep {rep + 1}/{args.repeat}] {v:13s} FAILED: {exc}")
                    continue
                samples[v].append(out)
                log(f"[rep {rep + 1}/{args.repeat}] {v:13s} {out['seconds']:8.3f} s "
                    f"{out['bytes'] / out['seconds'] / 1e6:7.1f} MB/s  {out['parts']:3d} parts"
                    f"   (elapsed {time.monotonic() - started:5.0f} s)")
        wall = time.monotonic() - started
    finally:
        if own_dir and root:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(private_tmp, ignore_errors=True)

    # Correctness: every sample's totals must equal the baseline's (or, without it, each other's).
    ref = None
    ref_from = "baseline" if samples.get("baseline") else next((v for v in variants if samples[v]), None)
    if ref_from:
        s = samples[ref_from][0]
        ref = (s["bytes"], s["words"], s["distinct"], s["digest"])
    mismatches = []
    for v in variants:
        for s in samples[v]:
            if (s["bytes"], s["words"], s["distinct"], s["digest"]) != ref:
                mismatches.append(f"{v}: {s['bytes']} bytes, {s['words']} words, {s['distinct']} distinct "
                                  f"(reference {ref_from}: {ref[0]} bytes, {ref[1]} words, {ref[2]} distinct)")
    results: Dict[str, Any] = {}
    for v in variants:
        e = C.summarize(s["seconds"] for s in samples[v])
        e["mb_per_s"] = None if e["median"] is None else total_bytes / e["median"] / 1e6
        e["parts"] = samples[v][0]["parts"] if samples[v] else None
        e["import_seconds_median"] = C.summarize(s["import_seconds"] for s in samples[v])["median"]
        e["errors"] = errors[v]
        results[v] = e
    med = {v: results[v]["median"] for v in variants}

    headers = ["variant", "parts", "time (s), median (min-max)", "MB/s", "vs single process"]
    refs = [r for r in ("ppe", "lithops") if r in variants]
    headers += [f"cloudpool local / {r}" for r in refs] + [f"cloudpool S3 / {r}" for r in refs]
    rows = []
    for v in variants:
        e = results[v]
        t = "failed" if e["median"] is None else f"{C.fmt_seconds(e['median'])} ({C.fmt_seconds(e['min'])}-{C.fmt_seconds(e['max'])})"
        if e["median"] is not None and e["n"] != args.repeat:
            t += f" n={e['n']}"
        row = [LABELS[v], e["parts"] if e["parts"] is not None else "", t,
               "" if e["mb_per_s"] is None else f"{e['mb_per_s']:.1f}",
               C.fmt_ratio(C.ratio(med.get("baseline"), med[v])) + "x" if med.get("baseline") and med[v] else "n/a"]
        for base in ("cloudpool", "cloudpool_s3"):
            for r in refs:
                row.append(C.fmt_ratio(C.ratio(med.get(base), med.get(r))) if v == base else "")
        rows.append(row)
    targets = []
    r = C.ratio(med.get("cloudpool"), med.get("ppe"))
    targets.append({"target": "cloudpool on local storage within 10% of the hand-written ProcessPoolExecutor "
                              "version (cloudpool/PPE <= 1.10)",
                    "ratio": r, "status": "not measured" if r is None else ("PASS" if r <= 1.10 else "FAIL")})
    md = ["## Word-count benchmark (`python3 bench/bench_wordcount.py`)", "", C.machine_markdown(info), "",
          f"{total_bytes / 1e6:.1f} MB of generated text in {FILES} files, partitions of {args.chunk_mb:g} MiB, "
          f"{args.workers} workers, {args.repeat} runs per variant (fresh process each, interleaved). "
          f"Time from the executor's construction to its shutdown, merge included. "
          f"\"vs single process\" = speed-up over the one-process baseline; the last columns are "
          f"time ratios (< 1 means cloudpool is faster).", "",
          C.markdown_table(headers, rows), ""]
    if ref:
        md.append(f"Totals: {ref[1]:,} words, {ref[2]} distinct, {ref[0]:,} bytes counted; "
                  + ("**all variants agree** (same per-word counts, sha256 of the sorted counts)."
                     if not mismatches else "**MISMATCH**:"))
        md += [f"- {m}" for m in mismatches]
        md.append("")
    md += ["Target (issue 4):", ""]
    for t in targets:
        md.append(f"- **{t['status']}** {t['target']}"
                  + ("" if t["ratio"] is None else f" -- measured {C.fmt_ratio(t['ratio'])}"))
    md.append("")
    notes = [f"- {LABELS[v]}: {err.splitlines()[0]}" for v in variants for err in errors[v]]
    notes += [f"- {LABELS.get(v, v)} skipped: {why}" for v, why in skipped.items()]
    if "lithops" in variants:
        notes.append(f"- Lithops: `FunctionExecutor(config={C.lithops_config(args.workers)})`, "
                     f"`map(count_lithops, '<absolute data dir>', obj_chunk_size={chunk})`.")
    if notes:
        md += ["Notes:", ""] + notes + [""]
    md.append(f"Whole run: {wall / 60:.1f} min.")
    md_s = "\n".join(md)
    payload = {"benchmark": "wordcount", "machine": info,
               "settings": {"size_mb": args.size_mb, "chunk_mb": args.chunk_mb, "repeat": args.repeat,
                            "workers": args.workers, "variants": args.variants, "files": FILES},
               "total_bytes": total_bytes, "results": results, "samples": samples, "targets": targets,
               "mismatches": mismatches, "skipped": skipped, "wall_seconds": wall}
    print(md_s)
    paths = C.write_results(args.output, md_s, payload)
    log("wrote " + " and ".join(os.path.relpath(p) for p in paths))
    return 1 if mismatches or any(errors[v] for v in variants) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        import bench_wordcount  # re-import under the module name so workers unpickle it by reference
        bench_wordcount.child_main(sys.argv[2:])
    else:
        sys.exit(main())
