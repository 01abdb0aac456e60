"""Shared helpers for cloudpool's benchmarks: peers, fresh-process timing, statistics, reports.

How a benchmark here measures (``bench_core.py`` is the first user; the Pool, word-count
and knative benchmarks are meant to reuse the same pieces):

* Every single measurement runs in a **fresh Python process** (``run_measurement``). The
  child imports the peer's library and builds its inputs *before* starting the clock, so
  import time and data generation are excluded equally for every peer (import time is
  reported separately). A fresh process per measurement also keeps one peer's leftovers
  (threads, imported modules, a bigger heap that makes ``fork`` slower) from taxing the
  next peer.
* The timed region of a ``map``-style case is the whole life of the executor: construct,
  submit everything, collect every result, shut down and wait for the workers. That is
  what a user's ``with Executor(...) as ex: list(ex.map(...))`` costs, and it is the only
  region that means the same thing for every peer -- ``ProcessPoolExecutor`` and
  cloudpool start workers lazily on the first submit while ``multiprocessing.Pool``
  starts them in its constructor, so a "map only" region would charge worker start-up
  to some peers and not to others. The phase boundaries are recorded too (``phases`` in
  the JSON) for anyone who wants to look.
* Peers are **interleaved** within each repetition, in an order rotated every
  repetition, so a noisy shared machine slows every peer alike. Medians are reported.
* Children run with ``PYTHONDONTWRITEBYTECODE`` removed from the environment. This sandbox
  sets it, and it would make Lithops -- which starts a new interpreter per call from a
  copy of its package in /tmp -- recompile its modules on every call, a cost no normal
  installation pays. The other peers import nothing inside the timed region.

Peers: ``cloudpool`` (``CloudPoolExecutor``, default local backend), ``ppe``
(``concurrent.futures.ProcessPoolExecutor``), ``mp_pool`` (``multiprocessing.Pool``) and
``lithops`` (``lithops.FunctionExecutor`` in localhost mode with localhost storage).

This module must stay cheap to import and free of top-level imports of the peers: the
children import it, and Lithops workers import it to unpickle the benchmark functions.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")

# ---------------------------------------------------------------------------- workloads
# Module-level so every peer pickles them the same way: by reference to this module.


def trivial(x):
    """The "trivial call": returns its argument."""
    return x


def array_probe(a):
    """Takes a big numpy array, returns a few bytes (so the cost measured is the argument's trip)."""
    return (a.shape[0], float(a[-1]))


ARRAY_BYTES = 10_000_000  # "10 MB": 1,250,000 float64


def make_arrays(count: int, nbytes: int = ARRAY_BYTES):
    """``count`` distinct float64 arrays of ``nbytes`` each (distinct, so nothing can be deduplicated)."""
    import numpy as np
    n = nbytes // 8
    return [np.arange(n, dtype=np.float64) + i for i in range(count)]


# ---------------------------------------------------------------------------- peers
class Peer:
    """One library under test. Subclasses implement the few operations the cases need.

    ``open``/``close`` bracket the executor's life; ``map`` returns a list of results;
    ``call`` runs one call and returns its result. ``setup`` imports the library (outside
    the timed region) and returns nothing.
    """

    name = "?"
    label = "?"

    def setup(self) -> None:
        raise NotImplementedError

    def open(self, workers: int) -> Any:
        raise NotImplementedError

    def map(self, handle: Any, fn: Callable, items: Sequence[Any]) -> List[Any]:
        raise NotImplementedError

    def call(self, handle: Any, fn: Callable, arg: Any) -> Any:
        raise NotImplementedError

    def close(self, handle: Any) -> None:
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def available(self) -> Optional[str]:
        """None if the peer can run here, else why not."""
        return None

    def after_measurement(self) -> None:
        """Runs in the parent after each child of this peer exits (outside any timing)."""


class CloudPoolPeer(Peer):
    name = "cloudpool"
    label = "cloudpool"

    def setup(self) -> None:
        # The public name, not just the package: cloudpool (like concurrent.futures)
        # imports its executor lazily, on first attribute access.
        from cloudpool import CloudPoolExecutor  # noqa: F401

    def open(self, workers):
        import cloudpool
        return cloudpool.CloudPoolExecutor(max_workers=workers)

    def map(self, ex, fn, items):
        return list(ex.map(fn, items))  # default chunksize, as a drop-in user would

    def call(self, ex, fn, arg):
        return ex.submit(fn, arg).result()

    def close(self, ex):
        ex.shutdown(wait=True)

    def version(self):
        return _dist_version("cloudpool")


class ProcessPoolPeer(Peer):
    name = "ppe"
    label = "ProcessPoolExecutor"

    def setup(self) -> None:
        from concurrent.futures import ProcessPoolExecutor  # noqa: F401 - lazily imported by the package

    def open(self, workers):
        import concurrent.futures
        return concurrent.futures.ProcessPoolExecutor(max_workers=workers)

    def map(self, ex, fn, items):
        return list(ex.map(fn, items))

    def call(self, ex, fn, arg):
        return ex.submit(fn, arg).result()

    def close(self, ex):
        ex.shutdown(wait=True)

    def version(self):
        return "stdlib " + platform.python_version()


class MultiprocessingPoolPeer(Peer):
    name = "mp_pool"
    label = "multiprocessing.Pool"

    def setup(self) -> None:
        import multiprocessing.pool  # noqa: F401 - what multiprocessing.Pool() imports on first use

    def open(self, workers):
        import multiprocessing
        return multiprocessing.Pool(processes=workers)

    def map(self, pool, fn, items):
        return pool.map(fn, items)  # default chunking: ceil(len / (4 * processes))

    def call(self, pool, fn, arg):
        return pool.apply(fn, (arg,))

    def close(self, pool):
        # close + join waits for the workers to exit, like shutdown(wait=True) for the
        # executors (``with Pool()`` would call terminate(), which does not wait for work).
        pool.close()
        pool.join()

    def version(self):
        return "stdlib " + platform.python_version()


def lithops_config(workers: int) -> Dict[str, Any]:
    """Lithops localhost compute + localhost storage, set up in code (no config file).

    ``data_limit: False`` lifts Lithops' 4 MiB cap on a call's arguments (the 10 MB-array
    case needs it); ``worker_processes`` is Lithops' name for the number of calls run at
    once; the runtime is this interpreter by absolute path, so the workers run the same
    Python and the same site-packages as the client.
    """
    return {
        "lithops": {"backend": "localhost", "storage": "localhost", "data_limit": False},
        "localhost": {"runtime": sys.executable, "worker_processes": workers},
    }


class LithopsPeer(Peer):
    name = "lithops"
    label = "Lithops localhost"

    def setup(self) -> None:
        # Lithops' localhost mode starts `python` (or the configured runtime) by name in
        # places: make this interpreter's directory come first on PATH.
        bindir = os.path.dirname(sys.executable)
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        from lithops import FunctionExecutor  # noqa: F401

    def open(self, workers):
        import lithops
        return lithops.FunctionExecutor(config=lithops_config(workers))

    def map(self, fe, fn, items):
        futures = fe.map(fn, list(items))
        # No progress bar: it is cosmetic and would only add terminal work to Lithops' time.
        return fe.get_result(futures, show_progressbar=False)

    def call(self, fe, fn, arg):
        return fe.get_result(fe.call_async(fn, arg), show_progressbar=False)

    def close(self, fe):
        fe.__exit__(None, None, None)  # what `with FunctionExecutor() as fe:` does on exit

    def version(self):
        return _dist_version("lithops")

    def available(self):
        try:
            import importlib.util
            if importlib.util.find_spec("lithops") is None:
                return "lithops is not installed (pip install lithops)"
        except Exception as exc:  # noqa: BLE001 - a broken install is "not available" too
            return f"lithops cannot be imported: {exc!r}"
        return None

    def after_measurement(self) -> None:
        # At exit Lithops drops a clean-up request in its cleaner directory and hands it to
        # a detached "cleaner" process. Wait (bounded) until no request is pending, so that
        # its disk work is not billed to whichever peer is timed next. The cleaner then
        # lingers a few seconds asleep, which costs nobody anything; we never signal it.
        try:
            from lithops import constants
            CLEANER_DIR, CLEANER_LOG_FILE, CLEANER_PID_FILE = (
                constants.CLEANER_DIR, constants.CLEANER_LOG_FILE, constants.CLEANER_PID_FILE)
            tmp_suffix = getattr(constants, "CLEANER_TMP_SUFFIX", ".tmp")
        except Exception:  # noqa: BLE001
            return
        not_requests = {os.path.basename(CLEANER_LOG_FILE), os.path.basename(CLEANER_PID_FILE)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                pending = [f for f in os.listdir(CLEANER_DIR) if f not in not_requests and not f.endswith(tmp_suffix)]
            except OSError:
                return
            if not pending:
                return
            time.sleep(0.1)


PEERS: Dict[str, Peer] = {p.name: p for p in (CloudPoolPeer(), ProcessPoolPeer(),
                                              MultiprocessingPoolPeer(), LithopsPeer())}


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001
        return "not installed"


# ---------------------------------------------------------------------------- the child side
def _case_map(peer: Peer, workers: int, n: int) -> Dict[str, Any]:
    items = list(range(n))
    gc.collect()
    t0 = time.perf_counter()
    handle = peer.open(workers)
    t1 = time.perf_counter()
    results = peer.map(handle, trivial, items)
    t2 = time.perf_counter()
    peer.close(handle)
    t3 = time.perf_counter()
    if list(results) != items:
        raise AssertionError(f"{peer.name}: wrong results for map of {n}")
    return {"seconds": t3 - t0, "phases": {"open": t1 - t0, "map": t2 - t1, "close": t3 - t2}}


def _case_cold(peer: Peer, workers: int, n: int) -> Dict[str, Any]:
    gc.collect()
    t0 = time.perf_counter()
    handle = peer.open(workers)
    t1 = time.perf_counter()
    result = peer.call(handle, trivial, 7)
    t2 = time.perf_counter()
    peer.close(handle)
    t3 = time.perf_counter()
    if result != 7:
        raise AssertionError(f"{peer.name}: wrong result for the cold-start call")
    return {"seconds": t3 - t0, "phases": {"open": t1 - t0, "call": t2 - t1, "close": t3 - t2}}


def _case_arrays(peer: Peer, workers: int, n: int) -> Dict[str, Any]:
    arrays = make_arrays(n)
    expected = [(a.shape[0], float(a[-1])) for a in arrays]
    gc.collect()
    t0 = time.perf_counter()
    handle = peer.open(workers)
    t1 = time.perf_counter()
    results = peer.map(handle, array_probe, arrays)
    t2 = time.perf_counter()
    peer.close(handle)
    t3 = time.perf_counter()
    if [tuple(r) for r in results] != expected:
        raise AssertionError(f"{peer.name}: wrong results for the array case")
    return {"seconds": t3 - t0, "phases": {"open": t1 - t0, "map": t2 - t1, "close": t3 - t2}}


#: kind -> child function(peer, workers, n). Later benchmarks may add their own kinds.
CHILD_CASES: Dict[str, Callable[[Peer, int, int], Dict[str, Any]]] = {
    "map": _case_map,
    "cold": _case_cold,
    "arrays": _case_arrays,
}

_RESULT_MARK = "@@BENCH_RESULT@@ "


def child_main(argv: Sequence[str]) -> None:
    """``_common.py child PEER KIND N WORKERS``: one measurement, printed as a JSON line."""
    peer_name, kind, n, workers = argv[0], argv[1], int(argv[2]), int(argv[3])
    peer = PEERS[peer_name]
    t = time.perf_counter()
    peer.setup()
    import_seconds = time.perf_counter() - t
    out = CHILD_CASES[kind](peer, workers, n)
    out["import_seconds"] = import_seconds
    sys.stdout.flush()
    print(_RESULT_MARK + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- the parent side
def child_env() -> Dict[str, str]:
    """Environment for measurement children (see the module docstring for why)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Measure this working tree's cloudpool, and let children import this module.
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, BENCH_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


class MeasurementError(RuntimeError):
    pass


def run_measurement(peer: str, kind: str, n: int, workers: int, timeout: float) -> Dict[str, Any]:
    """Run one measurement in a fresh interpreter; return the child's dict.

    Raises ``MeasurementError`` (with the tail of the child's output) if the child fails
    or exceeds ``timeout`` seconds; on a time-out the child's whole process group is
    killed, since peers leave worker processes behind when their client dies.
    """
    cmd = [sys.executable, os.path.join(BENCH_DIR, "_common.py"), "child", peer, kind, str(n), str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), cwd=BENCH_DIR, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's session, nothing else
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        raise MeasurementError(f"{peer}/{kind}/{n}: no result within the {timeout:g} s time box") from None
    finally:
        PEERS[peer].after_measurement()
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK):])
    tail = "\n".join((stdout + "\n" + stderr).strip().splitlines()[-15:])
    raise MeasurementError(f"{peer}/{kind}/{n}: child exited with {proc.returncode}:\n{tail}")


def rotated(items: Sequence[Any], k: int) -> List[Any]:
    """``items`` rotated by ``k``: repetition k starts with a different peer."""
    if not items:
        return []
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def summarize(samples: Iterable[float]) -> Dict[str, Any]:
    xs = sorted(samples)
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None, "samples": []}
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "samples": xs}


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize_cases(args: Any, raw: Dict[str, Any], cases: Dict[str, Any], base: str,
                    not_measured: Any) -> Dict[str, Any]:
    """Per case: each peer's median/min/max, phase medians, import time, errors, and the
    ratio of ``base`` to every other peer (``cases[name]`` is ``(..., calls, description)``;
    ``not_measured(args, peer, case)`` says why a peer was left out, or None)."""
    results: Dict[str, Any] = {}
    for case in args.cases:
        row: Dict[str, Any] = {"description": cases[case][2], "calls": cases[case][1], "peers": {}}
        for peer in raw["peers"]:
            outs = raw["samples"][case][peer]
            entry = summarize(o["seconds"] for o in outs)
            phases = sorted({k for o in outs for k in o.get("phases", {})})
            entry["phase_medians"] = {k: summarize(o["phases"][k] for o in outs)["median"] for k in phases}
            entry["import_seconds_median"] = summarize(o["import_seconds"] for o in outs)["median"]
            entry["errors"] = raw["errors"][case][peer]
            entry["not_measured"] = not_measured(args, peer, case)
            row["peers"][peer] = entry
        base_median = row["peers"][base]["median"]
        row["ratios"] = {p: ratio(base_median, row["peers"][p]["median"]) for p in raw["peers"] if p != base}
        results[case] = row
    return results


def fmt_seconds(x: Optional[float]) -> str:
    """3 significant digits, so 0.0412 and 47.5 read the same way."""
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def fmt_ratio(r: Optional[float]) -> str:
    if r is None:
        return "n/a"
    if r < 0.01:
        return f"{r:.4f}"
    return f"{r:.2f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line([str(h) for h in headers]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> Dict[str, Any]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        return {"commit": git("rev-parse", "--short", "HEAD"),
                "dirty_files": [l[3:] for l in git("status", "--porcelain", "--", "cloudpool").splitlines()]}
    except Exception:  # noqa: BLE001 - not a git checkout: just say so
        return {"commit": "unknown", "dirty_files": []}


def machine_info(peers: Iterable[str]) -> Dict[str, Any]:
    versions = {PEERS[p].label: PEERS[p].version() for p in peers}
    for dist in ("cloudpickle", "numpy"):
        versions[dist] = _dist_version(dist)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "versions": versions,
        "git": git_state(),
        "loadavg_at_start": load,
    }


def machine_markdown(info: Dict[str, Any]) -> str:
    v = ", ".join(f"{k} {val}" for k, val in info["versions"].items())
    git = info["git"]
    dirty = f" + uncommitted changes in {len(git['dirty_files'])} cloudpool file(s)" if git["dirty_files"] else ""
    load = info.get("loadavg_at_start")
    load_s = f"; load average at start {load[0]:.2f}" if load else ""
    return (f"- date: {info['date']}\n"
            f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['platform']}{load_s}\n"
            f"- Python: {info['python']}\n"
            f"- versions: {v}\n"
            f"- cloudpool tree: commit {git['commit']}{dirty}")


def write_results(basename: str, markdown: str, payload: Dict[str, Any]) -> List[str]:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    md_path = os.path.join(RESULTS_DIR, basename + ".md")
    json_path = os.path.join(RESULTS_DIR, basename + ".json")
    with open(md_path, "w") as fh:
        fh.write(markdown.rstrip() + "\n")
    with open(json_path, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False)
        fh.write("\n")
    return [md_path, json_path]


# ---------------------------------------------------------------------------- other drivers' children
# ``run_measurement`` runs this module's own child cases. Benchmarks whose children need
# other arguments (a Pool case, a data directory, a server's address) run their own script
# as the child and use these two helpers, so the protocol stays the same everywhere.


def small_work(x):
    """A small, sleep-free CPU workload (~20 us): a few hundred integer operations."""
    s = 0
    for i in range(200):
        s += (x ^ i) & 0xFF
    return s


def emit_result(out: Dict[str, Any]) -> None:
    """Child side: print one measurement as the marked JSON line ``run_child`` looks for."""
    sys.stdout.flush()
    print(_RESULT_MARK + json.dumps(out), flush=True)


def run_child(cmd: Sequence[str], timeout: float, label: str,
              env_extra: Optional[Dict[str, str]] = None,
              after: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Run ``cmd`` (a child that calls ``emit_result``) in a fresh session; return its dict.

    Same contract as ``run_measurement``: ``child_env()`` plus ``env_extra``, the whole
    process group killed on a time-out, ``MeasurementError`` with the output's tail on
    failure, ``after()`` run (outside any timing) once the child has exited.
    """
    env = child_env()
    env.update(env_extra or {})
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=BENCH_DIR, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's session, nothing else
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        raise MeasurementError(f"{label}: no result within the {timeout:g} s time box") from None
    finally:
        if after is not None:
            after()
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK):])
    tail = "\n".join((stdout + "\n" + stderr).strip().splitlines()[-15:])
    raise MeasurementError(f"{label}: child exited with {proc.returncode}:\n{tail}")


if __name__ == "__main__":
    # Run as a child: import this file again under its module name, so the workload
    # functions pickle as `_common.trivial` (by reference) for every peer rather than
    # as `__main__.trivial`, which cloudpickle would ship by value.
    sys.path.insert(0, BENCH_DIR)
    import _common
    if sys.argv[1:2] == ["child"]:
        _common.child_main(sys.argv[2:])
    else:
        sys.exit("usage: _common.py child PEER KIND N WORKERS  (run bench_core.py instead)")


def log(msg: str) -> None:
    """Progress lines go to stderr, so stdout carries only the result table."""
    print(msg, file=sys.stderr, flush=True)


def finish_case_args(parser: Any, args: Any, cases: Any, known_peers: Any, base: str) -> Any:
    """Split ``--cases``/``--peers``, reject unknown names, apply ``--skip-lithops`` and
    require ``base`` among the peers (every ratio is ``base`` / peer)."""
    args.cases = [c for c in args.cases.split(",") if c]
    args.peers = [x for x in args.peers.split(",") if x]
    unknown = [c for c in args.cases if c not in cases] + [x for x in args.peers if x not in known_peers]
    if unknown:
        parser.error(f"unknown case(s)/peer(s): {', '.join(unknown)}")
    if args.skip_lithops and "lithops" in args.peers:
        args.peers.remove("lithops")
    if base not in args.peers:
        parser.error(f"{base} must be among --peers: every ratio is {base} / peer")
    return args
