"""The ``containerapps`` backend: Azure Container Apps running the cloudpool HTTP runtime.

What runs for real: the runtime (``runtime/knative/server.py``, the container a
Container Apps runtime runs) as a process on 127.0.0.1, invoked through the real
``containerapps`` backend with the shared token, running real cloudpool calls against S3
on moto; the ``cloudpool runtime`` CLI as a subprocess.

Contract only: Azure Resource Manager. ``ArmStub`` answers the ``Microsoft.App/
containerApps`` REST API (api-version 2024-03-01) as documented -- PUT answering 201 with
an ``Azure-AsyncOperation`` header to poll, GET, list by resource group, the
``listSecrets`` action, DELETE answering 202 with a ``Location`` to poll -- and refuses any
request without the exact api-version or bearer token. It also plays the platform: the
app it "creates" is the runtime process started with the secret from the PUT body.
Container Apps itself (ingress over HTTPS, Easy Auth, scaling, image pulls) and Microsoft
Entra are not exercised.
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
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

from cloudpool import CloudPoolExecutor
from cloudpool.compute import backends
from tests import servers

ROOT = servers.ROOT
BOUND = 60
SUB = str(uuid.uuid4())
RG = "cp-rg"
REGION = "eastus"
ENV_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/managedEnvironments/cp-env"
ARM_TOKEN = "arm-token-" + uuid.uuid4().hex
IMAGE = "cpacr.azurecr.io/cloudpool-knative:test"
APPS_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.App/containerApps"


def square(x: int) -> int:
    return x * x


def fail(x: int) -> int:
    raise KeyError(f"no such thing {x}")


class ArmStub:
    """Azure Resource Manager's Microsoft.App/containerApps API, as documented, for one resource group."""

    def __init__(self, on_create) -> None:
        self.apps: Dict[str, Dict[str, Any]] = {}
        self.auth_configs: Dict[str, Dict[str, Any]] = {}
        self.secrets: Dict[str, List[Dict[str, str]]] = {}
        self.ops: Dict[str, int] = {}  # operation id -> polls left before it finishes
        self.requests: List[Dict[str, Any]] = []
        self.on_create = on_create
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: Optional[Dict[str, Any]] = None,
                        headers: Optional[Dict[str, str]] = None) -> None:
                headers = headers or {}
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                stub.requests.append({"method": method, "path": parts.path, "query": query, "body": body,
                                      "auth": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {ARM_TOKEN}":
                    return self._answer(401, {"error": {"code": "InvalidAuthenticationToken",
                                                        "message": "The access token is invalid."}})
                if query.get("api-version") != ["2024-03-01"]:
                    return self._answer(400, {"error": {"code": "InvalidApiVersionParameter",
                                                        "message": f"bad api-version {query.get('api-version')}"}})
                try:
                    stub.route(self, method, parts.path, body)
                except AssertionError as exc:  # a request that breaks the contract: visible in the test
                    self._answer(400, {"error": {"code": "ContractBroken", "message": str(exc)}})

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, h, method: str, path: str, body: Any) -> None:
        not_found = {"error": {"code": "ResourceNotFound", "message": "not found"}}
        if path.startswith(f"/subscriptions/{SUB}/providers/Microsoft.App/locations/{REGION}/"
                           f"containerappOperationStatuses/"):
            op = path.rsplit("/", 1)[1]
            self.ops[op] -= 1
            return h._answer(200, {"id": path, "name": op,
                                   "status": "Succeeded" if self.ops[op] <= 0 else "InProgress"})
        if path.startswith(f"/subscriptions/{SUB}/providers/Microsoft.App/locations/{REGION}/"
                           f"containerappOperationResults/"):
            op = path.rsplit("/", 1)[1]
            self.ops[op] -= 1
            return h._answer(202 if self.ops[op] > 0 else 204, None,
                             {"Location": self.url + path + "?api-version=2024-03-01"} if self.ops[op] > 0 else {})
        if path == APPS_PATH and method == "GET":
            return h._answer(200, {"value": list(self.apps.values())})
        assert path.startswith(APPS_PATH + "/"), f"unexpected path {path}"
        name, _, action = path[len(APPS_PATH) + 1:].partition("/")
        if action == "listSecrets" and method == "POST":
            if name not in self.apps:
                return h._answer(404, not_found)
            return h._answer(200, {"value": self.secrets[name]})
        if action == "authConfigs/current" and method == "PUT":
            if name not in self.apps:
                return h._answer(404, not_found)
            aad = body["properties"]["identityProviders"]["azureActiveDirectory"]
            assert aad["enabled"] is True and aad["registration"]["clientId"], body
            self.auth_configs[name] = body
            return h._answer(200, dict(body, id=f"{APPS_PATH}/{name}/authConfigs/current", name="current",
                                       type="Microsoft.App/containerApps/authConfigs"))
        assert not action, f"unexpected action {action}"
        if method == "GET":
            return h._answer(200, self.apps[name]) if name in self.apps else h._answer(404, not_found)
        if method == "PUT":
            props = body["properties"]
            assert body["location"] == REGION and props["managedEnvironmentId"] == ENV_ID, body
            secrets = props["configuration"].pop("secrets")
            container = props["template"]["containers"][0]
            assert {"name": "CLOUDPOOL_RUNTIME_TOKEN", "secretRef": secrets[0]["name"]} in container["env"]
            assert props["configuration"]["ingress"]["targetPort"] == 8080
            created = name not in self.apps
            if "--insecure-no-token" in container.get("args", []):
                # A runtime checking no token is only safe behind Container Apps authentication.
                props_auth = (self.auth_configs.get(name) or {}).get("properties") or {}
                assert (props_auth.get("globalValidation") or {}).get("unauthenticatedClientAction") == \
                    "Return401", "the runtime would be open: no authentication configured"
            self.secrets[name] = secrets
            props["provisioningState"] = "InProgress"
            props["configuration"]["ingress"]["fqdn"] = f"{name}.happy-sky-1.{REGION}.azurecontainerapps.io"
            resource = dict(body, id=f"{APPS_PATH}/{name}", name=name, type="Microsoft.App/containerApps")
            self.apps[name] = resource
            if created:
                self.on_create(name, secrets[0]["value"])
            props["provisioningState"] = "Succeeded"
            op = uuid.uuid4().hex
            self.ops[op] = 2
            return h._answer(201 if created else 200, resource, {
                "Azure-AsyncOperation": f"{self.url}/subscriptions/{SUB}/providers/Microsoft.App/locations/{REGION}/"
                                        f"containerappOperationStatuses/{op}?api-version=2024-03-01"})
        if method == "DELETE":
            if name not in self.apps:
                return h._answer(204)
            del self.apps[name], self.secrets[name]
            op = uuid.uuid4().hex
            self.ops[op] = 2
            return h._answer(202, None, {
                "Location": f"{self.url}/subscriptions/{SUB}/providers/Microsoft.App/locations/{REGION}/"
                            f"containerappOperationResults/{op}?api-version=2024-03-01"})
        raise AssertionError(f"unexpected {method} {path}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _State:
    moto = None
    arm: Optional[ArmStub] = None
    bucket = "cp-aca-" + uuid.uuid4().hex[:8]
    s3: Dict[str, Any] = {}
    procs: list = []
    token = "shared-" + uuid.uuid4().hex
    url = ""
    deployed: Dict[str, str] = {}  # app name -> runtime URL


def start_runtime(token: str, pythonpath: str = "", extra: Sequence[str] = ()) -> str:
    """The knative runtime server as a process (one container app replica); returns its URL."""
    port = servers.free_port()
    log = open(os.path.join(tempfile.gettempdir(), f"containerapps-runtime-{port}.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "runtime", "knative", "server.py"), "--host", "127.0.0.1",
         "--port", str(port), "--concurrency", "2", "--start-method", "fork", *extra],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, ROOT) if p),
                 CLOUDPOOL_RUNTIME_TOKEN=token, **_State.moto.env),
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


def setUpModule() -> None:
    _State.moto = servers.moto_s3()
    import boto3

    boto3.client("s3", endpoint_url=_State.moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=_State.bucket)
    _State.s3 = {"endpoint_url": _State.moto.endpoint_url, "region": servers.S3_REGION,
                 "aws_access_key_id": servers.S3_ACCESS_KEY, "aws_secret_access_key": servers.S3_SECRET_KEY}
    _State.url = start_runtime(_State.token)
    _State.arm = ArmStub(lambda name, token: _State.deployed.__setitem__(name, start_runtime(token)))


def tearDownModule() -> None:
    for proc, log in _State.procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    if _State.arm is not None:
        _State.arm.close()


def aca_options(**more: Any) -> Dict[str, Any]:
    opts: Dict[str, Any] = {"subscription_id": SUB, "resource_group": RG, "region": REGION, "environment_id": ENV_ID,
                            "image": IMAGE, "app": "cp-app", "management_endpoint": _State.arm.url,
                            "management_token": ARM_TOKEN, "concurrency": 2, "retry_seconds": 10}
    opts.update(more)
    return {k: v for k, v in opts.items() if v is not None}


def executor(**more: Any) -> CloudPoolExecutor:
    opts = {"url": _State.url, "token": _State.token, "retry_seconds": 10}
    opts.update(more)
    return CloudPoolExecutor(max_workers=2, backend="containerapps", storage=f"s3://{_State.bucket}/r",
                             config={"containerapps": opts, "s3": dict(_State.s3)})


class ContainerAppsRunTest(unittest.TestCase):
    """The runtime for real, through the real backend, with the app's shared token."""

    def test_map_equals_builtin_map_and_priced_as_container_apps(self) -> None:
        with executor() as ex:
            got = list(ex.map(square, range(25), timeout=BOUND))
            stats = ex.stats()
        self.assertEqual(got, list(map(square, range(25))))
        estimate = stats.cost(memory_mb=1024, vcpus=0.5)
        self.assertEqual(estimate.platform, "container_apps")
        self.assertGreater(estimate.requests, 0)

    def test_remote_exception_with_traceback(self) -> None:
        with executor() as ex:
            with self.assertRaises(KeyError) as cm:
                ex.submit(fail, 7).result(BOUND)
        self.assertIn("no such thing 7", str(cm.exception))
        self.assertIn("fail", str(cm.exception.__cause__))  # the worker's traceback

    def test_wrong_token_is_permission_error(self) -> None:
        with executor(token="not-the-token") as ex:
            with self.assertRaises(PermissionError) as cm:
                ex.submit(square, 3).result(BOUND)
        self.assertIn("cloudpool-token", str(cm.exception))

    def test_busy_app_backed_off_within_retry_seconds(self) -> None:
        import requests

        # Container Apps' ingress answering 429 (replicas at their concurrency) to every call:
        # the runtime's own /runtime answer is relayed, so the handshake passes.
        meta = requests.get(_State.url + "/runtime", timeout=10,
                            headers={"Authorization": f"Bearer {_State.token}"}).content
        tries: List[float] = []

        class Busy(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(meta)))
                self.end_headers()
                self.wfile.write(meta)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                tries.append(time.monotonic())
                self.send_response(429)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            started = time.monotonic()
            with executor(url=f"http://127.0.0.1:{server.server_address[1]}", retry_seconds=2) as ex:
                with self.assertRaises(Exception) as cm:
                    ex.submit(square, 2).result(BOUND)
            self.assertLess(time.monotonic() - started, 40)
        finally:
            server.shutdown()
            server.server_close()
        self.assertIn("429", str(cm.exception) + str(cm.exception.__cause__))
        self.assertGreater(len(tries), 1)  # tried again before giving up

    def test_stale_runtime_refused_before_any_invocation(self) -> None:
        import requests

        from cloudpool import protocol
        from cloudpool.errors import VersionMismatchError

        patch_dir = tempfile.mkdtemp(prefix="cp-aca-mismatch-")
        with open(os.path.join(patch_dir, "sitecustomize.py"), "w") as f:
            f.write("import cloudpool, cloudpool._version\n"
                    "cloudpool.__version__ = cloudpool._version.__version__ = '9.9.9'\n")
        stale = start_runtime(_State.token, pythonpath=patch_dir)
        with executor(url=stale) as ex:
            with self.assertRaises(VersionMismatchError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn(f"cloudpool {protocol.versions()['cloudpool']} on the client but 9.9.9 on the worker",
                      str(cm.exception))
        stats = requests.get(stale + "/runtime", timeout=10,
                             headers={"Authorization": f"Bearer {_State.token}"}).json()["stats"]
        self.assertEqual(stats.get("invocations", 0), 0)


class ContainerAppsLifecycleTest(unittest.TestCase):
    """ARM as a contract test; deploy -> list -> run -> delete through the `cloudpool runtime` CLI."""

    def cli(self, *args: str, command: str = "runtime", **more: Any) -> subprocess.CompletedProcess:
        import yaml

        path = os.path.join(tempfile.mkdtemp(prefix="cp-aca-cli-"), "config.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"storage": f"s3://{_State.bucket}/cli", "s3": {"endpoint_url": _State.moto.endpoint_url},
                            "containerapps": aca_options(**more)}, f)
        env = dict(os.environ, PYTHONPATH=ROOT, CLOUDPOOL_CONFIG=path, **_State.moto.env)
        return subprocess.run([sys.executable, "-c", "import sys; from cloudpool.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", command, *args, "--backend", "containerapps"],
                              env=env, capture_output=True, text=True, timeout=BOUND)

    def test_missing_app_refused_then_deploy_list_run_delete(self) -> None:
        arm = _State.arm
        with CloudPoolExecutor(max_workers=1, backend="containerapps", storage=f"s3://{_State.bucket}/m",
                               config={"containerapps": aca_options(), "s3": dict(_State.s3)}) as ex:
            with self.assertRaises(FileNotFoundError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn("cloudpool runtime deploy --backend containerapps cp-app", str(cm.exception))

        arm.requests.clear()
        out = self.cli("deploy", "cp-app", "--memory", "2048")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        seen = [(r["method"], r["path"]) for r in arm.requests]
        op_polls = [p for m, p in seen if "containerappOperationStatuses" in p]
        # GET (the backend looks for the app: 404), listSecrets (to keep an existing token: none
        # yet), PUT, polls until Succeeded, GET the result.
        self.assertEqual(seen[:3], [("GET", f"{APPS_PATH}/cp-app"), ("POST", f"{APPS_PATH}/cp-app/listSecrets"),
                                    ("PUT", f"{APPS_PATH}/cp-app")])
        self.assertEqual(len(op_polls), 2)  # InProgress, then Succeeded
        self.assertEqual(seen[-1], ("GET", f"{APPS_PATH}/cp-app"))
        self.assertTrue(all(r["auth"] == f"Bearer {ARM_TOKEN}" for r in arm.requests))
        self.assertTrue(all(r["query"]["api-version"] == ["2024-03-01"] for r in arm.requests))
        put = arm.requests[2]["body"]
        self.assertEqual(put["tags"], {"cloudpool-runtime": "true"})
        container = put["properties"]["template"]["containers"][0]
        self.assertEqual((container["image"], container["resources"]), (IMAGE, {"cpu": 1.0, "memory": "2Gi"}))
        self.assertEqual(container["env"], [{"name": "CLOUDPOOL_RUNTIME_TOKEN", "secretRef": "cloudpool-token"}])
        self.assertEqual(put["properties"]["configuration"]["ingress"]["external"], True)
        token = arm.secrets["cp-app"][0]["value"]
        self.assertNotIn(token, json.dumps(arm.apps["cp-app"]))  # secret values are not part of the resource
        self.assertIn("cp-app.happy-sky-1.eastus.azurecontainerapps.io", out.stdout)

        out = self.cli("list")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("cp-app", out.stdout)
        self.assertIn(IMAGE, out.stdout)

        # Run: the backend finds the app's URL and reads its token from ARM (listSecrets). The
        # stub's FQDN is not served here, so the URL of the replica the stub started is given.
        b = backends.get("containerapps")(aca_options(), max_workers=None, storage_url=f"s3://{_State.bucket}/x",
                                          storage_options={})
        self.assertEqual(b._services[0].url, "https://cp-app.happy-sky-1.eastus.azurecontainerapps.io")
        self.assertEqual(b._token, token)
        b.shutdown()
        with CloudPoolExecutor(max_workers=2, backend="containerapps", storage=f"s3://{_State.bucket}/d",
                               config={"containerapps": aca_options(url=_State.deployed["cp-app"]),
                                       "s3": dict(_State.s3)}) as ex:
            self.assertEqual(list(ex.map(square, range(10), timeout=BOUND)), list(map(square, range(10))))

        # `cloudpool hello` checks the account (ARM), the runtime (handshake) and the storage.
        out = self.cli(command="hello", url=_State.deployed["cp-app"])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("containerapps", out.stdout)

        # A redeploy keeps the token, so running clients keep working.
        self.assertEqual(self.cli("deploy", "cp-app").returncode, 0)
        self.assertEqual(arm.secrets["cp-app"][0]["value"], token)

        arm.requests.clear()
        out = self.cli("delete", "cp-app")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        seen = [(r["method"], r["path"]) for r in arm.requests]
        # (Building the backend reads the app and its secret first.) GET to check the tag, DELETE,
        # then the Location polled: 202, then 204.
        self.assertEqual(seen[-4:-2], [("GET", f"{APPS_PATH}/cp-app"), ("DELETE", f"{APPS_PATH}/cp-app")])
        self.assertEqual([m for m, p in seen[-2:] if "containerappOperationResults" in p], ["GET", "GET"])
        self.assertNotIn("cp-app", arm.apps)
        out = self.cli("delete", "cp-app")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("cloudpool runtime deploy --backend containerapps cp-app", out.stderr + out.stdout)

    def test_wrong_management_token_is_permission_error(self) -> None:
        with self.assertRaisesRegex(PermissionError, "Contributor"):
            backends.get("containerapps")(aca_options(management_token="wrong"), max_workers=None,
                                          storage_url=f"s3://{_State.bucket}/x", storage_options={})

    def test_not_a_cloudpool_app_is_not_deleted(self) -> None:
        _State.arm.apps["someone-else"] = {"name": "someone-else", "tags": {}, "properties": {}}
        b = backends.get("containerapps")(aca_options(url="https://x.example", token="t"), max_workers=None,
                                          storage_url=f"s3://{_State.bucket}/x", storage_options={})
        with self.assertRaisesRegex(PermissionError, "not a cloudpool runtime"):
            b.delete_runtime("someone-else")
        self.assertIn("someone-else", _State.arm.apps)
        del _State.arm.apps["someone-else"]


class ContainerAppsEntraTest(unittest.TestCase):
    """auth='entra': Entra tokens from an azure-identity credential; deploy behind Container Apps authentication."""

    class Credential:
        def __init__(self) -> None:
            self.scopes: List[str] = []

        def get_token(self, *scopes: str):
            from collections import namedtuple

            self.scopes.extend(scopes)
            return namedtuple("AccessToken", "token expires_on")("entra-" + scopes[0], time.time() + 3600)

    def test_entra_deploy_configures_authentication_before_opening_the_runtime(self) -> None:
        arm = _State.arm
        tenant = str(uuid.uuid4())
        b = backends.get("containerapps")(aca_options(auth="entra", client_id="c1d2", tenant_id=tenant,
                                                      credential=self.Credential(), app="cp-entra"),
                                          max_workers=None, storage_url=f"s3://{_State.bucket}/x",
                                          storage_options={})
        arm.requests.clear()
        b.deploy_runtime()
        puts = [r for r in arm.requests if r["method"] == "PUT"]
        self.assertEqual([r["path"] for r in puts], [f"{APPS_PATH}/cp-entra", f"{APPS_PATH}/cp-entra/authConfigs/current",
                                                     f"{APPS_PATH}/cp-entra"])
        args = [r["body"]["properties"]["template"]["containers"][0]["args"] for r in (puts[0], puts[2])]
        self.assertNotIn("--insecure-no-token", args[0])  # token-checked until authentication is on
        self.assertIn("--insecure-no-token", args[1])
        aad = puts[1]["body"]["properties"]["identityProviders"]["azureActiveDirectory"]
        self.assertEqual(aad["registration"], {"clientId": "c1d2",
                                               "openIdIssuer": f"https://sts.windows.net/{tenant}/v2.0"})
        self.assertEqual(aad["validation"], {"allowedAudiences": ["api://c1d2"]})
        self.assertEqual([r["auth"] for r in b.list_runtimes() if r["name"] == "cp-entra"], ["entra"])
        b.delete_runtime("cp-entra")
        b.shutdown()

    def test_entra_tokens_sent_to_the_runtime(self) -> None:
        # Playing Container Apps authentication, which lets through only requests bearing a
        # valid Entra token: the runtime accepts exactly the token the credential minted
        # for api://c1d2/.default (the platform's own check is not exercised here).
        url = start_runtime("entra-api://c1d2/.default")
        cred = self.Credential()
        with CloudPoolExecutor(max_workers=2, backend="containerapps", storage=f"s3://{_State.bucket}/e",
                               config={"containerapps": {"url": url, "auth": "entra", "client_id": "c1d2",
                                                         "credential": cred}, "s3": dict(_State.s3)}) as ex:
            self.assertEqual(list(ex.map(square, range(8), timeout=BOUND)), list(map(square, range(8))))
        self.assertEqual(set(cred.scopes), {"api://c1d2/.default"})
        # A token for another audience is refused.
        with CloudPoolExecutor(max_workers=1, backend="containerapps", storage=f"s3://{_State.bucket}/e",
                               config={"containerapps": {"url": url, "auth": "entra", "client_id": "other",
                                                         "credential": self.Credential()},
                                       "s3": dict(_State.s3)}) as ex:
            with self.assertRaisesRegex(PermissionError, "api://other/.default"):
                ex.submit(square, 2).result(BOUND)


class ContainerAppsOptionsTest(unittest.TestCase):
    def build(self, **opts: Any):
        return backends.get("containerapps")(opts, max_workers=None, storage_url="s3://b/x", storage_options={})

    def test_bad_options(self) -> None:
        direct = {"url": "https://a.example", "token": "t"}
        for more, word in (({"bogus": 1}, "bogus"), ({"cpu": 0.3}, "cpu"), ({"cpu": 5}, "cpu"),
                           ({"cpu": 1, "memory_gi": 3}, "memory_gi"), ({"timeout": 241}, "timeout"),
                           ({"timeout": 0}, "timeout"), ({"app": "Bad_App"}, "app"), ({"auth": "key"}, "auth"),
                           ({"auth": "entra", "token": None}, "client_id"), ({"subscription_id": "nope"},
                                                                            "subscription_id"),
                           ({"region": "East US"}, "region"), ({"credential": "secret"}, "credential")):
            with self.subTest(more=more):
                opts = {k: v for k, v in dict(direct, **more).items() if v is not None}
                with self.assertRaisesRegex(ValueError, word):
                    self.build(**opts)
        # Without a URL, the app is found through ARM: which settings are missing is said.
        with self.assertRaisesRegex(ValueError, "subscription_id"):
            self.build(resource_group="rg")

    def test_sizes_allowed(self) -> None:
        for cpu in (0.25, 0.5, 1.75, 4):
            b = self.build(url="https://a.example", token="t", cpu=cpu)
            self.assertEqual((b.cpu, b.memory_gi), (cpu, cpu * 2))
            self.assertEqual(b.capabilities.max_timeout, 240.0)

    def test_deploy_needs_region_environment_image(self) -> None:
        b = self.build(url="https://a.example", token="t", subscription_id=SUB, resource_group=RG)
        with self.assertRaisesRegex(ValueError, "region.*environment_id.*image"):
            b.deploy_runtime("cp-x")
        b = self.build(url="https://a.example", token="t", subscription_id=SUB, resource_group=RG, region=REGION,
                       environment_id=ENV_ID, image=IMAGE)
        with self.assertRaisesRegex(ValueError, "cpu"):
            b.deploy_runtime("cp-x", memory_mb=1000)

    def test_entra_tokens_sent_and_secrets_declared(self) -> None:
        from cloudpool.compute import declared

        class Credential:
            scopes: List[str] = []

            def get_token(self, *scopes: str):
                from collections import namedtuple

                Credential.scopes.extend(scopes)
                return namedtuple("AccessToken", "token expires_on")("entra-" + scopes[0], time.time() + 3600)

        b = self.build(url="https://a.example", auth="entra", client_id="1234", credential=Credential())
        self.assertEqual(b._headers["Authorization"], "Bearer entra-api://1234/.default")
        self.assertEqual(Credential.scopes, ["api://1234/.default"])
        self.assertEqual(declared.CONTAINERAPPS.secrets, {"token", "credential", "management_token"})


if __name__ == "__main__":
    unittest.main()
