"""bzip2 split at blocks: time of reading all parts vs one sequential ``bz2.decompress``.

Generates ~20 MB of text, compresses it with the stdlib at levels 9 (the ``bzip2`` CLI
default, 900 kB blocks) and 1 (100 kB blocks) as a single stream, partitions it with
``objects(chunk_size=4 MiB)`` and reports: the first-use index scan, all parts read in one
process (index cached) vs one sequential decompression, and decompressed bytes / object.
Run: ``PYTHONPATH=. python bench/bench_bzip2_blocks.py``.
"""
import bz2
import random
import tempfile
import time

from cloudpool import objects
from cloudpool.formats import bzip2blocks


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    rng = random.Random(0)
    words = [b"w%d" % i for i in range(5000)]
    data = b"".join(b" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) + b"\n"
                    for _ in range(500000))
    tmp = tempfile.mkdtemp()
    real = bzip2blocks.decompress_block
    produced = []

    def counting(buf, start, end):  # counts the bytes every block decompression produces
        out = real(buf, start, end)
        if out is not None:
            produced.append(len(out))
        return out

    for level in (9, 1):
        blob = bz2.compress(data, level)
        path = f"{tmp}/x{level}.txt.bz2"
        with open(path, "wb") as f:
            f.write(blob)
        seq = min(timed(lambda: bz2.decompress(blob))[1] for _ in range(3))
        parts, first = timed(lambda: list(objects(path, chunk_size=4 << 20,
                                                  index_cache=tmp + "/idx")))
        bzip2blocks.decompress_block = counting
        runs = []
        for _ in range(3):
            produced.clear()
            n, dt = timed(lambda: sum(len(p.read()) for p in parts))
            runs.append(dt)
        bzip2blocks.decompress_block = real
        assert n == len(data)
        print(f"level {level}: {len(data) / 1e6:.1f} MB text, {len(blob) / 1e6:.1f} MB bz2, "
              f"{len(parts)} parts; sequential bz2.decompress {seq:.2f} s; index scan (first "
              f"use) {first:.2f} s; all parts, one process {min(runs):.2f} s = "
              f"{min(runs) / seq:.2f}x; decompressed bytes / object = "
              f"{sum(produced) / len(data):.3f}")


if __name__ == "__main__":
    main()
