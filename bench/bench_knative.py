"""Knative backend benchmark: invocation throughput and per-call latency over HTTP runtimes.

    python3 bench/bench_knative.py              # ~4 min here: 4 runtime hosts, 3 repetitions
    python3 bench/bench_knative.py --quick      # 1 repetition, smaller cases
    python3 bench/bench_knative.py --loopback   # runtimes on 127.0.0.1 ports, no namespaces

Topology: four ``runtime/knative/server.py`` hosts started by
``runtime/knative/local_cluster.py`` (each in its own network namespace when run as root,
else on 127.0.0.1), ``--concurrency`` worker processes each, and S3 on a moto server at
the cluster's gateway address -- the same stand-in for a Knative deployment the tests
use. One client (this process) drives them.

Cases (executor already open and warm -- worker processes started on every host -- so
these measure steady state, not cold start):

* ``invocations/s`` -- ``map`` of N trivial calls with ``max_batch_size=1``: every call
  is its own HTTP invocation (request, worker run, 2 storage PUTs, result GET).
* ``calls/s, batched`` -- the same map with the default batching (``batch_target_seconds``
  = 0.25 s): what a user's ``map`` of trivial calls gets.
* ``latency`` -- sequential ``submit(fn).result()``: end-to-end seconds per call, median
  and p95, for a trivial call and for a 0.5 s call (overhead = latency - 0.5 s), once
  with the runtime's streamed segment notices (default) and once with ``notices=False``
  (results found by status polling alone), to show what polling would cost.
* ``reference`` -- the local backend (worker processes on this machine) on the same moto
  S3: every invocation costs the same storage requests there, so the difference is what
  the HTTP hop costs, and the reference rate is the storage emulator's ceiling.

Results: a markdown table on stdout and in ``bench/results/knative.md``; samples, machine
and versions in ``bench/results/knative.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import _common as C  # noqa: E402

REPO_ROOT = C.REPO_ROOT
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from cloudpool import CloudPoolExecutor  # noqa: E402
from tests import servers  # noqa: E402  - the moto server helper the tests use


def _load_local_cluster():
    spec = importlib.util.spec_from_file_location(
        "cloudpool_knative_local_cluster", os.path.join(REPO_ROOT, "runtime", "knative", "local_cluster.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _GatewayMoto(servers.MotoServer):
    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host


def percentile(xs: List[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100) of the samples."""
    if not xs:
        return None
    ordered = sorted(xs)
    rank = max(1, min(len(ordered), int(round(q / 100.0 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=4, help="runtime hosts (default 4)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes per host (default 2)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions of the throughput cases (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="one repetition and smaller cases")
    p.add_argument("--loopback", action="store_true", help="runtimes on 127.0.0.1 ports even as root")
    p.add_argument("--output", default="knative", help="basename of the files in bench/results/ (default knative)")
    a = p.parse_args(argv)
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    return a


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        lc = _load_local_cluster()
        self.token = "bench-" + secrets.token_hex(12)
        self.cluster = lc.LocalCluster(args.hosts, token=self.token, concurrency=args.concurrency,
                                       netns=False if args.loopback else None,
                                       pythonpath=[REPO_ROOT, BENCH_DIR])
        self.moto: Optional[_GatewayMoto] = None
        self.bucket = "cp-bench-" + uuid.uuid4().hex[:8]
        self.s3: Dict[str, Any] = {}

    def start(self) -> None:
        import boto3

        self.cluster.create_network()
        self.moto = _GatewayMoto(self.cluster.gateway).start()
        boto3.client("s3", endpoint_url=self.moto.endpoint_url, region_name=servers.S3_REGION,
                     aws_access_key_id=servers.S3_ACCESS_KEY,
                     aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=self.bucket)
        self.s3 = {"endpoint_url": self.moto.endpoint_url, "region": servers.S3_REGION,
                   "aws_access_key_id": servers.S3_ACCESS_KEY, "aws_secret_access_key": servers.S3_SECRET_KEY}
        self.cluster.start(env=self.moto.env)

    def stop(self) -> None:
        self.cluster.stop()
        if self.moto is not None:
            self.moto.close()

    def executor(self, notices: bool = True, **settings: Any) -> CloudPoolExecutor:
        config = {"backend": "knative", "s3": self.s3,
                  "knative": {"urls": self.cluster.urls, "token": self.token,
                              "concurrency": self.args.concurrency, "notices": notices}}
        config.update(settings)
        ex = CloudPoolExecutor(storage=f"s3://{self.bucket}/bench", config=config)
        # Warm: start the worker processes on every host (first use spawns them).
        slots = self.args.hosts * self.args.concurrency
        list(ex.map(time.sleep, [0.2] * (2 * slots)))
        return ex

    # ------------------------------------------------------------------ cases
    def throughput(self, n: int, batched: bool) -> Dict[str, Any]:
        samples = []
        settings = {} if batched else {"max_batch_size": 1}
        for _ in range(self.args.repeat):
            with self.executor(**settings) as ex:
                start = time.perf_counter()
                results = list(ex.map(C.trivial, range(n)))
                seconds = time.perf_counter() - start
            if results != list(range(n)):
                raise AssertionError("wrong results")
            samples.append(n / seconds)
        return C.summarize(samples)

    def local_executor(self, **settings: Any) -> CloudPoolExecutor:
        """The reference: the local backend (worker processes here) on the same moto S3."""
        # Local workers are forked from this process and use its environment for S3.
        os.environ.update({k: v for k, v in self.moto.env.items() if k != "AWS_ENDPOINT_URL"})
        config = {"s3": {"endpoint_url": self.moto.endpoint_url, "region": servers.S3_REGION}}
        config.update(settings)
        ex = CloudPoolExecutor(self.args.hosts * self.args.concurrency, storage=f"s3://{self.bucket}/ref",
                               config=config)
        list(ex.map(time.sleep, [0.2] * (2 * self.args.hosts * self.args.concurrency)))
        return ex

    def reference_throughput(self, n: int) -> Dict[str, Any]:
        samples = []
        for _ in range(self.args.repeat):
            with self.local_executor(max_batch_size=1) as ex:
                start = time.perf_counter()
                list(ex.map(C.trivial, range(n)))
                samples.append(n / (time.perf_counter() - start))
        return C.summarize(samples)

    def latency(self, calls: int, seconds: float, notices: bool, local: bool = False) -> Dict[str, Any]:
        samples = []
        with (self.local_executor() if local else self.executor(notices=notices)) as ex:
            for i in range(calls):
                start = time.perf_counter()
                if seconds:
                    ex.submit(time.sleep, seconds).result()
                else:
                    if ex.submit(C.trivial, i).result() != i:
                        raise AssertionError("wrong result")
                samples.append(time.perf_counter() - start - seconds)
        out = C.summarize(samples)
        out["p95"] = percentile(samples, 95)
        return out


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    n_inv = 500 if args.quick else 1000
    n_batched = 2000 if args.quick else 10000
    n_lat = 50 if args.quick else 200
    n_lat_long = 6 if args.quick else 20
    bench = Bench(args)
    started = time.time()
    try:
        bench.start()
        where = "network namespaces" if bench.cluster.use_netns else "127.0.0.1 ports"
        print(f"{args.hosts} runtime hosts ({where}), {args.concurrency} worker processes each; "
              f"S3 on moto at {bench.moto.endpoint_url}", file=sys.stderr)
        inv = bench.throughput(n_inv, batched=False)
        batched = bench.throughput(n_batched, batched=True)
        lat = {
            ("trivial", True): bench.latency(n_lat, 0.0, True),
            ("trivial", False): bench.latency(n_lat, 0.0, False),
            ("0.5 s", True): bench.latency(n_lat_long, 0.5, True),
            ("0.5 s", False): bench.latency(n_lat_long, 0.5, False),
        }
        ref_inv = bench.reference_throughput(n_inv)
        ref_lat = bench.latency(n_lat, 0.0, True, local=True)
    finally:
        bench.stop()

    def rate(s: Dict[str, Any]) -> str:
        return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    def ms(x: Optional[float]) -> str:
        return "n/a" if x is None else f"{x * 1000:.1f}"

    rows = [
        [f"invocations/s, {n_inv} calls with max_batch_size=1", rate(inv), "", ""],
        [f"calls/s, {n_batched} trivial calls, default batching", rate(batched), "", ""],
    ]
    for (kind, notices), s in lat.items():
        label = f"latency per call, {kind} call" + (" (overhead beyond 0.5 s)" if kind != "trivial" else "")
        how = "streamed notices" if notices else "status polling only"
        rows.append([f"{label}, {how}, {s['n']} sequential", "", ms(s["median"]), ms(s["p95"])])
    rows.append([f"reference: local backend on the same S3, invocations/s ({n_inv} calls, max_batch_size=1)",
                 rate(ref_inv), "", ""])
    rows.append([f"reference: local backend on the same S3, latency per trivial call, {ref_lat['n']} sequential",
                 "", ms(ref_lat["median"]), ms(ref_lat["p95"])])
    table = C.markdown_table(["case", "rate: median (min-max)", "median ms", "p95 ms"], rows)
    info = C.machine_info(["cloudpool"])
    md = (f"# knative backend: {args.hosts} runtime hosts x {args.concurrency} workers "
          f"({'network namespaces' if bench.cluster.use_netns else 'loopback'}), S3 on moto\n\n"
          f"{table}\n\n{C.machine_markdown(info)}\n- repetitions (throughput): {args.repeat}; "
          f"wall time {time.time() - started:.0f} s\n")
    print(md)
    payload = {"machine": info, "args": vars(args), "invocations_per_second": inv, "batched_calls_per_second": batched,
               "latency": {f"{k[0]}|{'notices' if k[1] else 'polling'}": v for k, v in lat.items()},
               "reference_local": {"invocations_per_second": ref_inv, "latency_trivial": ref_lat},
               "netns": bench.cluster.use_netns}
    for path in C.write_results(args.output, md, payload):
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
