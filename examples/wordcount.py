"""Count the words in every object under a prefix, one call per byte-range partition.

    python examples/wordcount.py                      # generates sample text locally, counts it
    python examples/wordcount.py s3://bucket/texts/ --chunk-size 64MiB --backend aws_lambda

``objects(url, chunk_size=...)`` lists the objects and cuts them into parts on line
boundaries; ``map`` sends each part to a worker, which reads only its own byte range.
The partial counts are merged on the client. The same script runs unchanged on any
backend and storage (``--backend``/``--storage``, or the config file / CLOUDPOOL_* env).
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import re
import sys
import tempfile
import time

from cloudpool import CloudPoolExecutor, objects

WORD = re.compile(rb"[A-Za-z']+")


def count_words(part) -> tuple:
    """Runs on a worker: count the words in one partition's lines; returns (bytes, counts)."""
    data = part.read()  # exactly this part's whole lines, fetched with ranged reads
    return len(data), collections.Counter(WORD.findall(data.lower()))


def generate_sample(directory: str, files: int = 4, mib_per_file: int = 8, seed: int = 7) -> str:
    """Write some pseudo-English text files (Zipf-like word frequencies) to count."""
    vocabulary = ("the of and to in a is that for it as was with be by on not he i this are or his "
                  "from at which but have an they you were her she there been one all we their "
                  "cloud pool object storage serverless function worker result partition").split()
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    rng = random.Random(seed)
    # A pool of random lines, drawn from to fill the files quickly.
    lines = [" ".join(rng.choices(vocabulary, weights, k=rng.randint(3, 30))) + "\n" for _ in range(5000)]
    os.makedirs(directory, exist_ok=True)
    for i in range(files):
        path = os.path.join(directory, f"text-{i:02d}.txt")
        with open(path, "w") as f:
            written = 0
            while written < mib_per_file << 20:
                block = "".join(rng.choices(lines, k=1000))
                f.write(block)
                written += len(block)
    return directory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", help="objects to count: a prefix, glob or object URL "
                        "(default: generate sample text in a temporary directory)")
    parser.add_argument("--chunk-size", default=None, help="partition size, e.g. 64MiB (default: automatic)")
    parser.add_argument("--backend", default=None, help="compute backend (default: config, else local)")
    parser.add_argument("--storage", default=None, help="storage URL for job data (default: config, else local)")
    parser.add_argument("--workers", type=int, default=None, help="max_workers")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--sample-mib", type=int, default=8,
                        help="size of each of the 4 generated sample files, when no URL is given")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cloudpool-wordcount-") as tmp:
        url = args.url or generate_sample(os.path.join(tmp, "texts"), mib_per_file=args.sample_mib)
        inputs = objects(url, chunk_size=args.chunk_size)
        start = time.perf_counter()
        with CloudPoolExecutor(args.workers, backend=args.backend, storage=args.storage) as ex:
            total: collections.Counter = collections.Counter()
            parts = size = 0
            for nbytes, counts in ex.map(count_words, inputs):
                total.update(counts)
                parts += 1
                size += nbytes
        elapsed = time.perf_counter() - start

    print(f"{sum(total.values()):,} words, {len(total):,} distinct, {parts} partitions, {elapsed:.2f} s")
    if size:
        print(f"throughput: {size / elapsed / 1e6:.1f} MB/s over {size / 1e6:.1f} MB")
    for word, n in total.most_common(args.top):
        print(f"{n:>12,}  {word.decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
