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
rng = random.Random(0)
words = [b"w%d" % i for i in range(5000)]
data = b"".join(b" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) + b"\n" for _ in range(500000))
tmp = tempfile.mkdtemp()
for lvl in (9, 1):
    blob = bz2.compress(data, lvl)
    path = f"{tmp}/x{lvl}.txt.bz2"; open(path, "wb").write(blob)
    seq = min((lambda t: (bz2.decompress(blob), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(3))
    t = time.perf_counter(); parts = list(objects(path, chunk_size=4 << 20, index_cache=tmp + "/idx")); first = time.perf_counter() - t
    produced = []
    real = bzip2blocks.decompress_block
    def counting(b, s, e):
        o = real(b, s, e)
        if o is not None: produced.append(len(o))
        return o
    bzip2blocks.decompress_block = counting
    ts = []
    for _ in range(3):
        produced.clear()
        t = time.perf_counter(); n = sum(len(p.read()) for p in parts); ts.append(time.perf_counter() - t)
    bzip2blocks.decompress_block = real
    assert n == len(data)
    print(f"level {lvl}: {len(data)/1e6:.1f} MB text, {len(blob)/1e6:.1f} MB bz2, {len(parts)} parts; "
          f"sequential bz2.decompress {seq:.2f} s; index scan (first use) {first:.2f} s; "
          f"all parts, one process {min(ts):.2f} s = {min(ts)/seq:.2f}x; decompressed bytes / object = {sum(produced)/len(data):.3f}")
