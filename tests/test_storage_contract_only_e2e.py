"""objects() partitioning and the word-count example on the contract-tested stores (OSS, Infinispan).

No OSS or Infinispan server runs here: both run against fakes of their documented
requests (tests/fake_oss.py, tests/fake_infinispan.py), served from this test process.
These tests show that a whole job -- listing, partitioning, ranged reads on worker
processes that hold no credentials, results -- goes through each storage's client code,
not that the services behave as the fakes do.
"""
from __future__ import annotations

import collections
import os
import re
import tempfile
import unittest
import uuid

from cloudpool import CloudPoolExecutor, Storage, objects
from tests.test_examples import run_example, write_texts


def _count_words(part):
    return collections.Counter(w for line in part for w in line.decode().split())


class _ContractStoreJob:
    """Subclasses start a fake, give ``url(path)``, and the environment workers need."""

    env: dict

    def put_texts(self, prefix_url: str) -> collections.Counter:
        store = Storage(prefix_url)  # the configuration chain: CLOUDPOOL_OSS__ENDPOINT, ...
        with tempfile.TemporaryDirectory() as tmp:
            expected = write_texts(tmp)
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    store.put(name, f.read())
        return expected

    def test_objects_parts_tile_every_object(self) -> None:
        texts = self.url(f"wc-{uuid.uuid4().hex[:8]}/texts/")
        self.put_texts(texts)
        store = Storage(texts)
        parts = list(objects(texts, chunk_size="20KiB"))
        self.assertGreater(len(parts), 3)
        by_object = collections.defaultdict(list)
        for p in parts:
            by_object[p.key].append(p)
        for obj_key, obj_parts in by_object.items():
            # Every byte of the object in exactly one part, in order.
            self.assertEqual(b"".join(p.read() for p in sorted(obj_parts, key=lambda p: p.start)),
                             store.get(obj_key.rsplit("/", 1)[-1]))

    def test_map_over_objects_on_worker_processes(self) -> None:
        texts = self.url(f"wc-{uuid.uuid4().hex[:8]}/texts/")
        expected = self.put_texts(texts)
        total = collections.Counter()
        with CloudPoolExecutor(2) as ex:
            for counts in ex.map(_count_words, objects(texts, chunk_size="20KiB")):
                total.update(counts)
        self.assertEqual(total, expected)

    def test_wordcount_example(self) -> None:
        texts = self.url(f"wc-{uuid.uuid4().hex[:8]}/texts/")
        expected = self.put_texts(texts)
        out = run_example("wordcount.py", texts, "--chunk-size", "20KiB", "--top", "100", env=self.env)
        first = out.splitlines()[0]
        self.assertTrue(first.startswith(f"{sum(expected.values()):,} words, {len(expected)} distinct"), out)
        got = {m.group(2): int(m.group(1).replace(",", ""))
               for m in re.finditer(r"^\s+([\d,]+)\s+(\S+)$", out, re.M)}
        self.assertEqual(collections.Counter(got), expected)


class OSSJobTest(_ContractStoreJob, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        from tests.fake_oss import KEY_ID, KEY_SECRET, FakeOSS

        cls.fake = FakeOSS()
        cls.addClassCleanup(cls.fake.close)
        cls.bucket = f"oss-job-{uuid.uuid4().hex[:8]}"
        cls.fake.buckets[cls.bucket] = {}
        # The worker's (and the subprocess's) credential chain: oss2's environment variables.
        cls.env = {"OSS_ACCESS_KEY_ID": KEY_ID, "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
                   "CLOUDPOOL_OSS__ENDPOINT": cls.fake.endpoint}
        cls._saved = {k: os.environ.get(k) for k in cls.env}
        os.environ.update(cls.env)
        cls.addClassCleanup(cls._restore)

    @classmethod
    def _restore(cls) -> None:
        for k, v in cls._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def url(self, path: str) -> str:
        return f"oss://{self.bucket}/{path}"


class InfinispanJobTest(_ContractStoreJob, unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        from tests.fake_infinispan import PASSWORD, USER, FakeInfinispan

        cls.fake = FakeInfinispan()
        cls.addClassCleanup(cls.fake.close)
        cls.cache = f"ispn-job-{uuid.uuid4().hex[:8]}"
        cls.fake.caches[cls.cache] = {}
        cls.env = {"INFINISPAN_USERNAME": USER, "INFINISPAN_PASSWORD": PASSWORD}
        cls._saved = {k: os.environ.get(k) for k in cls.env}
        os.environ.update(cls.env)
        cls.addClassCleanup(cls._restore)

    @classmethod
    def _restore(cls) -> None:
        for k, v in cls._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def url(self, path: str) -> str:
        return f"infinispan://127.0.0.1:{self.fake.port}/{self.cache}/{path}"


if __name__ == "__main__":
    unittest.main()
