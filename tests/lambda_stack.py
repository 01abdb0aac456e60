"""Servers for the aws_lambda tests: moto's Lambda API, alone or running functions in podman.

- ``plain_moto()``: a moto server whose Lambda API stores functions but runs nothing
  (moto's "simple" Lambda: an invocation answers the next result queued with
  ``queue_results`` or echoes the event). For API-contract tests: deploy/list/delete,
  option checks, the version handshake, throttling.
- ``container_moto()``: podman's Docker-compatible API service on a unix socket, and a moto
  server that runs every invocation of a zip function in a container of the local Python
  image built by ``scripts/install-lambda-deps.sh`` (``MOTO_DOCKER_LAMBDA_IMAGE``), in the
  host's network namespace (``MOTO_DOCKER_NETWORK_MODE=host``) so the worker inside reaches
  moto's S3 at 127.0.0.1:PORT. One moto serves the Lambda API and the executor's storage.
- ``ThrottlingProxy``: a small threaded HTTP proxy in front of moto that answers the first
  N Lambda ``Invoke`` requests with 429 ``TooManyRequestsException`` (what Lambda answers
  when a function's concurrency or the request rate is exceeded), or another refusal a
  test picks, and forwards the rest.

A missing podman, image or moto raises ``RuntimeError`` naming the install script: the
tests fail loudly, never skip.
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import threading
import urllib.request
from typing import Dict, List, Optional

from tests import servers

ROOT = servers.ROOT
LAMBDA_CACHE = os.path.join(ROOT, ".cache", "lambda")
CONTAINERS_CONF = os.path.join(LAMBDA_CACHE, "containers.conf")
#: Built by scripts/install-lambda-deps.sh (must match it).
PYTHON_IMAGE = "localhost/cloudpool-lambda-python:3.11"
INSTALL_HINT = "run scripts/install-lambda-deps.sh (from the repository root, as root) to install it"


class PodmanService(servers.Server):
    """``podman system service`` answering the Docker API on a unix socket in its workdir."""

    name = "podman"
    start_timeout = 30.0

    def __init__(self) -> None:
        super().__init__(port=1)  # no TCP port: it listens on a unix socket
        self.socket_path = os.path.join(self.workdir, "podman.sock")

    def command(self) -> List[str]:
        exe = shutil.which("podman")
        if exe is None:
            raise RuntimeError(f"podman is not installed: {INSTALL_HINT}")
        if not os.path.isfile(CONTAINERS_CONF):
            raise RuntimeError(f"{CONTAINERS_CONF} is missing: {INSTALL_HINT}")
        return [exe, "system", "service", "--time=0", f"unix://{self.socket_path}"]

    def process_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = CONTAINERS_CONF
        return env

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    def ready(self) -> bool:
        if not os.path.exists(self.socket_path):
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(self.socket_path)
                s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"OK" in s.recv(1024)
        except OSError:
            return False

    def close(self) -> None:
        # moto removes each function container after reading its output, but not when it is
        # stopped mid-invocation (the end of a test run): remove what the test images left,
        # and the code volumes no container uses any more.
        env = self.process_env()
        for image in (PYTHON_IMAGE, "docker.io/library/busybox:latest"):
            ids = subprocess.run(["podman", "ps", "-aq", "--filter", f"ancestor={image}"], env=env,
                                 capture_output=True, text=True, timeout=60).stdout.split()
            if ids:
                subprocess.run(["podman", "rm", "-f", *ids], env=env, capture_output=True, timeout=120)
        subprocess.run(["podman", "volume", "prune", "-f"], env=env, capture_output=True, timeout=120)
        super().close()

    def check_image(self) -> None:
        env = self.process_env()
        proc = subprocess.run(["podman", "image", "exists", PYTHON_IMAGE], env=env, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the podman image {PYTHON_IMAGE} is missing: {INSTALL_HINT}")


class LambdaMoto(servers.MotoServer):
    """moto whose Lambda runs functions through ``docker_host`` (or runs nothing, if None)."""

    name = "moto-lambda"

    def __init__(self, docker_host: Optional[str]) -> None:
        super().__init__()
        self.docker_host = docker_host

    def process_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        for key in ("DOCKER_HOST", "MOTO_DOCKER_LAMBDA_IMAGE", "MOTO_DOCKER_NETWORK_MODE"):
            env.pop(key, None)
        if self.docker_host:
            env.update({
                "DOCKER_HOST": self.docker_host,
                "MOTO_DOCKER_LAMBDA_IMAGE": PYTHON_IMAGE,
                "MOTO_DOCKER_NETWORK_MODE": "host",
                # moto puts MOTO_HOST:MOTO_PORT into the function's AWS_ENDPOINT_URL.
                "MOTO_PORT": str(self.port),
                "CONTAINERS_CONF": CONTAINERS_CONF,
            })
        return env

    def _api(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.endpoint_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
        return json.loads(data) if data else {}

    def use_containers(self, enabled: bool) -> None:
        """moto's switch between its container-running and its simple Lambda."""
        self._api("/moto-api/config", {"lambda": {"use_docker": enabled}})

    def queue_results(self, results: List[str], region: str = servers.S3_REGION) -> None:
        """The next invocations of the simple Lambda answer these payloads, in order."""
        self._api("/moto-api/static/lambda-simple/response", {"results": results, "region": region})


def plain_moto() -> LambdaMoto:
    """A moto whose Lambda stores functions but runs no code (shared per test process)."""

    def make() -> LambdaMoto:
        return LambdaMoto(None)

    moto = servers._shared("moto-lambda-plain", make)
    moto.use_containers(False)
    return moto  # type: ignore[return-value]


def container_moto() -> LambdaMoto:
    """podman's service plus a moto that runs functions in containers (shared per process)."""
    podman = servers._shared("podman", PodmanService)
    podman.check_image()  # type: ignore[attr-defined]
    return servers._shared("moto-lambda-containers",  # type: ignore[return-value]
                           lambda: LambdaMoto(podman.docker_host))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- throttling proxy
class ThrottlingProxy:
    """Forwards every request to ``target``; answers the first ``throttle`` Invokes with 429.

    ``throttle`` may be changed at any time; ``invokes`` counts Invoke requests seen,
    ``throttled`` those refused, and ``bodies`` keeps their payloads. Runs in a thread of the test process (daemon).
    """

    def __init__(self, target: str, throttle: int = 0, path_prefix: str = "/2015-03-31/functions/",
                 path_part: str = "/invocations") -> None:
        self.target = target.rstrip("/")
        #: Which requests count as the throttled API call (Lambda's Invoke unless told).
        self.path_prefix, self.path_part = path_prefix, path_part
        self.throttle = throttle
        #: The refusal sent back: Lambda's throttling answer unless a test picks another.
        self.refusal = (429, "TooManyRequestsException", "Rate Exceeded.")
        self.invokes = 0
        self.throttled = 0
        self.bodies: List[bytes] = []  # every Invoke request body, as sent by the client
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet tests
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.path_part in self.path and self.path.startswith(proxy.path_prefix):
                    with proxy.lock:
                        proxy.invokes += 1
                        proxy.bodies.append(body)
                        refuse = proxy.throttled < proxy.throttle
                        if refuse:
                            proxy.throttled += 1
                    if refuse:
                        status, code, message = proxy.refusal
                        payload = json.dumps({"Type": "User", "message": message,
                                              "Reason": "ConcurrentInvocationLimitExceeded"}).encode()
                        self.send_response(status)
                        self.send_header("x-amzn-ErrorType", code)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                host, port = proxy.target.split("://", 1)[1].split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=600)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    headers["Host"] = f"{host}:{port}"
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((servers.HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="throttling-proxy", daemon=True)
        self.thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{servers.HOST}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
