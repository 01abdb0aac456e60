"""Swift (the all-in-one of tests/swift_aio.py) as the executor's storage and as objects() input.

Workers find the Swift credentials in their environment (``ST_AUTH``/``ST_USER``/
``ST_KEY``, as the ``swift`` command line reads them): the key never travels in events.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import unittest
import uuid
from unittest import mock

from cloudpool import objects
from cloudpool.storage import clear_cache, storage_for
from tests import servers
from tests import test_executor as te
from tests.test_examples import run_example, write_texts


class _SwiftEnv:
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        sw = servers.swift_server()
        cls._env = mock.patch.dict(os.environ, sw.env)
        cls._env.start()
        clear_cache()
        cls.container = f"cp-e2e-{uuid.uuid4().hex[:8]}"
        backend, _ = storage_for(f"swift://{cls.container}/")
        backend.conn.put_container(cls.container)
        cls.backend = backend

    @classmethod
    def tearDownClass(cls):
        cls.backend.delete_prefix("")
        cls._env.stop()
        clear_cache()
        super().tearDownClass()


class SwiftExecutorTest(_SwiftEnv, te.TempStorageMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.storage_url = f"swift://{self.container}/run-{uuid.uuid4().hex[:8]}"

    def test_map_submit_errors_and_large_payloads(self):
        payload = b"z" * (2 << 20)
        with self.executor(2) as ex:
            self.assertEqual(list(ex.map(te.square, range(20))), [x * x for x in range(20)])
            with self.assertRaises(ValueError):
                ex.submit(te.fail_with_value_error, 1).result(timeout=te.BOUND)
            self.assertEqual(ex.submit(te.nbytes, payload).result(timeout=te.BOUND), len(payload))
            event = json.dumps(ex._event_base)
        self.assertNotIn(servers.swift_server().key, event)
        self.assertEqual(self.stored_files(), [])


class SwiftObjectsAndWordCountTest(_SwiftEnv, unittest.TestCase):
    def test_partitions_match_local_disk_and_wordcount(self):
        base = f"swift://{self.container}/texts-{uuid.uuid4().hex[:8]}/"
        with tempfile.TemporaryDirectory() as tmp:
            expected = write_texts(tmp)
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    self.backend.put(base.split("/", 3)[3] + name, f.read())
            local = [(p.key.rsplit("/", 1)[1], p.start, p.end, p.read())
                     for p in objects(tmp + "/", chunk_size="7KiB")]
        remote = [(p.key.rsplit("/", 1)[1], p.start, p.end, p.read())
                  for p in objects(base, chunk_size="7KiB")]
        self.assertGreater(len(remote), 6)
        self.assertEqual(remote, local)
        out = run_example("wordcount.py", base, "--chunk-size", "20KiB", "--top", "100",
                          "--storage", f"swift://{self.container}/jobs-{uuid.uuid4().hex[:8]}")
        first = out.splitlines()[0]
        self.assertTrue(first.startswith(f"{sum(expected.values()):,} words, {len(expected)} distinct"), out)
        got = {m.group(2): int(m.group(1).replace(",", ""))
               for m in re.finditer(r"^\s+([\d,]+)\s+(\S+)$", out, re.M)}
        self.assertEqual(got, dict(expected))


if __name__ == "__main__":
    unittest.main()
