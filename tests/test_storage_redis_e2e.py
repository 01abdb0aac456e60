"""Redis as the executor's storage and as ``objects()`` input, end to end (real redis-server).

The storage contract itself runs in tests/test_storage_contract.py (``RedisStorageTest``);
here the same server carries a whole job: payloads, results and status objects, the
partitioning of texts into byte ranges (checked against the same text on local disk),
and the word-count example run as a subprocess. The executor's storage URL carries a
password (the password-protected server of tests/servers.py) that must reach no event.
"""
from __future__ import annotations

import collections
import json
import os
import re
import tempfile
import unittest
import urllib.parse
import uuid

from cloudpool import objects
from cloudpool.storage import storage_for
from tests import servers
from tests import test_executor as te
from tests.test_examples import run_example, write_texts


def _auth_url(path: str) -> str:
    auth = servers.redis_auth_server()
    return (f"redis://{auth.user}:{urllib.parse.quote(auth.user_password, safe='')}"
            f"@{auth.host}:{auth.port}/0/{path}")


class RedisExecutorTest(te.TempStorageMixin, unittest.TestCase):
    """The executor with ``storage="redis://user:password@host:port/0/run-..."``."""

    def setUp(self):
        super().setUp()
        self.storage_url = _auth_url(f"run-{uuid.uuid4().hex[:8]}")

    def test_map_submit_errors_and_large_payloads(self):
        payload = b"z" * (2 << 20)
        # pipe_args=False: the local backend's worker pipe would carry big arguments otherwise.
        with self.executor(2, config={"keep_data": True}, pipe_args=False) as ex:
            self.assertEqual(list(ex.map(te.square, range(30))), [x * x for x in range(30)])
            self.assertEqual(ex.submit(te.add, 1, 2, c=3).result(timeout=te.BOUND), 6)
            with self.assertRaises(ValueError):
                ex.submit(te.fail_with_value_error, 1).result(timeout=te.BOUND)
            self.assertEqual(ex.submit(te.nbytes, payload).result(timeout=te.BOUND), len(payload))
            event = json.dumps(ex._event_base)
        stored = self.stored_files()
        self.assertTrue(any("/args/" in k for k in stored), stored)
        secret = servers.redis_auth_server().user_password
        self.assertNotIn(urllib.parse.quote(secret, safe=""), event)
        self.assertNotIn(secret, event)
        backend, root = storage_for(self.storage_url)
        for key in stored:  # nothing written to the store holds the password either
            self.assertNotIn(secret.encode(), backend.get(root.rstrip("/") + "/" + key))
        backend.delete_prefix(root.rstrip("/") + "/")

    def test_job_data_removed_at_shutdown(self):
        with self.executor(2) as ex:
            list(ex.map(te.square, range(10)))
        self.assertEqual(self.stored_files(), [])


class RedisSharedSectionTest(te.TempStorageMixin, unittest.TestCase):
    """The configuration's 'redis' section serves cloudpool.multiprocessing ('url') and
    the redis:// storage (its options) at once; 'url' never reaches the storage or events."""

    def test_section_with_both_kinds_of_option(self):
        server = servers.redis_server()
        self.storage_url = f"redis://{server.host}:{server.port}/0/shared-{uuid.uuid4().hex[:8]}"
        self.storage_config = {"redis": {"url": f"redis://:not-this@{server.host}:{server.port}/1",
                                         "socket_timeout": 20}}
        with self.executor(2) as ex:
            self.assertEqual(list(ex.map(te.square, range(5))), [0, 1, 4, 9, 16])
            self.assertEqual(ex._event_base["storage"]["options"], {"socket_timeout": 20})


class RedisUserStorageTest(unittest.TestCase):
    def test_storage_with_a_password_url_pickles_without_it(self):
        import pickle
        from cloudpool import Storage
        url = _auth_url(f"user-{uuid.uuid4().hex[:8]}/")
        st = Storage(url)
        st.put("a.txt", b"kept")
        self.addCleanup(st.delete, "a.txt")
        blob = pickle.dumps(st)
        secret = servers.redis_auth_server().user_password
        self.assertNotIn(secret.encode(), blob)
        self.assertNotIn(urllib.parse.quote(secret, safe="").encode(), blob)
        self.assertEqual(pickle.loads(blob).get("a.txt"), b"kept")  # the password from this process


class RedisObjectsTest(unittest.TestCase):
    """objects() on Redis cuts the same parts, with the same lines, as on local disk."""

    def test_partitions_match_local_disk(self):
        server = servers.redis_server()
        prefix = f"0/objects-{uuid.uuid4().hex[:8]}/"
        base = f"redis://{server.host}:{server.port}/{prefix}"
        backend, _ = storage_for(base)
        self.addCleanup(backend.delete_prefix, prefix)
        with tempfile.TemporaryDirectory() as tmp:
            write_texts(tmp)
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    backend.put(prefix + name, f.read())
            local = [(p.key.rsplit("/", 1)[1], p.start, p.end, p.read())
                     for p in objects(tmp + "/", chunk_size="7KiB")]
        remote = [(p.key.rsplit("/", 1)[1], p.start, p.end, p.read())
                  for p in objects(base, chunk_size="7KiB")]
        self.assertGreater(len(remote), 6)
        self.assertEqual(remote, local)
        self.assertTrue(all(p.url.startswith(base) for p in objects(base, chunk_size="7KiB")))


class RedisWordCountExampleTest(unittest.TestCase):
    def test_wordcount_on_redis(self):
        server = servers.redis_server()
        run = uuid.uuid4().hex[:8]
        texts = f"redis://{server.host}:{server.port}/0/wc-{run}/texts/"
        backend, key = storage_for(texts)
        self.addCleanup(backend.delete_prefix, f"0/wc-{run}/")
        with tempfile.TemporaryDirectory() as tmp:
            expected = write_texts(tmp)
            for name in os.listdir(tmp):
                with open(os.path.join(tmp, name), "rb") as f:
                    backend.put(key + name, f.read())
        out = run_example("wordcount.py", texts, "--chunk-size", "20KiB", "--top", "100",
                          "--storage", f"redis://{server.host}:{server.port}/0/wc-{run}/jobs")
        first = out.splitlines()[0]
        self.assertTrue(first.startswith(f"{sum(expected.values()):,} words, {len(expected)} distinct"), out)
        self.assertGreater(int(re.search(r"(\d+) partitions", first).group(1)), 3)
        got = {m.group(2): int(m.group(1).replace(",", ""))
               for m in re.finditer(r"^\s+([\d,]+)\s+(\S+)$", out, re.M)}
        self.assertEqual(got, dict(expected))
        self.assertEqual(collections.Counter(got), expected)


if __name__ == "__main__":
    unittest.main()
