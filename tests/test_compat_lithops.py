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
import io
import json
import logging
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


# ---------------------------------------------------------------------------- Lithops config
#: A config as Lithops users write it (keys from Lithops' configuration docs), most of
#: them with no cloudpool meaning.
LITHOPS_YAML = """\
lithops:
    backend: localhost
    storage: localhost
    mode: localhost
    monitoring: storage
    monitoring_interval: 0.5
    chunksize: 4
    data_limit: false
    data_cleaner: true
    execution_timeout: 45
    include_modules: []
    log_level: WARNING
    log_format: "%(asctime)s %(message)s"
    retries: 2
localhost:
    runtime: python3
    version: 2
    max_workers: 1
    worker_processes: 3
"""


class LithopsConfigTest(unittest.TestCase):
    def test_a_lithops_config_file_is_read_and_mapped(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "lithops.yaml")
            with open(path, "w") as f:
                f.write(LITHOPS_YAML)
            with environ({"LITHOPS_CONFIG_FILE": path}), \
                    self.assertLogs("cloudpool.compat.lithops", "DEBUG") as logs, \
                    lithops.FunctionExecutor() as fexec:
                cfg = fexec.executor.config
                self.assertEqual((cfg["backend"], cfg["timeout"], cfg["keep_data"]), ("local", 45, False))
                self.assertEqual(fexec.executor.max_workers, 3)  # max_workers x worker_processes
                self.assertEqual(fexec.map(add, [(1, 2), (3, 4)]).get_result(), [3, 7])
                # retries: read by RetryingFunctionExecutor, from the same config
                self.assertEqual(lithops.RetryingFunctionExecutor(fexec).map(add, [1])[0].retries, 2)
            text = "\n".join(logs.output)
            for key in ("lithops.chunksize", "lithops.monitoring_interval", "lithops.data_limit",
                        "localhost.version", "localhost.runtime"):
                self.assertIn(key, text)
            self.assertEqual(lithops.default_config(config_file=path)["localhost"]["worker_processes"], 3)

    def test_default_config_is_lithops_localhost(self) -> None:
        with tempfile.TemporaryDirectory() as tmp, environ({"HOME": tmp, "LITHOPS_CONFIG_FILE": ""}):
            cfg = lithops.default_config(config_overwrite={"lithops": {"log_level": "DEBUG"}})
        self.assertEqual({k: cfg["lithops"][k] for k in ("backend", "storage", "mode", "log_level")},
                         {"backend": "localhost", "storage": "localhost", "mode": "localhost",
                          "log_level": "DEBUG"})
        self.assertEqual(lithops.extract_storage_config(cfg)["localhost"]["storage_bucket"], "storage")

    def test_serverless_sections_map_to_cloudpool_options(self) -> None:
        from cloudpool.compat import _lithops_config

        config = {"lithops": {"backend": "aws_lambda", "storage": "aws_s3", "execution_timeout": 120},
                  "aws": {"region": "eu-west-1", "access_key_id": "AK", "secret_access_key": "SK"},
                  "aws_lambda": {"execution_role": "arn:aws:iam::1:role/r", "runtime_memory": 1024,
                                 "max_workers": 50, "runtime": "my-fn", "invoke_pool_threads": 64},
                  "aws_s3": {"storage_bucket": "bkt"},
                  "ibm_cf": {"namespace": "not used"}}
        cp, settings = _lithops_config.translate(config)
        self.assertEqual(cp, {"timeout": 120, "runtime": "my-fn", "aws_lambda": {
            "role": "arn:aws:iam::1:role/r", "memory_mb": 1024, "region": "eu-west-1"}})
        self.assertEqual((settings["backend"], settings["bucket"], settings["max_workers"]), ("aws_lambda", "bkt", 50))
        self.assertEqual(settings["storage_options"], {"region": "eu-west-1", "aws_access_key_id": "AK",
                                                       "aws_secret_access_key": "SK"})

    def test_storage_sections_map_to_cloudpool_storage_options(self) -> None:
        from cloudpool.compat import _lithops_config

        cases = [
            ({"lithops": {"storage": "ibm_cos"}, "ibm": {"iam_api_key": "KEY"},
              "ibm_cos": {"region": "eu-de", "endpoint": "https://s3.eu-de.example", "storage_bucket": "b"}},
             {"api_key": "KEY", "region": "eu-de", "endpoint_url": "https://s3.eu-de.example"}),
            ({"lithops": {"storage": "azure_storage"},
              "azure_storage": {"storage_account_name": "acct", "storage_account_key": "K", "storage_bucket": "c"}},
             {"account_url": "https://acct.blob.core.windows.net", "credential": "K"}),
            ({"lithops": {"storage": "gcp_storage"}, "gcp": {"project_id": "p1", "credentials_path": "/x.json"},
              "gcp_storage": {"storage_bucket": "g", "region": "europe-west1"}},
             {"project": "p1"}),
        ]
        for config, options in cases:
            with self.subTest(storage=config["lithops"]["storage"]):
                _cp, settings = _lithops_config.translate(config)
                self.assertEqual(settings["storage_options"], options)
                # and the same options reach Lithops' Storage API
                st = lithops.Storage(config=config)
                self.assertEqual(st._options, options)

    def test_a_missing_config_file_is_named(self) -> None:
        with self.assertRaisesRegex(FileNotFoundError, "nope.yaml"):
            lithops.FunctionExecutor(config_file="/nonexistent/nope.yaml")


#: A Lithops program using Lithops' submodules; run unchanged through the alias.
LITHOPS_PROGRAM = '''\
import json
import lithops
from lithops import RetryingFunctionExecutor
from lithops.storage import Storage
from lithops.storage.cloud_proxy import open as cloud_open, os as cloud_os
from lithops.storage.utils import StorageNoSuchKeyError
from lithops.utils import setup_lithops_logger


def note(x):
    with cloud_open(f"alias-notes/{x}.txt", "w") as f:
        f.write(str(x))


def square(x, storage):
    storage.put_object(storage.bucket, f"alias-test/{x}", str(x * x))
    return x * x


if __name__ == "__main__":
    setup_lithops_logger("WARNING")
    with lithops.FunctionExecutor() as fexec:
        squares = fexec.map(square, range(4)).get_result()
        retried = RetryingFunctionExecutor(fexec).map(square, [5])[0].result()
        fexec.map(note, [1, 2]).wait()
    notes = sorted(cloud_os.listdir("alias-notes"))
    st = Storage()
    stored = sorted(int(st.get_object(st.bucket, k)) for k in st.list_keys(st.bucket, "alias-test/"))
    st.delete_objects(st.bucket, st.list_keys(st.bucket, "alias-test/"))
    try:
        st.get_object(st.bucket, "alias-test/0")
        missing = False
    except StorageNoSuchKeyError:
        missing = True
    print(json.dumps({"squares": squares, "retried": retried, "stored": stored, "missing": missing,
                      "module": lithops.__name__, "notes": notes}))
'''


class LithopsAliasTest(unittest.TestCase):
    def test_a_lithops_program_runs_unchanged(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "program.py")
            with open(path, "w") as f:
                f.write(LITHOPS_PROGRAM)
            config = os.path.join(tmp, "config.yaml")
            with open(config, "w") as f:
                f.write(LITHOPS_YAML)
            env = dict(os.environ, LITHOPS_CONFIG_FILE=config, TMPDIR=tmp,
                       PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
            proc = subprocess.run([sys.executable, "-m", "cloudpool.compat.lithops_alias", path],
                                  env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual(out, {"squares": [0, 1, 4, 9], "retried": 25, "stored": [0, 1, 4, 9, 25],
                               "missing": True, "module": "cloudpool.compat.lithops",
                               "notes": ["1.txt", "2.txt"]})

    def test_lithops_joblib_backend_runs_on_cloudpool(self) -> None:
        # Lithops' joblib examples: register_lithops() then parallel_backend('lithops').
        program = (
            "import os\n"
            "import joblib\n"
            "from joblib import Parallel, delayed\n"
            "from lithops.util.joblib import register_lithops\n"
            "\n"
            "def pid_and_square(x):\n"
            "    return os.getpid(), x * x\n"
            "\n"
            "if __name__ == '__main__':\n"
            "    register_lithops()\n"
            "    with joblib.parallel_backend('lithops'):\n"
            "        out = Parallel(n_jobs=-1)(delayed(pid_and_square)(i) for i in range(8))\n"
            "    print(sorted(v for _, v in out))\n"
            "    print(os.getpid() not in {p for p, _ in out})\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "joblib_program.py")
            with open(path, "w") as f:
                f.write(program)
            env = dict(os.environ, TMPDIR=tmp,
                       PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
            proc = subprocess.run([sys.executable, "-m", "cloudpool.compat.lithops_alias", path],
                                  env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        lines = proc.stdout.strip().splitlines()
        self.assertEqual(lines, [str([i * i for i in range(8)]), "True"])  # ran in worker processes

    def test_the_alias_does_not_replace_a_real_lithops(self) -> None:
        import types

        from cloudpool.compat import lithops_alias

        name = f"lithops_{uuid.uuid4().hex[:8]}"
        sys.modules[name] = types.SimpleNamespace(FunctionExecutor=object)  # type: ignore[assignment]
        try:
            with self.assertRaisesRegex(RuntimeError, "already imported"):
                lithops_alias.install(name)
        finally:
            del sys.modules[name]


# ---------------------------------------------------------------------------- lithops.Storage
class LithopsStorageChecks:
    """The Storage API against one backend; subclasses give ``storage`` and ``bucket``."""

    storage: "lithops.Storage"
    bucket: str

    def test_objects(self) -> None:
        st, b, p = self.storage, self.bucket, f"t-{uuid.uuid4().hex[:8]}"
        # (a key cannot also be a "directory" of other keys on local disk, as in Lithops)
        st.put_object(b, f"{p}/a1", b"0123456789")
        st.put_object(b, f"{p}/a_b", "text")
        st.put_object(b, f"{p}/a/c", io.BytesIO(b"stream"))
        self.assertEqual(st.get_object(b, f"{p}/a1"), b"0123456789")
        self.assertEqual(st.get_object(b, f"{p}/a1", extra_get_args={"Range": "bytes=1-4"}), b"1234")
        self.assertEqual(st.get_object(b, f"{p}/a/c", stream=True).read(), b"stream")
        self.assertEqual(st.head_object(b, f"{p}/a1")["content-length"], "10")
        with self.assertRaises(lithops.StorageNoSuchKeyError) as ctx:
            st.get_object(b, f"{p}/missing")
        self.assertIsInstance(ctx.exception, FileNotFoundError)
        with self.assertRaises(FileNotFoundError):
            st.head_object(b, f"{p}/missing")
        self.assertEqual(sorted(st.list_keys(b, f"{p}/a")), [f"{p}/a/c", f"{p}/a1", f"{p}/a_b"])
        self.assertEqual(st.list_keys(b, f"{p}/a/"), [f"{p}/a/c"])
        self.assertEqual({o["Key"]: o["Size"] for o in st.list_objects(b, p)},
                         {f"{p}/a1": 10, f"{p}/a_b": 4, f"{p}/a/c": 6})
        self.assertEqual(st.head_bucket(b)["ResponseMetadata"]["HTTPStatusCode"], 200)
        st.delete_object(b, f"{p}/a1")
        st.delete_objects(b, [f"{p}/a_b"])
        self.assertEqual(st.list_keys(b, p), [f"{p}/a/c"])
        co = st.put_cloudobject(b"cloud", b)
        self.assertEqual((co.backend, co.bucket), (st.backend, b))
        self.assertEqual(st.get_cloudobject(co), b"cloud")
        st.delete_cloudobjects([co, lithops.CloudObject(st.backend, b, f"{p}/a/c")])
        self.assertEqual(st.list_keys(b, p), [])
        with self.assertRaises(lithops.StorageNoSuchKeyError):
            st.get_cloudobject(co)


class LithopsStorageLocalTest(LithopsStorageChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        # Lithops' default: localhost storage, bucket 'storage' (in a directory of this test's own)
        cls.storage = lithops.Storage(localhost_root=cls.tmp.name)
        cls.bucket = cls.storage.bucket

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def test_storage_parameter_and_cloudobjects_in_calls(self) -> None:
        key = f"t-{uuid.uuid4().hex[:8]}/words"
        self.storage.put_object(self.bucket, key, b"a b c\nd e\n")
        with lithops.FunctionExecutor(localhost_root=self.tmp.name) as fexec:  # same localhost storage
            fexec.call_async(word_count_from_storage, (self.bucket, key))
            self.assertEqual(fexec.get_result(), 5)
            cos = fexec.map(put_cloudobject, [b"x", b"yy"]).get_result()
            self.assertEqual([self.storage.get_cloudobject(c) for c in cos], [b"x", b"yy"])
            fexec.clean(cs=cos)
            for c in cos:
                with self.assertRaises(FileNotFoundError):
                    self.storage.get_cloudobject(c)
        self.storage.delete_object(self.bucket, key)


class LithopsCloudProxyTest(unittest.TestCase):
    """``lithops.storage.cloud_proxy``: open() and os.* over a bucket, compared with the
    same operations on a real directory."""

    def test_files_and_directories_behave_as_on_disk(self) -> None:
        from cloudpool.compat._lithops_cloud_proxy import CloudFileProxy, cloud_open

        with tempfile.TemporaryDirectory() as tmp:
            st = lithops.Storage(localhost_root=os.path.join(tmp, "buckets"))
            cos = CloudFileProxy(st)
            disk = os.path.join(tmp, "disk")
            files = {"a/1.txt": "one", "a/b/2.txt": "two", "c.txt": "three"}
            for path, text in files.items():
                with cloud_open(path, "w", st) as f:
                    f.write(text)
                os.makedirs(os.path.dirname(os.path.join(disk, path)), exist_ok=True)
                with open(os.path.join(disk, path), "w") as f:
                    f.write(text)
            with cloud_open("/c.txt", "a", st) as f:
                f.write("+")
            with open(os.path.join(disk, "c.txt"), "a") as f:
                f.write("+")
            self.assertEqual(cloud_open("c.txt", "r", st).read(), "three+")
            self.assertEqual(cloud_open("a/1.txt", "rb", st).read(), b"one")
            self.assertEqual(sorted(cos.listdir("a")), sorted(os.listdir(os.path.join(disk, "a"))))
            self.assertEqual(sorted(cos.listdir("")), sorted(os.listdir(disk)))
            walked = [(os.path.relpath(r, "/"), sorted(d), sorted(f)) for r, d, f in cos.walk("/")]
            on_disk = [(os.path.relpath(r, disk), sorted(d), sorted(f)) for r, d, f in os.walk(disk)]
            self.assertEqual(walked, on_disk)  # both top-down, same order of directories
            for path in ("a", "a/1.txt", "a/b", "nope", "c.txt"):
                with self.subTest(path=path):
                    real = os.path.join(disk, path)
                    self.assertEqual((cos.path.exists(path), cos.path.isfile(path), cos.path.isdir(path)),
                                     (os.path.exists(real), os.path.isfile(real), os.path.isdir(real)))
            cos.remove("a/1.txt")
            cos.remove("a/b")  # a directory is no object: nothing happens
            self.assertEqual(cos.listdir("a"), ["b"])
            self.assertEqual(cos.path.join("x", "y"), os.path.join("x", "y"))  # the rest is os's
            with self.assertRaises(FileNotFoundError):
                cloud_open("a/1.txt", "r", st)
            with self.assertRaisesRegex(ValueError, "mode 'r\\+'"):
                cloud_open("c.txt", "r+", st)


class LithopsStorageS3Test(LithopsStorageChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.moto = servers.moto_s3()
        cls.bucket = _create_bucket(cls.moto)
        cls.storage = lithops.Storage(config={"lithops": {"storage": "minio"}, "minio": {
            "endpoint": cls.moto.endpoint_url, "storage_bucket": cls.bucket,
            "access_key_id": servers.S3_ACCESS_KEY, "secret_access_key": servers.S3_SECRET_KEY}})

    def test_storage_parameter_with_a_cloudpool_s3_config(self) -> None:
        # No AWS_ENDPOINT_URL in the environment: the endpoint comes from the executor's
        # config only, and the injected storage must use it too.
        key = f"param-{uuid.uuid4().hex[:8]}"
        self.storage.put_object(self.bucket, key, b"one two three")
        creds = {"AWS_ACCESS_KEY_ID": servers.S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.S3_SECRET_KEY,
                 "AWS_DEFAULT_REGION": servers.S3_REGION}
        with environ(creds), lithops.FunctionExecutor(
                storage=f"s3://{self.bucket}/cloudpool",
                config={"s3": {"endpoint_url": self.moto.endpoint_url}}) as fexec:
            self.assertEqual(fexec.storage.bucket, self.bucket)
            fexec.call_async(word_count_from_storage, (self.bucket, key))
            self.assertEqual(fexec.get_result(), 3)

    def test_objects_are_plain_s3_objects(self) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.moto.endpoint_url, region_name=servers.S3_REGION,
                          aws_access_key_id=servers.S3_ACCESS_KEY, aws_secret_access_key=servers.S3_SECRET_KEY)
        self.storage.put_object(self.bucket, "plain/k", b"seen by boto3")
        self.assertEqual(s3.get_object(Bucket=self.bucket, Key="plain/k")["Body"].read(), b"seen by boto3")
        s3.put_object(Bucket=self.bucket, Key="plain/j", Body=b"written by boto3")
        self.assertEqual(self.storage.get_object(self.bucket, "plain/j"), b"written by boto3")


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


def uses_ibm_cos(ibm_cos, x):
    return x


def word_count_from_storage(bucket, key, storage):
    return len(storage.get_object(bucket, key).split())


def put_cloudobject(data, storage):
    return storage.put_cloudobject(data)


def returns_futures(n):
    with lithops.FunctionExecutor() as inner:
        return inner.map(add, range(n))


def returns_future(n):
    with lithops.FunctionExecutor() as inner:
        return inner.call_async(add, (n, 1))


def read_env(name):
    return os.environ.get(name)


def doubled(f):
    def wrapper(*args, **kwargs):
        return 2 * f(*args, **kwargs)
    return wrapper


@doubled
def summed(a, b, c=0, *args, d, e=5, **kwargs):
    return sum([a, b, c, d, e, *args, *kwargs.values()])


def fail_first(path, x):
    """Fails on its first run for ``x`` (counted in a file), then returns ``x``."""
    counter = os.path.join(path, str(x))
    runs = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as f:
        f.write(str(runs + 1))
    if runs == 0:
        raise RuntimeError(f"first run of {x}")
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
        with self.assertRaisesRegex(TypeError, "cs must hold CloudObjects .*put_cloudobject"):
            self.fexec.clean(cs=["cos://b/k"])

    def test_unsupported_arguments_name_the_argument_and_the_fix(self) -> None:
        f = self.fexec
        cases = [
            (lambda: f.call_async(line_count, "s3://b/k"), "call_async with an obj URL", "map()"),
            (lambda: f.map(line_count, "gopher://b/k"), "unknown storage 'gopher'", "aws_s3"),
            (lambda: f.map(uses_ibm_cos, [1]), "'ibm_cos'", "'storage'"),
            (lambda: f.plot(), "plot()", "stats()"),
            (lambda: lithops.FunctionExecutor(mode="standalone"), "mode='standalone'", "serverless"),
            (lambda: lithops.FunctionExecutor(storage="aws_s3"), "names no bucket", "s3://BUCKET/PREFIX"),
            (lambda: lithops.FunctionExecutor(storage="nosuch"), "unknown storage 'nosuch'", "storage URL"),
            (lambda: lithops.FunctionExecutor(config={"lithops": {"backend": "aws_ec2"}}),
             "standalone", "serverless backend"),
            (lambda: lithops.FunctionExecutor(config={"lithops": {"storage": "redis"}}),
             "lithops.storage='redis'", "cloudpool storage URL"),
            (lambda: lithops.FunctionExecutor(config={"localhost": {"worker_processes": "many"}}),
             "localhost.worker_processes", "positive integer"),
        ]
        for call, name, fix in cases:
            with self.subTest(name=name):
                with self.assertRaises(ValueError) as ctx:
                    call()
                self.assertIn(name, str(ctx.exception))
                self.assertIn(fix, str(ctx.exception))
        self.assertEqual(f.futures and [x for x in f.futures if not x.done()], [])  # nothing was submitted
        with self.assertRaisesRegex(AttributeError, "StandaloneExecutor.*serverless"):
            lithops.StandaloneExecutor  # noqa: B018

    def test_dict_items_spread_args_and_kwargs_as_lithops(self) -> None:
        items = [{"a": 1, "b": 2, "d": 3}, {"args": (1, 2), "d": 3}, {"args": (1, 2), "d": 3, "f": 4},
                 {"args": (1, 2), "kwargs": {"d": 3, "e": 6, "f": 4}}]
        direct = [summed(1, 2, d=3), summed(1, 2, d=3), summed(1, 2, d=3, f=4), summed(1, 2, d=3, e=6, f=4)]
        self.assertEqual(self.fexec.map(summed, items).get_result(), direct)

    def test_futures_a_function_returns_are_resolved(self) -> None:
        self.assertEqual(self.fexec.call_async(returns_futures, 3).result(timeout=60), [0, 1, 2])
        self.assertEqual(self.fexec.call_async(returns_future, 4).result(timeout=60), 5)

    def test_lithops_future_attributes_and_chaining(self) -> None:
        fs = self.fexec.map(fail, ["a", "b"])
        lithops.wait(fs, throw_except=False)
        self.assertEqual([(f.call_id, f.error, f.success) for f in fs], [("00000", True, False), ("00001", True, False)])
        self.assertIsInstance(fs[0], cf.Future)
        ok = self.fexec.map(add, [(1, 2), (3, 4)])
        self.assertEqual(ok.map(add).get_result(), [3, 7])  # chained: results become the items
        self.assertEqual([f.error for f in ok], [False, False])

    def test_extra_env_and_runtime_memory(self) -> None:
        self.assertNotIn("LITHOPS_COMPAT_TEST_VAR", os.environ)
        fs = self.fexec.map(read_env, ["LITHOPS_COMPAT_TEST_VAR"] * 2, extra_env={"LITHOPS_COMPAT_TEST_VAR": "on"},
                            runtime_memory=512)
        self.assertEqual(fs.get_result(), ["on", "on"])
        self.assertEqual(self.fexec.call_async(read_env, "LITHOPS_COMPAT_TEST_VAR").result(timeout=30), None)

    def test_per_call_timeout(self) -> None:
        started = time.monotonic()
        fs = self.fexec.map(sleepy, [30, 0.01], timeout=2)
        with self.assertRaises(TimeoutError):
            fs[0].result(timeout=60)
        self.assertEqual(fs[1].result(timeout=60), 0.01)
        self.assertLess(time.monotonic() - started, 25)
        with self.assertRaisesRegex(ValueError, "timeout must be a positive number"):
            self.fexec.map(add, [1], timeout=-1)

    def test_retrying_function_executor(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            retrying = lithops.RetryingFunctionExecutor(self.fexec)
            fs = retrying.map(fail_first, [(tmp, 1), (tmp, 2)], retries=1)
            done, pending = retrying.wait(fs, throw_except=False)
            self.assertEqual((sorted(f.result() for f in done), pending), ([1, 2], []))
            self.assertEqual([open(os.path.join(tmp, str(x))).read() for x in (1, 2)], ["2", "2"])
            fs = retrying.map(fail_first, [(tmp, 3)])  # retries=0: the failure stands
            done, pending = retrying.wait(fs, throw_except=False)
            with self.assertRaisesRegex(RuntimeError, "first run of 3"):
                done[0].result()

    def test_setup_lithops_logger(self) -> None:
        log = logging.getLogger("cloudpool")
        old_level, old_handlers = log.level, list(log.handlers)
        stream = io.StringIO()
        try:
            lithops.setup_lithops_logger("DEBUG", stream=stream)
            self.assertEqual(log.level, logging.DEBUG)
            logging.getLogger("cloudpool.compat.lithops").debug("hello from the test")
            self.assertIn("hello from the test", stream.getvalue())
            with self.assertRaisesRegex(ValueError, "log_level"):
                lithops.setup_lithops_logger("LOUD")
        finally:
            log.setLevel(old_level)
            log.handlers[:] = old_handlers
            logging.getLogger("lithops").handlers[:] = []

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
