"""Pool benchmark: ``cloudpool.multiprocessing.Pool`` vs ``multiprocessing.Pool`` vs Lithops' Pool.

    python3 bench/bench_pool.py                  # the full run (~10 min, most of it Lithops)
    python3 bench/bench_pool.py --quick          # 2 repetitions, Lithops on the 20-call cases only
    python3 bench/bench_pool.py --skip-lithops   # stdlib peer only
    python3 bench/bench_pool.py --cases map10000,apply1000 --repeat 7

Cases (``processes=2`` for every peer):

* ``mapN``        -- ``pool.map(trivial, range(N))`` with the default chunking
                     (``Pool.map``'s ``ceil(N / (4 * processes))`` for the stdlib and cloudpool;
                     Lithops' default is one call per element).
* ``imapN``       -- ``sorted(pool.imap_unordered(small_work, range(N)))``, default
                     ``chunksize=1``; ``small_work`` is ~20 us of integer arithmetic, no sleep.
* ``applyN``      -- N ``pool.apply_async(small_work, (i,))`` then ``.get()`` on each.

Each measurement is a fresh interpreter; the clock runs from ``Pool(2)`` to the end of
``close()`` + ``join()`` (the pool's whole life, as in ``bench_core``). Peers are interleaved
in a rotating order; medians are reported with min-max and cloudpool's ratio to each peer.

Lithops' ``multiprocessing`` needs a Redis server (its shared-state objects live there and its
config loader insists on a ``redis`` section): the driver starts one with
``tests/servers.redis_server()`` and gives the children a Lithops config file (localhost
compute + storage, ``data_limit: False``, ``worker_processes: 2``, the Redis address) via
``LITHOPS_CONFIG_FILE``. Lithops' localhost mode costs ~0.5 s per call, so it runs only the
cases with at most ``--lithops-max-calls`` (default 100) calls; the others are reported as
"not measured", never extrapolated.

Results: markdown on stdout and ``bench/results/pool.md``; everything in ``pool.json``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _common as C  # noqa: E402

# name -> (kind, n, description)
CASES: Dict[str, tuple] = {
    "map100": ("map", 100, "Pool.map, 100 trivial calls"),
    "map10000": ("map", 10000, "Pool.map, 10,000 trivial calls"),
    "imap100": ("imap", 100, "imap_unordered, 100 small calls"),
    "imap1000": ("imap", 1000, "imap_unordered, 1,000 small calls"),
    "apply100": ("apply", 100, "100 apply_async + get"),
    "apply1000": ("apply", 1000, "1,000 apply_async + get"),
}
PEER_ORDER = ["cloudpool", "mp_pool", "lithops"]
LABELS = {"cloudpool": "cloudpool Pool", "mp_pool": "multiprocessing.Pool", "lithops": "Lithops Pool"}
BASE = "cloudpool"


# ---------------------------------------------------------------------------- child side
def _import_pool(peer: str):
    if peer == "cloudpool":
        from cloudpool.multiprocessing import Pool
        import cloudpool.multiprocessing.pool  # noqa: F401 - the lazily imported module, before the clock
        return Pool
    if peer == "mp_pool":
        import multiprocessing
        import multiprocessing.pool  # noqa: F401 - what multiprocessing.Pool() imports on first use
        return multiprocessing.Pool
    if peer == "lithops":
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        import lithops.multiprocessing as lmp
        from lithops.multiprocessing import config as mp_config
        with open(os.environ["LITHOPS_CONFIG_FILE"]) as fh:
            conf = json.load(fh)  # JSON is YAML: the same file Lithops itself loads
        mp_config.set_parameter(mp_config.LITHOPS_CONFIG, {"config": conf})
        return lmp.Pool
    raise ValueError(peer)


def child_main(argv: List[str]) -> None:
    peer, kind, n, workers = argv[0], argv[1], int(argv[2]), int(argv[3])
    t = time.perf_counter()
    Pool = _import_pool(peer)
    import_seconds = time.perf_counter() - t
    items = list(range(n))
    if kind == "map":
        fn, expected = C.trivial, items
    else:
        fn, expected = C.small_work, [C.small_work(i) for i in items]
    gc.collect()
    t0 = time.perf_counter()
    pool = Pool(workers)
    t1 = time.perf_counter()
    if kind == "map":
        results = pool.map(fn, items)
    elif kind == "imap":
        results = list(pool.imap_unordered(fn, items))
    elif kind == "apply":
        pending = [pool.apply_async(fn, (i,)) for i in items]
        results = [r.get() for r in pending]
    else:
        raise ValueError(kind)
    t2 = time.perf_counter()
    pool.close()
    pool.join()
    t3 = time.perf_counter()
    got = sorted(results) if kind == "imap" else list(results)
    want = sorted(expected) if kind == "imap" else expected
    if got != want:
        raise AssertionError(f"{peer}: wrong results for {kind} of {n}")
    C.emit_result({"seconds": t3 - t0, "import_seconds": import_seconds,
                   "phases": {"open": t1 - t0, "work": t2 - t1, "close": t3 - t2}})


# ---------------------------------------------------------------------------- parent side
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="2 repetitions, Lithops only on cases of <= 20 calls")
    p.add_argument("--skip-lithops", action="store_true")
    p.add_argument("--lithops-max-calls", type=int, default=None, help="default 100 (20 with --quick)")
    p.add_argument("--lithops-repeat", type=int, default=None, help="default 3 (1 with --quick), at most --repeat")
    p.add_argument("--lithops-timeout", type=float, default=600.0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--peers", default=",".join(PEER_ORDER))
    p.add_argument("--output", default="pool")
    a = p.parse_args(argv)
    if a.repeat is None:
        a.repeat = 2 if a.quick else 5
    if a.lithops_max_calls is None:
        a.lithops_max_calls = 20 if a.quick else 100
    if a.lithops_repeat is None:
        a.lithops_repeat = min(a.repeat, 1 if a.quick else 3)
    return C.finish_case_args(p, a, CASES, PEER_ORDER, BASE)


log = C.log


def not_measured(args, peer: str, case: str) -> Optional[str]:
    n = CASES[case][1]
    if peer == "lithops" and n > args.lithops_max_calls:
        return (f"not measured: {n:,} calls exceed --lithops-max-calls {args.lithops_max_calls:,} "
                f"(Lithops localhost: ~0.5 s per call here)")
    return None


def isolate_tmpdir(tmp: str) -> None:
    """Give this run's children (and Lithops' constants in this process) their own TMPDIR.

    Lithops localhost keeps its state under ``<tempdir>/lithops-root`` -- including a copy of
    its own package that its workers import -- so two Lithops clients on one machine (another
    benchmark running at the same time) race on it; we saw workers fail with a circular
    ``ImportError`` of ``lithops.multiprocessing`` that way. A private TMPDIR avoids that.
    """
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None  # so gettempdir() (Lithops' constants) sees it


def start_lithops_env(workers: int, tmpdir: str) -> Dict[str, str]:
    """Start Redis and write the Lithops config file the children load; return their env."""
    sys.path.insert(0, C.REPO_ROOT)
    from tests.servers import redis_server
    redis = redis_server()
    conf = C.lithops_config(workers)
    conf["redis"] = {"host": redis.host, "port": redis.port}
    path = os.path.join(tmpdir, "lithops-config.yaml")
    with open(path, "w") as fh:
        json.dump(conf, fh)
    return {"LITHOPS_CONFIG_FILE": path}


def run(args) -> Dict[str, Any]:
    peers = list(args.peers)
    skipped: Dict[str, str] = {}
    if "lithops" in peers:
        why = C.PEERS["lithops"].available()
        if why is None:
            try:
                import importlib.util
                if importlib.util.find_spec("redis") is None:
                    why = "the redis client is not installed (pip install redis)"
            except Exception as exc:  # noqa: BLE001
                why = repr(exc)
        if why:
            skipped["lithops"] = why
            peers.remove("lithops")
    tmp = tempfile.mkdtemp(prefix="bench-pool-")
    isolate_tmpdir(tmp)
    lithops_env: Dict[str, str] = {}
    if "lithops" in peers:
        try:
            lithops_env = start_lithops_env(args.workers, tmp)
        except Exception as exc:  # noqa: BLE001 - no Redis: say so and go on without Lithops
            skipped["lithops"] = f"could not start Redis: {exc}"
            peers.remove("lithops")
    info = C.machine_info([p for p in peers if p in C.PEERS])
    info["versions"]["redis (client)"] = C._dist_version("redis")
    samples = {c: {p: [] for p in peers} for c in args.cases}
    errors = {c: {p: [] for p in peers} for c in args.cases}
    started = time.monotonic()
    rounds = max(args.repeat, args.lithops_repeat if "lithops" in peers else 0)
    for rep in range(rounds):
        for case in args.cases:
            kind, n, _ = CASES[case]
            for peer in C.rotated(peers, rep):
                wanted = args.lithops_repeat if peer == "lithops" else args.repeat
                if rep >= wanted or not_measured(args, peer, case):
                    continue
                timeout = args.lithops_timeout if peer == "lithops" else args.timeout
                after = C.PEERS["lithops"].after_measurement if peer == "lithops" else None
                cmd = [sys.executable, os.path.abspath(__file__), "child", peer, kind, str(n), str(args.workers)]
                try:
                    out = C.run_child(cmd, timeout, f"{peer}/{case}",
                                      env_extra=lithops_env if peer == "lithops" else None, after=after)
                except C.MeasurementError as exc:
                    errors[case][peer].append(str(exc))
                    log(f"[rep {rep + 1}/{rounds}] {case:10s} {peer:10s} FAILED: {exc}")
                    continue
                samples[case][peer].append(out)
                log(f"[rep {rep + 1}/{rounds}] {case:10s} {peer:10s} {out['seconds']:9.4f} s"
                    f"   (elapsed {time.monotonic() - started:6.0f} s)")
    return {"info": info, "peers": peers, "skipped_peers": skipped, "samples": samples,
            "errors": errors, "wall_seconds": time.monotonic() - started}


def summarize(args, raw: Dict[str, Any]) -> Dict[str, Any]:
    return C.summarize_cases(args, raw, CASES, BASE, not_measured)


def render(args, raw, results) -> str:
    peers = raw["peers"]
    others = [p for p in peers if p != BASE]
    headers = ["case"] + [f"{LABELS[p]} (s)" for p in peers] + [f"cloudpool / {LABELS[p]}" for p in others]
    rows = []
    for case in args.cases:
        r = results[case]
        cells = [r["description"]]
        for p in peers:
            e = r["peers"][p]
            want = args.lithops_repeat if p == "lithops" else args.repeat
            if e["not_measured"]:
                cells.append("not measured")
            elif e["median"] is None:
                cells.append("failed")
            else:
                nn = f" n={e['n']}" if e["n"] != args.repeat else ""
                cells.append(f"{C.fmt_seconds(e['median'])} ({C.fmt_seconds(e['min'])}-{C.fmt_seconds(e['max'])}){nn}")
        cells += [C.fmt_ratio(r["ratios"][p]) for p in others]
        rows.append(cells)
    out = ["## Pool benchmark (`python3 bench/bench_pool.py`)", "", C.machine_markdown(raw["info"]), "",
           f"Median wall time in seconds over {args.repeat} runs (min-max; `n=` when fewer runs), "
           f"`processes={args.workers}` for every peer; each run is a fresh process, timed from `Pool()` "
           f"to the end of `close()` + `join()`; ratio < 1 means cloudpool is faster.", "",
           C.markdown_table(headers, rows), ""]
    # Where the time goes, for cloudpool vs the stdlib: open / work / close medians.
    ph_rows = []
    for case in args.cases:
        for p in peers:
            e = results[case]["peers"][p]
            if e["median"] is not None:
                pm = e["phase_medians"]
                ph_rows.append([results[case]["description"], LABELS[p]] +
                               [C.fmt_seconds(pm.get(k)) for k in ("open", "work", "close")])
    if ph_rows:
        out += ["Phase medians (seconds): `open` = `Pool()`, `work` = submit + collect, "
                "`close` = `close()` + `join()`:", "",
                C.markdown_table(["case", "peer", "open", "work", "close"], ph_rows), ""]
    notes = []
    for case in args.cases:
        for p in peers:
            e = results[case]["peers"][p]
            if e["not_measured"]:
                notes.append(f"- {LABELS[p]}, {results[case]['description']}: {e['not_measured']}")
            for err in e["errors"]:
                notes.append(f"- {LABELS[p]}, {results[case]['description']}: {err.splitlines()[0]}")
    for p, why in raw["skipped_peers"].items():
        notes.append(f"- {LABELS[p]} skipped: {why}")
    if "lithops" in peers:
        notes.append(f"- Lithops: `lithops.multiprocessing.Pool({args.workers})` with config "
                     f"`{C.lithops_config(args.workers)}` plus a `redis` section (a local redis-server), "
                     f"{args.lithops_repeat} repetition(s); default chunking (one call per element).")
    if notes:
        out += ["Notes:", ""] + notes + [""]
    out.append(f"Whole run: {raw['wall_seconds'] / 60:.1f} min.")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    raw = run(args)
    results = summarize(args, raw)
    md = render(args, raw, results)
    payload = {"benchmark": "pool", "machine": raw["info"],
               "settings": {k: getattr(args, k) for k in ("repeat", "quick", "workers", "cases", "peers",
                                                          "lithops_max_calls", "lithops_repeat",
                                                          "lithops_timeout", "timeout")},
               "method": ("fresh interpreter per measurement; library imported before the clock; timed from "
                          "Pool() to the end of close()+join(); peers interleaved, order rotated per "
                          "repetition; median reported; ratio = cloudpool median / peer median"),
               "results": results, "skipped_peers": raw["skipped_peers"], "wall_seconds": raw["wall_seconds"]}
    print(md)
    paths = C.write_results(args.output, md, payload)
    log("wrote " + " and ".join(os.path.relpath(p) for p in paths))
    return 1 if any(raw["errors"][c][p] for c in args.cases for p in raw["peers"]) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        # Re-import under the module name so nothing pickles as __main__.
        import bench_pool
        bench_pool.child_main(sys.argv[2:])
    else:
        sys.exit(main())
