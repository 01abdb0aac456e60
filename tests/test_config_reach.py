"""Configuration reaches every entry point, and typos in it are caught where they are made.

Issue 19, parts 1 and 2. Part 1: with ``CLOUDPOOL_S3__ENDPOINT_URL`` (or ``config=``,
or the config file) pointing at the moto server and no ``AWS_ENDPOINT_URL``, every
entry point -- ``Storage``, ``objects()``, ``CloudPoolExecutor.map`` and the parts it
sends to workers, ``cloudpool.multiprocessing.Pool``, ``cloudpool.compat.lithops`` and
the CLI -- reads the objects from moto; without the configuration boto3 would aim at the
real AWS endpoint, which this machine cannot reach. Part 2: an unknown section option or
a bad value fails at load with the closest valid name and where it came from (the
environment variable, the file and line, or the keyword argument).
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import unittest
import uuid
from typing import Dict, Iterator, Optional
from unittest import mock

from cloudpool import CloudPoolExecutor, Storage, objects
from cloudpool import cli
from cloudpool.config import load_config
from cloudpool.errors import ConfigError
from cloudpool.storage import clear_cache, storages
from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: moto takes any key; a distinctive one, to look for in pickles.
SECRET = "cfg-reach-secret-" + uuid.uuid4().hex
TEXTS = {"a.txt": b"alpha beta\ngamma\n" * 50, "b.txt": b"delta epsilon\n" * 70}


def read_part(part) -> tuple:
    """Runs on a worker: the part's bytes and the options it arrived with."""
    return part.key, part.start, part.read(), dict(part.storage_options)


def key_and_size(part) -> tuple:
    return part.key, len(part.read())


@contextlib.contextmanager
def environ(**values: Optional[str]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    clear_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_cache()


class MotoCase(unittest.TestCase):
    """A moto bucket holding ``texts/a.txt`` and ``texts/b.txt``; AWS_ENDPOINT_URL unset,
    an empty cloudpool config file, and no CLOUDPOOL_S3__* variable unless a test sets one."""

    @classmethod
    def setUpClass(cls) -> None:
        import boto3

        cls.moto = servers.moto_s3()
        cls.bucket = "cfg-" + uuid.uuid4().hex[:10]
        s3 = boto3.client("s3", endpoint_url=cls.moto.endpoint_url, region_name=servers.S3_REGION,
                          aws_access_key_id=servers.S3_ACCESS_KEY,
                          aws_secret_access_key=SECRET)
        s3.create_bucket(Bucket=cls.bucket)
        for name, data in TEXTS.items():
            s3.put_object(Bucket=cls.bucket, Key=f"texts/{name}", Body=data)
        fd, cls.config_path = tempfile.mkstemp(prefix="cloudpool-config-", suffix=".yaml")
        os.close(fd)
        env = {k: v for k, v in cls.moto.env.items() if k != "AWS_ENDPOINT_URL"}
        cleared = {k: None for k in os.environ
                   if k.startswith("CLOUDPOOL_") or k.startswith("AWS_ENDPOINT_URL")}
        cls._env = environ(**cleared, **env, CLOUDPOOL_CONFIG=cls.config_path)
        cls._env.__enter__()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.__exit__(None, None, None)
        os.unlink(cls.config_path)

    def setUp(self) -> None:
        clear_cache()
        self.addCleanup(clear_cache)
        self.url = f"s3://{self.bucket}/texts/"

    def configured(self, **extra: str):
        """The documented way: the endpoint (and a short retry budget) from the environment."""
        return environ(CLOUDPOOL_S3__ENDPOINT_URL=self.moto.endpoint_url, CLOUDPOOL_S3__MAX_ATTEMPTS="2",
                       **extra)

    def assertWholeTexts(self, parts_bytes: Dict[str, bytes]) -> None:
        self.assertEqual(parts_bytes, {f"texts/{k}": v for k, v in TEXTS.items()})


def joined(results) -> Dict[str, bytes]:
    """key -> its parts' bytes concatenated in offset order."""
    out: Dict[str, list] = {}
    for key, start, data, _opts in results:
        out.setdefault(key, []).append((start, data))
    return {k: b"".join(d for _s, d in sorted(v)) for k, v in out.items()}


# ============================================================================ part 1
class StorageEntryPointTest(MotoCase):
    def test_storage_takes_endpoint_and_retries_from_the_environment(self) -> None:
        with self.configured():
            s = Storage(self.url)
            self.assertEqual(list(s.list()), ["a.txt", "b.txt"])
            self.assertEqual(s.get("a.txt"), TEXTS["a.txt"])
            self.assertEqual(s.backend.max_attempts, 2)  # CLOUDPOOL_S3__MAX_ATTEMPTS
            # A keyword argument wins over the environment.
            self.assertEqual(Storage(self.url, max_attempts=3).backend.max_attempts, 3)

    def test_storage_takes_the_config_file(self) -> None:
        with open(self.config_path, "w") as f:
            f.write(f"s3:\n  endpoint_url: {self.moto.endpoint_url}\n")
        self.addCleanup(lambda: open(self.config_path, "w").close())
        self.assertEqual(list(Storage(self.url).list()), ["a.txt", "b.txt"])

    def test_a_pickled_storage_keeps_the_endpoint_but_not_the_keys(self) -> None:
        with self.configured(CLOUDPOOL_S3__AWS_ACCESS_KEY_ID=servers.S3_ACCESS_KEY,
                             CLOUDPOOL_S3__AWS_SECRET_ACCESS_KEY=SECRET):
            s = Storage(self.url)
            self.assertEqual(s.backend.options["aws_secret_access_key"], SECRET)
            blob = pickle.dumps(s)
        self.assertNotIn(SECRET.encode(), blob)
        clear_cache()
        # Unpickled where no CLOUDPOOL_* variable is set (a worker): the endpoint travelled.
        self.assertEqual(list(pickle.loads(blob).list()), ["a.txt", "b.txt"])


class ObjectsEntryPointTest(MotoCase):
    def test_objects_takes_the_environment(self) -> None:
        with self.configured():
            parts = list(objects(self.url, chunk_size=300))
            self.assertGreater(len(parts), 2)
            self.assertEqual(parts[0].storage_options["endpoint_url"], self.moto.endpoint_url)
            self.assertEqual(parts[0].storage.max_attempts, 2)
            self.assertWholeTexts(joined(read_part(p) for p in parts))

    def test_storage_options_keyword_overrides_the_environment(self) -> None:
        # The environment names a port where nothing listens; the call's own option wins.
        with environ(CLOUDPOOL_S3__ENDPOINT_URL="http://127.0.0.1:9", CLOUDPOOL_S3__MAX_ATTEMPTS="1"):
            parts = list(objects(self.url, storage_options={"endpoint_url": self.moto.endpoint_url}))
            self.assertEqual(parts[0].storage_options,
                             {"endpoint_url": self.moto.endpoint_url, "max_attempts": 1})
            self.assertWholeTexts(joined(read_part(p) for p in parts))

    def test_pickled_parts_carry_options_without_credentials(self) -> None:
        with self.configured(CLOUDPOOL_S3__AWS_ACCESS_KEY_ID=servers.S3_ACCESS_KEY,
                             CLOUDPOOL_S3__AWS_SECRET_ACCESS_KEY=SECRET):
            parts = list(objects(self.url))
        blob = pickle.dumps(parts)
        self.assertNotIn(SECRET.encode(), blob)
        clear_cache()
        back = pickle.loads(blob)  # no CLOUDPOOL_* here, as on a worker
        self.assertEqual(back[0].storage_options, {"endpoint_url": self.moto.endpoint_url, "max_attempts": 2})
        self.assertWholeTexts(joined(read_part(p) for p in back))


class ExecutorEntryPointTest(MotoCase):
    def test_executor_config_reaches_objects_and_parts_on_workers(self) -> None:
        # Nothing in the environment: the endpoint is only in the executor's config=, and
        # the key only there too; the workers (other processes) read the parts with it.
        config = {"s3": {"endpoint_url": self.moto.endpoint_url, "max_attempts": 2,
                         "aws_access_key_id": servers.S3_ACCESS_KEY,
                         "aws_secret_access_key": SECRET}}
        with CloudPoolExecutor(2, config=config) as ex:
            results = list(ex.map(read_part, objects(self.url, chunk_size=300)))
        self.assertWholeTexts(joined(results))
        for _key, _start, _data, options in results:
            self.assertEqual(options, {"endpoint_url": self.moto.endpoint_url, "max_attempts": 2})

    def test_wordcount_example_with_the_documented_environment(self) -> None:
        # The reproduction: the example, unchanged, with job data on S3 too.
        env = dict(os.environ, CLOUDPOOL_S3__ENDPOINT_URL=self.moto.endpoint_url,
                   CLOUDPOOL_S3__MAX_ATTEMPTS="2", PYTHONPATH=ROOT)
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "wordcount.py"), self.url,
                               "--storage", f"s3://{self.bucket}/tmp", "--workers", "2"],
                              env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        words = sum(len(line.split()) for data in TEXTS.values() for line in data.splitlines())
        self.assertIn(f"{words:,} words", proc.stdout)


class PoolEntryPointTest(MotoCase):
    def test_pool_config_reaches_objects(self) -> None:
        from cloudpool.multiprocessing import Pool

        with Pool(2, config={"s3": {"endpoint_url": self.moto.endpoint_url}}) as pool:
            got = dict(pool.map(key_and_size, objects(self.url)))
        self.assertEqual(got, {f"texts/{k}": len(v) for k, v in TEXTS.items()})

    def test_pool_takes_the_environment(self) -> None:
        from cloudpool.multiprocessing import Pool

        with self.configured(), Pool(2) as pool:
            got = dict(pool.map(key_and_size, objects(self.url)))
        self.assertEqual(got, {f"texts/{k}": len(v) for k, v in TEXTS.items()})


class LithopsEntryPointTest(MotoCase):
    def test_function_executor_takes_the_environment(self) -> None:
        from cloudpool.compat import lithops

        with self.configured(), lithops.FunctionExecutor() as fexec:
            fexec.map(lithops_line_count, self.url, obj_chunk_number=2)
            counts = fexec.get_result()
        self.assertEqual(sum(counts), sum(d.count(b"\n") for d in TEXTS.values()))

    def test_function_executor_config_reaches_the_objects(self) -> None:
        from cloudpool.compat import lithops

        with lithops.FunctionExecutor(config={"s3": {"endpoint_url": self.moto.endpoint_url}}) as fexec:
            fexec.map(lithops_line_count, self.url)
            counts = fexec.get_result()
        self.assertEqual(sum(counts), sum(d.count(b"\n") for d in TEXTS.values()))


def lithops_line_count(obj) -> int:
    return obj.data_stream.read().count(b"\n")


class CLIEntryPointTest(MotoCase):
    def run_cli(self, *argv: str) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_storage_ls_and_get_take_the_environment(self) -> None:
        with self.configured():
            code, out, err = self.run_cli("storage", "ls", self.url)
            self.assertEqual(code, 0, err)
            self.assertIn("a.txt", out)
            self.assertIn("b.txt", out)
            with tempfile.TemporaryDirectory() as tmp:
                code, _out, err = self.run_cli("storage", "get", self.url + "a.txt", os.path.join(tmp, "a"))
                self.assertEqual(code, 0, err)
                with open(os.path.join(tmp, "a"), "rb") as f:
                    self.assertEqual(f.read(), TEXTS["a.txt"])


# ============================================================================ part 2
class SectionTypoTest(unittest.TestCase):
    """Unknown section options and bad values: the closest name and the source, everywhere."""

    def setUp(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="cloudpool-config-", suffix=".yaml")
        os.close(fd)
        self.addCleanup(os.unlink, self.path)
        cleared = {k: None for k in os.environ if k.startswith("CLOUDPOOL_")}
        env = environ(**cleared, CLOUDPOOL_CONFIG=self.path)
        env.__enter__()
        self.addCleanup(env.__exit__, None, None, None)

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(textwrap.dedent(text))

    ENTRY_POINTS = {
        "load_config": lambda: load_config(),
        "Storage": lambda: Storage("s3://b/x/"),
        "objects": lambda: objects("s3://b/x/"),
        "CloudPoolExecutor": lambda: CloudPoolExecutor(1),
    }

    def assertEverywhere(self, *fragments: str) -> None:
        for name, call in self.ENTRY_POINTS.items():
            with self.subTest(entry_point=name):
                with self.assertRaises(ConfigError) as cm:
                    call()
                for fragment in fragments:
                    self.assertIn(fragment, str(cm.exception))

    def test_env_variable_option_typo(self) -> None:
        with environ(CLOUDPOOL_S3__ENDPOINT="http://x"):
            self.assertEverywhere("'endpoint'", "environment variable CLOUDPOOL_S3__ENDPOINT",
                                  "did you mean 'endpoint_url'?")

    def test_backend_option_typo_in_env(self) -> None:
        with environ(CLOUDPOOL_AWS_LAMBDA__MEMORY="2048"):
            self.assertEverywhere("the 'aws_lambda' backend", "CLOUDPOOL_AWS_LAMBDA__MEMORY",
                                  "did you mean 'memory_mb'?")

    def test_file_option_typo_names_file_and_line(self) -> None:
        self.write("""\
            # storage for job data
            storage: s3://bucket/jobs
            s3:
              region: eu-west-1
              endpoint: http://127.0.0.1:9
            """)
        self.assertEverywhere(f"config file {self.path}, line 5", "'endpoint'",
                              "did you mean 'endpoint_url'?")

    def test_file_bad_value_names_file_and_line(self) -> None:
        self.write("backend: local\ntimeout: five\n")
        self.assertEverywhere("timeout must be a positive number", "'five'",
                              f"config file {self.path}, line 2")

    def test_env_bad_value_names_the_variable(self) -> None:
        with environ(CLOUDPOOL_TIMEOUT="five"):
            self.assertEverywhere("timeout must be a positive number", "'five'",
                                  "environment variable CLOUDPOOL_TIMEOUT")

    def test_keyword_arguments(self) -> None:
        cases = [
            (lambda: Storage("s3://b/x/", endpoint="http://x"), "'endpoint_url'"),
            (lambda: objects("s3://b/x/", storage_options={"endpoint": "http://x"}), "'endpoint_url'"),
            (lambda: CloudPoolExecutor(1, config={"s3": {"endpoint": "http://x"}}), "'endpoint_url'"),
            (lambda: CloudPoolExecutor(1, start_methd="fork"), "'start_method'"),
            (lambda: CloudPoolExecutor(1, config={"local": {"start_methd": "fork"}}), "'start_method'"),
            (lambda: CloudPoolExecutor(1, config={"timeout": "five"}), None),
        ]
        for call, closest in cases:
            with self.subTest(closest=closest):
                with self.assertRaises(ConfigError) as cm:
                    call()
                self.assertIn("keyword argument", str(cm.exception))
                if closest:
                    self.assertIn(f"did you mean {closest}?", str(cm.exception))

    def test_bad_section_values_name_their_source(self) -> None:
        with environ(CLOUDPOOL_S3__MAX_ATTEMPTS="two"):
            for name, call in (("Storage", lambda: Storage("s3://b/x/")),
                               ("objects", lambda: objects("s3://b/x/")),
                               ("CloudPoolExecutor", lambda: CloudPoolExecutor(1, storage="s3://b/x"))):
                with self.subTest(entry_point=name):
                    with self.assertRaisesRegex(ConfigError, r"'max_attempts' must be an integer >= 1, not 'two' "
                                                r"\(s3.max_attempts from environment variable "
                                                r"CLOUDPOOL_S3__MAX_ATTEMPTS\)"):
                        call()
            code, _out, err = self.run_cli("storage", "ls", "s3://b/x/")
            self.assertEqual(code, 1)
            self.assertIn("CLOUDPOOL_S3__MAX_ATTEMPTS", err)
        self.write("backend: local\nlocal:\n  start_method: sideways\n")
        with self.assertRaisesRegex(ConfigError, rf"'sideways'.*local.start_method from config file "
                                                 rf"{self.path}, line 3"):
            CloudPoolExecutor(1)
        with self.assertRaisesRegex(ConfigError, r"not 0 \(s3.max_attempts from keyword argument"):
            Storage("s3://b/x/", max_attempts=0)
        with self.assertRaisesRegex(ConfigError, r"not 0 \(s3.max_attempts from keyword argument"):
            objects("s3://b/x/", storage_options={"max_attempts": 0})

    def test_pool_and_lithops_refuse_too(self) -> None:
        from cloudpool.compat import lithops
        from cloudpool.multiprocessing import Pool

        with environ(CLOUDPOOL_S3__ENDPOINT="http://x"):
            for make in (lambda: Pool(1), lambda: lithops.FunctionExecutor()):
                with self.assertRaisesRegex(ConfigError, r"CLOUDPOOL_S3__ENDPOINT.*did you mean 'endpoint_url'"):
                    make()

    def run_cli(self, *argv: str) -> tuple:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_cli_config_refuses_with_the_same_message(self) -> None:
        with environ(CLOUDPOOL_S3__ENDPOINT="http://x"):
            code, out, err = self.run_cli("config")
        self.assertEqual(code, 1, out)
        self.assertTrue(err.startswith("cloudpool: error: unknown option(s) ['endpoint'] for s3:// storage"), err)
        self.assertIn("CLOUDPOOL_S3__ENDPOINT", err)
        self.assertIn("did you mean 'endpoint_url'?", err)
        with environ(CLOUDPOOL_TIMEOUT="five"):
            code, _out, err = self.run_cli("storage", "ls", "/tmp")
        self.assertEqual(code, 1)
        self.assertIn("cloudpool: error: timeout must be", err)
        self.assertIn("CLOUDPOOL_TIMEOUT", err)
        self.write("s3:\n  endpoint: http://x\n")
        code, _out, err = self.run_cli("config")
        self.assertEqual(code, 1)
        self.assertIn(f"{self.path}, line 2", err)

    def test_valid_configuration_still_loads(self) -> None:
        self.write("s3:\n  endpoint_url: http://127.0.0.1:9\nredis:\n  url: redis://127.0.0.1:1/0\n")
        with environ(CLOUDPOOL_LOCAL__START_METHOD="spawn", CLOUDPOOL_GS__PROJECT="p"):
            config = load_config()
        self.assertEqual(config.section("s3"), {"endpoint_url": "http://127.0.0.1:9"})
        self.assertEqual(config.section("local"), {"start_method": "spawn"})
        self.assertEqual(config.sources["gs.project"], "environment (CLOUDPOOL_*)")


class LocalCloudConfigTest(unittest.TestCase):
    def test_cloud_sections_are_accepted_and_checked_in_a_local_cloud(self) -> None:
        from cloudpool.testing import local_cloud

        with environ(CLOUDPOOL_S3__ENDPOINT_URL="http://127.0.0.1:9", CLOUDPOOL_CONFIG=os.devnull), local_cloud():
            s = Storage("s3://bucket/x/")  # the stand-in accepts the real store's options
            s.put("k", b"v")
            self.assertEqual([p.read() for p in objects("s3://bucket/x/")], [b"v"])
            with self.assertRaisesRegex(ConfigError, "did you mean 'endpoint_url'"):
                Storage("s3://bucket/x/", endpoint="http://x")
        # Leaving the local cloud puts the declarations back.
        self.assertIn("endpoint_url", storages.declared("s3").options)

    def test_a_storage_made_before_the_local_cloud_follows_it(self) -> None:
        from cloudpool.testing import local_cloud

        with environ(CLOUDPOOL_CONFIG=os.devnull):
            s = Storage("s3://bucket/x/")  # checked (and built) here, outside the cloud
            with local_cloud():
                s.put("k", b"v")
                self.assertEqual(list(s.list()), ["k"])


class DeclaredOptionsTest(unittest.TestCase):
    def test_declarations_match_the_classes(self) -> None:
        from cloudpool.compute import backends

        for registry in (storages, backends):
            for name in registry.names():
                with self.subTest(name=name):
                    declared = registry.declared(name)
                    cls = registry.get(name)
                    self.assertEqual(declared.options, cls.option_names)
                    self.assertEqual(declared.secrets, getattr(cls, "secret_option_names", frozenset()))

    def test_checking_options_imports_no_sdk(self) -> None:
        code = ("import sys; from cloudpool.config import load_config; "
                "c = load_config(); "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('boto3', 'botocore', 'kubernetes', 'google', 'azure', 'ibm_boto3')))")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPOOL_")}
        env.update(PYTHONPATH=ROOT, CLOUDPOOL_CONFIG=os.devnull, CLOUDPOOL_S3__ENDPOINT_URL="http://x",
                   CLOUDPOOL_AWS_LAMBDA__MEMORY_MB="2048", CLOUDPOOL_KUBERNETES__NAMESPACE="n",
                   CLOUDPOOL_GS__PROJECT="p", CLOUDPOOL_AZ__MAX_ATTEMPTS="2", CLOUDPOOL_COS__REGION="r")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "[]")


if __name__ == "__main__":
    unittest.main()
