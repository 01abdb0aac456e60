"""The executor end to end with remote object stores as its storage (real servers).

S3 on the moto server runs the full executor contract: CPython's concurrent.futures
mixins and this project's executor tests, unchanged, with ``storage="s3://..."``. COS
(ibm-cos-sdk on moto), GCS (fake-gcs-server) and Azure Blob (Azurite) run a smaller
smoke set: submit/map, large payloads stored as objects, remote errors, results
fetched through the store. Workers reach the servers with the environment from
``tests/servers.py``; credentials never travel in invocation events.
"""
from __future__ import annotations

import functools
import os
import unittest
import uuid

from cloudpool import CloudPoolExecutor
from tests import servers
from tests import test_executor as te
from tests._cpython import load_concurrent_futures_tests
from tests.test_conformance_futures import _EXCLUDED

cft = load_concurrent_futures_tests()


def setUpModule():
    moto = servers.moto_s3()
    os.environ.update(moto.env)  # forked workers inherit it: their own credential chain


def _bucket(kind: str) -> str:
    return f"cp-{kind}-{uuid.uuid4().hex[:10]}"


class S3Mixin:
    """Storage on one moto bucket per class, one prefix per test."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import boto3

        moto = servers.moto_s3()
        cls.bucket = _bucket("s3")
        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                     aws_access_key_id=servers.S3_ACCESS_KEY,
                     aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=cls.bucket)
        cls.storage_config = {"s3": {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION}}

    def setUp(self):
        super().setUp()
        self.storage_url = f"s3://{self.bucket}/run-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- CPython's mixins on S3
class S3ExecutorMixin(cft.ExecutorMixin):
    """CPython's ExecutorMixin, building executors whose storage is an S3 bucket."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import boto3

        moto = servers.moto_s3()
        bucket = _bucket("cf")
        boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                     aws_access_key_id=servers.S3_ACCESS_KEY,
                     aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=bucket)
        cls.executor_type = functools.partial(
            CloudPoolExecutor, storage=f"s3://{bucket}/cpython",
            config={"s3": {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION}})


def _make(name: str, mixin: type) -> type:
    attrs = {test: unittest.skip(why)(lambda self: None) for test, why in _EXCLUDED.items() if hasattr(mixin, test)}
    return type(name, (mixin, S3ExecutorMixin, cft.BaseTestCase), attrs)


S3CPythonExecutorTest = _make("S3CPythonExecutorTest", cft.ExecutorTest)
S3CPythonWaitTest = _make("S3CPythonWaitTest", cft.WaitTests)
S3CPythonAsCompletedTest = _make("S3CPythonAsCompletedTest", cft.AsCompletedTests)
S3CPythonInitializerTest = _make("S3CPythonInitializerTest", cft.InitializerMixin)
S3CPythonShutdownTest = _make("S3CPythonShutdownTest", cft.ExecutorShutdownTest)


# ---------------------------------------------------------------- our executor tests on S3
class S3SemanticsTest(S3Mixin, te.SemanticsTest):
    pass


class S3ErrorsTest(S3Mixin, te.ErrorsTest):
    pass


class S3WorkerDeathTest(S3Mixin, te.WorkerDeathTest):
    pass


class S3ProtocolTest(S3Mixin, te.ProtocolTest):
    # Reads status files from the local disk layout directly; its S3 twin is below.
    test_key_layout_and_json_status = unittest.skip("reads local files; see test_status_objects_are_json")(
        lambda self: None)
    test_version_mismatch_is_refused_naming_both_sides = unittest.skip(
        "drives worker.handle with local storage; the S3 path is covered by test_client_breaks_on_version_mismatch")(
        lambda self: None)

    def test_status_objects_are_json(self):
        import json

        from cloudpool.storage import storage_for

        with self.executor(2, config={"keep_data": True}) as ex:
            self.assertEqual(list(ex.map(te.square, range(200))), [x * x for x in range(200)])
        backend, root = storage_for(self.storage_url, self.storage_config["s3"])
        statuses = [i.key for i in backend.list(root + "/") if "/status/" in i.key]
        self.assertTrue(statuses)
        calls = sum(len(json.loads(backend.get(k))["calls"]) for k in statuses)
        self.assertEqual(calls, 200)


# ---------------------------------------------------------------- smoke on COS, GCS, Azure
class RemoteSmoke:
    def test_map_submit_and_errors(self):
        with self.executor(2) as ex:
            self.assertEqual(list(ex.map(te.square, range(30))), [x * x for x in range(30)])
            self.assertEqual(ex.submit(te.add, 1, 2, c=3).result(timeout=te.BOUND), 6)
            with self.assertRaises(ValueError):
                ex.submit(te.fail_with_value_error, 1).result(timeout=te.BOUND)

    def test_large_payloads_through_the_store(self):
        payload = b"z" * (2 << 20)
        # pipe_args=False: the local backend's worker pipe would carry big arguments otherwise.
        with self.executor(2, config={"keep_data": True}, pipe_args=False) as ex:
            self.assertEqual(ex.submit(te.nbytes, payload).result(timeout=te.BOUND), len(payload))
            self.assertEqual(len(ex.submit(te.big_result, 3 << 20).result(timeout=te.BOUND)), 3 << 20)
        self.assertTrue(any("/args/" in k for k in self.stored_files()))

    def test_job_data_removed_at_shutdown(self):
        with self.executor(2) as ex:
            list(ex.map(te.square, range(10)))
        self.assertEqual(self.stored_files(), [])


class COSSmokeTest(RemoteSmoke, te.TempStorageMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import ibm_boto3

        moto = servers.moto_s3()
        cls.bucket = _bucket("cos")
        ibm_boto3.client("s3", endpoint_url=moto.endpoint_url, aws_access_key_id=servers.S3_ACCESS_KEY,
                         aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=cls.bucket)
        cls.storage_config = {"cos": {"endpoint_url": moto.endpoint_url}}

    def setUp(self):
        super().setUp()
        self.storage_url = f"cos://{self.bucket}/run-{uuid.uuid4().hex[:8]}"


class GCSSmokeTest(RemoteSmoke, te.TempStorageMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        gcs = servers.fake_gcs()
        os.environ.update(gcs.env)
        from cloudpool.storage.gcs import GCSStorage

        cls.bucket = _bucket("gcs")
        GCSStorage(cls.bucket, endpoint_url=gcs.endpoint_url, project="test").client.create_bucket(cls.bucket)
        cls.storage_config = {"gs": {"endpoint_url": gcs.endpoint_url, "project": "test"}}

    def setUp(self):
        super().setUp()
        self.storage_url = f"gs://{self.bucket}/run-{uuid.uuid4().hex[:8]}"


class AzureSmokeTest(RemoteSmoke, te.TempStorageMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        az = servers.azurite()
        # The connection string holds the account key: it reaches workers through their
        # environment (as on a real platform), never through the invocation event.
        os.environ.update(az.env)
        from cloudpool.storage.azure import AzureBlobStorage

        cls.bucket = _bucket("az")
        AzureBlobStorage(cls.bucket, connection_string=az.connection_string).container.create_container()
        cls.storage_config = {}

    def setUp(self):
        super().setUp()
        self.storage_url = f"az://{self.bucket}/run-{uuid.uuid4().hex[:8]}"


class CredentialsStayOutOfEventsTest(S3Mixin, te.TempStorageMixin, unittest.TestCase):
    SECRET = "sekret-" + uuid.uuid4().hex  # moto accepts any key pair

    def test_secret_options_are_not_in_events_or_stored_objects(self):
        self.storage_config = {"s3": {**self.storage_config["s3"], "aws_access_key_id": "AKIDEXAMPLE",
                                      "aws_secret_access_key": self.SECRET}}
        with self.executor(1, config={"keep_data": True}) as ex:
            self.assertEqual(ex.submit(te.square, 3).result(timeout=te.BOUND), 9)
            event_text = repr(ex._event_base)
        self.assertIn("endpoint_url", event_text)
        self.assertNotIn(self.SECRET, event_text)
        from cloudpool.storage import storage_for

        backend, root = storage_for(self.storage_url, self.storage_config["s3"])
        stored = [backend.get(i.key) for i in backend.list(root + "/")]
        self.assertTrue(stored)
        self.assertFalse([blob for blob in stored if self.SECRET.encode() in blob])


if __name__ == "__main__":
    unittest.main()
