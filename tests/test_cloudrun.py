"""The ``cloudrun`` backend and its runtime (``runtime/cloudrun/server.py``).

What runs for real: the runtime server as a process on 127.0.0.1 (the knative runtime
with Google ID-token checking), invoked through the real ``cloudrun`` backend, running
real cloudpool calls against S3 on moto. The ID tokens are real google-auth JWTs, signed
with a test RSA key (``google.auth.crypt.RSASigner``) and verified by the runtime with
google-auth against the matching certificate served from a local HTTP server, standing
in for Google's certificate endpoint. Not run here: Google's token minting (ADC,
``fetch_id_token``) and Cloud Run itself.

Contract only: deploy/list/delete and URL look-up through the Cloud Run Admin API v2.
``AdminStub`` answers as the documented v2 REST API does (services under
``projects/{p}/locations/{l}``, long-running operations) and checks each request's
method, path, bearer token and body; requests reach it through google-auth's real
``AuthorizedSession``.
"""
from __future__ import annotations

import datetime
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
from typing import Any, Dict

import google.auth.credentials
import google.auth.crypt
import google.auth.jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from cloudpool import CloudPoolExecutor
from cloudpool.compute import backends
from tests import servers

ROOT = servers.ROOT
BOUND = 60
KID = "test-key-1"
PROJECT, REGION, SERVICE = "my-project-123", "europe-west1", "cp-rt"
CUSTOM_AUDIENCE = f"cloudpool:{PROJECT}/{REGION}/{SERVICE}"
ACCESS_TOKEN = "ya29.test-" + uuid.uuid4().hex


def square(x: int) -> int:
    return x * x


def _key_and_cert():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudpool-test-signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem_key, cert.public_bytes(serialization.Encoding.PEM).decode()


class SignedIdTokens(google.auth.credentials.Credentials):
    """google-auth credentials whose token is an ID token signed by the test key."""

    def __init__(self, pem_key: bytes, audience: str, issuer: str = "https://accounts.google.com") -> None:
        super().__init__()
        self._signer = google.auth.crypt.RSASigner.from_string(pem_key, key_id=KID)
        self.audience = audience
        self.issuer = issuer
        self.minted = 0

    def refresh(self, request: Any) -> None:
        now = int(time.time())
        self.minted += 1
        self.token = google.auth.jwt.encode(self._signer, {
            "iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + 3600,
            "sub": "1234", "email": "invoker@test.iam.gserviceaccount.com"}).decode()


def _fresh_token(audience: str) -> str:
    creds = SignedIdTokens(_State.pem_key, audience)
    creds.refresh(None)
    return creds.token


class _State:
    certs_server = None
    certs_url = ""
    procs: list = []
    url = ""
    pem_key = b""
    bucket = "cp-cloudrun-" + uuid.uuid4().hex[:8]
    s3: Dict[str, Any] = {}


def setUpModule() -> None:
    moto = servers.moto_s3()
    import boto3

    boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=_State.bucket)
    _State.s3 = {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION,
                 "aws_access_key_id": servers.S3_ACCESS_KEY, "aws_secret_access_key": servers.S3_SECRET_KEY}
    _State.pem_key, cert = _key_and_cert()
    body = json.dumps({KID: cert}).encode()

    class Certs(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    _State.certs_server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=_State.certs_server.serve_forever, daemon=True).start()
    _State.certs_url = f"http://127.0.0.1:{_State.certs_server.server_address[1]}/oauth2/v1/certs"
    _State.url = start_runtime(extra_audience=CUSTOM_AUDIENCE)


def start_runtime(extra_audience: str = "", pythonpath: str = "") -> str:
    """``runtime/cloudrun/server.py`` as a process (one Cloud Run instance); returns its URL."""
    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tempfile.gettempdir(), f"cloudrun-runtime-{port}.log"), "w")
    audiences = ["--audience", url] + (["--audience", extra_audience] if extra_audience else [])
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "runtime", "cloudrun", "server.py"), *audiences,
         "--certs-url", _State.certs_url, "--host", "127.0.0.1", "--port", str(port), "--concurrency", "2",
         "--start-method", "fork"],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pythonpath, ROOT) if p),
                 **servers.moto_s3().env),
        stdout=log, stderr=subprocess.STDOUT)
    _State.procs.append((proc, log))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cloudrun runtime did not start: see {log.name}")
            time.sleep(0.1)


def tearDownModule() -> None:
    for proc, log in _State.procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    if _State.certs_server is not None:
        _State.certs_server.shutdown()
        _State.certs_server.server_close()


def executor(credentials: Any, **options: Any) -> CloudPoolExecutor:
    opts = {"url": _State.url, "credentials": credentials, "concurrency": 2, "retry_seconds": 10}
    opts.update(options)
    return CloudPoolExecutor(max_workers=2, backend="cloudrun", storage=f"s3://{_State.bucket}/r-{uuid.uuid4().hex[:8]}",
                             config={"cloudrun": opts, "s3": dict(_State.s3)})


class CloudRunEndToEndTest(unittest.TestCase):
    def test_map_with_id_tokens_matches_builtin_map(self) -> None:
        creds = SignedIdTokens(_State.pem_key, _State.url)
        with executor(creds) as ex:
            got = list(ex.map(square, range(30), timeout=BOUND))
            stats = ex.stats()
        self.assertEqual(got, list(map(square, range(30))))
        # Priced as Cloud Run without naming the platform (the backend tells it).
        estimate = stats.cost(memory_mb=512, vcpus=1)
        self.assertEqual(estimate.platform, "cloud_run")
        self.assertGreater(estimate.requests, 0)
        self.assertEqual(creds.minted, 1, "one token, reused until it nears expiry")

    def test_wrong_audience_refused(self) -> None:
        creds = SignedIdTokens(_State.pem_key, "https://another-service.a.run.app")
        with executor(creds, audience="https://another-service.a.run.app") as ex:
            with self.assertRaises(PermissionError) as cm:
                ex.submit(square, 3).result(BOUND)
        self.assertIn("roles/run.invoker", str(cm.exception))
        self.assertIn("another-service", str(cm.exception))

    def test_token_signed_by_another_key_refused(self) -> None:
        other_key, _ = _key_and_cert()
        with executor(SignedIdTokens(other_key, _State.url)) as ex:
            with self.assertRaises(PermissionError):
                ex.submit(square, 3).result(BOUND)

    def test_wrong_issuer_refused(self) -> None:
        with executor(SignedIdTokens(_State.pem_key, _State.url, issuer="https://evil.example")) as ex:
            with self.assertRaises(PermissionError):
                ex.submit(square, 3).result(BOUND)

    def test_stale_runtime_refused_before_any_invocation(self) -> None:
        from cloudpool import protocol
        from cloudpool.errors import VersionMismatchError

        patch_dir = tempfile.mkdtemp(prefix="cp-cloudrun-mismatch-")
        with open(os.path.join(patch_dir, "sitecustomize.py"), "w") as f:
            f.write("import cloudpool, cloudpool._version\n"
                    "cloudpool.__version__ = cloudpool._version.__version__ = '9.9.9'\n")
        stale = start_runtime(pythonpath=patch_dir)
        with executor(SignedIdTokens(_State.pem_key, stale), url=stale) as ex:
            with self.assertRaises(VersionMismatchError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn(f"cloudpool {protocol.versions()['cloudpool']} on the client but 9.9.9 on the worker",
                      str(cm.exception))
        stats = requests.get(stale + "/runtime", timeout=10, headers={
            "Authorization": "Bearer " + _fresh_token(stale)}).json()["stats"]
        self.assertEqual(stats.get("invocations", 0), 0)

    def test_runtime_refuses_missing_token(self) -> None:
        self.assertEqual(requests.get(_State.url + "/runtime", timeout=10).status_code, 401)
        self.assertEqual(requests.get(_State.url + "/healthz", timeout=10).status_code, 200)


class AccessToken(google.auth.credentials.Credentials):
    """google-auth credentials holding a fixed OAuth access token (for the Admin API stub)."""

    def refresh(self, request: Any) -> None:
        self.token = ACCESS_TOKEN


class AdminStub:
    """The Cloud Run Admin API v2 for one project and region, as documented; strict about requests."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.services: Dict[str, Dict[str, Any]] = {}
        self.operations: Dict[str, Dict[str, Any]] = {}
        self.requests: list = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                rec = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                       "auth": self.headers.get("Authorization"), "body": body}
                stub.requests.append(rec)
                code, obj = stub.answer(rec)
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _operation(self, response: Dict[str, Any]) -> Dict[str, Any]:
        name = f"projects/{PROJECT}/locations/{REGION}/operations/{uuid.uuid4().hex}"
        # Not done at first: the client must poll GET /v2/{name}.
        self.operations[name] = {"name": name, "done": True, "response": response}
        return {"name": name, "done": False}

    def answer(self, rec: Dict[str, Any]):
        if rec["auth"] != f"Bearer {ACCESS_TOKEN}":
            return 401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}}
        parent = f"/v2/projects/{PROJECT}/locations/{REGION}"
        path, method = rec["path"], rec["method"]
        if path.startswith("/v2/projects/") and "/operations/" in path and method == "GET":
            return 200, self.operations[path[len("/v2/"):]]
        if path == parent + "/services" and method == "GET":
            return 200, {"services": list(self.services.values())}
        if path == parent + "/services" and method == "POST":
            sid = rec["query"]["serviceId"][0]
            if sid in self.services:
                return 409, {"error": {"code": 409, "message": "already exists"}}
            svc = dict(rec["body"], name=f"projects/{PROJECT}/locations/{REGION}/services/{sid}", uri=self.uri)
            self.services[sid] = svc
            return 200, self._operation(svc)
        if path.startswith(parent + "/services/"):
            sid = path.rsplit("/", 1)[1]
            if sid not in self.services:
                return 404, {"error": {"code": 404, "message": f"Resource '{sid}' of kind 'SERVICE' ... not found"}}
            if method == "GET":
                return 200, self.services[sid]
            if method == "PATCH":
                self.services[sid].update(rec["body"])
                return 200, self._operation(self.services[sid])
            if method == "DELETE":
                return 200, self._operation(self.services.pop(sid))
        return 400, {"error": {"code": 400, "message": f"unexpected {method} {path}"}}


class CloudRunAdminContractTest(unittest.TestCase):
    def setUp(self) -> None:
        self.stub = AdminStub(_State.url)

    def tearDown(self) -> None:
        self.stub.close()

    def options(self, **more: Any) -> Dict[str, Any]:
        opts = {"project": PROJECT, "region": REGION, "service": SERVICE, "admin_endpoint": self.stub.url,
                "admin_credentials": AccessToken(), "image": "europe-docker.pkg.dev/p/r/cloudpool:test",
                "credentials": SignedIdTokens(_State.pem_key, CUSTOM_AUDIENCE), "concurrency": 2}
        opts.update(more)
        return opts

    def backend(self, **more: Any):
        return backends.get("cloudrun")(self.options(**more), max_workers=None,
                                        storage_url=f"s3://{_State.bucket}/x", storage_options={})

    def test_missing_service_refused_naming_deploy_command(self) -> None:
        with CloudPoolExecutor(max_workers=1, backend="cloudrun", storage=f"s3://{_State.bucket}/m",
                               config={"cloudrun": self.options(), "s3": dict(_State.s3)}) as ex:
            with self.assertRaises(FileNotFoundError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn(f"cloudpool runtime deploy --backend cloudrun {SERVICE}", str(cm.exception))

    def test_deploy_list_delete_requests_then_run(self) -> None:
        b = self.backend(memory_mb=512, timeout=300)
        info = b.deploy_runtime(SERVICE)
        b.shutdown()
        create = [r for r in self.stub.requests if r["method"] == "POST"]
        self.assertEqual(len(create), 1)
        self.assertEqual(create[0]["path"], f"/v2/projects/{PROJECT}/locations/{REGION}/services")
        self.assertEqual(create[0]["query"], {"serviceId": [SERVICE]})
        body = create[0]["body"]
        self.assertEqual(body["labels"], {"cloudpool-runtime": "true"})
        self.assertEqual(body["customAudiences"], [CUSTOM_AUDIENCE])
        container = body["template"]["containers"][0]
        self.assertEqual(container["image"], "europe-docker.pkg.dev/p/r/cloudpool:test")
        self.assertEqual(container["resources"], {"limits": {"memory": "512Mi"}})
        self.assertIn({"name": "CLOUDRUN_AUDIENCE", "value": CUSTOM_AUDIENCE}, container["env"])
        self.assertEqual(body["template"]["timeout"], "300s")
        self.assertEqual(body["template"]["maxInstanceRequestConcurrency"], 2)
        # The operation was polled to its end.
        self.assertTrue([r for r in self.stub.requests if "/operations/" in r["path"]])
        self.assertEqual(info["uri"], _State.url)
        # Redeploying updates (PATCH) instead of creating.
        self.backend().deploy_runtime(SERVICE)
        self.assertEqual([r["method"] for r in self.stub.requests if r["path"].endswith("/services/" + SERVICE)][-1],
                         "PATCH")
        # Deployed: the URL comes from the Admin API and calls run, with the custom audience.
        with CloudPoolExecutor(max_workers=2, backend="cloudrun", storage=f"s3://{_State.bucket}/d",
                               config={"cloudrun": self.options(), "s3": dict(_State.s3)}) as ex:
            self.assertEqual(list(ex.map(square, range(6), timeout=BOUND)), list(map(square, range(6))))
        self.stub.services["other"] = {"name": "projects/x/locations/y/services/other", "labels": {}}
        self.assertEqual([r["name"] for r in self.backend().list_runtimes()], [SERVICE])
        with self.assertRaises(PermissionError):
            self.backend().delete_runtime("other")
        self.backend().delete_runtime(SERVICE)
        self.assertEqual(self.stub.requests[-2]["method"], "DELETE")
        self.assertNotIn(SERVICE, self.stub.services)

    def test_admin_token_refused_is_permission_error(self) -> None:
        class Wrong(AccessToken):
            def refresh(self, request: Any) -> None:
                self.token = "ya29.wrong"

        with self.assertRaises(PermissionError):
            self.backend(url=_State.url, admin_credentials=Wrong()).list_runtimes()

    def test_bad_admin_options(self) -> None:
        for key, value in (("project", "X"), ("region", "nowhere"), ("service", "Bad_Name"),
                           ("memory_mb", 64), ("timeout", 4000)):
            with self.subTest(key=key):
                with self.assertRaisesRegex(ValueError, key):
                    self.backend(url=_State.url, **{key: value})


class TokenEndpoint:
    """Google's OAuth token endpoint for a service account's ID tokens (JWT-bearer grant), as
    documented: checks the assertion's signature against the service account's certificate
    and answers an ``id_token`` for its ``target_audience``, signed by the "Google" test key."""

    def __init__(self, sa_cert: str, sa_kid: str) -> None:
        self.grants: list = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                from urllib.parse import parse_qs

                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                try:
                    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                    claims = google.auth.jwt.decode(form["assertion"][0], certs={sa_kid: sa_cert}, verify=True,
                                                    audience=None)
                    creds = SignedIdTokens(_State.pem_key, claims["target_audience"])
                    creds.refresh(None)
                    body, code = {"id_token": creds.token}, 200
                    stub.grants.append(claims)
                except (AssertionError, KeyError, ValueError) as exc:
                    body, code = {"error": "invalid_grant", "error_description": str(exc)}, 400
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CloudRunApplicationDefaultCredentialsTest(unittest.TestCase):
    """No credentials object: google-auth's own ADC path (a service-account key file named by
    GOOGLE_APPLICATION_CREDENTIALS) mints the ID tokens, here from a local token endpoint."""

    @classmethod
    def setUpClass(cls) -> None:
        sa_key, sa_cert = _key_and_cert()
        cls.endpoint = TokenEndpoint(sa_cert, "sa-key-1")
        cls.keyfile = os.path.join(tempfile.mkdtemp(prefix="cp-cloudrun-adc-"), "sa.json")
        with open(cls.keyfile, "w") as f:
            json.dump({"type": "service_account", "project_id": PROJECT, "private_key_id": "sa-key-1",
                       "private_key": sa_key.decode(), "client_email": f"invoker@{PROJECT}.iam.gserviceaccount.com",
                       "client_id": "1", "token_uri": cls.endpoint.url}, f)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.endpoint.close()

    def test_cloudpool_hello_with_adc(self) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT, GOOGLE_APPLICATION_CREDENTIALS=self.keyfile,
                   CLOUDPOOL_CLOUDRUN__URL=_State.url, CLOUDPOOL_STORAGE=f"s3://{_State.bucket}/hello",
                   CLOUDPOOL_S3__ENDPOINT_URL=_State.s3["endpoint_url"], AWS_ACCESS_KEY_ID=servers.S3_ACCESS_KEY,
                   AWS_SECRET_ACCESS_KEY=servers.S3_SECRET_KEY, AWS_DEFAULT_REGION=servers.S3_REGION)
        env.pop("CLOUDPOOL_CONFIG", None)
        proc = subprocess.run([sys.executable, "-c", "import sys; from cloudpool.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", "hello", "--backend", "cloudrun"],
                              env=env, capture_output=True, text=True, timeout=BOUND)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("cloudrun", proc.stdout)
        # The audience asked for was the service URL (no project/region/service given).
        self.assertEqual(self.endpoint.grants[-1]["target_audience"], _State.url)


class CloudRunOptionsTest(unittest.TestCase):
    def build(self, **options: Any):
        return backends.get("cloudrun")(options, max_workers=None, storage_url="s3://b/p", storage_options={})

    def test_bad_options(self) -> None:
        with self.assertRaisesRegex(ValueError, "'url'"):
            self.build()
        with self.assertRaisesRegex(ValueError, "ID tokens"):
            self.build(url="https://x.a.run.app", token="shared")
        with self.assertRaisesRegex(ValueError, "credentials"):
            self.build(url="https://x.a.run.app", credentials="not-credentials")
        with self.assertRaisesRegex(ValueError, "bogus"):
            self.build(url="https://x.a.run.app", bogus=1)

    def test_audience_defaults_to_url(self) -> None:
        self.assertEqual(self.build(url="https://x.a.run.app/").audience, "https://x.a.run.app")


if __name__ == "__main__":
    unittest.main()
