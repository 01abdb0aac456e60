"""A small knative "cluster" for tests that need one remote backend, not the backend's own suite.

Two ``runtime/knative/server.py`` processes on 127.0.0.1 ports (no network namespaces:
cheaper, and enough to run calls remotely), S3 storage on the shared moto server. The
servers have the repository on PYTHONPATH, so test-module functions unpickle there by
reference. ``tests/test_knative.py`` is the backend's full suite with its own topology.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import sys
import uuid
from typing import Any, Dict

from tests import servers
from tests._cpython import ROOT


def load_local_cluster() -> Any:
    # By path, under the name tests/test_knative.py uses (runtime/ is not a package).
    name = "cloudpool_knative_local_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "runtime", "knative",
                                                                         "local_cluster.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


local_cluster = load_local_cluster()


class SmallCluster:
    """Start with ``start()``, stop with ``stop()``; ``executor_options()`` for CloudPoolExecutor."""

    def __init__(self, hosts: int = 2, concurrency: int = 2) -> None:
        self.token = "test-" + secrets.token_hex(16)
        self.hosts = hosts
        self.concurrency = concurrency
        self.cluster: Any = None
        self.moto: Any = None
        self.bucket = "cp-small-" + uuid.uuid4().hex[:10]

    def start(self) -> "SmallCluster":
        import boto3

        self.moto = servers.moto_s3()
        boto3.client("s3", endpoint_url=self.moto.endpoint_url, region_name=servers.S3_REGION,
                     aws_access_key_id=servers.S3_ACCESS_KEY,
                     aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=self.bucket)
        self.cluster = local_cluster.LocalCluster(self.hosts, token=self.token, concurrency=self.concurrency,
                                                  netns=False, pythonpath=[ROOT])
        self.cluster.start(env=self.moto.env)
        return self

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def executor_options(self, **knative: Any) -> Dict[str, Any]:
        """``storage`` and ``config`` selecting backend knative on these hosts (a fresh prefix)."""
        s3 = {"endpoint_url": self.moto.endpoint_url, "region": servers.S3_REGION,
              "aws_access_key_id": servers.S3_ACCESS_KEY, "aws_secret_access_key": servers.S3_SECRET_KEY}
        options = {"urls": self.cluster.urls, "token": self.token, "concurrency": self.concurrency}
        options.update(knative)
        return {"storage": f"s3://{self.bucket}/run-{uuid.uuid4().hex[:8]}",
                "config": {"backend": "knative", "knative": options, "s3": s3}}
