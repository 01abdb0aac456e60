"""The ``codeengine`` backend: IBM Cloud Code Engine apps as Knative Services.

What runs for real: the runtime (``runtime/knative/server.py``, which Code Engine apps
run) as a process on 127.0.0.1, invoked through the real ``codeengine`` backend, running
real cloudpool calls against S3 on moto; the ``kubernetes`` client talking to kmock's
Kubernetes API emulator (the same one tests/test_kubernetes.py uses).

Contract only: IBM Cloud IAM (``IamStub`` answers ``POST /identity/token`` as IAM's
documented API does, checking the grant type and API key) and Code Engine's Knative
Serving API (kmock stores the ``serving.knative.dev/v1`` Services and Secrets the backend
writes; nothing reconciles them, so the test plays the Knative controller: it starts the
runtime with the Secret's token and writes the Service's ``status.url``). Code Engine
itself, its IAM-backed Kubernetes proxy and its image pulls are not exercised.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List
from urllib.parse import parse_qs

from kubernetes import client as k8s_client

from cloudpool import CloudPoolExecutor
from cloudpool.compute import backends
from tests import servers
from tests.test_kubernetes import KubeAPI

ROOT = servers.ROOT
BOUND = 60
NAMESPACE = "a1b2c3d4-e5f6"
API_KEY = "ibm-api-key-" + uuid.uuid4().hex
IAM_TOKEN = "iam-access-" + uuid.uuid4().hex


def square(x: int) -> int:
    return x * x


class KnativeKubeAPI(KubeAPI):
    RESOURCES = [("v1/secrets", "Secret"), ("serving.knative.dev/v1/services", "Service")]


class IamStub:
    """IBM Cloud IAM's token endpoint, as documented (form-encoded API-key grant)."""

    def __init__(self) -> None:
        self.exchanges: List[Dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                stub.exchanges.append({"path": self.path, "form": form,
                                       "content_type": self.headers.get("Content-Type")})
                ok = (self.path == "/identity/token"
                      and form.get("grant_type") == ["urn:ibm:params:oauth:grant-type:apikey"]
                      and form.get("apikey") == [API_KEY])
                now = int(time.time())
                body = json.dumps({"access_token": IAM_TOKEN, "refresh_token": "not-supported", "token_type": "Bearer",
                                   "expires_in": 3600, "expiration": now + 3600} if ok else
                                  {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."}
                                  ).encode()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _State:
    api = None
    iam = None
    moto = None
    bucket = "cp-ce-" + uuid.uuid4().hex[:8]
    s3: Dict[str, Any] = {}
    procs: list = []


def setUpModule() -> None:
    _State.api = KnativeKubeAPI().start()
    _State.api.add_namespace(NAMESPACE)
    _State.iam = IamStub()
    _State.moto = servers.moto_s3()
    import boto3

    boto3.client("s3", endpoint_url=_State.moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=_State.bucket)
    _State.s3 = {"endpoint_url": _State.moto.endpoint_url, "region": servers.S3_REGION,
                 "aws_access_key_id": servers.S3_ACCESS_KEY, "aws_secret_access_key": servers.S3_SECRET_KEY}


def tearDownModule() -> None:
    for proc, log in _State.procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    if _State.iam is not None:
        _State.iam.close()
    if _State.api is not None:
        _State.api.stop()


def start_runtime(token: str) -> str:
    """The knative runtime server as a process (one Code Engine app instance); returns its URL."""
    port = servers.free_port()
    log = open(os.path.join(tempfile.gettempdir(), f"codeengine-runtime-{port}.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "runtime", "knative", "server.py"), "--host", "127.0.0.1",
         "--port", str(port), "--concurrency", "2", "--start-method", "fork"],
        env=dict(os.environ, PYTHONPATH=ROOT, CLOUDPOOL_RUNTIME_TOKEN=token, **_State.moto.env),
        stdout=log, stderr=subprocess.STDOUT)
    _State.procs.append((proc, log))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the runtime did not start: see {log.name}")
            time.sleep(0.1)


def stored_bytes(prefix: str) -> Dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=_State.moto.endpoint_url, region_name=servers.S3_REGION,
                      aws_access_key_id=servers.S3_ACCESS_KEY, aws_secret_access_key=servers.S3_SECRET_KEY)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=_State.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            try:
                out[obj["Key"]] = s3.get_object(Bucket=_State.bucket, Key=obj["Key"])["Body"].read()
            except s3.exceptions.NoSuchKey:
                pass  # consumed and removed by the client meanwhile
    return out


def ce_options(**more: Any) -> Dict[str, Any]:
    opts = {"api_server": _State.api.url, "namespace": NAMESPACE, "api_key": API_KEY,
            "iam_endpoint": _State.iam.url, "app": "cp-app", "image": "icr.io/ns/cloudpool-knative:test",
            "concurrency": 2, "retry_seconds": 10}
    opts.update(more)
    return opts


def backend(**more: Any):
    return backends.get("codeengine")(ce_options(**more), max_workers=None,
                                      storage_url=f"s3://{_State.bucket}/x", storage_options={})


def custom() -> k8s_client.CustomObjectsApi:
    cfg = k8s_client.Configuration()
    cfg.host = _State.api.url
    return k8s_client.CustomObjectsApi(k8s_client.ApiClient(cfg))


class CodeEngineLifecycleTest(unittest.TestCase):
    def test_missing_app_refused_then_deploy_run_list_delete(self) -> None:
        _State.api.forget_requests()
        with CloudPoolExecutor(max_workers=1, backend="codeengine", storage=f"s3://{_State.bucket}/m",
                               config={"codeengine": ce_options(), "s3": dict(_State.s3)}) as ex:
            with self.assertRaises(FileNotFoundError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn("cloudpool runtime deploy --backend codeengine cp-app", str(cm.exception))

        info = backend(memory_mb=2048, timeout=120).deploy_runtime()
        self.assertEqual(info["name"], "cp-app")
        # Every Kubernetes API request so far (all the backend's) carried the IAM token obtained for the API key.
        seen = _State.api.requests()
        self.assertTrue(seen)
        self.assertEqual({r.headers.get("Authorization") for r in seen}, {f"Bearer {IAM_TOKEN}"})
        self.assertTrue(all(e["form"]["apikey"] == [API_KEY] for e in _State.iam.exchanges))
        svc = custom().get_namespaced_custom_object("serving.knative.dev", "v1", NAMESPACE, "services", "cp-app")
        self.assertEqual(svc["metadata"]["labels"], {"cloudpool-runtime": "true"})
        spec = svc["spec"]["template"]["spec"]
        self.assertEqual((spec["containerConcurrency"], spec["timeoutSeconds"]), (2, 120))
        container = spec["containers"][0]
        self.assertEqual(container["image"], "icr.io/ns/cloudpool-knative:test")
        self.assertEqual(container["resources"]["limits"], {"memory": "2048M"})
        self.assertEqual(container["env"], [{"name": "CLOUDPOOL_RUNTIME_TOKEN", "valueFrom": {
            "secretKeyRef": {"name": "cp-app-token", "key": "token"}}}])

        # Play Knative: run the revision with the Secret's token and publish its URL.
        import base64

        cfg = k8s_client.Configuration()
        cfg.host = _State.api.url
        secret = k8s_client.CoreV1Api(k8s_client.ApiClient(cfg)).read_namespaced_secret("cp-app-token", NAMESPACE)
        token = base64.b64decode(secret.data["token"]).decode()
        url = start_runtime(token)
        custom().patch_namespaced_custom_object(
            "serving.knative.dev", "v1", NAMESPACE, "services", "cp-app",
            {"status": {"url": url, "conditions": [{"type": "Ready", "status": "True"}]}})

        with CloudPoolExecutor(max_workers=2, backend="codeengine", storage=f"s3://{_State.bucket}/r",
                               config={"codeengine": ce_options(), "s3": dict(_State.s3)}) as ex:
            got = list(ex.map(square, range(20), timeout=BOUND))
            stored = stored_bytes("r")  # before shutdown removes the executor's objects
        self.assertEqual(got, list(map(square, range(20))))
        # No credential of any kind in what the run stored (events, job, statuses).
        self.assertTrue(stored)
        for key, data in stored.items():
            for secret_value in (API_KEY, IAM_TOKEN, token):
                self.assertNotIn(secret_value.encode(), data, key)

        # `cloudpool hello` from the configuration alone (environment), as a user runs it.
        env = dict(os.environ, PYTHONPATH=ROOT, CLOUDPOOL_STORAGE=f"s3://{_State.bucket}/hello",
                   CLOUDPOOL_S3__ENDPOINT_URL=_State.moto.endpoint_url, **_State.moto.env,
                   **{f"CLOUDPOOL_CODEENGINE__{k.upper()}": str(v) for k, v in ce_options().items()
                      if k in ("api_server", "namespace", "api_key", "iam_endpoint", "app")})
        env.pop("CLOUDPOOL_CONFIG", None)
        hello = subprocess.run([sys.executable, "-c", "import sys; from cloudpool.cli import main; "
                                "sys.exit(main(sys.argv[1:]))", "hello", "--backend", "codeengine"],
                               env=env, capture_output=True, text=True, timeout=BOUND)
        self.assertEqual(hello.returncode, 0, hello.stdout + hello.stderr)
        self.assertIn("codeengine", hello.stdout)

        listed = backend().list_runtimes()
        self.assertEqual([(r["name"], r["url"]) for r in listed], [("cp-app", url)])
        backend().delete_runtime("cp-app")
        with self.assertRaises(FileNotFoundError):
            backend().delete_runtime("cp-app")


class CodeEngineOptionsTest(unittest.TestCase):
    def test_bad_options(self) -> None:
        for more, word in (({"namespace": None}, "namespace"), ({"api_server": None}, "region"),
                           ({"api_server": None, "region": "Mars"}, "region"), ({"app": "Bad_App"}, "app"),
                           ({"memory_mb": 10}, "memory_mb"), ({"timeout": 601}, "timeout"),
                           ({"bogus": 1}, "bogus")):
            with self.subTest(more=more):
                opts = {k: v for k, v in ce_options(**more).items() if v is not None}
                with self.assertRaisesRegex(ValueError, word):
                    backends.get("codeengine")(opts, max_workers=None, storage_url="s3://b/x", storage_options={})

    def test_wrong_api_key_is_permission_error(self) -> None:
        with self.assertRaisesRegex(PermissionError, "api_key"):
            backend(api_key="wrong-key")
        opts = {k: v for k, v in ce_options().items() if k != "api_key"}
        with self.assertRaisesRegex(PermissionError, "api_key"):
            backends.get("codeengine")(opts, max_workers=None, storage_url="s3://b/x", storage_options={})


if __name__ == "__main__":
    unittest.main()
