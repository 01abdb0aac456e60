#!/usr/bin/env python3
"""A simulated FaaS platform for scale benchmarks: N instances with cold and warm starts.

This is a *load model*, not a test double of any real service. It exists so the client's
own cost at 1,000-way scale can be measured on a 2-core machine: the platform runs in a
process of its own (started by ``bench_faas_scale.py``), so the client's CPU and memory
are measured apart from it.

What it models:

* **Instances.** At most ``--instances`` run at once. An invocation takes an idle warm
  instance if there is one (start latency drawn uniformly from ``--warm-ms``, default
  10-40 ms), else starts a new one (a cold start drawn from a log-normal distribution
  with the given median and 95th percentile, default 0.34 s and 1.07 s), as Lambda does.
  Each instance's cold start is drawn once, up front, from a seeded generator, so the
  lower bound of a run can be computed from the same numbers (``GET /sim``).
* **Concurrency limit.** When every instance is busy the platform answers 429 with
  ``Retry-After`` (Lambda's throttling answer for synchronous invokes); the knative
  backend backs off and retries, as it does against a real service.
* **Real worker code.** Each invocation runs ``cloudpool.worker.handle`` -- the same code
  every backend's workers run -- in a thread of this process: it reads the function and
  arguments from the executor's storage, runs the calls and writes results and status
  there. The benchmark functions sleep (the GIL is released), so one process can host a
  thousand instances; CPU-bound calls would not scale here and are not what this models.
  Per-call timeouts are not armed (``SIGALRM`` needs the main thread); the benchmark does
  not use them.
* **Wire protocol.** The HTTP side is the knative runtime's own (``runtime/knative/
  server.py``: ``/runtime`` handshake, ``/invoke`` streaming segment lines), reused as is;
  only the engine that runs invocations is replaced. So the client under test is the
  unmodified ``knative`` backend.

Latency figures: the defaults are the ones issue 18 states for Lambda-like platforms
(cold start median 0.34 s, p95 1.07 s; warm start 10-40 ms). Override them with flags.

``GET /sim`` (no token) returns the drawn cold starts and counters: invocations,
cold starts, throttled requests, first/last invocation arrival times (``time.time()``).
``POST /sim/reset`` forgets warm instances and counters (between cases).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import logging
import math
import os
import random
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from cloudpool import worker  # noqa: E402
from cloudpool.compute.base import InvocationLost, SegmentDone  # noqa: E402

LOGGER = logging.getLogger("cloudpool.bench.faas_sim")


def _load_runtime_server():
    """The knative runtime module (a script under runtime/, not part of the package)."""
    path = os.path.join(REPO_ROOT, "runtime", "knative", "server.py")
    spec = importlib.util.spec_from_file_location("cloudpool_knative_server", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


server = _load_runtime_server()


STORAGE_OPS = ("put", "put_file", "get", "head", "list", "delete", "delete_prefix")


def count_storage_ops(cls: type) -> "Callable[[], Dict[str, int]]":
    """Wrap ``cls``'s storage primitives with thread-safe counters; returns a reader."""
    counts: Dict[str, int] = {}
    lock = threading.Lock()
    for name in STORAGE_OPS:
        original = cls.__dict__.get(name) or getattr(cls, name, None)
        if original is None:
            continue

        def counted(self, *args, _original=original, _name=name, **kwargs):
            with lock:
                counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        setattr(cls, name, counted)

    def read(reset: bool = False) -> Dict[str, int]:
        with lock:
            out = dict(counts)
            if reset:
                counts.clear()
            return out
    return read


def storage_class(kind: str) -> type:
    """The storage class whose requests are counted: local disk or S3."""
    if kind == "local":
        from cloudpool.storage.local import LocalStorage
        return LocalStorage
    from cloudpool.storage.s3 import S3Storage
    return S3Storage


def lognormal_params(median: float, p95: float) -> "tuple[float, float]":
    """mu and sigma of the log-normal with this median and 95th percentile."""
    if not 0 < median < p95:
        raise ValueError(f"need 0 < median < p95, got median={median}, p95={p95}")
    return math.log(median), math.log(p95 / median) / 1.6448536269514722


class _SegmentHooks(worker.WorkerHooks):
    def __init__(self, notify: Callable[[Any], None]) -> None:
        self._notify = notify

    def segment_written(self, status: Dict[str, Any]) -> None:
        self._notify(SegmentDone(status))


class SimEngine:
    """Runs invocations on simulated instances (threads), with start latencies."""

    def __init__(self, instances: int, cold_median: float, cold_p95: float,
                 warm_ms: "tuple[float, float]", seed: int) -> None:
        self.instances = instances
        self.warm_s = (warm_ms[0] / 1000.0, warm_ms[1] / 1000.0)
        rng = random.Random(seed)
        mu, sigma = lognormal_params(cold_median, cold_p95)
        self.cold = [rng.lognormvariate(mu, sigma) for _ in range(instances)]
        self._rng = rng
        self._lock = threading.Lock()
        self._notify: Optional[Callable[[Any], None]] = None
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._idle: List[int] = []
            self._started = 0          # instances that have cold-started so far
            self.counters: Dict[str, float] = {"invocations": 0, "cold_starts": 0,
                                               "first_arrival": 0.0, "last_arrival": 0.0}

    # The engine interface the knative runtime's Runtime drives (as LocalBackend's).
    def start(self, notify: Callable[[Any], None]) -> None:
        self._notify = notify

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            c = self.counters
            c["invocations"] += 1
            c["first_arrival"] = c["first_arrival"] or now
            c["last_arrival"] = now
            if self._idle:
                instance, delay = self._idle.pop(), self._rng.uniform(*self.warm_s)
            else:
                # Admission (the runtime's semaphore of `instances` slots) guarantees a
                # free instance exists: never more invocations inside than instances.
                instance = self._started
                self._started += 1
                c["cold_starts"] += 1
                delay = self.cold[instance]
        threading.Thread(target=self._run, args=(inv, event, instance, delay),
                         name=f"sim-instance-{instance}", daemon=True).start()

    def _run(self, inv: str, event: Dict[str, Any], instance: int, delay: float) -> None:
        time.sleep(delay)
        assert self._notify is not None
        try:
            worker.handle(event, _SegmentHooks(self._notify))
        except BaseException as exc:  # noqa: BLE001 - becomes the invocation's loss notice
            LOGGER.exception("invocation %s failed on instance %d", inv, instance)
            self._notify(InvocationLost(inv, f"simulated instance {instance} failed: {exc!r}", None))
        finally:
            with self._lock:
                self._idle.append(instance)

    def cancel(self, inv: str, reason: str) -> bool:
        return False  # a thread cannot be killed; the benchmark never cancels

    def shutdown(self, wait: bool = True) -> None:
        pass


class SimRuntime(server.Runtime):
    """The knative runtime with the simulated engine in place of worker processes."""

    def __init__(self, *, token: Optional[str], engine: SimEngine) -> None:
        # Not calling Runtime.__init__'s engine construction: set what it sets, then ours.
        self._token = token.encode() if token else None
        self.concurrency = engine.instances
        self.heartbeat = 5.0
        self.max_body = server.DEFAULT_MAX_BODY
        self.start_method = "simulated"
        self.started = time.time()
        self._slots = threading.BoundedSemaphore(engine.instances)
        self._lock = threading.Lock()
        self._streams = {}
        self._stats = collections.Counter()
        self._packages = None
        self.engine = engine
        engine.start(self._on_notice)


class SimHandler(server.Handler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOGGER.debug("%s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") == "/sim":
            engine: SimEngine = self.runtime.engine  # type: ignore[assignment]
            with engine._lock:
                body = dict(engine.counters, cold=engine.cold, instances=engine.instances,
                            throttled=self.runtime._stats.get("rejected_busy", 0),
                            storage_ops=self.server.storage_ops())
            self._send_json(200, body)
            return
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") == "/sim/reset":
            self.runtime.engine.reset()  # type: ignore[attr-defined]
            self.server.storage_ops(reset=True)
            with self.runtime._lock:
                self.runtime._stats.pop("rejected_busy", None)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._send_json(200, {"reset": True})
            return
        super().do_POST()


class SimServer(server.RuntimeServer):
    request_queue_size = 2048  # a thousand instances' worth of connections arrive at once

    def __init__(self, address, runtime, storage_ops: "Callable[..., Dict[str, int]]") -> None:
        server.ThreadingHTTPServer.__init__(self, address, SimHandler)
        self.runtime = runtime
        self.storage_ops = storage_ops


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port, printed on stdout")
    p.add_argument("--instances", type=int, default=1000)
    p.add_argument("--cold-median", type=float, default=0.34)
    p.add_argument("--cold-p95", type=float, default=1.07)
    p.add_argument("--warm-ms", type=float, nargs=2, default=(10.0, 40.0))
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--token", default=os.environ.get("CLOUDPOOL_SIM_TOKEN", "sim-token"))
    p.add_argument("--count-storage", choices=("local", "s3", "none"), default="none",
                   help="count the storage requests of this storage class (GET /sim)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engine = SimEngine(args.instances, args.cold_median, args.cold_p95, tuple(args.warm_ms), args.seed)
    runtime = SimRuntime(token=args.token, engine=engine)
    if args.count_storage == "none":
        def storage_ops(reset: bool = False) -> Dict[str, int]:
            return {}
    else:
        storage_ops = count_storage_ops(storage_class(args.count_storage))
    httpd = SimServer((args.host, args.port), runtime, storage_ops)
    print(json.dumps({"url": f"http://{args.host}:{httpd.server_address[1]}"}), flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
