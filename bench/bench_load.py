"""Load benchmark: 100,000 trivial calls, storage requests per call, client memory (issue 7).

    python3 bench/bench_load.py                        # 100,000 calls on local disk and on S3, Lithops on 300
    python3 bench/bench_load.py --calls 20000 --lithops-calls 100
    python3 bench/bench_load.py --stores file --skip-lithops

What it measures, each in a fresh interpreter (``_common.run_child``), 2 workers:

* **cloudpool, local disk storage**: ``map`` of N trivial calls through the default local
  backend. Storage requests are counted at the storage layer: the child wraps every
  primitive of ``LocalStorage`` (put, get, head, list, delete, and the local
  ``check``/``delete_prefix`` shortcuts) before the executor exists, with counters in
  shared memory, so the forked worker processes count into the same place.
* **cloudpool, S3 storage** (moto): the same map, with the storage endpoint pointed at
  ``tests/faultproxy.py`` run as a plain counting proxy in front of moto. Every HTTP
  request from the client *and* from the workers goes through it: real requests,
  counted by method (LIST apart from GET).
* **Lithops, S3 storage**: ``FunctionExecutor.map`` on localhost compute with its
  ``minio`` storage backend (an S3 client with a configurable endpoint) pointed at the
  same proxy, on ``--lithops-calls`` calls only: Lithops starts an interpreter per call
  (~0.5 s each here), so 100,000 calls would take hours. Requests per call is the
  figure that matters, and it does not depend on N much. Lithops cleans up its job
  data from a detached process after exit; the benchmark waits for it (bounded) and
  reports requests before and after that clean-up.

For every case: wall time (construction to shutdown), storage requests in all and per
call (target: at most 1 per call, amortised), and the client's peak RSS growth
(``ru_maxrss`` of the client process only -- workers are separate processes -- from
just before the executor is built to after shutdown). The results iterator is consumed
lazily, so the figure includes the executor's per-future bookkeeping for all N calls.

Not a timed test: results go to stdout and ``bench/results/load.{md,json}``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import _common as C  # noqa: E402

LOCAL_OPS = ("put", "put_file", "get", "head", "list", "delete", "check", "delete_prefix")
TARGET_PER_CALL = 1.0


# ---------------------------------------------------------------------------- children
def _maxrss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _count_local_storage():
    """Wrap LocalStorage's primitives; returns a function giving {op: count} (all processes)."""
    import multiprocessing

    from cloudpool.storage.local import LocalStorage

    counters = multiprocessing.Array("q", len(LOCAL_OPS))  # shared memory, inherited by forked workers
    for i, name in enumerate(LOCAL_OPS):
        original = LocalStorage.__dict__.get(name) or getattr(LocalStorage, name)

        def counted(self, *args, _original=original, _i=i, **kwargs):
            with counters.get_lock():
                counters[_i] += 1
            return _original(self, *args, **kwargs)

        setattr(LocalStorage, name, counted)
    return lambda: {name: counters[i] for i, name in enumerate(LOCAL_OPS) if counters[i]}


def child_cloudpool(store: str, n: int, workers: int, endpoint: str, bucket: str) -> Dict[str, Any]:
    import tempfile

    from cloudpool import CloudPoolExecutor

    counts = None
    tmp = None
    if store == "file":
        counts = _count_local_storage()
        tmp = tempfile.TemporaryDirectory(prefix="cloudpool-bench-load-")
        kwargs: Dict[str, Any] = {"storage": "file://" + tmp.name}
    else:
        kwargs = {"storage": f"s3://{bucket}/load-{uuid.uuid4().hex[:8]}",
                  "config": {"s3": {"endpoint_url": endpoint, "region": "us-east-1"}}}
    rss0 = _maxrss_mb()
    t0 = time.perf_counter()
    total = 0
    with CloudPoolExecutor(workers, **kwargs) as ex:
        t1 = time.perf_counter()
        for value in ex.map(C.trivial, range(n)):
            total += value
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    if total != n * (n - 1) // 2:
        raise AssertionError(f"wrong results: sum {total}")
    out = {"seconds": t3 - t0, "phases": {"open": t1 - t0, "map": t2 - t1, "close": t3 - t2},
           "rss_growth_mb": _maxrss_mb() - rss0, "rss_peak_mb": _maxrss_mb()}
    if counts is not None:
        out["requests_by_op"] = counts()
        out["requests"] = sum(out["requests_by_op"].values())
    if tmp is not None:
        tmp.cleanup()
    return out


def child_lithops(n: int, workers: int, endpoint: str, bucket: str) -> Dict[str, Any]:
    bindir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    import lithops

    config = {
        "lithops": {"backend": "localhost", "storage": "minio", "data_limit": False},
        "localhost": {"runtime": sys.executable, "worker_processes": workers},
        "minio": {"endpoint": endpoint, "access_key_id": "testing", "secret_access_key": "testing",
                  "storage_bucket": bucket},
    }
    rss0 = _maxrss_mb()
    t0 = time.perf_counter()
    fe = lithops.FunctionExecutor(config=config)
    futures = fe.map(C.trivial, list(range(n)))
    results = fe.get_result(futures, show_progressbar=False)
    t2 = time.perf_counter()
    fe.__exit__(None, None, None)
    t3 = time.perf_counter()
    if list(results) != list(range(n)):
        raise AssertionError("lithops: wrong results")
    return {"seconds": t3 - t0, "phases": {"map": t2 - t0, "close": t3 - t2},
            "rss_growth_mb": _maxrss_mb() - rss0, "rss_peak_mb": _maxrss_mb()}


def child_main(argv: List[str]) -> None:
    peer, store, n, workers, endpoint, bucket = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5]
    if peer == "cloudpool":
        out = child_cloudpool(store, n, workers, endpoint, bucket)
    else:
        out = child_lithops(n, workers, endpoint, bucket)
    C.emit_result(out)


# ---------------------------------------------------------------------------- parent
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=100_000, help="calls per cloudpool case (default 100,000)")
    p.add_argument("--lithops-calls", type=int, default=300, help="calls for Lithops (default 300)")
    p.add_argument("--skip-lithops", action="store_true", help="leave Lithops out")
    p.add_argument("--stores", default="file,s3", help="comma-separated subset of file,s3")
    p.add_argument("--workers", type=int, default=2, help="workers for every case (default 2)")
    p.add_argument("--timeout", type=float, default=1800.0, help="time box per measurement, seconds")
    p.add_argument("--output", default="load", help="basename of the files in bench/results/")
    args = p.parse_args(argv)
    args.stores = [s for s in args.stores.split(",") if s]
    if set(args.stores) - {"file", "s3"}:
        p.error("--stores takes file and/or s3")
    return args


def run(args) -> Dict[str, Any]:
    from tests import servers
    from tests.faultproxy import FaultProxy

    needs_s3 = "s3" in args.stores or not args.skip_lithops
    rows: List[Dict[str, Any]] = []
    proxy = moto = None
    bucket = ""
    env = {}
    try:
        if needs_s3:
            moto = servers.MotoServer().start()
            proxy = FaultProxy(moto.endpoint_url).start()  # no rules: a counting proxy
            bucket = "cp-load-" + uuid.uuid4().hex[:8]
            import boto3
            s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                              aws_access_key_id=servers.S3_ACCESS_KEY,
                              aws_secret_access_key=servers.S3_SECRET_KEY)
            s3.create_bucket(Bucket=bucket)
            env = dict(moto.env)
            env["AWS_ENDPOINT_URL"] = proxy.url
        endpoint = proxy.url if proxy else "-"
        cases = [("cloudpool", store, args.calls) for store in args.stores]
        if not args.skip_lithops:
            cases.append(("lithops", "s3", args.lithops_calls))
        for peer, store, n in cases:
            label = f"{peer} / {'local disk' if store == 'file' else 'S3 (moto)'}"
            C.log(f"{label}: {n:,} calls ...")
            if proxy is not None:
                proxy.reset_stats()
            after = C.PEERS["lithops"].after_measurement if peer == "lithops" else None
            cmd = [sys.executable, os.path.abspath(__file__), "child", peer, store, str(n), str(args.workers),
                   endpoint, bucket]
            row: Dict[str, Any] = {"peer": peer, "store": store, "label": label, "calls": n}
            try:
                if peer == "lithops":
                    # Requests made by the time the executor has exited, then after Lithops'
                    # detached clean-up (which after_measurement waits for, bounded).
                    out = C.run_child(cmd, args.timeout, label, env_extra=env)
                    row["requests_before_cleanup"] = proxy.stats()["requests"]
                    after()
                else:
                    out = C.run_child(cmd, args.timeout, label, env_extra=env)
            except C.MeasurementError as exc:
                row["error"] = str(exc)
                C.log(f"  FAILED: {exc}")
                rows.append(row)
                continue
            row.update(out)
            if store == "s3":
                stats = proxy.stats()
                row["requests"] = stats["requests"]
                row["requests_by_op"] = stats["by_method"]
            row["requests_per_call"] = row["requests"] / n
            C.log(f"  {row['seconds']:.2f} s, {row['requests']:,} storage requests "
                  f"({row['requests_per_call']:.4f} per call), client peak RSS growth "
                  f"{row['rss_growth_mb']:.0f} MB")
            rows.append(row)
    finally:
        if proxy is not None:
            proxy.close()
        if moto is not None:
            moto.close()
    return {"rows": rows}


def render(args, info, rows) -> str:
    headers = ["case", "calls", "wall time (s)", "calls/s", "storage requests", "requests / call",
               "by operation", "client peak RSS growth (MB)"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["label"], f"{r['calls']:,}", "failed", "", "", "", r["error"].splitlines()[0][:80], ""])
            continue
        ops = ", ".join(f"{k} {v:,}" for k, v in sorted(r["requests_by_op"].items()))
        extra = ""
        if "requests_before_cleanup" in r:
            extra = f" ({r['requests_before_cleanup']:,} before its detached clean-up)"
        table.append([r["label"], f"{r['calls']:,}", C.fmt_seconds(r["seconds"]),
                      f"{r['calls'] / r['seconds']:,.0f}", f"{r['requests']:,}{extra}",
                      f"{r['requests_per_call']:.4f}", ops, f"{r['rss_growth_mb']:.0f}"])
    verdicts = []
    for r in rows:
        if r["peer"] == "cloudpool" and "error" not in r:
            ok = r["requests_per_call"] <= TARGET_PER_CALL
            verdicts.append(f"- **{'PASS' if ok else 'FAIL'}** {r['label']}: {r['requests_per_call']:.4f} storage "
                            f"requests per call (target <= {TARGET_PER_CALL:g}, amortised)")
    lit = [r for r in rows if r["peer"] == "lithops" and "error" not in r]
    cps3 = [r for r in rows if r["peer"] == "cloudpool" and r["store"] == "s3" and "error" not in r]
    if lit and cps3:
        verdicts.append(f"- Lithops makes {lit[0]['requests_per_call']:.2f} S3 requests per call, cloudpool "
                        f"{cps3[0]['requests_per_call']:.4f} "
                        f"({lit[0]['requests_per_call'] / max(cps3[0]['requests_per_call'], 1e-9):,.0f}x fewer)")
    return "\n".join([
        "## Load benchmark (`python3 bench/bench_load.py`)", "",
        C.machine_markdown(info), "",
        f"{args.workers} workers, `map` of trivial calls (default chunksize), one fresh interpreter per case. "
        "Requests on local disk are counted at the storage layer (client and workers); on S3 they are the "
        "HTTP requests seen by a counting proxy in front of moto (client and workers).", "",
        C.markdown_table(headers, table), "", "Targets (issue 7):", "", *verdicts, ""])


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    info = C.machine_info(["cloudpool"] + ([] if args.skip_lithops else ["lithops"]))
    started = time.monotonic()
    raw = run(args)
    md = render(args, info, raw["rows"]) + f"\nWhole run: {(time.monotonic() - started) / 60:.1f} min.\n"
    print(md)
    paths = C.write_results(args.output, md, {"benchmark": "load", "machine": info,
                                              "settings": vars(args), "rows": raw["rows"]})
    C.log("wrote " + " and ".join(os.path.relpath(p) for p in paths))
    return 1 if any("error" in r for r in raw["rows"]) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        # Import this file under its module name, so the workload pickles by reference.
        import bench_load
        bench_load.child_main(sys.argv[2:])
    else:
        sys.exit(main())
