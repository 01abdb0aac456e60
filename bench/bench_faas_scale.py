#!/usr/bin/env python3
"""Scale benchmark: one client driving up to 1,000+ simulated FaaS instances.

    python3 bench/bench_faas_scale.py                    # every case, storage on local disk
    python3 bench/bench_faas_scale.py --storage seaweedfs --case 2000x0.5@200
    python3 bench/bench_faas_scale.py --quick            # the two 200-instance cases only

The platform is ``bench/faas_sim.py`` (read its docstring: a load model with Lambda-like
cold and warm starts and a concurrency limit, running the real ``cloudpool.worker`` code
in a process of its own). The client is an unmodified ``CloudPoolExecutor`` on the
``knative`` backend pointed at the simulator; the only change is a subclass that lets the
executor's storage be a local directory, which the simulator, on the same machine, can
read (a real platform could not, which is why the real backend refuses it).

Each case ``NxS@I`` maps ``time.sleep(S)`` over N calls on I instances and reports:

* wall time of the ``map`` (from the call to the last result) and the **lower bound**: every
  instance cold-starts once (its latency L_i, drawn by the simulator) and then works
  without pause, so the earliest T with sum_i max(0, T - L_i) >= N * S;
* ``wall / bound``, the figure the targets are stated in;
* invocations the platform received, cold starts, 429s it answered;
* client CPU per call (user + system time of this process, all threads) and client peak
  memory growth;
* storage requests per call, counted at the storage layer in the client and in the
  simulator (every instance's worker code) together.

``issue1000`` measures how fast invocations go out: 1,000 one-call invocations
(``max_batch_size=1``) of a 2 s call to 1,000 instances; the figure is the time from the
``map`` call until the platform has received the 1,000th invocation.

``pending`` measures client memory per pending call: ``submit`` of 1,000,000 trivial calls
(``--pending`` to change) while the platform holds them back (one instance, a call that
sleeps), RSS growth divided by the number of calls.

Results: a markdown table on stdout and in ``bench/results/faas_scale.md``; raw figures in
``bench/results/faas_scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _common as C  # noqa: E402

REPO_ROOT = C.REPO_ROOT
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from cloudpool import CloudPoolExecutor  # noqa: E402
from cloudpool.compute import backends  # noqa: E402
from cloudpool.compute.knative import KnativeBackend  # noqa: E402
from faas_sim import count_storage_ops, storage_class  # noqa: E402

TOKEN = "sim-token"
CASES = {
    # name: (calls, seconds per call, instances)
    "2000x0.5@200": (2000, 0.5, 200),
    "5000x0.2@200": (5000, 0.2, 200),
    "1000x1@1000": (1000, 1.0, 1000),
    "10000x0.2@1000": (10000, 0.2, 1000),
    "100000x0.02@1000": (100000, 0.02, 1000),
}
QUICK = ("2000x0.5@200", "5000x0.2@200")


class SimBackend(KnativeBackend):
    """The knative backend, allowed a local-directory storage (the simulator shares the disk)."""

    name = "faas_sim"

    def _check_storage(self, storage_url: str) -> None:
        pass


backends.register("faas_sim", SimBackend, replace=True)


def lower_bound(cold: List[float], work: float) -> float:
    """Earliest T with sum_i max(0, T - L_i) >= work (every instance cold-starts once)."""
    cold = sorted(cold)
    acc = 0.0  # sum of cold latencies of the instances counted so far
    for k in range(1, len(cold) + 1):
        acc += cold[k - 1]
        t = (work + acc) / k  # T if exactly the first k instances contribute
        if k == len(cold) or t <= cold[k]:
            if t >= cold[k - 1]:
                return t
    return (work + sum(cold)) / len(cold)


class Sim:
    """The simulator process and its control endpoints."""

    def __init__(self, instances: int, env: Dict[str, str], count: str) -> None:
        cmd = [sys.executable, os.path.join(BENCH_DIR, "faas_sim.py"), "--instances", str(instances),
               "--token", TOKEN, "--count-storage", count]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator did not start (exit code {self.proc.wait()})")
        self.url = json.loads(line)["url"]
        self.instances = instances

    def _call(self, path: str, data: Optional[bytes] = None) -> Dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> Dict[str, Any]:
        return self._call("/sim")

    def reset(self) -> None:
        self._call("/sim/reset", b"")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _executor(sim: Sim, storage_url: str, storage_options: Dict[str, Any], **extra: Any) -> CloudPoolExecutor:
    config: Dict[str, Any] = {"progress": False, **extra}
    if storage_options:
        config["s3"] = storage_options
    return CloudPoolExecutor(sim.instances, backend="faas_sim", storage=storage_url, config=config,
                             url=sim.url, token=TOKEN, concurrency=sim.instances)


def run_case(name: str, sim: Sim, storage_url: str, storage_options: Dict[str, Any],
             client_ops: Callable[[], Dict[str, int]]) -> Dict[str, Any]:
    n, seconds, instances = CASES[name]
    with _executor(sim, storage_url, storage_options) as ex:
        ex.submit(time.sleep, 0).result()  # handshake, function upload path warmed
        sim.reset()                        # ... then every instance cold again
        ops0, cpu0, rss0 = client_ops(), _cpu(), _rss_mb()
        t0 = time.perf_counter()
        results = list(ex.map(time.sleep, [seconds] * n))
        wall = time.perf_counter() - t0
        cpu, rss = _cpu() - cpu0, _rss_mb() - rss0
        ops1 = client_ops()
        stats = sim.stats()
    assert len(results) == n
    client_requests = sum(ops1.values()) - sum(ops0.values())
    sim_requests = sum(stats.get("storage_ops", {}).values())
    bound = lower_bound(stats["cold"], n * seconds)
    return {
        "case": name, "calls": n, "seconds": seconds, "instances": instances,
        "wall": wall, "bound": bound, "ratio": wall / bound,
        "invocations": stats["invocations"], "cold_starts": stats["cold_starts"],
        "throttled": stats["throttled"],
        "client_cpu_per_call_us": cpu / n * 1e6, "client_rss_growth_mb": rss,
        "storage_requests": client_requests + sim_requests,
        "requests_per_call": (client_requests + sim_requests) / n,
    }


def run_issue_rate(sim: Sim, storage_url: str, storage_options: Dict[str, Any]) -> Dict[str, Any]:
    n = sim.instances
    with _executor(sim, storage_url, storage_options, max_batch_size=1) as ex:
        ex.submit(time.sleep, 0).result()
        sim.reset()
        t0 = time.time()
        futures = [ex.submit(time.sleep, 2.0) for _ in range(n)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = sim.stats()
            if stats["invocations"] >= n:
                break
            time.sleep(0.01)
        issued = stats["last_arrival"] - t0
        for f in futures:
            f.result()
    return {"case": "issue1000", "calls": n, "invocations": stats["invocations"],
            "issue_seconds": issued, "invocations_per_second": stats["invocations"] / issued}


def run_pending(sim: Sim, storage_url: str, storage_options: Dict[str, Any], pending: int) -> Dict[str, Any]:
    import gc
    gc.collect()
    rss0 = _rss_mb()
    with _executor(sim, storage_url, storage_options) as ex:
        first = ex.submit(time.sleep, 0.5)
        t0 = time.perf_counter()
        futures = [ex.submit(C.trivial, i) for i in range(pending)]
        submit_s = time.perf_counter() - t0
        rss = _rss_mb() - rss0
        for f in futures:
            f.cancel()
        first.result()
    return {"case": "pending", "calls": pending, "rss_growth_mb": rss,
            "bytes_per_pending_call": rss * 1024 * 1024 / pending,
            "submit_us_per_call": submit_s / pending * 1e6}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", choices=sorted(CASES) + ["issue1000", "pending"],
                   help="run only these cases (repeatable)")
    p.add_argument("--quick", action="store_true", help="only the 200-instance cases")
    p.add_argument("--storage", choices=("local", "moto", "seaweedfs"), default="local")
    p.add_argument("--pending", type=int, default=1_000_000)
    args = p.parse_args(argv)
    cases = args.case or (list(QUICK) if args.quick else list(CASES) + ["issue1000", "pending"])

    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    storage_options: Dict[str, Any] = {}
    tmp = None
    if args.storage == "local":
        tmp = tempfile.mkdtemp(prefix="cloudpool-faas-sim-")
        storage_url = tmp
    else:
        sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
        from tests import servers
        server = servers.moto_s3() if args.storage == "moto" else servers.seaweedfs()
        env.update(server.env)
        os.environ.update(server.env)
        bucket = f"faas-sim-{os.getpid()}"
        server.create_bucket(bucket) if hasattr(server, "create_bucket") else _create_bucket(server, bucket)
        storage_url = f"s3://{bucket}/jobs"
    client_ops = count_storage_ops(storage_class(args.storage))

    rows: List[Dict[str, Any]] = []
    sims: Dict[int, Sim] = {}
    try:
        for name in cases:
            instances = CASES[name][2] if name in CASES else (1 if name == "pending" else 1000)
            if instances not in sims:
                sims[instances] = Sim(instances, env, "local" if args.storage == "local" else "s3")
            sim = sims[instances]
            C.log(f"case {name} ({args.storage}) ...")
            if name == "issue1000":
                row = run_issue_rate(sim, storage_url, storage_options)
            elif name == "pending":
                row = run_pending(sim, storage_url, storage_options, args.pending)
            else:
                row = run_case(name, sim, storage_url, storage_options, client_ops)
            row["storage"] = args.storage
            C.log(f"  {row}")
            rows.append(row)
    finally:
        for sim in sims.values():
            sim.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    md = [f"Storage: {args.storage}.", "",
          C.markdown_table(
              ["case", "wall (s)", "lower bound (s)", "wall / bound", "invocations", "429s",
               "client CPU / call (us)", "storage requests / call"],
              [[r["case"], f"{r['wall']:.2f}", f"{r['bound']:.2f}", f"{r['ratio']:.2f}", r["invocations"],
                r["throttled"], f"{r['client_cpu_per_call_us']:.0f}", f"{r['requests_per_call']:.3f}"]
               for r in rows if "wall" in r])]
    for r in rows:
        if r["case"] == "issue1000":
            md.append(f"\n1,000 one-call invocations issued in {r['issue_seconds']:.3f} s "
                      f"({r['invocations_per_second']:.0f} invocations/s).")
        if r["case"] == "pending":
            md.append(f"\nClient memory per pending call at {r['calls']:,} pending: "
                      f"{r['bytes_per_pending_call']:.0f} bytes; submit {r['submit_us_per_call']:.1f} us/call.")
    text = "\n".join(md)
    print(text)
    C.write_results("faas_scale", text + "\n", {"rows": rows, "machine": C.machine_info([])})
    return 0


def _create_bucket(server: Any, bucket: str) -> None:
    import boto3
    boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                 aws_access_key_id=server.env.get("AWS_ACCESS_KEY_ID", "testing"),
                 aws_secret_access_key=server.env.get("AWS_SECRET_ACCESS_KEY", "testing")).create_bucket(Bucket=bucket)


if __name__ == "__main__":
    sys.exit(main())
