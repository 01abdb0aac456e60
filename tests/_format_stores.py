"""Where the format tests put their generated objects: local disk and the moto S3 server.

Each store is a mixin for a ``unittest.TestCase`` class: ``put(name, data) -> url`` and
``options`` (the storage options to list and read with). The S3 one takes its endpoint
from ``options`` only (``AWS_ENDPOINT_URL`` is removed from the environment), so a part
that forgot its storage options would fail rather than find the server by accident.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Any, Dict
from unittest import mock

from cloudpool.storage import clear_cache

try:
    from tests import servers
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import servers  # type: ignore[no-redef]


class LocalStore:
    options: Dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        cls._dir = tempfile.mkdtemp(prefix="cloudpool-formats-")

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls._dir, ignore_errors=True)
        super().tearDownClass()  # type: ignore[misc]

    def put(self, name: str, data: bytes) -> str:
        path = os.path.join(self._dir, uuid.uuid4().hex[:8], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path


class S3Store:
    options: Dict[str, Any] = {}

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        import boto3

        server = servers.moto_s3()
        env = dict(server.env)
        env.pop("AWS_ENDPOINT_URL", None)  # the endpoint must come from the options
        cls._env = mock.patch.dict(os.environ, env)
        cls._env.start()
        cls.server = server
        cls.options = {"endpoint_url": server.endpoint_url}
        cls.bucket = "formats-" + uuid.uuid4().hex[:8]
        cls.s3 = boto3.client("s3", endpoint_url=server.endpoint_url)
        cls.s3.create_bucket(Bucket=cls.bucket)
        clear_cache()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._env.stop()
        clear_cache()
        super().tearDownClass()  # type: ignore[misc]

    def put(self, name: str, data: bytes) -> str:
        key = f"{uuid.uuid4().hex[:8]}/{name}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"
