"""The ``openwhisk`` backend and its action runtime (``runtime/openwhisk/action.py``).

What runs for real here, and what is only a contract:

- **Real**: the action runtime, started as a process on 127.0.0.1, driven exactly as
  OpenWhisk's invoker drives a container (``POST /init`` once, then ``POST /run`` per
  activation with ``value``/``activation_id``/``namespace``/``deadline``...), running real
  cloudpool calls that read and write S3 on moto.
- **Contract**: OpenWhisk's controller REST API. ``ControllerStub`` below is a small HTTP
  server answering as apache/openwhisk's documented API does (create action ``PUT``,
  blocking and non-blocking invoke ``POST``, activation look-up ``GET``, list, delete),
  checking each request's method, path, Basic auth header and body. For end-to-end
  runs it plays the invoker too: activations are forwarded to the real runtime process
  above. Nothing here runs OpenWhisk itself, so its scheduling, container reuse and
  limits are not exercised.

The end-to-end classes are written against small hooks (``make_executor``) so that a
shared compute-contract mixin can later be subclassed instead.
"""
from __future__ import annotations

import base64
import json
import os
import signal
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

import requests

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.compute import backends
from cloudpool.errors import VersionMismatchError
from tests import servers

ROOT = servers.ROOT
API_KEY = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:" + uuid.uuid4().hex
NAMESPACE = "guest"
BOUND = 60  # seconds: nothing here may take longer to surface


# ---------------------------------------------------------------------------- functions run remotely
def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise KeyError(message)


def pid_of_worker(_: Any = None) -> int:
    return os.getpid()


def crash(_: Any = None) -> None:
    os._exit(3)


def sigkill(_: Any = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# ---------------------------------------------------------------------------- the action process
class ActionProcess:
    """``runtime/openwhisk/action.py`` as a process: one OpenWhisk container."""

    def __init__(self, env: Dict[str, str], concurrency: int = 2, pythonpath: Sequence[str] = ()) -> None:
        self.port = servers.free_port()
        self.initialised = False
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ, **env)
        full_env["PYTHONPATH"] = os.pathsep.join([*pythonpath, ROOT])
        self.log = open(os.path.join(tempfile.gettempdir(), f"openwhisk-action-{self.port}.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "runtime", "openwhisk", "action.py"), "--host", "127.0.0.1",
             "--port", str(self.port), "--concurrency", str(concurrency), "--start-method", "fork"],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the action runtime did not start: see {self.log.name}")
                time.sleep(0.1)

    def post(self, path: str, body: Any, timeout: float = BOUND) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=timeout)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------- the controller contract
class ControllerStub:
    """OpenWhisk's controller REST API, as documented, for one namespace; strict about requests.

    Every request is recorded in ``requests`` (method, path, query, auth, body). A request
    without the right Basic auth gets 401, as the controller answers. Activations go to
    ``action`` (an ``ActionProcess``), initialised once, at most ``slots`` at a time.
    """

    def __init__(self, action: Optional[ActionProcess], slots: int = 2) -> None:
        self.action = action
        self.actions: Dict[str, Dict[str, Any]] = {}
        self.activations: Dict[str, Dict[str, Any]] = {}
        self.requests: List[Dict[str, Any]] = []
        self.throttle_next = 0         # answer this many non-blocking invokes with 429
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(slots)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = {"method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                          "auth": self.headers.get("Authorization"), "body": raw,
                          "content_type": self.headers.get("Content-Type")}
                with stub._lock:
                    stub.requests.append(record)
                code, obj = stub.answer(record)
                self._answer(code, obj)

            do_GET = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API
    def answer(self, rec: Dict[str, Any]):
        expected = "Basic " + base64.b64encode(API_KEY.encode()).decode()
        if rec["auth"] != expected:
            return 401, {"error": "The supplied authentication is invalid", "code": "x"}
        prefix = f"/api/v1/namespaces/{NAMESPACE}/"
        if not rec["path"].startswith(prefix):
            return 404, {"error": "The requested resource does not exist."}
        rest = rec["path"][len(prefix):].split("/")
        method = rec["method"]
        if rest == ["actions"] and method == "GET":
            return 200, [self._summary(a) for a in self.actions.values()]
        if len(rest) == 2 and rest[0] == "actions":
            name = rest[1]
            if method == "PUT":
                return self._put(name, rec)
            if name not in self.actions:
                return 404, {"error": "The requested resource does not exist.", "code": "y"}
            if method == "GET":
                return 200, self.actions[name]
            if method == "DELETE":
                return 200, self.actions.pop(name)
            if method == "POST":
                return self._invoke(name, rec)
        if len(rest) == 2 and rest[0] == "activations" and method == "GET":
            record = self.activations.get(rest[1])
            if record is None or record.get("pending"):
                return 404, {"error": "The requested resource does not exist."}
            return 200, record
        return 405, {"error": f"{method} {rec['path']} is not part of the API"}

    @staticmethod
    def _summary(action: Dict[str, Any]) -> Dict[str, Any]:
        return {k: action[k] for k in ("namespace", "name", "version", "annotations", "limits")}

    def _put(self, name: str, rec: Dict[str, Any]):
        if rec["query"].get("overwrite") != ["true"] and name in self.actions:
            return 409, {"error": "resource already exists"}
        try:
            body = json.loads(rec["body"])
            exec_ = body["exec"]
            assert exec_["kind"] == "blackbox" and exec_["image"]
            assert "code" not in exec_
        except (ValueError, KeyError, AssertionError, TypeError):
            return 400, {"error": "The request content was malformed"}
        version = self.actions.get(name, {}).get("version", "0.0.0")
        major, minor, patch = map(int, version.split("."))
        self.actions[name] = {"namespace": NAMESPACE, "name": name, "version": f"{major}.{minor}.{patch + 1}",
                              "exec": exec_, "limits": body.get("limits", {}),
                              "annotations": body.get("annotations", []), "publish": False}
        return 200, self.actions[name]

    def _activation(self, name: str, value: Any) -> Dict[str, Any]:
        """Run one activation on the action process, as the invoker does (init once)."""
        aid = uuid.uuid4().hex
        with self._slots:
            with self._lock:
                if not self.action.initialised:
                    resp = self.action.post("/init", {"value": {"name": name, "main": "main", "code": "",
                                                                "binary": False}})
                    assert resp.status_code == 200, resp.text
                    self.action.initialised = True  # one container: init once, ever
            limit_ms = (self.actions.get(name, {}).get("limits") or {}).get("timeout", 60000)
            try:
                resp = self.action.post("/run", {"value": value, "namespace": NAMESPACE, "action_name": name,
                                                 "activation_id": aid,
                                                 "deadline": int(time.time() * 1000) + limit_ms},
                                        timeout=limit_ms / 1000)
            except requests.exceptions.ReadTimeout:
                # As OpenWhisk records an activation that outlived its limit (the invoker
                # then destroys the container; this stub leaves the process running).
                return {"activationId": aid, "name": name, "namespace": NAMESPACE,
                        "response": {"status": "action developer error", "success": False, "result": {
                            "error": f"The action exceeded its time limits of {limit_ms} milliseconds."}}}
        result = resp.json()
        status = "success" if resp.status_code == 200 else "application error"
        return {"activationId": aid, "name": name, "namespace": NAMESPACE,
                "response": {"status": status, "success": status == "success", "result": result}}

    def _invoke(self, name: str, rec: Dict[str, Any]):
        with self._lock:
            if self.throttle_next > 0 and rec["query"].get("blocking") == ["false"]:
                self.throttle_next -= 1
                return 429, {"error": "Too many requests in the last minute (count: 61, allowed: 60).",
                             "code": "t"}
        value = json.loads(rec["body"] or b"{}")
        if rec["query"].get("blocking") == ["true"]:
            record = self._activation(name, value)
            result = record["response"]["result"]
            if rec["query"].get("result") == ["true"]:
                return (200 if record["response"]["success"] else 502), result
            return 200, record
        aid_holder: Dict[str, Any] = {"pending": True}
        aid = uuid.uuid4().hex
        self.activations[aid] = aid_holder

        def run() -> None:
            record = self._activation(name, value)
            record["activationId"] = aid
            self.activations[aid] = record

        threading.Thread(target=run, daemon=True).start()
        return 202, {"activationId": aid}

    def invokes(self) -> List[Dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and "/actions/" in r["path"]]


# ---------------------------------------------------------------------------- module fixture
class _State:
    moto = None
    action: Optional[ActionProcess] = None
    bucket = "cp-openwhisk-" + uuid.uuid4().hex[:8]
    s3_options: Dict[str, Any] = {}


def setUpModule() -> None:
    moto = _State.moto = servers.moto_s3()
    import boto3

    boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=_State.bucket)
    _State.s3_options = {"endpoint_url": moto.endpoint_url, "region": servers.S3_REGION,
                         "aws_access_key_id": servers.S3_ACCESS_KEY,
                         "aws_secret_access_key": servers.S3_SECRET_KEY}
    # The "container" gets its storage credentials from its own environment, not events.
    _State.action = ActionProcess(moto.env)


def tearDownModule() -> None:
    if _State.action is not None:
        _State.action.close()
        _State.action = None


def ow_options(api_host: str, **overrides: Any) -> Dict[str, Any]:
    options = {"api_host": api_host, "namespace": NAMESPACE, "api_key": API_KEY, "action": "cp",
               "image": "registry.example/cloudpool-openwhisk:test", "retry_seconds": 10}
    options.update(overrides)
    return options


def fresh_storage() -> str:
    return f"s3://{_State.bucket}/run-{uuid.uuid4().hex[:8]}"


def stored_bytes(storage_url: str) -> Dict[str, bytes]:
    """Every object under ``storage_url`` (an s3:// prefix on moto), by key."""
    import boto3

    bucket, _, prefix = storage_url[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=_State.moto.endpoint_url, region_name=servers.S3_REGION,
                      aws_access_key_id=servers.S3_ACCESS_KEY, aws_secret_access_key=servers.S3_SECRET_KEY)
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            try:
                out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            except s3.exceptions.NoSuchKey:
                pass  # consumed and removed by the client meanwhile
    return out


def make_backend(api_host: str, **overrides: Any):
    return backends.get("openwhisk")(ow_options(api_host, **overrides), max_workers=None,
                                     storage_url=fresh_storage(), storage_options={})


# ---------------------------------------------------------------------------- the action interface
class ActionInterfaceTest(unittest.TestCase):
    """The runtime answers the invoker's /init and /run as OpenWhisk's action interface says."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.action = ActionProcess(_State.moto.env, concurrency=1)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.action.close()

    def test_init_once_then_run(self) -> None:
        a = self.action
        resp = a.post("/run", {"value": {"cloudpool": "metadata"}, "activation_id": "x"})
        self.assertEqual(resp.status_code, 502, "a /run before /init must fail")
        self.assertIn("error", resp.json())
        resp = a.post("/init", {"value": {"name": "cp", "main": "main", "code": "", "binary": False}})
        self.assertEqual(resp.status_code, 200, resp.text)
        again = a.post("/init", {"value": {"name": "cp", "main": "main"}})
        self.assertEqual(again.status_code, 403)
        self.assertIn("more than once", again.json()["error"])
        meta = a.post("/run", {"value": {"cloudpool": "metadata"}, "activation_id": "a1",
                               "namespace": NAMESPACE, "action_name": "cp", "deadline": 0}).json()
        self.assertEqual(meta["versions"], protocol.versions())
        self.assertEqual(meta["protocol"], protocol.PROTOCOL_VERSION)
        bad = a.post("/run", {"value": {"not": "an event"}, "activation_id": "a2"})
        self.assertNotEqual(bad.status_code, 200)
        self.assertIn("not a cloudpool invocation event", bad.json()["error"])

    def test_init_with_code_is_refused(self) -> None:
        other = ActionProcess(_State.moto.env, concurrency=1)
        try:
            resp = other.post("/init", {"value": {"name": "x", "main": "main", "code": "def main(a): return a"}})
            self.assertEqual(resp.status_code, 502)
            self.assertIn("cloudpool runtime deploy --backend openwhisk", resp.json()["error"])
        finally:
            other.close()


# ---------------------------------------------------------------------------- end to end
class OpenWhiskEndToEndTest(unittest.TestCase):
    """Real cloudpool calls: backend -> controller contract stub -> real action process -> moto S3."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.stub = ControllerStub(_State.action)
        backend = make_backend(cls.stub.url)
        backend.deploy_runtime("cp")
        backend.shutdown()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.stub.close()

    def make_executor(self, **kwargs: Any) -> CloudPoolExecutor:
        return CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(),
                                 config={"openwhisk": ow_options(self.stub.url), "s3": dict(_State.s3_options)},
                                 **kwargs)

    def test_map_matches_builtin_map(self) -> None:
        with self.make_executor(max_workers=4) as ex:
            got = list(ex.map(square, range(40), timeout=BOUND))
        self.assertEqual(got, list(map(square, range(40))))
        # Calls really ran in the action's worker processes, not here.
        with self.make_executor(max_workers=1) as ex:
            self.assertNotEqual(ex.submit(pid_of_worker).result(BOUND), os.getpid())

    def test_exception_carries_remote_traceback(self) -> None:
        with self.make_executor(max_workers=2) as ex:
            fut = ex.submit(fail, "boom")
            with self.assertRaises(KeyError) as cm:
                fut.result(BOUND)
        self.assertIn("boom", str(cm.exception))
        self.assertIn("fail", str(cm.exception.__cause__))

    def test_lost_worker_fails_only_its_call(self) -> None:
        from cloudpool.errors import WorkerLostError

        with self.make_executor(max_workers=2) as ex:
            bad = ex.submit(crash)
            good = ex.submit(square, 7)
            with self.assertRaises(WorkerLostError):
                bad.result(BOUND)
            self.assertEqual(good.result(BOUND), 49)

    def test_sigkilled_worker_is_reported_killed(self) -> None:
        from cloudpool.errors import WorkerKilledError

        with CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(), max_workers=1,
                               config={"openwhisk": ow_options(self.stub.url), "s3": dict(_State.s3_options),
                                       "retries": 0}) as ex:
            with self.assertRaises(WorkerKilledError):
                ex.submit(sigkill).result(BOUND)
            self.assertEqual(ex.submit(square, 4).result(BOUND), 16)

    def test_build_runtime_writes_a_build_context(self) -> None:
        out = tempfile.mkdtemp(prefix="cp-ow-build-")
        info = make_backend(self.stub.url).build_runtime("cp", requirements=["numpy"], output=out)
        files = set(os.listdir(info["context"]))
        self.assertTrue({"Dockerfile", "action.py", "knative_server.py", "cloudpool", "requirements.txt",
                         "setup.cfg"} <= files, files)
        with open(os.path.join(info["context"], "requirements.txt")) as f:
            self.assertEqual(f.read(), "numpy\n")
        self.assertIn("cloudpool runtime deploy --backend openwhisk cp", info["next"])

    def test_credentials_never_in_payloads_or_storage(self) -> None:
        before = len(self.stub.requests)
        storage = fresh_storage()
        with CloudPoolExecutor(backend="openwhisk", storage=storage, max_workers=2,
                               config={"openwhisk": ow_options(self.stub.url), "s3": dict(_State.s3_options)}) as ex:
            self.assertEqual(ex.submit(square, 3).result(BOUND), 9)
            stored = stored_bytes(storage)  # before shutdown removes the executor's objects
        self.assertTrue(stored, "the run stored its job, batch and status objects")
        for key, data in stored.items():
            self.assertNotIn(API_KEY.split(":")[1].encode(), data, key)
        secret = API_KEY.split(":")[1]
        sent = self.stub.requests[before:]
        self.assertTrue([r for r in sent if r["query"].get("blocking") == ["false"]])
        for r in sent:
            self.assertNotIn(secret.encode(), r["body"])
            self.assertNotIn(servers.S3_SECRET_KEY.encode() + b'"', r["body"])  # no storage secret either
            self.assertNotIn(b"aws_secret_access_key", r["body"])


    def test_cli_hello_and_runtime_list(self) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT, CLOUDPOOL_OPENWHISK__API_HOST=self.stub.url,
                   CLOUDPOOL_OPENWHISK__NAMESPACE=NAMESPACE, CLOUDPOOL_OPENWHISK__API_KEY=API_KEY,
                   CLOUDPOOL_OPENWHISK__ACTION="cp", CLOUDPOOL_STORAGE=fresh_storage(),
                   CLOUDPOOL_S3__ENDPOINT_URL=_State.moto.endpoint_url, **_State.moto.env)
        env.pop("CLOUDPOOL_CONFIG", None)

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", "import sys; from cloudpool.cli import main; "
                                   "sys.exit(main(sys.argv[1:]))", *args],
                                  env=env, capture_output=True, text=True, timeout=BOUND)

        hello = cli("hello", "--backend", "openwhisk")
        self.assertEqual(hello.returncode, 0, hello.stdout + hello.stderr)
        self.assertIn("openwhisk", hello.stdout)
        listed = cli("runtime", "list", "--backend", "openwhisk")
        self.assertEqual(listed.returncode, 0, listed.stdout + listed.stderr)
        self.assertIn("cp", listed.stdout)
        env["CLOUDPOOL_OPENWHISK__ACTION"] = "absent"
        missing = cli("hello", "--backend", "openwhisk")
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("cloudpool runtime deploy --backend openwhisk absent", missing.stdout + missing.stderr)


# ---------------------------------------------------------------------------- controller contract
class OpenWhiskContractTest(unittest.TestCase):
    """Exact requests against the documented controller API, and the answers' handling."""

    def setUp(self) -> None:
        self.stub = ControllerStub(_State.action)

    def tearDown(self) -> None:
        self.stub.close()

    def test_deploy_list_delete_requests(self) -> None:
        b = make_backend(self.stub.url, memory_mb=512, timeout=120)
        meta = b.deploy_runtime("cp")
        put = [r for r in self.stub.requests if r["method"] == "PUT"]
        self.assertEqual(len(put), 1)
        self.assertEqual(put[0]["path"], f"/api/v1/namespaces/{NAMESPACE}/actions/cp")
        self.assertEqual(put[0]["query"], {"overwrite": ["true"]})
        self.assertEqual(put[0]["content_type"], "application/json")
        body = json.loads(put[0]["body"])
        self.assertEqual(body["exec"], {"kind": "blackbox", "image": "registry.example/cloudpool-openwhisk:test"})
        self.assertEqual(body["limits"], {"memory": 512, "timeout": 120000, "concurrency": 1})
        notes = {a["key"]: a["value"] for a in body["annotations"]}
        self.assertIs(notes["provide-api-key"], False)
        self.assertIn("cloudpool-runtime", notes)
        # Deploy ends with the version handshake: a blocking activation answering metadata.
        handshake = self.stub.invokes()[-1]
        self.assertEqual(handshake["query"], {"blocking": ["true"], "result": ["true"]})
        self.assertEqual(json.loads(handshake["body"]), {"cloudpool": "metadata"})
        self.assertEqual(meta["versions"], protocol.versions())
        # Another action in the namespace, not ours: listed by OpenWhisk, not by cloudpool.
        self.stub.actions["other"] = {"namespace": NAMESPACE, "name": "other", "version": "0.0.1",
                                      "exec": {"kind": "python:3"}, "limits": {}, "annotations": []}
        listed = b.list_runtimes()
        self.assertEqual([r["name"] for r in listed], ["cp"])
        self.assertEqual((listed[0]["memory_mb"], listed[0]["timeout"]), (512, 120))
        with self.assertRaises(PermissionError):
            b.delete_runtime("other")
        b.delete_runtime("cp")
        self.assertEqual(self.stub.requests[-1]["method"], "DELETE")
        self.assertNotIn("cp", self.stub.actions)
        with self.assertRaises(FileNotFoundError) as cm:
            b.delete_runtime("cp")
        self.assertIn("cloudpool runtime deploy --backend openwhisk", str(cm.exception))

    def test_missing_action_refused_naming_deploy_command(self) -> None:
        with CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(), max_workers=1,
                               config={"openwhisk": ow_options(self.stub.url, action="absent"),
                                       "s3": dict(_State.s3_options)}) as ex:
            with self.assertRaises(FileNotFoundError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn("cloudpool runtime deploy --backend openwhisk absent", str(cm.exception))
        # Only the handshake was tried: no non-blocking invoke reached the controller.
        self.assertFalse([r for r in self.stub.invokes() if r["query"].get("blocking") == ["false"]])

    def test_stale_runtime_refused(self) -> None:
        # A real action process whose cloudpool reports another version (as an image built
        # from another release would): sitecustomize patches it before anything is imported.
        patch_dir = tempfile.mkdtemp(prefix="cp-ow-mismatch-")
        with open(os.path.join(patch_dir, "sitecustomize.py"), "w") as f:
            f.write("import cloudpool, cloudpool._version\n"
                    "cloudpool.__version__ = cloudpool._version.__version__ = '9.9.9'\n")
        stale = ActionProcess(_State.moto.env, concurrency=1, pythonpath=[patch_dir])
        self.addCleanup(stale.close)
        stub = ControllerStub(stale)
        self.addCleanup(stub.close)
        make_backend(stub.url).deploy_runtime("cp")
        with CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(), max_workers=1,
                               config={"openwhisk": ow_options(stub.url), "s3": dict(_State.s3_options)}) as ex:
            with self.assertRaises(VersionMismatchError) as cm:
                ex.submit(square, 2).result(BOUND)
        self.assertIn(f"cloudpool {protocol.versions()['cloudpool']} on the client but 9.9.9 on the worker",
                      str(cm.exception))
        self.assertIn("cloudpool runtime deploy --backend openwhisk cp", str(cm.exception))
        # Refused before any invocation: only blocking metadata activations reached the controller.
        self.assertFalse([r for r in stub.invokes() if r["query"].get("blocking") == ["false"]])

    def test_429_backed_off_then_runs(self) -> None:
        make_backend(self.stub.url).deploy_runtime("cp")
        self.stub.throttle_next = 3
        with CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(), max_workers=1,
                               config={"openwhisk": ow_options(self.stub.url), "s3": dict(_State.s3_options)}) as ex:
            self.assertEqual(ex.submit(square, 5).result(BOUND), 25)
        throttled = [r for r in self.stub.invokes() if r["query"].get("blocking") == ["false"]]
        self.assertEqual(len(throttled), 4, "three 429s, then the accepted invoke")

    def test_429_forever_gives_up_within_bound(self) -> None:
        from cloudpool.errors import WorkerLostError

        make_backend(self.stub.url).deploy_runtime("cp")
        self.stub.throttle_next = 10 ** 6
        started = time.monotonic()
        with CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(), max_workers=1,
                               config={"openwhisk": ow_options(self.stub.url, retry_seconds=2),
                                       "s3": dict(_State.s3_options), "retries": 0}) as ex:
            with self.assertRaises((WorkerLostError, OSError, RuntimeError)) as cm:
                ex.submit(square, 5).result(BOUND)
        self.assertLess(time.monotonic() - started, BOUND)
        self.assertIn("429", str(cm.exception) + str(cm.exception.__cause__))

    def test_action_time_limit_fails_the_call_with_a_timeout(self) -> None:
        from cloudpool.errors import CallTimeoutError

        make_backend(self.stub.url, timeout=1).deploy_runtime("short")
        started = time.monotonic()
        with CloudPoolExecutor(backend="openwhisk", storage=fresh_storage(), max_workers=1,
                               config={"openwhisk": ow_options(self.stub.url, action="short", timeout=1),
                                       "s3": dict(_State.s3_options), "retries": 0}) as ex:
            with self.assertRaises(CallTimeoutError) as cm:
                ex.submit(slow, 2.5).result(BOUND)
        self.assertIn("time limits", str(cm.exception))
        self.assertLess(time.monotonic() - started, BOUND)

    def test_wrong_key_is_permission_error(self) -> None:
        b = make_backend(self.stub.url, api_key="nobody:wrong")
        with self.assertRaises(PermissionError):
            b.list_runtimes()


class OpenWhiskOptionsTest(unittest.TestCase):
    """Options are checked when the backend is built, with messages naming the setting."""

    def build(self, **overrides: Any):
        options = ow_options("https://ow.example")
        options.update(overrides)
        options = {k: v for k, v in options.items() if v is not None}
        return backends.get("openwhisk")(options, max_workers=None, storage_url="s3://b/p", storage_options={})

    def test_bad_options(self) -> None:
        cases = [({"memory_mb": 64}, "memory_mb"), ({"memory_mb": 4096}, "memory_mb"),
                 ({"timeout": 0}, "timeout"), ({"timeout": 601}, "timeout"),
                 ({"namespace": None}, "namespace"), ({"api_host": None}, "api_host"),
                 ({"api_host": "ftp://x"}, "api_host"), ({"action": "a/b"}, "action"),
                 ({"bogus": 1}, "bogus")]
        for override, word in cases:
            with self.subTest(override=override):
                with self.assertRaises(ValueError) as cm:
                    self.build(**override)
                self.assertIn(word, str(cm.exception))

    def test_missing_or_malformed_api_key(self) -> None:
        for key in (None, "no-colon"):
            with self.subTest(key=key):
                with self.assertRaises(PermissionError) as cm:
                    self.build(api_key=key)
                self.assertIn("api_key", str(cm.exception))

    def test_local_directory_storage_refused(self) -> None:
        b = backends.get("openwhisk")(ow_options("https://ow.example"), max_workers=None,
                                      storage_url="file:///tmp/x", storage_options={})
        with self.assertRaises(ValueError) as cm:
            b.start(lambda n: None)
        self.assertIn("object store", str(cm.exception))

    def test_bare_host_gets_https(self) -> None:
        self.assertEqual(self.build(api_host="us-south.functions.cloud.ibm.com").api_host,
                         "https://us-south.functions.cloud.ibm.com")


if __name__ == "__main__":
    unittest.main()
