"""Bad inputs: each gives a clear error of a stdlib type, naming the problem and the fix,
raised as early as possible, and none of them hangs (issue 7).

"As early as possible" means: a bad setting, URL, bucket or credential fails the
``CloudPoolExecutor(...)`` constructor; a bad ``map`` argument fails the ``map`` call
itself; only what cannot be known before a call runs (its result) fails its future.
Unpicklable functions and arguments fail their futures too, as with the stdlib's
``ProcessPoolExecutor`` (which pickles in a feeder thread): a drop-in must not turn
``submit`` into a raising call. Every case is timed: a clear error that takes a minute
of retries to arrive is not a clear error.

Servers are real: moto for a missing bucket, SeaweedFS (which checks keys; moto accepts
any unless started with IAM enforcement, ``INITIAL_NO_AUTH_ACTION_COUNT``, which would
need its own server and IAM users) and Azurite for wrong credentials.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import uuid

import pytest

from cloudpool import CloudPoolExecutor
from cloudpool.errors import ConfigError
from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds within which every bad input must be reported.
FAST = 10.0


def square(x):
    return x * x


def return_lock(_):
    return threading.Lock()


def notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


class TimedMixin:
    def assertFailsFast(self, exc_type, pattern, fn, *args, **kwargs):
        """``fn`` raises ``exc_type`` matching ``pattern`` within ``FAST`` seconds; returns it."""
        start = time.monotonic()
        with self.assertRaises(exc_type) as cm:
            fn(*args, **kwargs)
        self.assertLess(time.monotonic() - start, FAST, f"{exc_type.__name__} took too long")
        self.assertRegex(str(cm.exception), pattern)
        return cm.exception


class LocalExecutorMixin(TimedMixin):
    def setUp(self):
        super().setUp()
        self._tmp = tempfile.TemporaryDirectory(prefix="cloudpool-bad-")
        self.addCleanup(self._tmp.cleanup)

    def executor(self, *args, **kwargs):
        kwargs.setdefault("storage", "file://" + self._tmp.name)
        return CloudPoolExecutor(*args, **kwargs)


# ============================================================================ pickling
class UnpicklableTest(LocalExecutorMixin, unittest.TestCase):
    """The three places pickling can fail: the function, an argument, a result.

    Each fails only its own future, with the pickler's own ``TypeError`` (which names
    the type that cannot be pickled), plus a note saying which part of the call it was
    and what to do instead. The executor stays usable.
    """

    def test_lambda_closing_over_a_lock(self):
        lock = threading.Lock()
        with self.executor(1) as ex:
            f = ex.submit(lambda: lock.locked())
            with self.assertRaisesRegex(TypeError, "_thread.lock") as cm:
                f.result(timeout=FAST)
            self.assertRegex(notes(cm.exception), "function .* could not be pickled")
            # ... and the fix: what to do instead.
            self.assertRegex(notes(cm.exception), r"(?i)module level|instead|inside the function")
            self.assertEqual(ex.submit(square, 3).result(timeout=FAST), 9)

    def test_unpicklable_argument(self):
        with self.executor(1) as ex:
            f = ex.submit(square, threading.Lock())
            with self.assertRaisesRegex(TypeError, "_thread.lock") as cm:
                f.result(timeout=FAST)
            self.assertRegex(notes(cm.exception), "arguments could not be pickled")
            self.assertRegex(notes(cm.exception), r"(?i)instead|pass .* that")
            self.assertEqual(ex.submit(square, 4).result(timeout=FAST), 16)

    def test_unpicklable_result(self):
        with self.executor(1) as ex:
            f = ex.submit(return_lock, None)
            with self.assertRaisesRegex(TypeError, "_thread.lock") as cm:
                f.result(timeout=FAST)
            self.assertRegex(notes(cm.exception), "could not be pickled back")
            self.assertRegex(notes(cm.exception), "return plain data instead")
            self.assertEqual(ex.submit(square, 5).result(timeout=FAST), 25)


# ============================================================================ map arguments
class MapArgumentsTest(LocalExecutorMixin, unittest.TestCase):
    def test_non_iterable(self):
        with self.executor(1) as ex:
            for bad in (42, None, square):
                with self.subTest(bad=bad):
                    self.assertFailsFast(TypeError, "map\\(\\) arguments must be iterable; got a",
                                         ex.map, square, bad)
            # one good and one bad iterable: still refused before anything runs
            self.assertFailsFast(TypeError, "must be iterable", ex.map, square, [1, 2], 3)

    def test_chunksize(self):
        with self.executor(1) as ex:
            for bad in (0, -1, -100):
                with self.subTest(chunksize=bad):
                    self.assertFailsFast(ValueError, "chunksize must be >= 1", ex.map, square, [1], chunksize=bad)
            for bad in (1.5, "2", True, None):
                with self.subTest(chunksize=bad):
                    self.assertFailsFast(TypeError, "chunksize must be an int", ex.map, square, [1], chunksize=bad)
            self.assertEqual(list(ex.map(square, range(5), chunksize=2)), [0, 1, 4, 9, 16])

    def test_not_callable(self):
        with self.executor(1) as ex:
            self.assertFailsFast(TypeError, "must be callable", ex.map, 42, [1])
            self.assertFailsFast(TypeError, "must be callable", ex.submit, "square", 1)


# ============================================================================ storage URLs and buckets
class StorageURLTest(TimedMixin, unittest.TestCase):
    def test_malformed_urls_name_the_url_and_the_form_to_use(self):
        cases = {
            "s3://": r"'s3://'.*names no bucket; write s3://BUCKET/PREFIX",
            "s3:///prefix": r"names no bucket; write s3://BUCKET/PREFIX",
            "gs://": r"names no bucket; write gs://BUCKET/PREFIX",
            "file://host/path": r"use file:///absolute/path",
            "1nv@lid://b/k": r"'1nv@lid' is not a URL scheme",
            "gopher://bucket/key": r"unknown storage 'gopher'; known: .*s3",
        }
        for url, pattern in cases.items():
            with self.subTest(url=url):
                self.assertFailsFast(ValueError, pattern, CloudPoolExecutor, 1, storage=url)

    def test_read_only_store_is_refused(self):
        self.assertFailsFast(ValueError, "read-only; the executor needs a writable store",
                             CloudPoolExecutor, 1, storage="http://127.0.0.1:9/data")

    def test_scheme_typos_are_not_taken_for_local_paths(self):
        # "s3:/bucket" and "s3//bucket" are typos of s3://bucket. Taken as relative local
        # paths they would silently put job data in ./s3:/bucket under the current
        # directory -- on a cloud backend, where workers cannot see it.
        for url in ("s3:/bucket/prefix", "s3//bucket/prefix", "gs:/bucket/prefix", "az:container/x"):
            with self.subTest(url=url):
                self.assertFailsFast(ValueError, re.escape(repr(url)) + r".*(scheme|://)",
                                     CloudPoolExecutor, 1, storage=url)


class MissingBucketTest(TimedMixin, unittest.TestCase):
    def test_nonexistent_bucket_fails_the_constructor(self):
        moto = servers.moto_s3()
        bucket = "cp-absent-" + uuid.uuid4().hex[:8]
        exc = self.assertFailsFast(
            FileNotFoundError, f"bucket '{bucket}' does not exist at {re.escape(moto.endpoint_url)}; "
                               f"create it or fix the storage URL",
            CloudPoolExecutor, 1, storage=f"s3://{bucket}/jobs",
            config={"s3": {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION,
                           "aws_access_key_id": servers.S3_ACCESS_KEY,
                           "aws_secret_access_key": servers.S3_SECRET_KEY}})
        self.assertIn(f"s3://{bucket}/", str(exc))


class WrongCredentialsTest(TimedMixin, unittest.TestCase):
    def test_seaweedfs_refuses_a_wrong_secret(self):
        sw = servers.seaweedfs()
        bucket = "cp-creds-" + uuid.uuid4().hex[:8]
        import boto3

        boto3.client("s3", endpoint_url=sw.endpoint_url, region_name=servers.S3_REGION,
                     aws_access_key_id=servers.S3_ACCESS_KEY,
                     aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=bucket)
        for key, secret in (("testing", "not-the-secret"), ("nobody", "testing")):
            with self.subTest(key=key):
                exc = self.assertFailsFast(
                    PermissionError, r"refused .*check the credentials",
                    CloudPoolExecutor, 1, storage=f"s3://{bucket}/jobs",
                    config={"s3": {"endpoint_url": sw.endpoint_url, "region": servers.S3_REGION,
                                   "aws_access_key_id": key, "aws_secret_access_key": secret}})
                self.assertIn(f"s3://{bucket}/", str(exc))
                self.assertNotIn(secret if secret != "testing" else "\0", str(exc))

    def test_azurite_refuses_a_wrong_account_key(self):
        az = servers.azurite()
        wrong = az.connection_string.replace(servers.AZURITE_KEY, "d3Jvbmcta2V5LXdyb25nLWtleQ==")
        exc = self.assertFailsFast(PermissionError, r"refused .*account key",
                                   CloudPoolExecutor, 1, storage=f"az://cp-creds-{uuid.uuid4().hex[:8]}/jobs",
                                   config={"az": {"connection_string": wrong}})
        self.assertNotIn("d3Jvbmcta2V5", str(exc))


# ============================================================================ configuration
class ConfigFileTest(TimedMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        fd, self.path = tempfile.mkstemp(suffix=".yaml", prefix="cloudpool-config-")
        os.close(fd)
        self.addCleanup(os.unlink, self.path)
        saved = os.environ.get("CLOUDPOOL_CONFIG")
        os.environ["CLOUDPOOL_CONFIG"] = self.path
        self.addCleanup(lambda: os.environ.__setitem__("CLOUDPOOL_CONFIG", saved) if saved is not None
                        else os.environ.pop("CLOUDPOOL_CONFIG", None))

    def check(self, text, exc_type, pattern):
        with open(self.path, "w") as f:
            f.write(textwrap.dedent(text))
        exc = self.assertFailsFast(exc_type, pattern, CloudPoolExecutor, 1)
        return exc

    def test_typo_in_a_setting_names_file_and_suggestion(self):
        exc = self.check("timout: 30\n", ConfigError, r"unknown setting 'timout'.*did you mean 'timeout'")
        self.assertIn(self.path, str(exc))

    def test_typo_in_a_section_name(self):
        self.check("s4:\n  region: eu-west-1\n", ConfigError, r"'s4'.*did you mean 's3'")

    def test_typo_in_a_storage_option_lists_the_valid_ones(self):
        self.check("storage: s3://bucket/x\ns3:\n  endpoint: http://127.0.0.1:9\n", ValueError,
                   r"unknown option\(s\) \['endpoint'\] for s3:// storage, from config file .*, line 3 "
                   r"\(did you mean 'endpoint_url'\?\); accepted: .*'endpoint_url'")

    def test_wrong_value_type(self):
        self.check("max_workers: two\n", ConfigError, r"max_workers must be an integer >= 1, not 'two'")
        self.check("timeout: -5\n", ConfigError, r"timeout must be a positive number")

    def test_bad_retry_option(self):
        self.check("storage: s3://bucket/x\ns3:\n  max_attempts: 0\n", ValueError,
                   r"option 'max_attempts' must be an integer >= 1, not 0")

    def test_invalid_yaml_names_the_file(self):
        exc = self.check("backend: local\n  storage: [unclosed\n", ConfigError, "is not valid YAML")
        self.assertIn(self.path, str(exc))


# ============================================================================ a 1 GB argument
_BIG_ARGUMENT_CHILD = """
import json, resource, sys, tempfile, time
from cloudpool import CloudPoolExecutor

def nbytes(b):
    return len(b)

arg = bytes(1 << 30)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
with tempfile.TemporaryDirectory() as d:
    with CloudPoolExecutor(1, storage="file://" + d) as ex:
        result = ex.submit(nbytes, arg).result(timeout=300)
seconds = time.monotonic() - start
growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"result": result, "seconds": seconds, "growth_mb": growth_kb / 1024}))
"""


@pytest.mark.slow
class BigArgumentTest(unittest.TestCase):
    """What is right for a 1 GB argument: the correct result, in bounded time and memory.

    ``ProcessPoolExecutor`` accepts it, and cloudpool is its drop-in; the storage
    protocol ships big arguments as an object of their own, so nothing but memory limits
    it. So no error: the call runs, and the client holds at most one extra copy (the
    pickled argument on its way to storage), never an unbounded pile of them. The child
    process measures its own peak RSS growth (``ru_maxrss``) around the call.
    """

    def test_one_gigabyte_argument_round_trips_with_one_extra_copy(self):
        import json

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", _BIG_ARGUMENT_CHILD], capture_output=True, text=True,
                              timeout=300, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual(out["result"], 1 << 30)
        self.assertLess(out["seconds"], 120)
        self.assertLess(out["growth_mb"], 1.5 * 1024, out)  # the argument's pickle, not more


if __name__ == "__main__":
    unittest.main()
