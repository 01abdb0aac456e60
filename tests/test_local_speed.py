"""Local-speed paths (issue 18): big arguments through the worker pipe, cheap construction."""
from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
import unittest
from unittest import mock

from cloudpool import CloudPoolExecutor
from cloudpool.registry import Registry


def _summary(blob: bytes) -> tuple:
    return len(blob), blob[:3], blob[-3:], sum(blob[::4096])


def _bump_and_sum(array):
    array += 1  # the stdlib hands the function a writable array: so must we
    return float(array.sum()), array.dtype.str, array.shape


def _stored_files(root: str) -> list:
    return [os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files]


class BigArgumentsThroughPipeTest(unittest.TestCase):
    def test_big_arguments_skip_storage_and_match_the_stdlib(self):
        blobs = [bytes([i]) * (3 * 1024 * 1024) + os.urandom(100) for i in range(4)]
        with cf.ProcessPoolExecutor(2) as ppe:
            expected = list(ppe.map(_summary, blobs))
        with tempfile.TemporaryDirectory() as tmp:
            written = []
            from cloudpool.storage.local import LocalStorage

            real_put = LocalStorage.put

            def put(self, key, data):
                written.append((key, len(data)))
                return real_put(self, key, data)

            with mock.patch.object(LocalStorage, "put", put):
                with CloudPoolExecutor(2, storage="file://" + tmp) as ex:
                    got = list(ex.map(_summary, blobs))
            self.assertEqual(got, expected)
            # Nothing as big as an argument went to storage: it travelled in the pipe.
            self.assertFalse([k for k, n in written if "/args/" in k], written)
            self.assertTrue(all(n < 1024 * 1024 for _k, n in written), written)

    def test_small_inline_limit_setting_still_uses_the_pipe_for_local(self):
        with CloudPoolExecutor(2, config={"inline_limit": 0}) as ex:
            self.assertEqual(ex.submit(_summary, b"x" * 200_000).result(timeout=60),
                             _summary(b"x" * 200_000))


class OutOfBandArraysTest(unittest.TestCase):
    def test_numpy_arguments_arrive_writable_and_equal_as_with_the_stdlib(self):
        import numpy as np  # in the test extra: a missing one fails loudly, never skips
        arrays = [np.arange(200_000, dtype=np.float64) * i for i in range(5)]
        arrays.append(np.arange(12).reshape(3, 4)[:, ::2])  # not contiguous: in band
        with cf.ProcessPoolExecutor(2) as ppe:
            expected = list(ppe.map(_bump_and_sum, arrays))
        for pipe_args in (True, False):
            with self.subTest(pipe_args=pipe_args):
                with CloudPoolExecutor(2, pipe_args=pipe_args) as ex:
                    self.assertEqual(list(ex.map(_bump_and_sum, arrays)), expected)
                    # A lone call (pickled on its own) and a small one (inline, in band).
                    self.assertEqual(ex.submit(_bump_and_sum, arrays[1]).result(timeout=60), expected[1])
                    self.assertEqual(ex.submit(_bump_and_sum, arrays[-1]).result(timeout=60), expected[-1])


class RegistryMembershipTest(unittest.TestCase):
    def test_known_name_does_not_read_entry_points(self):
        reg: Registry = Registry("thing", "cloudpool.test-no-such-group")
        reg.register("local", "cloudpool.compute.local:LocalBackend")
        self.assertIn("local", reg)
        self.assertFalse(reg._entry_points_read)
        self.assertNotIn("nope", reg)
        self.assertTrue(reg._entry_points_read)


if __name__ == "__main__":
    unittest.main()
