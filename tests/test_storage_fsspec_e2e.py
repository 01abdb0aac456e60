"""The fsspec bridge end to end: objects() partitioning and the word-count example.

``ftp://`` runs against pyftpdlib on loopback (tests/servers.py), with the password in
the input URL: worker processes read their parts from the FTP server themselves.
``memory://`` is fsspec's per-process store, so it is checked client-side only
(iterating ``objects()`` in this process); a worker process would see an empty store.
The executor's own storage stays on local disk here: FTP as the executor's storage is
possible but not a goal (listing walks directories, one LIST each).
"""
from __future__ import annotations

import os
import re
import tempfile
import unittest
import uuid

from cloudpool import CloudPoolExecutor, objects
from cloudpool.storage import storage_for
from tests import servers
from tests.test_examples import run_example, write_texts


def _upload_texts(base_url: str, tmp: str):
    expected = write_texts(tmp)
    backend, key = storage_for(base_url)
    for name in sorted(os.listdir(tmp)):
        with open(os.path.join(tmp, name), "rb") as f:
            backend.put(key + name, f.read())
    return backend, key, expected


def _read_part(part) -> bytes:
    return part.read()


class FsspecObjectsTest(unittest.TestCase):
    def _check_same_parts_as_local(self, base: str, workers: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            backend, key, _ = _upload_texts(base, tmp)
            self.addCleanup(backend.delete_prefix, key)
            local = [(p.key.rsplit("/", 1)[1], p.start, p.end, p.read())
                     for p in objects(tmp + "/", chunk_size="7KiB")]
        parts = list(objects(base, chunk_size="7KiB"))
        self.assertGreater(len(parts), 6)
        if workers:
            with tempfile.TemporaryDirectory() as store, CloudPoolExecutor(2, storage=store) as ex:
                data = list(ex.map(_read_part, parts))
        else:
            data = [p.read() for p in parts]
        remote = [(p.key.rsplit("/", 1)[1], p.start, p.end, d) for p, d in zip(parts, data)]
        self.assertEqual(remote, local)

    def test_memory_parts_match_local_disk_client_side(self):
        self._check_same_parts_as_local(f"memory://objects-{uuid.uuid4().hex[:8]}/texts/", workers=False)

    def test_ftp_parts_read_by_worker_processes_match_local_disk(self):
        ftp = servers.ftp_server()
        base = f"ftp://{ftp.user}:{ftp.password}@{ftp.host}:{ftp.port}/objects-{uuid.uuid4().hex[:8]}/"
        self._check_same_parts_as_local(base, workers=True)


class FTPWordCountExampleTest(unittest.TestCase):
    def test_wordcount_on_ftp(self):
        ftp = servers.ftp_server()
        base = f"ftp://{ftp.user}:{ftp.password}@{ftp.host}:{ftp.port}/wc-{uuid.uuid4().hex[:8]}/"
        with tempfile.TemporaryDirectory() as tmp:
            backend, key, expected = _upload_texts(base, tmp)
        self.addCleanup(backend.delete_prefix, key)
        out = run_example("wordcount.py", base, "--chunk-size", "20KiB", "--top", "100")
        first = out.splitlines()[0]
        self.assertTrue(first.startswith(f"{sum(expected.values()):,} words, {len(expected)} distinct"), out)
        self.assertGreater(int(re.search(r"(\d+) partitions", first).group(1)), 3)
        got = {m.group(2): int(m.group(1).replace(",", ""))
               for m in re.finditer(r"^\s+([\d,]+)\s+(\S+)$", out, re.M)}
        self.assertEqual(got, dict(expected))


if __name__ == "__main__":
    unittest.main()
