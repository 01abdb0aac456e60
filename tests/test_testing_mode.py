"""Tests of ``cloudpool.testing``: the local cloud as a context manager, decorator and mixin.

The sample user project (``tests/sample_user_project``: a word count written for AWS
Lambda and S3, with its own unittest module) runs in a fresh interpreter with every
``AWS_*`` variable removed, an empty home directory and every outgoing TCP/UDP
connection refused, and must pass. The direct tests show what is redirected (storage
URLs of four schemes, cloud backends, forked and spawned workers, subprocesses), that
everything is restored on exit, and -- against the moto S3 server -- that the same code
fails without the redirection, so the passing tests mean something.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import unittest
from unittest import mock

import cloudpool.testing
from cloudpool import CloudPoolExecutor, Storage, _redirect, objects
from cloudpool.compute import backends
from cloudpool.storage import clear_cache, storages
from cloudpool.testing import LocalCloudMixin, LocalCloudTestCase, local_cloud
from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "sample_user_project")
if SAMPLE not in sys.path:
    sys.path.insert(0, SAMPLE)

import wordcount_app  # noqa: E402  (the sample user package, importable from its folder)

#: Installed in the sample's interpreter: any attempt to reach the network fails the run.
_NO_NETWORK = '''
import socket
_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex
def _refuse(self, address, _real):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError(f"network access attempted from a local-cloud test: {address!r}")
    return _real(self, address)
socket.socket.connect = lambda self, address: _refuse(self, address, _real_connect)
socket.socket.connect_ex = lambda self, address: _refuse(self, address, _real_connect_ex)
'''


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CLOUDPOOL_", "GOOGLE_", "AZURE_", "STORAGE_EMULATOR"))
           and k != _redirect.ENV_VAR}
    env.update(extra)
    return env


def _square(x: int) -> int:
    return x * x


def _start_method() -> str:
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=True) or "fork"


def _write_from_worker(url: str) -> str:
    Storage(url.rsplit("/", 1)[0]).put(url.rsplit("/", 1)[1], f"written by {os.getpid()}")
    return url


def _worker_sees_redirect(_: int) -> bool:
    return _redirect.active() is not None and os.environ.get(_redirect.ENV_VAR) is not None


def _assert_no_redirect(test: unittest.TestCase) -> None:
    test.assertIsNone(_redirect.active())
    test.assertNotIn(_redirect.ENV_VAR, os.environ)
    for scheme in _redirect.CLOUD_SCHEMES:
        test.assertFalse(storages._known[scheme][0].startswith("cloudpool._redirect"), scheme)
        test.assertNotIn("_redirect", getattr(storages._loaded.get(scheme), "__module__", ""))
    for name in backends.names():
        test.assertFalse(backends._known.get(name, ("",))[0].startswith("cloudpool._redirect"), name)


class SampleProjectTest(unittest.TestCase):
    def test_sample_project_passes_with_no_credentials_and_no_network(self):
        with tempfile.TemporaryDirectory() as tmp:
            home = os.path.join(tmp, "home")
            site = os.path.join(tmp, "site")
            os.makedirs(home)
            os.makedirs(site)
            with open(os.path.join(site, "sitecustomize.py"), "w") as f:
                f.write(_NO_NETWORK)
            env = _clean_env(HOME=home, PYTHONPATH=site, SAMPLE_STRICT="1")
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "tests/sample_user_project", "-q",
                 "-p", "no:cacheprovider"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        report = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 0, report)
        match = re.search(r"(\d+) passed", report)
        self.assertIsNotNone(match, report)
        with open(os.path.join(SAMPLE, "test_sample_wordcount.py"), encoding="utf-8") as f:
            defined = len(re.findall(r"^    def test_", f.read(), re.MULTILINE))
        self.assertEqual(int(match.group(1)), defined, report)  # every test ran, none skipped
        self.assertNotIn("failed", report)

    def test_network_guard_is_real(self):
        # The guard above must actually refuse connections, or the test above proves little.
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "sitecustomize.py"), "w") as f:
                f.write(_NO_NETWORK)
            proc = subprocess.run(
                [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9), 1)"],
                env=_clean_env(PYTHONPATH=tmp), capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("network access attempted", proc.stderr)


class WithoutRedirectionTest(unittest.TestCase):
    """The same user code against a real (emulated) S3 without the bucket: it fails."""

    def test_same_code_fails_without_the_local_cloud_and_works_with_it(self):
        moto = servers.moto_s3()
        with mock.patch.dict(os.environ, moto.env):
            clear_cache()
            try:
                with self.assertRaises(FileNotFoundError) as caught:
                    list(objects(wordcount_app.CORPUS))
                self.assertIn("corpus-bucket", str(caught.exception))
                with self.assertRaises(FileNotFoundError):
                    Storage(wordcount_app.SUMMARY_URL).put("wordcount.json", "{}")
                with local_cloud() as cloud:
                    cloud.put(wordcount_app.CORPUS + "a.txt", "same code, local cloud\n")
                    self.assertEqual(wordcount_app.word_count(),
                                     {"same": 1, "code": 1, "local": 1, "cloud": 1})
                    self.assertIn(b'"words": 4', cloud.get(wordcount_app.SUMMARY_URL + "wordcount.json"))
                # And once the local cloud is gone, the code fails again.
                with self.assertRaises(FileNotFoundError):
                    list(objects(wordcount_app.CORPUS))
            finally:
                clear_cache()


class ContextManagerTest(unittest.TestCase):
    def tearDown(self):
        _assert_no_redirect(self)

    def test_every_scheme_is_a_local_directory_with_cloud_urls(self):
        with local_cloud() as cloud:
            for url in ("s3://b1/k/a.txt", "gs://b2/a.txt", "az://container/dir/a.txt", "cos://b3/a.txt"):
                self.assertEqual(cloud.put(url, url), url)
                self.assertEqual(cloud.get(url), url.encode())
                self.assertEqual(Storage(url.rsplit("/", 1)[0]).get("a.txt"), url.encode())
                self.assertTrue(cloud.path(url).startswith(cloud.root))
                self.assertTrue(os.path.isfile(cloud.path(url)))
            self.assertEqual(cloud.list(), ["s3://b1/k/a.txt", "gs://b2/a.txt",
                                            "az://container/dir/a.txt", "cos://b3/a.txt"])
            self.assertEqual(cloud.list("s3://b1/"), ["s3://b1/k/a.txt"])
            parts = list(objects("gs://b2/", chunks=1))
            self.assertEqual([p.url for p in parts], ["gs://b2/a.txt"])
            with self.assertRaises(FileNotFoundError) as caught:
                cloud.get("s3://b1/missing")
            self.assertIn("s3://b1/missing", str(caught.exception))
            root = cloud.root
        self.assertFalse(os.path.exists(root))

    def test_cloud_backends_run_on_capped_local_workers(self):
        with local_cloud(max_workers=2):
            for name in ("aws_lambda", "kubernetes", "knative"):
                with CloudPoolExecutor(500, backend=name, storage=f"s3://jobs/{name}") as ex:
                    self.assertEqual(ex.max_workers, 2)
                    self.assertEqual(list(ex.map(_square, range(20))), [x * x for x in range(20)])
                    description = ex._backend.describe()
                    self.assertEqual(description["stands_in_for"], name)
                    self.assertEqual(description["backend"], "local")

    def test_forked_and_spawned_workers_and_subprocesses_see_the_same_cloud(self):
        for method in ("fork", "spawn"):
            with local_cloud(start_method=method) as cloud:
                with CloudPoolExecutor(2, backend="aws_lambda", storage="s3://jobs/x") as ex:
                    self.assertEqual(ex._backend.describe()["start_method"], method)
                    self.assertEqual(list(ex.map(_worker_sees_redirect, range(2))), [True, True])
                    url = f"az://out/{method}.txt"
                    self.assertEqual(ex.submit(_write_from_worker, url).result(timeout=60), url)
                self.assertTrue(cloud.get(url).startswith(b"written by "))
        with local_cloud() as cloud:
            code = ("from cloudpool import Storage; import sys; "
                    "sys.stdout.write(Storage('gs://shared/').get('note').decode())")
            cloud.put("gs://shared/note", "seen from a subprocess")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 timeout=60, env=_clean_env(**{_redirect.ENV_VAR: os.environ[_redirect.ENV_VAR]}))
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(out.stdout, "seen from a subprocess")

    def test_configured_local_start_method_applies_to_stand_in_backends(self):
        # local_cloud(start_method=None) means "the local backend's": its configured one.
        for method in ("spawn", "fork"):
            with mock.patch.dict(os.environ, {"CLOUDPOOL_LOCAL__START_METHOD": method}), local_cloud():
                with CloudPoolExecutor(1, backend="aws_lambda", storage="s3://jobs/m") as ex:
                    self.assertEqual(ex._backend.describe()["start_method"], method)
                    self.assertEqual(ex.submit(_start_method).result(timeout=60), method)

    def test_pool_written_for_a_cloud_backend(self):
        from cloudpool.multiprocessing import Pool

        with local_cloud():
            with Pool(16, backend="aws_lambda", storage="s3://jobs/pool") as pool:
                self.assertEqual(pool.map(_square, range(50), chunksize=5), [x * x for x in range(50)])
                self.assertEqual(pool.apply(_square, (7,)), 49)

    def test_only_listed_buckets_exist_when_buckets_are_given(self):
        with local_cloud(buckets=["s3://data", "gs://out"]) as cloud:
            cloud.put("s3://data/a", b"1")
            with self.assertRaises(FileNotFoundError) as caught:
                cloud.put("s3://other/a", b"1")
            self.assertIn("'other'", str(caught.exception))
            self.assertIn("local_cloud(buckets=", str(caught.exception))
            with self.assertRaises(FileNotFoundError):
                CloudPoolExecutor(backend="aws_lambda", storage="s3://typo-bucket/jobs")
            with CloudPoolExecutor(backend="aws_lambda", storage="gs://out/jobs") as ex:
                self.assertEqual(ex.submit(_square, 3).result(timeout=60), 9)
        with self.assertRaises(ValueError):
            local_cloud(buckets=["s3://data/with/key"])
        with self.assertRaises(ValueError):
            local_cloud(buckets=["file:///tmp"])

    def test_cloud_options_are_checked_by_name_and_ignored(self):
        with local_cloud():
            store = Storage("s3://b/", endpoint_url="http://nowhere.invalid", region="eu-west-1")
            store.put("k", b"v")  # no network: the endpoint is never used
            self.assertEqual(store.get("k"), b"v")
            with self.assertRaises(ValueError) as caught:
                Storage("s3://b/", endpiont_url="http://x").put("k", b"v")
            self.assertIn("endpiont_url", str(caught.exception))

    def test_nested_clouds_restore_the_outer_one(self):
        with local_cloud() as outer:
            outer.put("s3://b/where", "outer")
            with local_cloud() as inner:
                self.assertNotEqual(inner.root, outer.root)
                with self.assertRaises(FileNotFoundError):
                    inner.get("s3://b/where")
                inner.put("s3://b/where", "inner")
            self.assertEqual(Storage("s3://b/").get("where"), b"outer")
            self.assertEqual(cloudpool.testing.get("s3://b/where"), b"outer")

    def test_restored_after_an_exception(self):
        with self.assertRaises(KeyError):
            with local_cloud():
                raise KeyError("boom")
        # tearDown checks that nothing is left redirected

    def test_helpers_explain_misuse(self):
        with self.assertRaises(RuntimeError) as caught:
            cloudpool.testing.put("s3://b/k", b"x")
        self.assertIn("local_cloud()", str(caught.exception))
        cloud = local_cloud()
        with self.assertRaises(RuntimeError):
            cloud.get("s3://b/k")
        with cloud:
            with self.assertRaises(ValueError):
                cloud.put("file:///tmp/x", b"x")
            with self.assertRaises(ValueError):
                cloud.put("s3://b/", b"x")
            with self.assertRaises(TypeError):
                cloud.put("s3://b/k", 42)
            with self.assertRaises(RuntimeError):
                cloud.__enter__()
        with self.assertRaises(ValueError):
            local_cloud(max_workers=0)

    def test_put_tree(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "sub"))
            for rel in ("a.txt", "sub/b.txt"):
                with open(os.path.join(tmp, rel), "w") as f:
                    f.write(rel)
            with local_cloud() as cloud:
                urls = cloud.put_tree(tmp, "cos://b/tree")
                self.assertEqual(urls, ["cos://b/tree/a.txt", "cos://b/tree/sub/b.txt"])
                self.assertEqual(cloud.get("cos://b/tree/sub/b.txt"), b"sub/b.txt")


class DecoratorTest(unittest.TestCase):
    def tearDown(self):
        _assert_no_redirect(self)

    def test_bare_and_configured_decorators(self):
        roots = []

        @local_cloud
        def bare(n):
            roots.append(cloudpool.testing.current().root)
            cloudpool.testing.put("s3://b/n", str(n))
            with CloudPoolExecutor(backend="aws_lambda", storage="s3://b/jobs") as ex:
                return ex.submit(_square, n).result(timeout=60)

        @local_cloud(max_workers=1, buckets=["s3://only"])
        def configured():
            with self.assertRaises(FileNotFoundError):
                cloudpool.testing.put("s3://b/n", "x")
            return cloudpool.testing.current().max_workers

        self.assertEqual(bare(3), 9)
        self.assertEqual(bare(4), 16)
        self.assertEqual(len(set(roots)), 2)  # a fresh cloud per call
        self.assertFalse(any(os.path.exists(r) for r in roots))
        self.assertEqual(configured(), 1)
        with self.assertRaises(TypeError):
            local_cloud("not a function")

    @local_cloud
    def test_decorated_test_method(self):
        self.assertIsNotNone(_redirect.active())
        with CloudPoolExecutor(backend="kubernetes", storage="gs://b/jobs") as ex:
            self.assertEqual(ex.submit(_square, 5).result(timeout=60), 25)


class MixinTest(unittest.TestCase):
    def test_each_test_gets_a_fresh_cloud_and_nothing_leaks(self):
        seen = {}

        class Inner(LocalCloudMixin, unittest.TestCase):
            local_cloud_buckets = ["s3://corpus-bucket"]

            def setUp(self):
                super().setUp()
                # The cloud is active before the test's own setUp body runs.
                self.cloud.put("s3://corpus-bucket/texts/a.txt", "alpha beta\n")

            def test_1_writes(self):
                seen["root1"] = self.cloud.root
                self.assertEqual(wordcount_app.word_count(), {"alpha": 1, "beta": 1})
                self.cloud.put("s3://corpus-bucket/texts/b.txt", "gamma\n")

            def test_2_fresh(self):
                seen["root2"] = self.cloud.root
                self.assertEqual(self.cloud.list("s3://corpus-bucket/texts/"),
                                 ["s3://corpus-bucket/texts/a.txt"])

            def test_3_fails_on_purpose(self):
                self.assertEqual(wordcount_app.word_count(), {"wrong": 1})

        class NextTestWithoutCloud(unittest.TestCase):
            def test_nothing_redirected(self):
                _assert_no_redirect(self)
                self.assertEqual(storages.get("s3").__name__, "S3Storage")
                seen["next"] = True

        loader = unittest.defaultTestLoader
        suite = unittest.TestSuite([loader.loadTestsFromTestCase(Inner),
                                    loader.loadTestsFromTestCase(NextTestWithoutCloud)])
        result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
        self.assertEqual(result.testsRun, 4)
        self.assertTrue(seen["next"])
        self.assertEqual(result.errors, [])
        # The assertions inside really run: the wrong expectation is reported as a failure.
        self.assertEqual([str(t).split()[0] for t, _tb in result.failures], ["test_3_fails_on_purpose"])
        self.assertNotEqual(seen["root1"], seen["root2"])
        self.assertFalse(os.path.exists(seen["root1"]))
        _assert_no_redirect(self)

    def test_ready_made_test_case_class(self):
        class Inner(LocalCloudTestCase):
            def test_it(self):
                with CloudPoolExecutor(backend="aws_lambda", storage="s3://b/j") as ex:
                    self.assertEqual(ex.submit(_square, 6).result(timeout=60), 36)

        result = unittest.TextTestRunner(stream=io.StringIO()).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(Inner))
        self.assertTrue(result.wasSuccessful(), result.failures + result.errors)
        _assert_no_redirect(self)


class ReadmeExampleTest(unittest.TestCase):
    def test_readme_example_runs(self):
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        section = readme.split("## Testing your code without a cloud", 1)
        self.assertEqual(len(section), 2, "README lacks its 'Testing your code without a cloud' section")
        blocks = re.findall(r"```python\n(.*?)```", section[1].split("\n## ", 1)[0], re.DOTALL)
        self.assertTrue(blocks, "no python example in the README section")
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for block in blocks:
                first = block.splitlines()[0]
                name = first.lstrip("# ").strip() if first.startswith("# ") and first.strip().endswith(".py") else None
                self.assertIsNotNone(name, f"each README example block starts with '# <file>.py':\n{block}")
                files[name] = textwrap.dedent(block)
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(files[name])
            tests = [n for n in files if n.startswith("test_")]
            self.assertTrue(tests)
            proc = subprocess.run([sys.executable, "-m", "unittest", "-v", *[n[:-3] for n in tests]],
                                  cwd=tmp, env=_clean_env(HOME=tmp), capture_output=True, text=True,
                                  timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertRegex(proc.stderr, r"Ran [1-9]\d* tests?")
        self.assertIn("OK", proc.stderr)


if __name__ == "__main__":
    unittest.main()
