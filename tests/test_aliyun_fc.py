"""The ``aliyun_fc`` backend: the real handler in-process, the FC 3.0 API as a contract.

What runs for real: ``runtime/aliyun_fc/index.py``'s ``handler(event, context)``, given the
payload as ``bytes`` and a context shaped as Function Compute 3.0 documents it (request id,
credentials, function, region), runs ``cloudpool.worker`` against S3 on moto; the SDK
(``alibabacloud_fc20230330``) builds and signs every request for real.

Contract only (no Function Compute here): a local server answers the documented FC 3.0
REST API -- ``GET/POST /2023-03-30/functions[/{name}]``, ``PUT`` to update, ``DELETE``,
``POST /2023-03-30/functions/{name}/invocations`` with ``x-fc-invocation-type: Async``
answered 202 -- and checks each request: path, method, invocation type, an AccessKey
signature in ``Authorization``, and no secret in any body. Accepted async calls run the
handler in-process, as FC would run the function.
"""
from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import json
import os
import socketserver
import threading
import time
import types
import unittest
import uuid
import zipfile
from typing import Any, Dict, List
from unittest import mock

import boto3

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.compute import backends
from cloudpool.compute._runtime_files import runtime_file
from cloudpool.compute.aliyun_fc import AliyunFcBackend
from cloudpool.errors import RemoteTraceback, VersionMismatchError, WorkerLostError
from tests import servers
from tests.lambda_functions import raise_key_error, square

KEY_ID, KEY_SECRET = "LTAI-test-" + uuid.uuid4().hex[:6], "secret-" + uuid.uuid4().hex
BOUND = 60.0
spec = importlib.util.spec_from_file_location("cloudpool_fc_index", runtime_file("aliyun_fc", "index.py"))
INDEX = importlib.util.module_from_spec(spec)
spec.loader.exec_module(INDEX)


def fc_context(name: str) -> Any:
    """The context object FC 3.0 passes to a Python event handler (its documented attributes)."""
    creds = types.SimpleNamespace(access_key_id="STS.tmp", access_key_secret="tmp", security_token="tok")
    return types.SimpleNamespace(request_id=uuid.uuid4().hex, credentials=creds, region="cn-hangzhou",
                                 account_id="1234567890",
                                 function=types.SimpleNamespace(name=name, handler="index.handler",
                                                                memory=1024, timeout=600))


class FcApi:
    """A local stand-in for the FC 3.0 API endpoint; records requests, runs async calls in-process."""

    def __init__(self) -> None:
        self.functions: Dict[str, Dict[str, Any]] = {}
        self.requests: List[Any] = []
        self.throttle = 0
        self.metadata_override: Dict[str, str] = {}
        self.lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                return

            def answer(self, status: int, obj: Any = None, code: str = "") -> None:
                body = json.dumps(obj if obj is not None else {"Code": code, "Message": code}).encode() \
                    if (obj is not None or code) else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-fc-request-id", uuid.uuid4().hex)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def route(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with api.lock:
                    api.requests.append((self.command, self.path, headers, body))
                if not headers.get("authorization", "").startswith(("ACS3-HMAC-SHA256", "acs ")) \
                        or KEY_ID not in headers.get("authorization", ""):
                    return self.answer(403, code="InvalidAccessKeyId")
                path = self.path.split("?")[0]
                prefix = "/2023-03-30/functions"
                name = path[len(prefix) + 1:].split("/")[0] if path.startswith(prefix + "/") else None
                if self.command == "POST" and path == prefix:
                    fn = json.loads(body)
                    api.functions[fn["functionName"]] = fn
                    return self.answer(200, fn)
                if self.command == "GET" and path == prefix:
                    return self.answer(200, {"functions": list(api.functions.values())})
                if name not in api.functions:
                    return self.answer(404, code="FunctionNotFound")
                if self.command == "GET" and path == f"{prefix}/{name}":
                    return self.answer(200, api.functions[name])
                if self.command == "PUT" and path == f"{prefix}/{name}":
                    api.functions[name].update(json.loads(body))
                    return self.answer(200, api.functions[name])
                if self.command == "DELETE" and path == f"{prefix}/{name}":
                    del api.functions[name]
                    return self.answer(204)
                if self.command == "POST" and path == f"{prefix}/{name}/invocations":
                    if headers.get("x-fc-invocation-type", "Sync") == "Sync":
                        # Synchronous: FC answers the handler's return value as the body.
                        out = INDEX.handler(body, fc_context(name)).encode()
                        if api.metadata_override:
                            meta = json.loads(out)
                            meta["versions"].update(api.metadata_override)
                            out = json.dumps(meta).encode()
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(out)))
                        self.end_headers()
                        self.wfile.write(out)
                        return
                    if headers.get("x-fc-invocation-type") != "Async":
                        return self.answer(400, code="InvalidArgument")
                    with api.lock:
                        refuse = api.throttle > 0
                        api.throttle -= refuse
                    if refuse:
                        return self.answer(429, code="ResourceThrottled")
                    # Accepted; FC runs the function later, in its own instance.
                    threading.Thread(target=INDEX.handler, args=(body, fc_context(name)), daemon=True).start()
                    return self.answer(202)
                self.answer(400, code="UnexpectedRequest")

            do_GET = do_POST = do_PUT = do_DELETE = route

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((servers.HOST, 0), Handler)
        self.endpoint = f"{servers.HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def options(api: FcApi, **extra) -> Dict[str, Any]:
    opts = {"region": "cn-hangzhou", "endpoint": api.endpoint, "protocol": "http", "access_key_id": KEY_ID,
            "access_key_secret": KEY_SECRET, "function_name": "cp_" + uuid.uuid4().hex[:6], "retry_seconds": 20}
    opts.update(extra)
    return opts


class FcOptionsTest(unittest.TestCase):
    def refused(self, opts, *words, exc=ValueError):
        base = {"region": "cn-hangzhou", "account_id": "123", "access_key_id": "a", "access_key_secret": "b"}
        base.update(opts)
        base = {k: v for k, v in base.items() if v is not None}
        with self.assertRaises(exc) as ctx:
            AliyunFcBackend(base, max_workers=1, storage_url="", storage_options={})
        for w in words:
            self.assertIn(w, str(ctx.exception))

    def test_registered(self):
        self.assertIs(backends.get("aliyun_fc"), AliyunFcBackend)
        self.assertEqual(AliyunFcBackend.secret_option_names, {"access_key_secret", "security_token"})

    def test_bad_options(self):
        self.refused({"memory_mb": 100}, "memory_mb", "128")
        self.refused({"memory_mb": 1000}, "memory_mb", "64")
        self.refused({"timeout": 0}, "timeout", "86400")
        self.refused({"region": "Hangzhou"}, "region")
        self.refused({"memroy": 1}, "memroy")
        self.refused({"account_id": None}, "account_id")
        with mock.patch.dict(os.environ, {"ALIBABA_CLOUD_REGION_ID": ""}):
            self.refused({"region": None}, "region", "ALIBABA_CLOUD_REGION_ID")
        with mock.patch.dict(os.environ, {"ALIBABA_CLOUD_ACCESS_KEY_ID": "", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ""}):
            self.refused({"access_key_id": None, "access_key_secret": None}, "ALIBABA_CLOUD_ACCESS_KEY_ID",
                         exc=PermissionError)

    def test_cost_is_priced_in_compute_units(self):
        from tests.test_cost import three_invocations
        est = three_invocations(backend="aliyun_fc", memory_mb=1024).cost(vcpus=0.5)
        # 501 + 1200 + 1 ms = 1.702 s; 0.5 vCPU = 1 CU/vCPU-s; 1 GB = 0.15 CU/GB-s; 3 calls x 0.0075 CU.
        self.assertAlmostEqual(est.compute_usd, 1.702 * (0.5 + 0.15) * 0.000020, places=15)
        self.assertAlmostEqual(est.request_usd, 3 * 0.0075 * 0.000020, places=15)

    def test_handler_answers_metadata_with_fc_event_shape(self):
        out = json.loads(INDEX.handler(b'{"cloudpool": "metadata"}', fc_context("x")))
        self.assertEqual(out["versions"], protocol.versions())


class FcRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moto = servers.moto_s3()
        cls.env = mock.patch.dict(os.environ, cls.moto.env)
        cls.env.start()
        cls.bucket = f"fc-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=cls.moto.endpoint_url, region_name=servers.S3_REGION).create_bucket(
            Bucket=cls.bucket)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def setUp(self):
        self.api = FcApi()
        self.addCleanup(self.api.close)

    def executor(self, opts) -> CloudPoolExecutor:
        conf = {"aliyun_fc": opts, "s3": {"endpoint_url": self.moto.endpoint_url, "region": servers.S3_REGION}}
        ex = CloudPoolExecutor(max_workers=2, backend="aliyun_fc", storage=f"s3://{self.bucket}/{uuid.uuid4().hex[:6]}",
                               config=conf)
        self.addCleanup(ex.shutdown, wait=False, cancel_futures=True)
        return ex

    def test_deploy_then_map_and_exceptions(self):
        opts = options(self.api)
        meta = AliyunFcBackend(dict(opts), max_workers=1, storage_url="", storage_options={}).deploy_runtime(
            memory_mb=2048, timeout=300)
        self.assertEqual(meta["versions"], protocol.versions())
        created = self.api.functions[opts["function_name"]]
        self.assertEqual((created["handler"], created["memorySize"], created["timeout"]), ("index.handler", 2048, 300))
        names = zipfile.ZipFile(io.BytesIO(base64.b64decode(created["code"]["zipFile"]))).namelist()
        self.assertIn("index.py", names)
        self.assertIn("cloudpool/worker.py", names)
        ex = self.executor(opts)
        self.assertEqual(list(ex.map(square, range(6), timeout=BOUND)), list(map(square, range(6))))
        with self.assertRaises(KeyError) as ctx:
            ex.submit(raise_key_error, "k").result(timeout=BOUND)
        self.assertIsInstance(ctx.exception.__cause__, RemoteTraceback)
        invokes = [r for r in self.api.requests if r[1].endswith("/invocations")
                   and r[2].get("x-fc-invocation-type") != "Sync" and b"metadata" not in r[3][:40]]
        self.assertTrue(invokes)
        for method, path, headers, body in self.api.requests:
            self.assertNotIn(KEY_SECRET.encode(), body)
            self.assertNotIn(servers.S3_SECRET_KEY.encode(), body)
            self.assertIn(KEY_ID, headers["authorization"])
        self.assertTrue(all(h["x-fc-invocation-type"] == "Async" for _m, _p, h, _b in invokes))
        # list / redeploy (update) / delete
        backend = AliyunFcBackend(dict(opts), max_workers=1, storage_url="", storage_options={})
        self.assertEqual([r["name"] for r in backend.list_runtimes()], [opts["function_name"]])
        backend.deploy_runtime(memory_mb=1024)
        self.assertEqual([r[0] for r in self.api.requests[-3:]], ["PUT", "POST", "PUT"])  # update, ask, record
        self.assertEqual(self.api.functions[opts["function_name"]]["memorySize"], 1024)
        backend.delete_runtime(opts["function_name"])
        self.assertEqual(backend.list_runtimes(), [])
        with self.assertRaises(FileNotFoundError):
            backend.delete_runtime(opts["function_name"])

    def test_missing_function_names_deploy(self):
        ex = self.executor(options(self.api))
        with self.assertRaises(FileNotFoundError) as ctx:
            ex.submit(square, 2).result(timeout=BOUND)
        self.assertIn("cloudpool runtime deploy --backend aliyun_fc", str(ctx.exception))

    def test_other_versions_refused(self):
        opts = options(self.api)
        AliyunFcBackend(dict(opts), max_workers=1, storage_url="", storage_options={}).deploy_runtime()
        # The function answers other versions than this client's (as an old deployment would).
        self.api.metadata_override = {"cloudpickle": "0.0.1"}
        AliyunFcBackend(dict(opts), max_workers=1, storage_url="", storage_options={}).deploy_runtime()
        recorded = json.loads(self.api.functions[opts["function_name"]]["environmentVariables"]["CLOUDPOOL_RUNTIME"])
        self.assertEqual(recorded["versions"]["cloudpickle"], "0.0.1")  # what the function said, not ours
        sent = len([r for r in self.api.requests if r[1].endswith("/invocations")])
        with self.assertRaises(VersionMismatchError) as ctx:
            self.executor(opts).submit(square, 2).result(timeout=BOUND)
        self.assertIn("0.0.1", str(ctx.exception))
        self.assertEqual(len([r for r in self.api.requests if r[1].endswith("/invocations")]), sent)

    def test_throttling_backed_off_then_bounded(self):
        opts = options(self.api)
        AliyunFcBackend(dict(opts), max_workers=1, storage_url="", storage_options={}).deploy_runtime()
        self.api.throttle = 3
        ex = self.executor(opts)
        self.assertEqual(ex.submit(square, 5).result(timeout=BOUND), 25)
        self.assertEqual(self.api.throttle, 0)
        self.api.throttle = 10_000
        ex2 = self.executor(dict(opts, retry_seconds=0.5))
        t0 = time.monotonic()
        with self.assertRaises(WorkerLostError) as ctx:
            ex2.submit(square, 6).result(timeout=BOUND)
        self.assertIn("ResourceThrottled", str(ctx.exception))
        self.assertLess(time.monotonic() - t0, BOUND)

    def test_wrong_key_is_a_permission_error(self):
        opts = options(self.api, access_key_id="LTAI-other")
        with self.assertRaises(PermissionError):
            self.executor(opts).submit(square, 2).result(timeout=BOUND)
