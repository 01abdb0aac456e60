"""Parquet column sum: cloudpool ``objects(format="parquet")`` parts vs one-process pyarrow.

    PYTHONPATH=. python bench/bench_formats_columnar.py                 # ~200 MB file, local disk
    PYTHONPATH=. python bench/bench_formats_columnar.py --rows 2000000 --s3   # also on moto S3

Writes one Parquet file with pyarrow (an int64 id, the float64 column ``x`` that is
summed, and two wide padding columns the projection must never read), then times, in
interleaved repetitions (medians reported):

- ``pyarrow``: ``pyarrow.parquet.read_table(path, columns=["x"])`` and a sum, in this
  process (the one-process baseline the issue names);
- ``cloudpool``: ``CloudPoolExecutor(workers).map(col_sum, objects(url, format="parquet",
  columns=["x"], chunk_size=...))`` on the local backend: listing (one footer read),
  the map, and the sum of the per-part sums. Each part reports the bytes it read, so the
  run prints the total against the file size and against the x column's compressed size.

With ``--s3`` the file is also put on a moto S3 server (tests/servers.py) and the cloudpool
case repeats there (bytes read are what the parts fetched with ranged GETs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def col_sum(part: Any) -> Tuple[float, int, int]:
    """Runs on a worker: (sum of x, bytes read, GETs) for one part."""
    import pyarrow.compute as pc

    total = 0.0
    for batch in part:
        total += pc.sum(batch.column("x")).as_py() or 0.0
    return total, part.stats.bytes, part.stats.requests


def write_file(path: str, rows: int, row_group: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("x", pa.float64()),
                                           ("pad1", pa.int64()), ("pad2", pa.float64())])) as w:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            w.write_table(pa.table({"id": np.arange(start, start + n, dtype=np.int64),
                                    "x": rng.random(n), "pad1": rng.integers(0, 1 << 62, n),
                                    "pad2": rng.random(n)}), row_group_size=row_group)


def run_pyarrow(path: str) -> Dict[str, Any]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = time.perf_counter()
    total = pc.sum(pq.read_table(path, columns=["x"]).column("x")).as_py()
    return {"seconds": time.perf_counter() - t, "sum": total}


def run_cloudpool(url: str, workers: int, chunk: int, options: Dict[str, Any]) -> Dict[str, Any]:
    from cloudpool import CloudPoolExecutor, objects

    t = time.perf_counter()
    with CloudPoolExecutor(workers) as ex:
        parts = list(objects(url, format="parquet", columns=["x"], chunk_size=chunk,
                             storage_options=options))
        listed = time.perf_counter() - t
        results = list(ex.map(col_sum, parts))
    return {"seconds": time.perf_counter() - t, "listing": listed, "parts": len(parts),
            "sum": sum(r[0] for r in results), "bytes": sum(r[1] for r in results),
            "gets": sum(r[2] for r in results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=6_000_000)
    ap.add_argument("--row-group", type=int, default=250_000)
    ap.add_argument("--chunk", default=str(4 * 1024 * 1024), help="chunk_size for objects() (bytes of x)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also run cloudpool against moto S3")
    args = ap.parse_args()
    import pyarrow.compute  # noqa: F401 - imported before any clock starts
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        path = os.path.join(tmp, "data.parquet")
        write_file(path, args.rows, args.row_group)
        size = os.path.getsize(path)
        md = pq.read_metadata(path)
        x_bytes = sum(md.row_group(i).column(1).total_compressed_size for i in range(md.num_row_groups))
        print(f"file: {size / 1e6:.1f} MB, {args.rows:,} rows in {md.num_row_groups} row groups; "
              f"column x: {x_bytes / 1e6:.1f} MB compressed")
        targets: List[Tuple[str, str, Dict[str, Any]]] = [("local", path, {})]
        if args.s3:
            import boto3

            from tests import servers

            server = servers.moto_s3()
            os.environ.update({k: v for k, v in server.env.items() if k != "AWS_ENDPOINT_URL"})
            s3 = boto3.client("s3", endpoint_url=server.endpoint_url)
            s3.create_bucket(Bucket="bench-parquet")
            s3.upload_file(path, "bench-parquet", "data.parquet")
            targets.append(("moto S3", "s3://bench-parquet/data.parquet",
                            {"endpoint_url": server.endpoint_url}))
        runs: Dict[str, List[Dict[str, Any]]] = {}
        for rep in range(args.reps):
            order = [("pyarrow", None)] + [(f"cloudpool {t[0]}", t) for t in targets]
            order = order[rep % len(order):] + order[:rep % len(order)]  # rotate: fair under load
            for label, target in order:
                if target is None:
                    r = run_pyarrow(path)
                else:
                    r = run_cloudpool(target[1], args.workers, int(args.chunk), target[2])
                runs.setdefault(label, []).append(r)
        base = statistics.median(r["seconds"] for r in runs["pyarrow"])
        expected = runs["pyarrow"][0]["sum"]
        print("| case | median s | vs pyarrow | parts | bytes read | GETs |")
        print("|---|---|---|---|---|---|")
        for label, rs in runs.items():
            med = statistics.median(r["seconds"] for r in rs)
            if label != "pyarrow":
                assert abs(rs[0]["sum"] - expected) < 1e-6 * abs(expected), (rs[0]["sum"], expected)
                print(f"| {label} ({args.workers} workers) | {med:.2f} | {med / base:.2f}x | {rs[0]['parts']} | "
                      f"{rs[0]['bytes'] / 1e6:.1f} MB ({rs[0]['bytes'] / size:.1%} of file, "
                      f"{rs[0]['bytes'] / x_bytes:.3f}x column x) | {rs[0]['gets']} |")
            else:
                print(f"| pyarrow.parquet.read_table(columns=['x']), 1 process | {med:.2f} | 1.00x | - | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
