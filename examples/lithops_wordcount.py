"""Word count written for Lithops, run by cloudpool: only the import line differs.

    python examples/lithops_wordcount.py                       # sample text in a temp dir, local
    python examples/lithops_wordcount.py s3://bucket/texts/ --storage s3://bucket/tmp

The program is written as Lithops' documentation describes: a function whose parameter
is named ``obj`` is mapped over a storage prefix, Lithops' partitioner gives each call
one chunk of an object (``obj.data_stream``), ``get_result()`` collects the partial
counts and the client reduces them. With ``import lithops`` in place of the line below
it is a Lithops program again; ``python -m cloudpool.compat.lithops_alias PROGRAM.py`` runs
such a program with its ``import lithops`` line kept.
"""
import cloudpool.compat.lithops as lithops

import argparse
import os
import random
import tempfile
import time


def count_words(obj):
    """Runs remotely: the word counts of one chunk of one object."""
    counts = {}
    data = obj.data_stream.read()
    for word in data.decode("utf-8").split():
        counts[word] = counts.get(word, 0) + 1
    return {"key": obj.key, "part": obj.part, "bytes": len(data), "counts": counts}


def write_sample(directory, files=3, lines=20000, seed=3):
    """Some text to count: lines of words drawn from a small vocabulary."""
    words = ("lambda function object storage bucket partition worker result map reduce "
             "cloud serverless python data chunk stream").split()
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for i in range(files):
        with open(os.path.join(directory, f"part-{i}.txt"), "w") as f:
            for _ in range(lines):
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "\n")
    return directory + "/"


def main():
    parser = argparse.ArgumentParser(description="Lithops-style word count")
    parser.add_argument("prefix", nargs="?", help="objects to count, e.g. s3://bucket/texts/ "
                        "(default: sample text in a temporary directory)")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--chunk-size", type=int, default=256 * 1024, help="bytes per call")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prefix = args.prefix or write_sample(os.path.join(tmp, "texts"))
        start = time.time()
        with lithops.FunctionExecutor(backend=args.backend, storage=args.storage) as fexec:
            fexec.map(count_words, prefix, obj_chunk_size=args.chunk_size)
            partials = fexec.get_result()
        elapsed = time.time() - start

    total = {}
    for partial in partials:
        for word, n in partial["counts"].items():
            total[word] = total.get(word, 0) + n
    size = sum(p["bytes"] for p in partials)
    objects = len({p["key"] for p in partials})
    print(f"{sum(total.values())} words, {len(total)} distinct, in {objects} objects, "
          f"{len(partials)} calls, {elapsed:.2f} s, {size / elapsed / 1e6:.2f} MB/s")
    for word, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:args.top]:
        print(f"{n:>10}  {word}")


if __name__ == "__main__":
    main()
