"""The ``cloudrun`` backend and its runtime (``runtime/cloudrun/server.py``).

What runs for real: the runtime server as a process on 127.0.0.1 (the knative runtime
with Google ID-token checking), invoked through the real ``cloudrun`` backend, running
real cloudpool calls against S3 on moto. The ID tokens are real google-auth JWTs, signed
with a test RSA key (``google.auth.crypt.RSASigner``) and verified by the runtime with
google-auth against the matching certificate served from a local HTTP server, standing
in for Google's certificate endpoint. Not run here: Google's token minting (ADC,
``fetch_id_token``) and Cloud Run itself; deploy/list/delete through the Admin API v2
are not implemented yet.
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


class _State:
    certs_server = None
    proc = None
    url = ""
    pem_key = b""
    bucket = "cp-cloudrun-" + uuid.uuid4().hex[:8]
    s3: Dict[str, Any] = {}
    log = None


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
    certs_url = f"http://127.0.0.1:{_State.certs_server.server_address[1]}/oauth2/v1/certs"
    port = servers.free_port()
    _State.url = f"http://127.0.0.1:{port}"
    _State.log = open(os.path.join(tempfile.gettempdir(), f"cloudrun-runtime-{port}.log"), "w")
    _State.proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "runtime", "cloudrun", "server.py"), "--audience", _State.url,
         "--certs-url", certs_url, "--host", "127.0.0.1", "--port", str(port), "--concurrency", "2",
         "--start-method", "fork"],
        env=dict(os.environ, PYTHONPATH=ROOT, **moto.env), stdout=_State.log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if _State.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the cloudrun runtime did not start: see {_State.log.name}")
            time.sleep(0.1)


def tearDownModule() -> None:
    if _State.proc is not None:
        _State.proc.terminate()
        try:
            _State.proc.wait(10)
        except subprocess.TimeoutExpired:
            _State.proc.kill()
            _State.proc.wait()
        _State.log.close()
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
        with executor(creds) as ex:
            with self.assertRaises(PermissionError):
                ex.submit(square, 3).result(BOUND)

    def test_token_signed_by_another_key_refused(self) -> None:
        other_key, _ = _key_and_cert()
        with executor(SignedIdTokens(other_key, _State.url)) as ex:
            with self.assertRaises(PermissionError):
                ex.submit(square, 3).result(BOUND)

    def test_wrong_issuer_refused(self) -> None:
        with executor(SignedIdTokens(_State.pem_key, _State.url, issuer="https://evil.example")) as ex:
            with self.assertRaises(PermissionError):
                ex.submit(square, 3).result(BOUND)

    def test_runtime_refuses_missing_token(self) -> None:
        self.assertEqual(requests.get(_State.url + "/runtime", timeout=10).status_code, 401)
        self.assertEqual(requests.get(_State.url + "/healthz", timeout=10).status_code, 200)


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
