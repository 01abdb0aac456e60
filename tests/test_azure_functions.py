"""The ``azure_functions`` backend: the real function body in-process, management as a contract.

What runs for real: ``runtime/azure_functions/function_app.py``'s handler, given the
``azure-functions`` library's own ``HttpRequest`` objects and answering its
``HttpResponse``, runs ``cloudpool.worker`` against S3 on moto, behind a small local HTTP
server that stands in for the Functions host (it checks ``x-functions-key`` or the Entra
bearer token as the host does, and can answer 429 like a host at its scale-out limit);
``CloudPoolExecutor(backend="azure_functions")`` drives it over HTTP.

Contract only (no Azure here): the management requests -- ARM app settings
list/update, Kudu ``POST /api/zipdeploy?isAsync=true`` with the zip, ARM
``sites/functions`` list and delete -- are checked request by request against
Microsoft's documented paths, methods and headers, and answered as documented.
"""
from __future__ import annotations

import http.server
import importlib.util
import io
import json
import os
import socketserver
import threading
import time
import unittest
import uuid
import zipfile
from typing import Any, Dict, List, Tuple
from unittest import mock

import azure.functions as func
import boto3

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.compute import backends
from cloudpool.compute._runtime_files import runtime_file
from cloudpool.compute.azure_functions import AzureFunctionsBackend
from cloudpool.errors import RemoteTraceback, VersionMismatchError
from tests import servers
from tests.lambda_functions import raise_key_error, square

KEY = "test-function-key-" + uuid.uuid4().hex[:8]
SUB, RG, APP = "00000000-1111-2222-3333-444444444444", "rg-cloudpool", "cp-test-app"
BOUND = 60.0


def _load_function_app():
    spec = importlib.util.spec_from_file_location("cloudpool_azure_function_app",
                                                  runtime_file("azure_functions", "function_app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUNCTION_APP = _load_function_app()


class _Token:
    def __init__(self, token: str) -> None:
        self.token, self.expires_on = token, int(time.time()) + 3600


class FakeCredential:
    """An azure-identity-shaped credential (``get_token``) handing out a fixed token per scope."""

    def __init__(self) -> None:
        self.scopes: List[str] = []

    def get_token(self, *scopes: str, **_kw: Any) -> _Token:
        self.scopes.extend(scopes)
        return _Token("entra-token-for-" + scopes[0])


class FunctionsHost:
    """Stands in for the Functions host, Kudu and ARM on 127.0.0.1; records every request."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.throttle = 0
        self.metadata_override: Dict[str, Any] = {}
        self.settings: Dict[str, str] = {"FUNCTIONS_WORKER_RUNTIME": "python"}
        self.functions = [f"{APP}/cloudpool"]
        self.lock = threading.Lock()
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def answer(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with host.lock:
                    host.requests.append((self.command, self.path, headers, body))
                if self.path.startswith("/api/cloudpool"):
                    return self.function(headers, body)
                return self.management(headers, body)

            def function(self, headers: Dict[str, str], body: bytes) -> None:
                # The host's own checks, before any function code runs (AuthLevel.FUNCTION).
                if headers.get("x-functions-key") != KEY and headers.get("authorization") != \
                        "Bearer entra-token-for-api://cp-test-app/.default":
                    return self.answer(401)
                with host.lock:
                    refuse = host.throttle > 0
                    host.throttle -= refuse
                if refuse:
                    return self.answer(429, b'{"error": "scale-out limit"}')
                req = func.HttpRequest(self.command, f"http://{self.headers['Host']}{self.path}",
                                       headers=dict(self.headers.items()), params={}, route_params={}, body=body)
                resp = FUNCTION_APP.handle(req)
                out = resp.get_body()
                if host.metadata_override and json.loads(body or b"null") == FUNCTION_APP.METADATA_REQUEST:
                    meta = json.loads(out)
                    meta["versions"].update(host.metadata_override)
                    out = json.dumps(meta).encode()
                self.answer(resp.status_code, out, resp.mimetype or "application/json")

            def management(self, headers: Dict[str, str], body: bytes) -> None:
                if headers.get("authorization") != "Bearer entra-token-for-https://management.azure.com/.default":
                    return self.answer(401, b'{"error": {"code": "InvalidAuthenticationToken"}}')
                site = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Web/sites/{APP}"
                api = "api-version=2022-03-01"
                if self.command == "POST" and self.path == f"{site}/config/appsettings/list?{api}":
                    return self.answer(200, json.dumps({"properties": host.settings}).encode())
                if self.command == "PUT" and self.path == f"{site}/config/appsettings?{api}":
                    host.settings = json.loads(body)["properties"]
                    return self.answer(200, json.dumps({"properties": host.settings}).encode())
                if self.command == "POST" and self.path == "/api/zipdeploy?isAsync=true":
                    if headers.get("content-type") != "application/zip":
                        return self.answer(415)
                    return self.answer(202)  # Kudu: accepted, built in the background
                if self.command == "GET" and self.path == f"{site}/functions?{api}":
                    value = [{"name": n, "properties": {"language": "python", "isDisabled": False,
                                                        "invoke_url_template": "https://x/api/cloudpool"}}
                             for n in host.functions]
                    return self.answer(200, json.dumps({"value": value}).encode())
                if self.command == "DELETE" and self.path == f"{site}/functions/cloudpool?{api}":
                    if f"{APP}/cloudpool" not in host.functions:
                        return self.answer(404)
                    host.functions.remove(f"{APP}/cloudpool")
                    return self.answer(204)
                self.answer(400, json.dumps({"error": f"unexpected {self.command} {self.path}"}).encode())

            do_GET = do_POST = do_PUT = do_DELETE = handle_any

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((servers.HOST, 0), Handler)
        self.url = f"http://{servers.HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make(options=None) -> AzureFunctionsBackend:
    opts = {"app_name": APP, "function_key": KEY}
    opts.update(options or {})
    return AzureFunctionsBackend(opts, max_workers=2, storage_url="", storage_options={})


class AzureOptionsTest(unittest.TestCase):
    def assertRefused(self, options, *words, exc=ValueError):
        with self.assertRaises(exc) as ctx:
            AzureFunctionsBackend(options, max_workers=1, storage_url="", storage_options={})
        for word in words:
            self.assertIn(word, str(ctx.exception))

    def test_registered(self):
        self.assertIs(backends.get("azure_functions"), AzureFunctionsBackend)
        self.assertEqual(AzureFunctionsBackend.secret_option_names, {"function_key", "credential"})
        self.assertNotIn(KEY, json.dumps(make().describe()))

    def test_bad_options_name_the_setting_and_the_fix(self):
        self.assertRefused({"function_key": KEY}, "app_name")
        self.assertRefused({"app_name": APP, "function_key": KEY, "timeout": 600}, "timeout", "230")
        self.assertRefused({"app_name": APP, "function_key": KEY, "memory_mb": 1000}, "memory_mb", "2048")
        self.assertRefused({"app_name": "-bad-", "function_key": KEY}, "app_name")
        self.assertRefused({"app_name": APP, "function_key": KEY, "auth": "basic"}, "auth", "entra")
        self.assertRefused({"app_name": APP, "function_key": KEY, "timout": 10}, "timout")
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("CLOUDPOOL_AZURE_FUNCTION_KEY", None)
            self.assertRefused({"app_name": APP}, "function_key", "CLOUDPOOL_AZURE_FUNCTION_KEY", exc=PermissionError)

    def test_local_storage_is_refused(self):
        backend = AzureFunctionsBackend({"app_name": APP, "function_key": KEY}, max_workers=1,
                                        storage_url="file:///tmp/x", storage_options={})
        with self.assertRaises(ValueError):
            backend.invoke("i", {})


class AzureFunctionRunTest(unittest.TestCase):
    """The executor against the real function body (azure-functions HttpRequest/HttpResponse)."""

    @classmethod
    def setUpClass(cls):
        cls.moto = servers.moto_s3()
        cls.env = mock.patch.dict(os.environ, cls.moto.env)
        cls.env.start()
        cls.bucket = f"azfn-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=cls.moto.endpoint_url, region_name=servers.S3_REGION).create_bucket(
            Bucket=cls.bucket)

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()

    def setUp(self):
        self.host = FunctionsHost()
        self.addCleanup(self.host.close)

    def executor(self, **opts) -> CloudPoolExecutor:
        conf = {"azure_functions": dict({"app_name": APP, "function_key": KEY, "url": self.host.url,
                                         "retry_seconds": 20}, **opts),
                "s3": {"endpoint_url": self.moto.endpoint_url, "region": servers.S3_REGION}}
        ex = CloudPoolExecutor(max_workers=2, backend="azure_functions",
                               storage=f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}", config=conf)
        self.addCleanup(ex.shutdown, wait=False, cancel_futures=True)
        return ex

    def invocation_bodies(self) -> List[bytes]:
        return [b for m, p, _h, b in self.host.requests if p.startswith("/api/cloudpool")]

    def test_map_equals_builtin_map_and_no_secret_in_bodies(self):
        ex = self.executor()
        self.assertEqual(list(ex.map(square, range(8), timeout=BOUND)), list(map(square, range(8))))
        bodies = self.invocation_bodies()
        self.assertGreaterEqual(len(bodies), 2)  # the handshake, then at least one batch
        self.assertEqual(json.loads(bodies[0]), {"cloudpool": "metadata"})
        for _m, path, headers, body in self.host.requests:
            self.assertEqual(headers.get("x-functions-key"), KEY)
            self.assertNotIn(KEY.encode(), body)
            self.assertNotIn(servers.S3_SECRET_KEY.encode(), body)

    def test_remote_exception_keeps_type_and_traceback(self):
        ex = self.executor()
        with self.assertRaises(KeyError) as ctx:
            ex.submit(raise_key_error, "k").result(timeout=BOUND)
        self.assertIsInstance(ctx.exception.__cause__, RemoteTraceback)

    def test_wrong_key_fails_with_permission_error(self):
        ex = self.executor(function_key="wrong")
        with self.assertRaises(PermissionError) as ctx:
            ex.submit(square, 2).result(timeout=BOUND)
        self.assertIn("function_key", str(ctx.exception))

    def test_throttling_is_backed_off_within_the_bound(self):
        self.host.throttle = 4  # the handshake's and the batch's requests see 429 first
        ex = self.executor()
        t0 = time.monotonic()
        self.assertEqual(ex.submit(square, 7).result(timeout=BOUND), 49)
        self.assertLess(time.monotonic() - t0, 20)
        self.assertEqual(self.host.throttle, 0)

    def test_throttled_too_long_is_reported_lost(self):
        from cloudpool.errors import WorkerLostError
        ex = self.executor(retry_seconds=0.5)
        ex.submit(square, 1).result(timeout=BOUND)  # handshake done
        self.host.throttle = 10_000
        t0 = time.monotonic()
        with self.assertRaises(WorkerLostError) as ctx:
            ex.submit(square, 2).result(timeout=BOUND)
        self.assertIn("429", str(ctx.exception))
        self.assertLess(time.monotonic() - t0, BOUND)

    def test_other_versions_are_refused(self):
        self.host.metadata_override = {"cloudpickle": "0.0.1"}
        ex = self.executor()
        with self.assertRaises(VersionMismatchError) as ctx:
            ex.submit(square, 2).result(timeout=BOUND)
        self.assertIn("0.0.1", str(ctx.exception))
        self.assertEqual(len(self.invocation_bodies()), 1)  # only the handshake was sent

    def test_cloudpool_hello(self):
        import tempfile
        from cloudpool.storage import clear_cache
        from tests.test_cli import run
        conf = {"azure_functions": {"app_name": APP, "function_key": KEY, "url": self.host.url},
                "s3": {"endpoint_url": self.moto.endpoint_url, "region": servers.S3_REGION}}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            json.dump(conf, f)
        self.addCleanup(os.unlink, f.name)
        with mock.patch.dict(os.environ, {"CLOUDPOOL_CONFIG": f.name}):
            clear_cache()
            try:
                code, out, err = run("hello", "--backend", "azure_functions", "--storage",
                                     f"s3://{self.bucket}/hello", "--json")
            finally:
                clear_cache()
        self.assertEqual(code, 0, err)
        report = json.loads(out)
        self.assertEqual(report["description"]["runtime"]["versions"], protocol.versions())
        # The cost of the run is priced on Azure Functions' own sheet.
        from tests.test_cost import three_invocations
        est = three_invocations(backend="azure_functions", memory_mb=2048).cost()
        self.assertIn("Azure Functions", est.source)

    def test_entra_token_in_authorization_header(self):
        cred = FakeCredential()
        backend = AzureFunctionsBackend({"app_name": APP, "url": self.host.url, "auth": "entra", "credential": cred},
                                        max_workers=1, storage_url="", storage_options={})
        meta = backend.fetch_metadata()
        self.assertEqual(meta["versions"], protocol.versions())
        self.assertEqual(cred.scopes, [f"api://{APP}/.default"])
        self.assertNotIn("x-functions-key", self.host.requests[-1][2])


class AzureRuntimeContractTest(unittest.TestCase):
    """deploy/list/delete: the exact ARM and Kudu requests, answered as documented."""

    def setUp(self):
        self.host = FunctionsHost()
        self.addCleanup(self.host.close)
        self.cred = FakeCredential()
        self.backend = make({"url": self.host.url, "scm_url": self.host.url, "management_url": self.host.url,
                             "subscription_id": SUB, "resource_group": RG, "credential": self.cred})

    def test_deploy_list_delete(self):
        meta = self.backend.deploy_runtime()
        self.assertEqual(meta["versions"], protocol.versions())
        calls = [(m, p) for m, p, _h, _b in self.host.requests]
        site = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Web/sites/{APP}"
        self.assertEqual(calls[:4], [
            ("POST", f"{site}/config/appsettings/list?api-version=2022-03-01"),
            ("PUT", f"{site}/config/appsettings?api-version=2022-03-01"),
            ("POST", "/api/zipdeploy?isAsync=true"),
            ("POST", "/api/cloudpool")])
        self.assertEqual(self.host.settings["SCM_DO_BUILD_DURING_DEPLOYMENT"], "true")
        self.assertEqual(self.host.settings["FUNCTIONS_WORKER_RUNTIME"], "python")  # kept
        zip_body = self.host.requests[2][3]
        names = zipfile.ZipFile(io.BytesIO(zip_body)).namelist()
        for name in ("function_app.py", "host.json", "requirements.txt", "cloudpool/worker.py",
                     "cloudpickle/__init__.py"):
            self.assertIn(name, names)
        self.assertNotIn(KEY.encode(), zip_body)
        self.assertEqual(self.host.requests[2][2]["authorization"],
                         "Bearer entra-token-for-https://management.azure.com/.default")

        self.assertEqual([r["function"] for r in self.backend.list_runtimes()], ["cloudpool"])
        self.backend.delete_runtime(APP)
        self.assertEqual(self.backend.list_runtimes(), [])
        with self.assertRaises(FileNotFoundError):
            self.backend.delete_runtime(APP)

    def test_management_needs_subscription_and_group(self):
        with self.assertRaises(ValueError) as ctx:
            make({"url": self.host.url}).list_runtimes()
        self.assertIn("subscription_id", str(ctx.exception))

    def test_management_refusal_is_a_permission_error(self):
        class Wrong(FakeCredential):
            def get_token(self, *scopes, **kw):
                return _Token("nope")
        backend = make({"url": self.host.url, "management_url": self.host.url, "subscription_id": SUB,
                        "resource_group": RG, "credential": Wrong()})
        with self.assertRaises(PermissionError):
            backend.list_runtimes()
