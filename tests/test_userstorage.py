"""Tests of ``cloudpool.Storage``, the user-facing object-store API.

One contract (``StorageContract``) runs on local disk and on S3 (the moto server from
``tests/servers.py``), through the same storage registry the executor uses.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import unittest
import uuid
from typing import Any, Dict
from unittest import mock

import cloudpool
from cloudpool.storage import clear_cache, storages
from cloudpool.storage.local import LocalStorage
from cloudpool.userstorage import Storage


class StorageContract:
    """Subclasses set ``url`` (a fresh prefix URL per test) and ``options``."""

    url: str
    options: Dict[str, Any] = {}

    def store(self, url: str = "") -> Storage:
        return Storage(url or self.url, **self.options)

    def test_put_get_roundtrip_and_ranges(self) -> None:
        s = self.store()
        s.put("a/b.bin", b"0123456789")
        s.put("text.txt", "héllo")  # str is stored as UTF-8
        s.put("view.bin", memoryview(b"xyz"))
        self.assertEqual(s.get("a/b.bin"), b"0123456789")
        self.assertEqual(s.get("a/b.bin", 2, 5), b"234")
        self.assertEqual(s.get("a/b.bin", start=7), b"789")
        self.assertEqual(s.get("a/b.bin", end=3), b"012")
        self.assertEqual(s.get("a/b.bin", 8, 100), b"89")  # clipped at the end
        self.assertEqual(s.get("text.txt"), "héllo".encode())
        self.assertEqual(s.get("view.bin"), b"xyz")
        s.put("a/b.bin", b"new")  # replaces
        self.assertEqual(s.get("a/b.bin"), b"new")
        info = s.info("a/b.bin")
        self.assertEqual((info.key, info.size), ("a/b.bin", 3))
        self.assertTrue(s.exists("a/b.bin"))
        self.assertFalse(s.exists("a/nope.bin"))

    def test_missing_key_raises_file_not_found(self) -> None:
        s = self.store()
        with self.assertRaises(FileNotFoundError):
            s.get("does/not/exist")
        with self.assertRaises(FileNotFoundError):
            s.info("does/not/exist")

    def test_list_is_relative_sorted_and_filtered(self) -> None:
        s = self.store()
        for key in ("counts/2.json", "counts/10.json", "counts/1.json", "other/x", "top"):
            s.put(key, b"{}")
        self.assertEqual(list(s.list()),
                         ["counts/1.json", "counts/10.json", "counts/2.json", "other/x", "top"])
        self.assertEqual(list(s.list("counts/")), ["counts/1.json", "counts/10.json", "counts/2.json"])
        self.assertEqual(list(s.list("counts/1")), ["counts/1.json", "counts/10.json"])
        self.assertEqual(list(s.list("nothing/")), [])
        # Keys are relative to the Storage's own prefix, whichever way it was written.
        sub = self.store(self.url.rstrip("/") + "/counts")
        self.assertEqual(list(sub.list()), ["1.json", "10.json", "2.json"])
        self.assertEqual(sub.get("1.json"), b"{}")
        self.assertEqual(sub, self.store(self.url.rstrip("/") + "/counts/"))
        with self.assertRaises(ValueError):
            list(s.list("/abs"))

    def test_delete_one_and_many(self) -> None:
        s = self.store()
        for i in range(5):
            s.put(f"d/{i}", b"x")
        s.delete("d/0")
        self.assertEqual(list(s.list("d/")), ["d/1", "d/2", "d/3", "d/4"])
        s.delete(["d/1", "d/2", "d/absent"])
        self.assertEqual(list(s.list("d/")), ["d/3", "d/4"])
        s.delete(k for k in ["d/3", "d/4"])
        self.assertEqual(list(s.list("d/")), [])

    def test_open_read_and_write(self) -> None:
        s = self.store()
        with s.open("f/w.bin", "wb") as f:
            f.write(b"hello ")
            f.write(b"world")
        with s.open("f/w.bin") as f:
            self.assertEqual(f.read(5), b"hello")
            self.assertEqual(f.read(), b" world")
        with self.assertRaises(ValueError):
            s.open("f/w.bin", "r+")

    def test_url_of_keys(self) -> None:
        s = self.store()
        s.put("u/v.txt", b"1")
        url = s.url("u/v.txt")
        self.assertTrue(url.endswith("/u/v.txt"), url)
        # The URL names the same object for the objects() partitioner and for a new Storage.
        self.assertEqual(cloudpool.objects(url, storage_options=self.options,
                                           chunk_size=10).__iter__().__next__().read(), b"1")
        self.assertTrue(s.url().endswith("/"))
        self.assertEqual(self.store(s.url()).get("u/v.txt"), b"1")

    def test_invalid_keys(self) -> None:
        s = self.store()
        for bad in ("", "/abs", "dir/", "a/../b", "../escape", "a//b", "./x"):
            with self.subTest(key=bad):
                with self.assertRaises(ValueError):
                    s.put(bad, b"x")
        with self.assertRaises(TypeError):
            s.put(3, b"x")  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            s.put("k", 3)  # type: ignore[arg-type]
        for start, end in ((-1, None), (None, -2), (5, 2), (1.5, None)):
            with self.subTest(start=start, end=end):
                with self.assertRaises(ValueError):
                    s.get("k", start, end)  # type: ignore[arg-type]

    def test_pickles_without_a_client(self) -> None:
        s = self.store()
        s.put("p.txt", b"pickled")
        s.backend  # create the SDK client first: it must not be captured
        clone = pickle.loads(pickle.dumps(s))
        self.assertEqual(clone, s)
        self.assertEqual(clone.get("p.txt"), b"pickled")


class LocalStorageTests(StorageContract, unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.mkdtemp(prefix="cloudpool-userstorage-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.tmp = tmp
        self.url = "file://" + tmp + "/out"

    def test_plain_paths_and_files_on_disk(self) -> None:
        s = Storage(os.path.join(self.tmp, "plain"))
        s.put("x/y.txt", b"on disk")
        with open(os.path.join(self.tmp, "plain", "x", "y.txt"), "rb") as f:
            self.assertEqual(f.read(), b"on disk")
        self.assertEqual(s.url("x/y.txt"), "file://" + os.path.join(self.tmp, "plain", "x", "y.txt"))
        self.assertEqual(cloudpool.Storage, Storage)

    def test_unknown_scheme_and_bad_url(self) -> None:
        with self.assertRaises(ValueError):
            Storage("nosuch://bucket/x")
        with self.assertRaises(ValueError):
            Storage("s3://")


class SecretOptionStorage(LocalStorage):
    scheme = "cpsecret"
    option_names = frozenset({"region", "password"})
    secret_option_names = frozenset({"password"})

    def url(self, key: str = "") -> str:
        return f"cpsecret://{self.bucket}/{key}"


class SecretOptionTests(unittest.TestCase):
    def test_credentials_are_not_pickled(self) -> None:
        storages.register("cpsecret", SecretOptionStorage, replace=True)
        self.addCleanup(clear_cache)
        s = Storage("cpsecret://bkt/x", region="eu", password="hunter2")
        blob = pickle.dumps(s)
        self.assertNotIn(b"hunter2", blob)
        self.assertEqual(pickle.loads(blob)._options, {"region": "eu"})
        with self.assertRaises(ValueError):  # the backend refuses unknown options
            Storage("cpsecret://bkt/x", colour="red").backend


class S3StorageTests(StorageContract, unittest.TestCase):
    """The same contract on S3 through the project's S3 backend and moto."""

    @classmethod
    def setUpClass(cls) -> None:
        try:
            from tests.servers import moto_s3
        except ImportError:  # tests/ is not a package: pytest put it on sys.path
            from servers import moto_s3  # type: ignore[no-redef]
        server = moto_s3()
        env = dict(server.env)
        env.pop("AWS_ENDPOINT_URL", None)  # the endpoint must come from the options
        cls._env = mock.patch.dict(os.environ, env)
        cls._env.start()
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "userstorage-" + uuid.uuid4().hex[:8]
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint_url).create_bucket(Bucket=cls.bucket)
        clear_cache()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.stop()
        clear_cache()

    def setUp(self) -> None:
        self.url = f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}/out"

    def test_bucket_root(self) -> None:
        root = Storage(f"s3://{self.bucket}", **self.options)
        self.assertEqual(root.prefix, "")
        root.put("rootkey.txt", b"r")
        self.assertIn("rootkey.txt", list(root.list("rootkey")))
        self.assertEqual(root.url("rootkey.txt"), f"s3://{self.bucket}/rootkey.txt")


if __name__ == "__main__":
    unittest.main()
