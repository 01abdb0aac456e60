"""Storage throughput, every store with a real server here side by side in one run.

    python3 bench/bench_storage.py                 # all stores, 3 repetitions (~3-5 min)
    python3 bench/bench_storage.py --stores local,redis,ftp --repeat 5

Stores: local disk, S3 on moto and on SeaweedFS, GCS on fake-gcs-server, Azure Blob on
Azurite, Redis, FTP (pyftpdlib, through the fsspec bridge) and OpenStack Swift (the
all-in-one of tests/swift_aio.py), each started by tests/servers.py on 127.0.0.1 -- the
same servers the tests use, so these are figures for the emulators on this machine, not
for the clouds. Operations, through cloudpool's storage layer (what workers and the
executor call):

* ``put``: ``PUT_COUNT`` objects of ``PUT_SIZE`` each, one after the other (MB/s);
* ``get``: the same objects read whole (MB/s);
* ``ranged get``: ``RANGE_COUNT`` reads of ``RANGE_SIZE`` at pseudo-random offsets (reads/s);
* ``list``: one full listing of a prefix holding ``LIST_KEYS`` small objects (keys/s).

Within each repetition every store runs every operation, stores in an order rotated per
repetition so that a busy shared machine slows all alike; medians are reported, with
each store's time as a ratio to local disk's time in the same run (``x local``: 1.0 is as
fast as local disk, 10 is ten times slower). Results go to stdout and to
``bench/results/storage.md`` / ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

from cloudpool.storage.base import StorageBackend  # noqa: E402
from tests import servers  # noqa: E402

MiB = 1024 * 1024
PUT_SIZE = 1 * MiB
PUT_COUNT = 16
RANGE_SIZE = 64 * 1024
RANGE_COUNT = 64
LIST_KEYS = 300


def _s3(server) -> Tuple[StorageBackend, str]:
    from cloudpool.storage.s3 import S3Storage
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    st = S3Storage(bucket, endpoint_url=server.endpoint_url, region=servers.S3_REGION,
                   aws_access_key_id=servers.S3_ACCESS_KEY, aws_secret_access_key=servers.S3_SECRET_KEY)
    st.client.create_bucket(Bucket=bucket)
    return st, ""


def make_local() -> Tuple[StorageBackend, str]:
    from cloudpool.storage.local import LocalStorage
    tmp = tempfile.mkdtemp(prefix="cloudpool-bench-")
    return LocalStorage(), tmp.lstrip("/") + "/"


def make_gcs() -> Tuple[StorageBackend, str]:
    from cloudpool.storage.gcs import GCSStorage
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    st = GCSStorage(bucket, endpoint_url=servers.fake_gcs().endpoint_url, project="bench")
    st.client.create_bucket(bucket)
    return st, ""


def make_azure() -> Tuple[StorageBackend, str]:
    from cloudpool.storage.azure import AzureBlobStorage
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    st = AzureBlobStorage(bucket, connection_string=servers.azurite().connection_string)
    st.container.create_container()
    return st, ""


def make_redis() -> Tuple[StorageBackend, str]:
    from cloudpool.storage.redisdb import RedisStorage
    r = servers.redis_server()
    return RedisStorage(f"{r.host}:{r.port}"), f"0/bench-{uuid.uuid4().hex[:8]}/"


def make_ftp() -> Tuple[StorageBackend, str]:
    from cloudpool.storage import storage_for
    f = servers.ftp_server()
    st, _ = storage_for(f"ftp://{f.user}:{f.password}@{f.host}:{f.port}/")
    return st, f"bench-{uuid.uuid4().hex[:8]}/"


def make_swift() -> Tuple[StorageBackend, str]:
    from cloudpool.storage.swift import SwiftStorage
    sw = servers.swift_server()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    st = SwiftStorage(bucket, auth_url=sw.auth_url, user=sw.user, key=sw.key)
    st.conn.put_container(bucket)
    return st, ""


STORES: Dict[str, Tuple[str, Callable[[], Tuple[StorageBackend, str]]]] = {
    "local": ("local disk", make_local),
    "moto": ("S3 (moto)", lambda: _s3(servers.moto_s3())),
    "seaweedfs": ("S3 (SeaweedFS)", lambda: _s3(servers.seaweedfs())),
    "gcs": ("GCS (fake-gcs-server)", make_gcs),
    "azure": ("Azure Blob (Azurite)", make_azure),
    "redis": ("Redis", make_redis),
    "ftp": ("FTP via fsspec (pyftpdlib)", make_ftp),
    "swift": ("Swift (all-in-one)", make_swift),
}
OPS = ("put", "get", "ranged get", "list")


def run_ops(st: StorageBackend, prefix: str, rng: random.Random) -> Dict[str, float]:
    """Seconds taken by each operation, on a fresh sub-prefix."""
    base = f"{prefix}r{uuid.uuid4().hex[:6]}/"
    blob = os.urandom(PUT_SIZE)
    keys = [f"{base}obj-{i:03d}" for i in range(PUT_COUNT)]
    out: Dict[str, float] = {}
    t = time.perf_counter()
    for k in keys:
        st.put(k, blob)
    out["put"] = time.perf_counter() - t
    t = time.perf_counter()
    for k in keys:
        if len(st.get(k)) != PUT_SIZE:
            raise AssertionError(f"{st.url(k)}: short read")
    out["get"] = time.perf_counter() - t
    offsets = [(rng.choice(keys), rng.randrange(0, PUT_SIZE - RANGE_SIZE)) for _ in range(RANGE_COUNT)]
    t = time.perf_counter()
    for k, off in offsets:
        if st.get(k, off, off + RANGE_SIZE) != blob[off:off + RANGE_SIZE]:
            raise AssertionError(f"{st.url(k)}: wrong range")
    out["ranged get"] = time.perf_counter() - t
    small = [f"{base}list/{i:04d}" for i in range(LIST_KEYS)]
    with ThreadPoolExecutor(8) as pool:  # seeding is not measured
        list(pool.map(lambda k: st.put(k, b"x"), small))
    t = time.perf_counter()
    n = sum(1 for _ in st.list(f"{base}list/"))
    out["list"] = time.perf_counter() - t
    if n != LIST_KEYS:
        raise AssertionError(f"{st.url(base)}: listed {n} of {LIST_KEYS}")
    st.delete_prefix(base)
    return out


def rate(op: str, seconds: float) -> str:
    if op in ("put", "get"):
        return f"{PUT_COUNT * PUT_SIZE / seconds / 1e6:.1f} MB/s"
    if op == "ranged get":
        return f"{RANGE_COUNT / seconds:.0f} reads/s"
    return f"{LIST_KEYS / seconds:.0f} keys/s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated, from: " + ", ".join(STORES))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.stores.split(",") if n.strip()]
    unknown = set(names) - set(STORES)
    if unknown:
        parser.error(f"unknown store(s) {sorted(unknown)}; choose from {', '.join(STORES)}")
    if "local" not in names:
        names.insert(0, "local")  # the yardstick of every ratio
    made = {}
    for name in names:
        started = time.perf_counter()
        made[name] = STORES[name][1]()
        print(f"# {STORES[name][0]} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    samples: Dict[str, Dict[str, List[float]]] = {n: {op: [] for op in OPS} for n in names}
    rng = random.Random(17)
    for rep in range(args.repeat):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            st, prefix = made[name]
            for op, seconds in run_ops(st, prefix, rng).items():
                samples[name][op].append(seconds)
        print(f"# repetition {rep + 1}/{args.repeat} done", file=sys.stderr)
    med = {n: {op: statistics.median(v) for op, v in ops.items()} for n, ops in samples.items()}
    lines = [f"Storage throughput, median of {args.repeat} interleaved repetitions, one run; "
             f"`x local` = time / local disk's time in the same run.", "",
             "| store | " + " | ".join(f"{op} | x local" for op in OPS) + " |",
             "|---|" + "---:|---:|" * len(OPS)]
    for n in names:
        cells = []
        for op in OPS:
            cells += [rate(op, med[n][op]), f"{med[n][op] / med['local'][op]:.1f}"]
        lines.append(f"| {STORES[n][0]} | " + " | ".join(cells) + " |")
    lines += ["", f"put/get: {PUT_COUNT} objects of {PUT_SIZE // MiB} MiB, sequential; ranged get: "
              f"{RANGE_COUNT} reads of {RANGE_SIZE // 1024} KiB; list: {LIST_KEYS} keys."]
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.join(BENCH_DIR, "results"), exist_ok=True)
    with open(os.path.join(BENCH_DIR, "results", "storage.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(BENCH_DIR, "results", "storage.json"), "w") as f:
        json.dump({"samples": samples, "medians": med, "repeat": args.repeat,
                   "sizes": {"put": PUT_SIZE, "put_count": PUT_COUNT, "range": RANGE_SIZE,
                             "range_count": RANGE_COUNT, "list_keys": LIST_KEYS}}, f, indent=1)
    shutil.rmtree("/" + made["local"][1], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
