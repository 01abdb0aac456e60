"""zstd seekable format: partitioning from the seek table vs the text-index scan.

~20 MB of text in 1 MiB zstd frames, once with the seek table appended and once without
(frames only). Reports partitioning time (first use), the time of reading all parts in one
process, and one sequential ``zstandard`` decompression.
Run: ``PYTHONPATH=. python bench/bench_zstd_seekable.py``.
"""
import random
import sys
import tempfile
import time

import zstandard

sys.path.insert(0, ".")
from tests.test_formats_zstd_seekable import seekable  # noqa: E402
from cloudpool import objects  # noqa: E402

rng = random.Random(0)
words = [b"w%d" % i for i in range(5000)]
data = b"".join(b" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) + b"\n"
                for _ in range(500000))
cuts = list(range(0, len(data), 1 << 20))
tmp = tempfile.mkdtemp()
with_table = seekable(data, cuts)
frames_only = with_table[:len(with_table) - (8 + 8 * len(cuts) + 9)]
d = zstandard.ZstdDecompressor()
seq = []
for _ in range(3):
    t = time.perf_counter()
    r = d.stream_reader(frames_only, read_across_frames=True).read()
    seq.append(time.perf_counter() - t)
assert r == data
print(f"{len(data)/1e6:.1f} MB text, {len(frames_only)/1e6:.1f} MB zstd, {len(cuts)} frames; "
      f"one sequential decompression {min(seq):.3f} s")
for name, blob in (("seek table", with_table), ("no table (text index)", frames_only)):
    path = f"{tmp}/{name[:2]}.txt.zst"
    open(path, "wb").write(blob)
    t = time.perf_counter()
    parts = list(objects(path, chunk_size=4 << 20, index_cache=False))
    first = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(len(p.read()) for p in parts)
    allp = time.perf_counter() - t
    assert n == len(data)
    print(f"{name}: {len(parts)} parts; partitioning (first use) {first:.3f} s; all parts "
          f"{allp:.3f} s = {allp / min(seq):.2f}x one sequential decompression")
