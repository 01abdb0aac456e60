"""``cloudpool.compat.lithops``: Lithops programs on cloudpool with only the import changed.

- A word count written the way Lithops' documentation shows (a function taking ``obj``
  mapped over a storage prefix, partial counts collected with ``get_result()``, reduced
  on the client) runs as a subprocess with its ``import lithops`` line replaced -- the
  test does the replacement -- on local storage (Lithops' ``localhost://`` buckets and
  plain paths) and on the moto S3 emulator; its counts must equal a direct count.
- Each ``FunctionExecutor`` method (``map``, ``call_async``, ``map_reduce``, ``wait``,
  ``get_result``, ``clean``, the context manager) and Lithops' argument conventions
  (single values, tuples, dicts, ``extra_args``, ``id``, ``obj`` partitions).
- Unsupported Lithops arguments fail before anything runs, naming the argument and
  what to use instead.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from typing import Dict, Optional

import cloudpool.compat.lithops as lithops
from cloudpool.compat.lithops import LithopsCompatError
from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A Lithops program, as a Lithops user writes it (the test swaps its import line).
LITHOPS_WORDCOUNT = '''\
import lithops
import json
import sys


def count_words(obj):
    counter = {}
    data = obj.data_stream.read()
    for line in data.splitlines():
        for word in line.decode("utf-8").split():
            counter[word] = counter.get(word, 0) + 1
    return {"bucket": obj.bucket, "key": obj.key, "part": obj.part, "counter": counter}


if __name__ == "__main__":
    prefix = sys.argv[1]
    storage = sys.argv[2] if len(sys.argv) > 2 else None
    fexec = lithops.FunctionExecutor(storage=storage)
    fexec.map(count_words, prefix, obj_chunk_size=16 * 1024)
    results = fexec.get_result()
    total = {}
    for result in results:
        for word, n in result["counter"].items():
            total[word] = total.get(word, 0) + n
    print(json.dumps({"total": total, "calls": len(results),
                      "parts": sorted([r["bucket"], r["key"], r["part"]] for r in results)}))
'''


def make_corpus(seed: int = 7, files: int = 3) -> Dict[str, bytes]:
    """Text files with lines of very different lengths; name -> content."""
    rng = random.Random(seed)
    words = "map reduce obj chunk lithops cloudpool bucket key part stream".split()
    out = {}
    for i in range(files):
        lines = [" ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 8, 40, 200])))
                 for _ in range(700 + 300 * i)]
        out[f"doc-{i}.txt"] = ("\n".join(lines) + "\n").encode()
    return out


def direct_count(corpus: Dict[str, bytes]) -> Dict[str, int]:
    return dict(collections.Counter(w for data in corpus.values() for w in data.decode().split()))


def run_program(prefix: str, storage: Optional[str], env: Dict[str, str]) -> dict:
    assert LITHOPS_WORDCOUNT.startswith("import lithops\n")
    source = LITHOPS_WORDCOUNT.replace("import lithops\n", "import cloudpool.compat.lithops as lithops\n", 1)
    changed = [(a, b) for a, b in zip(LITHOPS_WORDCOUNT.splitlines(), source.splitlines()) if a != b]
    assert changed == [("import lithops", "import cloudpool.compat.lithops as lithops")], changed
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wordcount_lithops.py")
        with open(path, "w") as f:
            f.write(source)
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        full_env.update(env)
        proc = subprocess.run([sys.executable, path, prefix] + ([storage] if storage else []),
                              env=full_env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"the Lithops program failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def expected_calls(corpus: Dict[str, bytes], chunk: int = 16 * 1024) -> int:
    return sum(max(1, -(-len(data) // chunk)) for data in corpus.values())


class LithopsProgramLocalTest(unittest.TestCase):
    def test_localhost_bucket_prefix(self) -> None:
        corpus = make_corpus()
        with tempfile.TemporaryDirectory() as tmp:
            # Lithops' localhost storage lives in <tmp>/lithops-<user>/<bucket>/<key>;
            # TMPDIR points both it and cloudpool's default storage into this directory.
            user = os.environ.get("USER", "root")
            folder = os.path.join(os.path.realpath(tmp), f"lithops-{user}", "texts-bucket", "corpus")
            os.makedirs(folder)
            for name, data in corpus.items():
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
            out = run_program("localhost://texts-bucket/corpus/", None, {"TMPDIR": tmp, "USER": user})
        self.assertEqual(out["total"], direct_count(corpus))
        self.assertEqual(out["calls"], expected_calls(corpus))
        buckets_keys = {(b, k) for b, k, _p in out["parts"]}
        self.assertEqual(buckets_keys, {("texts-bucket", f"corpus/{n}") for n in corpus})

    def test_local_path_prefix(self) -> None:
        corpus = make_corpus(seed=8)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in corpus.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            out = run_program(tmp + "/", None, {})
        self.assertEqual(out["total"], direct_count(corpus))
        self.assertEqual(out["calls"], expected_calls(corpus))
        self.assertEqual({(b, k) for b, k, _p in out["parts"]}, {(os.path.realpath(tmp), n) for n in corpus})


def _create_bucket(moto: servers.MotoServer) -> str:
    import boto3

    bucket = f"lithops-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=bucket)
    return bucket


class LithopsProgramS3Test(unittest.TestCase):
    def test_s3_prefix_with_s3_storage(self) -> None:
        import boto3

        moto = servers.moto_s3()
        bucket = _create_bucket(moto)
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                          aws_access_key_id=servers.S3_ACCESS_KEY, aws_secret_access_key=servers.S3_SECRET_KEY)
        corpus = make_corpus(seed=9)
        for name, data in corpus.items():
            s3.put_object(Bucket=bucket, Key=f"corpus/{name}", Body=data)
        s3.put_object(Bucket=bucket, Key="other/ignored.txt", Body=b"not counted\n")
        out = run_program(f"s3://{bucket}/corpus/", f"s3://{bucket}/cloudpool", moto.env)
        self.assertEqual(out["total"], direct_count(corpus))
        self.assertEqual(out["calls"], expected_calls(corpus))
        self.assertEqual({(b, k) for b, k, _p in out["parts"]}, {(bucket, f"corpus/{n}") for n in corpus})
        # Lithops' own scheme name for S3 reads the same objects, here in-process.
        with environ(moto.env), lithops.FunctionExecutor(storage=f"s3://{bucket}/cloudpool") as fexec:
            fexec.map(line_count, f"aws_s3://{bucket}/corpus/", obj_chunk_number=3)
            counts = fexec.get_result()
        self.assertEqual(sum(counts), sum(d.count(b"\n") for d in corpus.values()))
        self.assertEqual(len(counts), 3 * len(corpus))

    def test_lithops_config_with_an_s3_storage_section(self) -> None:
        moto = servers.moto_s3()
        bucket = _create_bucket(moto)
        config = {"lithops": {"backend": "localhost", "storage": "aws_s3", "execution_timeout": 60},
                  "aws_s3": {"storage_bucket": bucket, "endpoint": moto.endpoint_url,
                             "region": servers.S3_REGION}}
        with environ(moto.env), lithops.FunctionExecutor(config=config) as fexec:
            self.assertEqual(fexec.executor.config["storage"], f"s3://{bucket}/cloudpool")
            self.assertEqual(fexec.executor.config["backend"], "local")
            self.assertEqual(fexec.executor.config["timeout"], 60)
            fexec.map(add, [(1, 2), (3, 4)])
            self.assertEqual(fexec.get_result(), [3, 7])


# ---------------------------------------------------------------------------- functions mapped
def add(x, y=0):
    return x + y


def kw_only(a, b):
    return f"{a}-{b}"


def with_id(id, x):  # noqa: A002  (Lithops' reserved name)
    return (id, x)


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def fail(x):
    raise KeyError(f"no {x}")


def line_count(obj):
    return obj.data_stream.read().count(b"\n")


def describe(obj, tag=None):
    data = obj.data_stream.read()
    return {"backend": obj.backend, "bucket": obj.bucket, "key": obj.key, "part": obj.part,
            "total_parts": obj.total_parts, "range": obj.data_byte_range, "data": data, "tag": tag}


def total(results, bonus=0):
    return sum(results) + bonus


def uses_storage(storage, x):
    return x


class environ:
    """Set environment variables for a block (a worker process's credential chain)."""

    def __init__(self, values: Dict[str, str]) -> None:
        self.values = values

    def __enter__(self) -> "environ":
        self.old = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FunctionExecutorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.fexec = lithops.FunctionExecutor(storage=os.path.join(cls.tmp.name, "storage"),
                                             localhost_root=os.path.join(cls.tmp.name, "buckets"))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.fexec.shutdown()
        cls.tmp.cleanup()

    def setUp(self) -> None:
        self.fexec.get_result(throw_except=False)  # read anything a previous test left unread

    def test_map_argument_conventions(self) -> None:
        f = self.fexec
        self.assertEqual(f.map(add, [1, 2, 3]).get_result(), [1, 2, 3])          # single values
        self.assertEqual(f.get_result(f.map(add, [(1, 2), (3, 4)])), [3, 7])      # tuples: positional
        self.assertEqual(f.get_result(f.map(kw_only, [{"a": 1, "b": 2}])), ["1-2"])  # dicts: keywords
        self.assertEqual(f.get_result(f.map(add, range(3), extra_args=(10,))), [10, 11, 12])
        self.assertEqual(f.get_result(f.map(add, [(1,), (2,)], extra_args=(5,))), [6, 7])
        self.assertEqual(f.get_result(f.map(kw_only, [{"a": 1}, {"a": 2}], extra_args={"b": "x"})), ["1-x", "2-x"])
        self.assertEqual(f.get_result(f.map(add, (4, 5))), [9])  # a tuple is one call's arguments
        self.assertEqual(f.get_result(f.map(with_id, ["a", "b", "c"])), [(0, "a"), (1, "b"), (2, "c")])
        self.assertEqual(f.get_result(f.map(add, [1], chunksize=2)), [1])  # a list, even for one call

    def test_map_argument_errors_name_the_item(self) -> None:
        with self.assertRaisesRegex(TypeError, r"data item \{'a': 1, 'z': 2\} does not fit kw_only"):
            self.fexec.map(kw_only, [{"a": 1, "z": 2}])
        with self.assertRaisesRegex(TypeError, "extra_args must be a dict"):
            self.fexec.map(kw_only, [{"a": 1}], extra_args=("b",))
        with self.assertRaisesRegex(TypeError, "extra_args must be a tuple"):
            self.fexec.map(add, [1], extra_args={"y": 1})
        with self.assertRaisesRegex(ValueError, "chunksize"):
            self.fexec.map(add, [1], chunksize=0)

    def test_futures_are_concurrent_futures(self) -> None:
        fs = self.fexec.map(add, [1, 2])
        self.assertIsInstance(fs, lithops.FuturesList)
        done, not_done = cf.wait(fs, timeout=30)
        self.assertEqual((len(done), len(not_done)), (2, 0))
        self.assertEqual([f.result() for f in fs], [1, 2])

    def test_call_async_and_get_result_without_futures(self) -> None:
        fut = self.fexec.call_async(add, (2, 3))
        self.assertIsInstance(fut, cf.Future)
        self.assertEqual(self.fexec.get_result(), 5)  # one value after call_async, as Lithops
        self.assertEqual(self.fexec.get_result(), [])  # nothing unread any more
        self.assertEqual(self.fexec.get_result(fs=fut), 5)  # a given future is read again
        self.assertEqual(self.fexec.get_result(self.fexec.call_async(kw_only, {"a": 1, "b": 2})), "1-2")
        self.assertEqual(self.fexec.get_result(self.fexec.call_async(add, 1, extra_args=(4,))), 5)
        self.fexec.map(add, [7])
        # Reading with fs= does not count as read for get_result() without fs (Lithops' rule);
        # after map, a list even for one result.
        self.assertEqual(self.fexec.get_result(), ["1-2", 5, 7])
        self.assertEqual(self.fexec.get_result(self.fexec.map(add, [8])), [8])

    def test_get_result_errors_and_timeout(self) -> None:
        fs = self.fexec.map(fail, ["a"])
        with self.assertRaisesRegex(KeyError, "no a"):
            self.fexec.get_result(fs)
        self.assertEqual(self.fexec.get_result(fs, throw_except=False), [None])
        slow = self.fexec.call_async(sleepy, 3)
        start = time.monotonic()
        with self.assertRaisesRegex(TimeoutError, "1 of 1 calls did not finish within 0.2 s"):
            self.fexec.get_result(slow, timeout=0.2)
        self.assertLess(time.monotonic() - start, 2)
        self.assertEqual(self.fexec.get_result(slow), 3)

    def test_wait_return_when(self) -> None:
        fast = self.fexec.call_async(sleepy, 0)
        slow = self.fexec.call_async(sleepy, 2.5)
        start = time.monotonic()
        done, not_done = self.fexec.wait([fast, slow], return_when=lithops.ALWAYS)
        self.assertLess(time.monotonic() - start, 1)
        self.assertIn(slow, not_done)
        done, not_done = self.fexec.wait([fast, slow], return_when=lithops.ANY_COMPLETED)
        self.assertEqual((list(done), list(not_done)), ([fast], [slow]))
        done, not_done = self.fexec.wait([fast, slow], return_when=50)  # a percentage, as Lithops
        self.assertIn(fast, done)
        done, not_done = self.fexec.wait([fast, slow], return_when=lithops.ALL_COMPLETED)
        self.assertEqual((len(done), len(not_done)), (2, 0))
        self.assertGreaterEqual(time.monotonic() - start, 2)
        with self.assertRaisesRegex(ValueError, "ALWAYS \\(0\\), ANY_COMPLETED \\(-1\\), ALL_COMPLETED \\(100\\)"):
            self.fexec.wait([fast], return_when=150)
        self.fexec.get_result()

    def test_wait_throw_except_and_timeout(self) -> None:
        fs = self.fexec.map(fail, ["b"])
        with self.assertRaisesRegex(KeyError, "no b"):
            self.fexec.wait(fs)
        done, not_done = fs.wait(throw_except=False)
        self.assertEqual((len(done), len(not_done)), (1, 0))
        slow = self.fexec.call_async(sleepy, 2)
        done, not_done = self.fexec.wait(slow, timeout=0.1)
        self.assertEqual((list(done), list(not_done)), ([], [slow]))
        self.assertEqual(lithops.get_result(slow), 2)  # the module-level helpers work too
        self.assertEqual(lithops.wait([slow])[0], [slow])
        self.fexec.get_result(throw_except=False)

    def test_obj_partitions_cover_every_byte_in_whole_lines(self) -> None:
        root = os.path.join(self.tmp.name, "buckets")
        corpus = make_corpus(seed=3, files=2)
        folder = os.path.join(root, "bkt", "in")
        os.makedirs(folder, exist_ok=True)
        for name, data in corpus.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        fs = self.fexec.map(describe, [{"obj": "localhost://bkt/in/", "tag": "t"}], obj_chunk_size=5000)
        parts = self.fexec.get_result(fs)
        by_key = collections.defaultdict(list)
        for p in parts:
            self.assertEqual((p["backend"], p["bucket"], p["tag"]), ("localhost", "bkt", "t"))
            by_key[p["key"]].append(p)
        self.assertEqual(set(by_key), {f"in/{n}" for n in corpus})
        for key, plist in by_key.items():
            data = corpus[key.split("/", 1)[1]]
            plist.sort(key=lambda p: p["part"])
            self.assertEqual([p["part"] for p in plist], list(range(len(plist))))
            self.assertEqual({p["total_parts"] for p in plist}, {-(-len(data) // 5000)})
            self.assertEqual(b"".join(p["data"] for p in plist), data)  # every byte exactly once
            position = 0
            for p in plist:
                first, last = p["range"]
                self.assertEqual(first, position)
                self.assertEqual(last - first + 1, len(p["data"]))
                self.assertTrue(not p["data"] or p["data"].endswith(b"\n"))  # whole lines only
                position = last + 1
        # A URL without a scheme is read from the executor's storage service (local here).
        fs = self.fexec.map(line_count, "bkt/in/")
        self.assertEqual(sum(self.fexec.get_result(fs)), sum(d.count(b"\n") for d in corpus.values()))

    def test_map_reduce(self) -> None:
        self.assertEqual(self.fexec.map_reduce(add, [1, 2, 3], total).get_result(), 6)
        self.fexec.map_reduce(add, [(1, 1), (2, 2)], total, extra_args_reduce=(100,))
        # The reducers' results, never the map calls'; the first reducer's was read with fs=
        # only, which get_result() without fs does not count (Lithops' rule).
        self.assertEqual(self.fexec.get_result(), [6, 106])
        self.fexec.map_reduce(add, [(2, 2)], total)
        self.assertEqual(self.fexec.get_result(), 4)  # a single unread result: one value
        root = os.path.join(self.tmp.name, "buckets")
        for name, text in (("a.txt", b"1\n2\n3\n"), ("b.txt", b"x\n" * 10)):
            os.makedirs(os.path.join(root, "rb"), exist_ok=True)
            with open(os.path.join(root, "rb", name), "wb") as f:
                f.write(text)
        fs = self.fexec.map_reduce(line_count, "localhost://rb/", total, obj_chunk_size=4,
                                   obj_reduce_by_key=True)
        self.assertEqual(sorted(self.fexec.get_result(fs)), [3, 10])  # one reducer per object
        failing = self.fexec.map_reduce(fail, ["c"], total)
        with self.assertRaisesRegex(KeyError, "no c"):
            self.fexec.get_result(failing)
        with self.assertRaisesRegex(ValueError, "spawn_reducer|return_when"):
            self.fexec.map_reduce(add, [1], total, spawn_reducer=101)

    def test_clean_forgets_finished_calls(self) -> None:
        self.fexec.map(add, [1, 2])
        self.fexec.wait()
        self.assertTrue(self.fexec.futures)
        self.fexec.clean()
        self.assertEqual(self.fexec.futures, [])
        self.assertEqual(self.fexec.get_result(), [])
        self.assertEqual(self.fexec.map(add, [5]).get_result(), [5])  # still usable
        with self.assertRaisesRegex(LithopsCompatError, "cs \\(cloud objects\\).*cloudpool.Storage"):
            self.fexec.clean(cs=["cos://b/k"])

    def test_unsupported_arguments_name_the_argument_and_the_fix(self) -> None:
        f = self.fexec
        cases = [
            (lambda: f.map(add, [1], extra_env={"A": "1"}), "extra_env", "runtime image"),
            (lambda: f.map(add, [1], runtime_memory=2048), "runtime_memory", "memory"),
            (lambda: f.map(add, [1], timeout=10), "timeout", "config={'timeout'"),
            (lambda: f.map(add, [1], include_modules=["numpy"]), "include_modules", "cloudpickle"),
            (lambda: f.call_async(add, 1, extra_env={"A": "1"}), "extra_env", "arguments"),
            (lambda: f.map(uses_storage, [1]), "'storage'", "cloudpool.Storage"),
            (lambda: f.call_async(line_count, "s3://b/k"), "call_async with an obj URL", "map()"),
            (lambda: f.map_reduce(add, [1], total, reduce_runtime_memory=512), "reduce_runtime_memory", "memory"),
            (lambda: f.map(line_count, "gopher://b/k"), "unknown storage 'gopher'", "aws_s3"),
            (lambda: f.plot(), "plot()", "stats()"),
            (lambda: lithops.FunctionExecutor(config_file="lithops.yaml"), "config_file", "CLOUDPOOL_CONFIG"),
            (lambda: lithops.FunctionExecutor(monitoring="rabbitmq"), "monitoring='rabbitmq'", "storage"),
            (lambda: lithops.FunctionExecutor(mode="standalone"), "mode='standalone'", "serverless"),
            (lambda: lithops.FunctionExecutor(runtime_memory=1024), "runtime_memory=1024", "memory"),
            (lambda: lithops.FunctionExecutor(storage="aws_s3"), "names no bucket", "s3://BUCKET/PREFIX"),
            (lambda: lithops.FunctionExecutor(storage="nosuch"), "unknown storage 'nosuch'", "storage URL"),
            (lambda: lithops.FunctionExecutor(config={"lithops": {"backend": "localhost", "workers": 4}}),
             "lithops.workers", "cloudpool config"),
            (lambda: lithops.FunctionExecutor(config={"lithops": {}, "aws_lambda": {"memory": 1}}),
             "section 'aws_lambda'", "config={'aws_lambda'"),
        ]
        for call, name, fix in cases:
            with self.subTest(name=name):
                with self.assertRaises(ValueError) as ctx:
                    call()
                self.assertIn(name, str(ctx.exception))
                self.assertIn(fix, str(ctx.exception))
        self.assertEqual(f.futures and [x for x in f.futures if not x.done()], [])  # nothing was submitted
        with self.assertRaisesRegex(AttributeError, "Storage.*cloudpool.Storage"):
            lithops.Storage  # noqa: B018

    def test_context_manager_shuts_down(self) -> None:
        with lithops.FunctionExecutor(storage=os.path.join(self.tmp.name, "cm")) as fexec:
            self.assertEqual(fexec.map(add, [1, 2]).get_result(), [1, 2])
            self.assertEqual(fexec.executor.config["backend"], "local")
        with self.assertRaisesRegex(RuntimeError, "after shutdown"):
            fexec.map(add, [1])
        with lithops.LocalhostExecutor(storage="localhost") as fexec:
            self.assertEqual(fexec.executor.config["backend"], "local")
            self.assertEqual(fexec.call_async(add, (1, 1)).result(timeout=30), 2)


if __name__ == "__main__":
    unittest.main()
