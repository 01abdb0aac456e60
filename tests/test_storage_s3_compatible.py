"""MinIO and Ceph RGW settings (``s3://`` with ``endpoint_url``), on the S3 servers here.

Neither MinIO nor Ceph can be installed on these machines (TESTING.md), so the settings
the README documents for them -- path-style addressing, UNSIGNED-PAYLOAD uploads, an
explicit region and endpoint -- run the whole storage contract against SeaweedFS (which
checks signatures, as MinIO and RGW do) and a smoke set against moto, and every request
is checked to have the documented form (bucket in the path, ``x-amz-content-sha256:
UNSIGNED-PAYLOAD``). An executor configured exactly as the README's example runs a job.
"""
from __future__ import annotations

import os
import tempfile
import unittest
import uuid
from typing import ClassVar, Dict, List, Tuple

from cloudpool import CloudPoolExecutor
from cloudpool.storage.base import StorageBackend
from tests import servers
from tests import test_storage_contract as sc

#: The options the README gives for MinIO / Ceph RGW (endpoint and keys per server).
COMPAT_OPTIONS = {"addressing_style": "path", "payload_signing": False}


def _compat_storage(server: servers.Server, bucket: str) -> StorageBackend:
    from cloudpool.storage.s3 import S3Storage
    return S3Storage(bucket, **sc._s3_options(server), **COMPAT_OPTIONS)


def _record(storage: StorageBackend) -> List[Tuple[str, str, bytes]]:
    """(method, url, x-amz-content-sha256) of every request the storage sends from now on."""
    seen: List[Tuple[str, str, bytes]] = []

    def before_send(request, **_kw) -> None:
        seen.append((request.method, request.url, request.headers.get("x-amz-content-sha256") or b""))

    storage.client.meta.events.register("before-send.s3", before_send)  # type: ignore[attr-defined]
    return seen


class SeaweedFSAsMinIOFixture(sc.SeaweedFSS3Fixture):
    bucket_tag = "minio"

    @classmethod
    def make_storage(cls, bucket: str) -> StorageBackend:
        return _compat_storage(servers.seaweedfs(), bucket)


class CompatRequestForm(sc.StorageTestBase):
    """Every request carries the bucket in its path; uploads are UNSIGNED-PAYLOAD."""

    server_name: ClassVar[str] = ""

    def test_requests_have_the_documented_form(self) -> None:
        seen = _record(self.storage)
        k = self.key("form/obj")
        self.storage.put(k, b"0123456789")
        self.assertEqual(self.storage.get(k, 2, 5), b"234")
        self.assertEqual([e.prefix for e in self.storage.list_level(self.key(""))], [self.key("form/")])
        self.storage.delete([k])
        endpoint = self.storage.client.meta.endpoint_url  # type: ignore[attr-defined]
        self.assertGreaterEqual(len(seen), 4)
        for method, url, _sha in seen:
            self.assertTrue(url.startswith(f"{endpoint}/{self.storage.bucket}"), (method, url))
        puts = [sha for method, _url, sha in seen if method == "PUT"]
        self.assertEqual(puts, [b"UNSIGNED-PAYLOAD"])

    def test_addressing_style_reaches_the_client(self) -> None:
        # botocore's "auto" already picks the path for a custom endpoint; "virtual" (the
        # bucket in the host name) shows the option is what decides.
        from cloudpool.storage.s3 import S3Storage
        endpoint = self.storage.client.meta.endpoint_url.replace("127.0.0.1", "localhost")  # type: ignore[attr-defined]
        urls = {}
        for style in ("path", "virtual"):
            opts = dict(self.storage.options, endpoint_url=endpoint, addressing_style=style, max_attempts=1)
            st = S3Storage("somebucket", **opts)
            seen = _record(st)
            try:
                st.head("k")
            except OSError:
                pass  # only the request's form matters here
            urls[style] = seen[0][1]
        host = endpoint.split("://")[1]
        self.assertEqual(urls["path"], f"http://{host}/somebucket/k")
        self.assertEqual(urls["virtual"], f"http://somebucket.{host}/k")

    def test_signed_payload_is_the_default(self) -> None:
        from cloudpool.storage.s3 import S3Storage
        opts = {k: v for k, v in self.storage.options.items() if k != "payload_signing"}
        st = S3Storage(self.storage.bucket, **opts)
        seen = _record(st)
        st.put(self.key("signed"), b"abc")
        sha = [s for m, _u, s in seen if m == "PUT"][0]
        self.assertEqual(len(sha), 64)  # the body's SHA-256 in hex

    def test_bad_values_are_refused_early(self) -> None:
        from cloudpool.storage.s3 import S3Storage
        for opts, text in (({"addressing_style": "pth"}, "'addressing_style' must be one of auto, path"),
                           ({"payload_signing": "no"}, "'payload_signing' must be true or false")):
            with self.subTest(opts=opts):
                with self.assertRaises(ValueError) as cm:
                    S3Storage("b", **opts)
                self.assertMentions(cm.exception, text)


class SeaweedFSAsMinIOStorageTest(SeaweedFSAsMinIOFixture, CompatRequestForm, *sc.REMOTE, unittest.TestCase):
    """The full remote contract on SeaweedFS with the MinIO / Ceph settings."""


class MotoAsCephFixture(sc.MotoS3Fixture):
    bucket_tag = "ceph"

    @classmethod
    def make_storage(cls, bucket: str) -> StorageBackend:
        return _compat_storage(servers.moto_s3(), bucket)


class MotoAsCephStorageTest(MotoAsCephFixture, CompatRequestForm, sc.ReadContract, sc.WriteContract,
                            unittest.TestCase):
    """Moto with the same settings: reads and writes."""


def _double(x: int) -> int:
    return 2 * x


class ConfiguredExecutorTest(unittest.TestCase):
    """The README's configuration example, with SeaweedFS standing in for MinIO."""

    def test_executor_with_the_documented_config(self) -> None:
        sw = servers.seaweedfs()
        bucket = f"cp-minio-{uuid.uuid4().hex[:8]}"
        _compat_storage(sw, bucket).client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        config: Dict[str, Dict[str, object]] = {"s3": {
            "endpoint_url": sw.endpoint_url, "region": servers.S3_REGION, **COMPAT_OPTIONS}}
        env = {"AWS_ACCESS_KEY_ID": servers.S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.S3_SECRET_KEY}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # workers use their own credential chain: here, the environment
        try:
            with tempfile.TemporaryDirectory():
                with CloudPoolExecutor(2, storage=f"s3://{bucket}/jobs", config=config) as ex:
                    self.assertEqual(list(ex.map(_double, range(20))), [2 * x for x in range(20)])
                    self.assertEqual(ex._event_base["storage"]["options"],  # no keys in events
                                     {"endpoint_url": sw.endpoint_url, "region": servers.S3_REGION,
                                      **COMPAT_OPTIONS})
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


if __name__ == "__main__":
    unittest.main()
