"""Nothing is left in the temporary directory: by the library's workers, or by a test run.

Found left in ``/tmp`` after a full run (issue 19) and who made them:

- ``cloudpool-modules/``: ``cloudpool._shipping.install`` on a worker (the user's modules
  shipped to remote workers); now one folder per process, removed when it exits, and the
  knative test cluster (``runtime/knative/local_cluster.py``), which SIGKILLs its hosts,
  gives each host a ``TMPDIR`` inside the cluster directory it removes;
- ``cp-k8s-test-*``: ``tests/test_kubernetes.py``'s module directory; removed in
  ``tearDownModule``;
- ``cloudpool-runtime-built-*``: the build context ``build_runtime()`` makes without
  ``output=`` (the user's to keep), from a test; the test removes it;
- ``seaweedfs`` files (``weed.*`` logs, sockets, a volume folder) and
  ``Microsoft-AzureMonitor-*`` (Azurite's telemetry queue): written to ``TMPDIR`` by the
  servers in ``tests/servers.py``, which now start each server with ``TMPDIR`` inside
  its working directory (removed at exit) and Azurite with ``--disableTelemetry``.

``SubsetLeavesNothingTest`` runs tests that exercise each of them in a fresh pytest
process whose ``TMPDIR`` is a new empty directory and checks it is still empty
afterwards. The executor's default storage root (``<tmp>/cloudpool-<user>``, kept on
purpose as the shared root of local job data) is pointed elsewhere for that run.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: One test per kind of leftover listed in the module docstring.
SUBSET = [
    "tests/test_kubernetes.py::IndexedCompletionTest::test_each_index_runs_its_own_batch",
    "tests/test_knative.py::BackendTest::test_users_own_module_travels_by_value",
    "tests/test_kubernetes.py::RuntimeTest::test_build_runs_the_container_engine",
    "tests/test_storage_contract.py::SeaweedFSS3StorageTest::test_put_file_small",
    "tests/test_storage_contract.py::AzureStorageTest::test_put_file_small",
    "tests/test_cli.py::LocalDiskStorageTest::test_put_ls_get_rm_roundtrip",
]


def _listing(directory: str) -> list:
    return sorted(os.path.relpath(os.path.join(d, n), directory)
                  for d, dirs, files in os.walk(directory) for n in dirs + files)


class SubsetLeavesNothingTest(unittest.TestCase):
    def test_a_representative_subset_leaves_the_temp_dir_empty(self) -> None:
        with tempfile.TemporaryDirectory() as private, tempfile.TemporaryDirectory() as storage:
            tmp = os.path.join(private, "tmp")
            os.mkdir(tmp)
            env = dict(os.environ, TMPDIR=tmp, PYTHONPATH=ROOT, CLOUDPOOL_STORAGE=storage)
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            self.assertEqual(proc.returncode, 0, proc.stdout[-4000:] + proc.stderr[-4000:])
            self.assertIn(f"{len(SUBSET)} passed", proc.stdout)
            self.assertEqual(_listing(tmp), [])


class ShippedModulesTest(unittest.TestCase):
    """A worker's module bundle lives as long as its process, in a folder of its own."""

    SCRIPT = textwrap.dedent('''
        import io, multiprocessing, os, sys, tempfile, zipfile
        from cloudpool import _shipping

        def blob():
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("cp_shipped_probe.py", "VALUE = 'shipped'\\n")
            return buf.getvalue()

        def use_bundle(digest):
            _shipping.install(lambda key: blob(), {"key": "k", "digest": digest})
            import cp_shipped_probe
            return cp_shipped_probe.VALUE, sys.path[-1]

        def child(queue):
            queue.put(use_bundle("d2"))

        if __name__ == "__main__":
            value, path = use_bundle("d1")
            print(value, os.path.exists(path), path.startswith(tempfile.gettempdir()))
            ctx = multiprocessing.get_context(sys.argv[1])
            queue = ctx.Queue()
            p = ctx.Process(target=child, args=(queue,))
            p.start()
            value, child_path = queue.get(timeout=60)
            p.join(60)
            # The child's own folder is gone once it exited, the parent's is still there.
            print(value, os.path.dirname(child_path) != os.path.dirname(path), os.path.exists(child_path),
                  os.path.exists(path))
    ''')

    def test_bundles_are_importable_and_removed_at_exit(self) -> None:
        for method in ("fork", "spawn"):
            with self.subTest(method=method), tempfile.TemporaryDirectory() as tmp:
                script = os.path.join(tmp, "probe.py")
                with open(script, "w") as f:
                    f.write(self.SCRIPT)
                private = os.path.join(tmp, "tmp")
                os.mkdir(private)
                proc = subprocess.run([sys.executable, script, method], capture_output=True, text=True,
                                      timeout=120, env=dict(os.environ, TMPDIR=private, PYTHONPATH=ROOT))
                self.assertEqual(proc.returncode, 0, proc.stderr)
                self.assertEqual(proc.stdout.splitlines(), ["shipped True True", "shipped True False True"])
                self.assertEqual(_listing(private), [])


class HTTPServerResetTest(unittest.TestCase):
    def test_a_client_reset_mid_answer_logs_no_traceback(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "big.bin"), "wb") as f:
                f.write(os.urandom(8 << 20))
            http = servers.RangeHTTPServer(tmp).start()
            try:
                for _ in range(3):
                    with socket.create_connection((http.host, http.port), timeout=10) as s:
                        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                        self.assertTrue(s.recv(1024).startswith(b"HTTP/1.1 200"))
                        # Close with a reset (linger 0) while the server is still sending.
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                time.sleep(0.5)  # the server notices on its next write
                self.assertTrue(http.running)
                with open(http.log_path) as f:
                    log = f.read()
                self.assertNotIn("Traceback", log)
                self.assertNotIn("ConnectionResetError", log)
            finally:
                http.close()


if __name__ == "__main__":
    unittest.main()
