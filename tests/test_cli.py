"""Tests of the ``cloudpool`` command line (``cloudpool.cli``).

Commands run in-process through ``cloudpool.cli.main([...])`` with stdout/stderr
captured, and through the installed console script as real subprocesses. Storage
commands run on local disk and on the moto S3 server (``tests/servers.py``). The
``runtime`` success path uses ``RuntimeDirBackend`` below -- a real ``ComputeBackend``
that keeps its runtimes in a directory -- registered through the compute registry
in-process, and through the ``cloudpool.compute`` entry-point group (a ``.dist-info``
on ``PYTHONPATH``) for the console script. ``clean`` is shown against a live executor
(kept), a client SIGKILLed mid-run (removed), and hand-made markers of other hosts.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import unittest
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import pytest

from cloudpool import CloudPoolExecutor, protocol
from cloudpool import cli
from cloudpool.compute import Capabilities, ComputeBackend, backends
from cloudpool.storage import clear_cache
from tests import servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv: str, stdin: bytes = b"") -> Tuple[int, str, str]:
    """``cloudpool ARGV`` in-process: (exit code, stdout, stderr)."""
    out_bytes = io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    err = io.StringIO()
    fake_stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            mock.patch.object(sys, "stdin", fake_stdin):
        code = cli.main(list(argv))
    out.flush()
    return code, out_bytes.getvalue().decode("utf-8", "replace"), err.getvalue()


def run_bytes(*argv: str) -> Tuple[int, bytes, str]:
    out_bytes = io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    out.flush()
    return code, out_bytes.getvalue(), err.getvalue()


def _script() -> str:
    path = os.path.join(sysconfig.get_path("scripts"), "cloudpool")
    if not os.path.exists(path):
        raise RuntimeError("the cloudpool console script is not installed: run "
                           "`pip install -e .` (scripts/install-test-deps.sh does)")
    return path


# ---------------------------------------------------------------------------- a test backend
class RuntimeDirBackend(ComputeBackend):
    """A real backend whose "platform" is a directory: runtimes are JSON records in it.

    Calls run ``cloudpool.worker.handle`` on a thread, so it is a complete backend; its
    runtime hooks are what ``cloudpool runtime`` is tested against.
    """

    name = "clitest"
    option_names = frozenset({"state_dir"})
    manages_runtimes = True

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        state_dir = self.options.get("state_dir")
        if not state_dir:
            raise ValueError("the clitest backend needs the option state_dir "
                             "(CLOUDPOOL_CLITEST__STATE_DIR=/some/dir)")
        self.state_dir = state_dir
        self.shut_down = False

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_concurrency=1, max_in_flight=2)

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        from cloudpool import worker

        threading.Thread(target=worker.handle, args=(event,), daemon=True).start()

    def shutdown(self, wait: bool = True) -> None:
        self.shut_down = True

    def _state_path(self) -> str:
        return os.path.join(self.state_dir, "runtimes.json")

    def _load(self) -> Dict[str, Any]:
        try:
            with open(self._state_path()) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _save(self, state: Dict[str, Any]) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        with open(self._state_path(), "w") as f:
            json.dump(state, f)

    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        path = output or os.path.join(self.state_dir, "builds", name)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "requirements.txt"), "w") as f:
            f.write("".join(r + "\n" for r in requirements))
        return {"name": name, "path": path, "requirements": len(requirements)}

    def deploy_runtime(self, name: str, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        state = self._load()
        record = {"name": name, "memory_mb": memory_mb, "timeout": timeout,
                  "python": protocol.versions()["python"]}
        state[name] = record
        self._save(state)
        return record

    def list_runtimes(self) -> List[Dict[str, Any]]:
        return [self._load()[k] for k in sorted(self._load())]

    def delete_runtime(self, name: str) -> None:
        state = self._load()
        if name not in state:
            raise FileNotFoundError(f"no runtime named {name!r} in {self.state_dir}; "
                                    f"`cloudpool runtime list` shows the deployed ones")
        del state[name]
        self._save(state)


# ---------------------------------------------------------------------------- usage
class UsageTest(unittest.TestCase):
    COMMANDS = [[], ["hello"], ["storage"], ["storage", "ls"], ["storage", "put"],
                ["storage", "get"], ["storage", "rm"], ["runtime"], ["runtime", "build"],
                ["runtime", "deploy"], ["runtime", "list"], ["runtime", "delete"], ["clean"],
                ["config"]]

    def test_help_on_every_command(self):
        for command in self.COMMANDS:
            with self.subTest(command=command):
                code, out, err = run(*command, "--help")
                self.assertEqual(code, 0, err)
                self.assertIn("usage: cloudpool " + " ".join(command), out)
                self.assertEqual(err, "")

    def test_version(self):
        code, out, _err = run("--version")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"^cloudpool \d+\.\d+")

    def test_usage_errors_exit_2(self):
        cases = [
            ([], "required: COMMAND"),
            (["frobnicate"], "invalid choice: 'frobnicate'"),
            (["storage"], "required: SUBCOMMAND"),
            (["storage", "ls"], "required: URL"),
            (["storage", "put", "only-one"], "required: URL"),
            (["storage", "rm"], "required: URL"),
            (["runtime", "deploy"], "required: NAME"),
            (["runtime", "deploy", "x", "--memory", "lots"], "invalid int value"),
            (["clean", "--older-than", "soon"], "invalid duration 'soon'"),
            (["hello", "--bogus"], "unrecognized arguments: --bogus"),
        ]
        for argv, expected in cases:
            with self.subTest(argv=argv):
                code, out, err = run(*argv)
                self.assertEqual(code, 2, err)
                self.assertIn(expected, err)
                self.assertIn("usage:", err)
                self.assertNotIn("Traceback", err)

    def test_parse_duration(self):
        self.assertEqual(cli.parse_duration("90"), 90)
        self.assertEqual(cli.parse_duration("30m"), 1800)
        self.assertEqual(cli.parse_duration("24h"), 86400)
        self.assertEqual(cli.parse_duration("1.5d"), 1.5 * 86400)
        self.assertEqual(cli.parse_duration("2W"), 14 * 86400)

    def test_traceback_flag_lets_the_error_through(self):
        with self.assertRaises(ValueError):
            run("--traceback", "hello", "--backend", "no-such-backend")


class ConsoleScriptTest(unittest.TestCase):
    """The installed ``cloudpool`` script as a real subprocess."""

    def test_error_exit_codes_and_no_traceback(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPOOL_")}
        proc = subprocess.run([_script(), "storage", "get", "file:///nonexistent/dir/x.txt"],
                              capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertTrue(proc.stderr.startswith("cloudpool: error: file:///nonexistent/dir/x.txt"), proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        proc = subprocess.run([_script(), "nope"], capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("invalid choice", proc.stderr)

    def test_runtime_backend_from_an_entry_point(self):
        with tempfile.TemporaryDirectory() as tmp:
            dist = os.path.join(tmp, "site", "cloudpool_clitest-0.1.dist-info")
            os.makedirs(dist)
            with open(os.path.join(dist, "METADATA"), "w") as f:
                f.write("Metadata-Version: 2.1\nName: cloudpool-clitest\nVersion: 0.1\n")
            with open(os.path.join(dist, "entry_points.txt"), "w") as f:
                f.write("[cloudpool.compute]\nclitest = tests.test_cli:RuntimeDirBackend\n")
            state = os.path.join(tmp, "state")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPOOL_")}
            env.update(PYTHONPATH=os.pathsep.join([os.path.join(tmp, "site"), ROOT]),
                       CLOUDPOOL_CLITEST__STATE_DIR=state)
            proc = subprocess.run([_script(), "runtime", "deploy", "--backend", "clitest", "rt1",
                                   "--memory", "512", "--json"],
                                  capture_output=True, text=True, timeout=120, env=env, cwd=tmp)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(json.loads(proc.stdout)["memory_mb"], 512)
            with open(os.path.join(state, "runtimes.json")) as f:
                self.assertEqual(list(json.load(f)), ["rt1"])


# ---------------------------------------------------------------------------- hello
def _hello_env(storage: str) -> Dict[str, str]:
    return {"CLOUDPOOL_STORAGE": storage}


class HelloTest(unittest.TestCase):
    def test_hello_on_local_processes(self):
        with tempfile.TemporaryDirectory() as tmp:
            code, out, err = run("hello", "--storage", tmp, "--json")
            self.assertEqual(code, 0, err)
            report = json.loads(out)
            self.assertEqual(report["backend"], "local")
            self.assertEqual(report["worker"]["host"], socket.gethostname())
            self.assertNotEqual(report["worker"]["pid"], os.getpid())  # it ran in a worker
            self.assertEqual(report["client"]["pid"], os.getpid())
            self.assertEqual(report["description"]["backend"], "local")
            self.assertGreater(report["round_trip_seconds"]["first"], 0)
            self.assertLess(report["round_trip_seconds"]["second"], 30)
            code, out, err = run("hello", "--storage", tmp)
            self.assertEqual(code, 0, err)
            self.assertIn("a call ran on the 'local' backend", out)
            for label in ("host", "pid", "python", "backend", "round trip"):
                self.assertRegex(out, rf"\n  {label} +\S")
            # The executor removed its data after the call.
            self.assertEqual([n for n in os.listdir(tmp) if n.startswith("cp-")
                              and ".cloudpool-tmp-" not in n], [])

    def test_hello_with_s3_storage(self):
        moto = servers.moto_s3()
        bucket = _new_bucket(moto)
        with mock.patch.dict(os.environ, moto.env):
            clear_cache()
            try:
                code, out, err = run("hello", "--storage", f"s3://{bucket}/hello", "--json")
            finally:
                clear_cache()
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["storage"], f"s3://{bucket}/hello")

    def test_hello_errors(self):
        code, out, err = run("hello", "--backend", "lamdba")
        self.assertEqual(code, 1)
        self.assertIn("cloudpool: error: unknown compute backend 'lamdba'", err)
        self.assertIn("did you mean", err)
        self.assertNotIn("Traceback", err)
        code, _out, err = run("hello", "--storage", "http://127.0.0.1:9/readonly")
        self.assertEqual(code, 1)
        self.assertIn("read-only", err)


# ---------------------------------------------------------------------------- storage
def _new_bucket(moto) -> str:
    import boto3

    name = f"cli-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto.endpoint_url, region_name=servers.S3_REGION,
                 aws_access_key_id=servers.S3_ACCESS_KEY,
                 aws_secret_access_key=servers.S3_SECRET_KEY).create_bucket(Bucket=name)
    return name


class StorageCommandsContract:
    """The storage commands against one store; subclasses set ``self.base`` (a URL ending in /)."""

    base: str

    def write_local(self, name: str, data: bytes) -> str:
        path = os.path.join(self.local_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def setUp(self):
        super().setUp()
        self._tmp = tempfile.TemporaryDirectory()
        self.local_dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def test_put_ls_get_rm_roundtrip(self):
        src = self.write_local("hello.txt", b"hello world\n")
        code, out, err = run("storage", "put", src, self.base + "dir/hello.txt")
        self.assertEqual(code, 0, err)
        self.assertIn(f"uploaded {src} to {self.base}dir/hello.txt", out)
        code, out, err = run("storage", "put", src, self.base + "dir/")  # keeps the file name
        self.assertEqual(code, 0, err)
        code, out, err = run("storage", "put", "-", self.base + "dir/sub/from-stdin.bin", stdin=b"")
        self.assertEqual(code, 0, err)
        self.write_local("tree/a.txt", b"a" * 10)
        self.write_local("tree/b/c.txt", b"c" * 20)
        code, out, err = run("storage", "put", os.path.join(self.local_dir, "tree"), self.base + "tree")
        self.assertEqual(code, 1)
        self.assertIn("pass -r", err)
        code, out, err = run("storage", "put", "-r", os.path.join(self.local_dir, "tree"), self.base + "tree")
        self.assertEqual(code, 0, err)
        self.assertIn("uploaded 2 files", out)

        code, out, err = run("storage", "ls", self.base)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split(), ["DIR", self.base + "dir/", "DIR", self.base + "tree/"])
        code, out, err = run("storage", "ls", self.base + "dir")  # a folder, with or without '/'
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split(), ["12", self.base + "dir/hello.txt", "DIR", self.base + "dir/sub/"])
        code, out, err = run("storage", "ls", "-r", "-s", self.base)
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual([line.split() for line in lines[:-1]], [
            ["12", self.base + "dir/hello.txt"], ["0", self.base + "dir/sub/from-stdin.bin"],
            ["10", self.base + "tree/a.txt"], ["20", self.base + "tree/b/c.txt"]])
        self.assertEqual(lines[-1], "total: 4 objects, 42 B (42 bytes)")
        code, out, err = run("storage", "ls", "-H", self.base + "dir/hello.txt")
        self.assertEqual((code, out.split()), (0, ["12", "B", self.base + "dir/hello.txt"]))

        target = os.path.join(self.local_dir, "got.txt")
        code, out, err = run("storage", "get", self.base + "dir/hello.txt", target)
        self.assertEqual(code, 0, err)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"hello world\n")
        os.makedirs(os.path.join(self.local_dir, "into"))
        code, out, err = run("storage", "get", self.base + "tree/b/c.txt", os.path.join(self.local_dir, "into"))
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(self.local_dir, "into", "c.txt")))
        code, data, err = run_bytes("storage", "get", self.base + "tree/a.txt", "-")
        self.assertEqual((code, data), (0, b"a" * 10), err)

        code, out, err = run("storage", "rm", self.base + "dir/hello.txt")
        self.assertEqual(code, 0, err)
        self.assertIn(f"removed {self.base}dir/hello.txt", out)
        code, out, err = run("storage", "rm", self.base + "tree")
        self.assertEqual(code, 1)
        self.assertIn("pass -r", err)
        code, out, err = run("storage", "rm", "-r", self.base + "tree")
        self.assertEqual(code, 0, err)
        self.assertIn("removed 2 objects (30 B)", out)
        code, out, err = run("storage", "ls", "-r", self.base)
        self.assertEqual(out.split(), ["0", self.base + "dir/sub/from-stdin.bin"])

    def test_ls_lists_one_level_with_the_store_delimiter(self):
        # Issue 17: `ls` without -r asks the store for one level (S3's Delimiter, a
        # directory read on disk) instead of listing every object under the prefix.
        from cloudpool.storage import storage_for
        for name, data in (("top.txt", b"12345"), ("logs/a", b"1"), ("logs/deep/b", b"22"),
                           ("logs/deep/er/c", b"333"), ("logs.txt", b"")):
            code, _out, err = run("storage", "put", "-", self.base + name, stdin=data)
            self.assertEqual(code, 0, err)
        backend, _key = storage_for(self.base)
        with mock.patch.object(type(backend), "list", side_effect=AssertionError("full listing")):
            code, out, err = run("storage", "ls", self.base)
            self.assertEqual(code, 0, err)
            self.assertEqual(out.split(), ["0", self.base + "logs.txt", "5", self.base + "top.txt",
                                           "DIR", self.base + "logs/"])
            code, out, err = run("storage", "ls", "-s", self.base + "logs")
            self.assertEqual(code, 0, err)
            self.assertEqual(out.splitlines()[:2], [f"{'1':>12}  {self.base}logs/a",
                                                    f"{'DIR':>12}  {self.base}logs/deep/"])
            self.assertEqual(out.splitlines()[2], "total: 1 objects, 1 B (1 bytes), 1 folders")
            code, out, err = run("storage", "ls", self.base + "logs/deep/")
            self.assertEqual(out.split(), ["2", self.base + "logs/deep/b", "DIR", self.base + "logs/deep/er/"])
        code, out, err = run("storage", "ls", "-r", self.base + "logs/")  # -r still lists everything
        self.assertEqual(out.split(), ["1", self.base + "logs/a", "2", self.base + "logs/deep/b",
                                       "3", self.base + "logs/deep/er/c"])
    def test_get_creates_files_as_open_does_under_the_umask(self):
        # A downloaded file gets the permissions any new file gets (0666 less the umask),
        # as `cp`, `aws s3 cp` and open() give it, not mkstemp's private 0600.
        code, _out, err = run("storage", "put", "-", self.base + "perm/f.txt", stdin=b"data")
        self.assertEqual(code, 0, err)
        for umask in (0o022, 0o027, 0o002):
            with self.subTest(umask=oct(umask)):
                reference = os.path.join(self.local_dir, f"ref-{umask:o}")
                target = os.path.join(self.local_dir, f"got-{umask:o}")
                old = os.umask(umask)
                try:
                    with open(reference, "wb"):
                        pass
                    code, _out, err = run("storage", "get", self.base + "perm/f.txt", target)
                finally:
                    os.umask(old)
                self.assertEqual(code, 0, err)
                self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), stat.S_IMODE(os.stat(reference).st_mode))
                self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o666 & ~umask)
        # A get over an existing file replaces it with a new one: new file's permissions.
        os.chmod(target, 0o600)
        code, _out, err = run("storage", "get", self.base + "perm/f.txt", target)
        self.assertEqual(code, 0, err)
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o666 & ~old)

    def test_missing_objects_are_errors_naming_the_url(self):
        for argv in (["storage", "get", self.base + "nope.txt", os.path.join(self.local_dir, "x")],
                     ["storage", "rm", self.base + "nope.txt"],
                     ["storage", "rm", "-r", self.base + "nope/"],
                     ["storage", "ls", self.base + "nope/"]):
            with self.subTest(argv=argv):
                code, out, err = run(*argv)
                self.assertEqual(code, 1, out)
                self.assertTrue(err.startswith("cloudpool: error: "), err)
                self.assertIn(self.base + "nope", err)
                self.assertNotIn("Traceback", err)
        self.assertEqual(os.listdir(self.local_dir), [])  # a failed get leaves no file behind
        code, out, err = run("storage", "put", os.path.join(self.local_dir, "absent.txt"), self.base + "x")
        self.assertEqual(code, 1)
        self.assertIn("absent.txt: no such local file", err)
        code, out, err = run("storage", "get", self.base)
        self.assertEqual(code, 1)
        self.assertIn("names a folder", err)


class LocalDiskStorageTest(StorageCommandsContract, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self._store = tempfile.TemporaryDirectory()
        self.addCleanup(self._store.cleanup)
        self.base = "file://" + self._store.name + "/"

    def test_refuses_the_filesystem_root(self):
        code, _out, err = run("storage", "rm", "-r", "file:///")
        self.assertEqual(code, 1)
        self.assertIn("refusing", err)

    def test_plain_paths_work(self):
        path = os.path.join(self._store.name, "p.txt")
        code, out, err = run("storage", "put", "-", path, stdin=b"plain")
        self.assertEqual(code, 0, err)
        code, out, err = run("storage", "ls", self._store.name)
        self.assertEqual(out.split(), ["5", "file://" + path])


class S3StorageTest(StorageCommandsContract, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.moto = servers.moto_s3()
        cls.env = mock.patch.dict(os.environ, cls.moto.env)
        cls.env.start()
        clear_cache()

    @classmethod
    def tearDownClass(cls):
        cls.env.stop()
        clear_cache()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.bucket = _new_bucket(self.moto)
        self.base = f"s3://{self.bucket}/"

    def test_nonexistent_bucket(self):
        for argv in (["storage", "ls", "s3://no-such-bucket-cli/"],
                     ["storage", "get", "s3://no-such-bucket-cli/k", os.path.join(self.local_dir, "k")],
                     ["storage", "put", "-", "s3://no-such-bucket-cli/k"]):
            with self.subTest(argv=argv):
                code, out, err = run(*argv)
                self.assertEqual(code, 1, out)
                self.assertIn("cloudpool: error: s3://no-such-bucket-cli/", err)
                self.assertIn("bucket 'no-such-bucket-cli' does not exist", err)
                self.assertNotIn("Traceback", err)

    def test_bare_bucket_needs_recursive(self):
        run("storage", "put", "-", self.base + "a", stdin=b"1")
        run("storage", "put", "-", self.base + "b/c", stdin=b"22")
        code, out, err = run("storage", "rm", self.base)
        self.assertEqual(code, 1)
        self.assertIn("names a whole bucket; pass -r", err)
        code, out, err = run("storage", "rm", f"s3://{self.bucket}")
        self.assertEqual(code, 1)
        code, out, err = run("storage", "rm", "-r", f"s3://{self.bucket}")
        self.assertEqual(code, 0, err)
        self.assertIn("removed 2 objects (3 B)", out)
        code, out, err = run("storage", "ls", self.base)
        self.assertEqual((code, out), (0, ""))  # an empty bucket lists nothing, successfully

    @pytest.mark.slow
    def test_refused_credentials_are_a_permission_error(self):
        # moto accepts any key; SeaweedFS checks them.
        seaweed = servers.seaweedfs()
        env = dict(seaweed.env, AWS_ACCESS_KEY_ID="wrong", AWS_SECRET_ACCESS_KEY="wrong")
        with mock.patch.dict(os.environ, env):
            clear_cache()
            try:
                code, out, err = run("storage", "ls", "s3://any-bucket/")
            finally:
                clear_cache()
        self.assertEqual(code, 1, out)
        self.assertIn("cloudpool: error: s3://any-bucket/", err)
        self.assertIn("check the credentials", err)
        self.assertNotIn("Traceback", err)

    def test_options_come_from_the_configuration(self):
        # An endpoint set only through cloudpool's configuration reaches the storage command.
        env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
        env["CLOUDPOOL_S3__ENDPOINT_URL"] = self.moto.endpoint_url
        with mock.patch.dict(os.environ, env, clear=True):
            clear_cache()
            code, out, err = run("storage", "put", "-", self.base + "cfg.txt", stdin=b"configured")
        self.assertEqual(code, 0, err)
        clear_cache()
        code, data, err = run_bytes("storage", "get", self.base + "cfg.txt", "-")
        self.assertEqual(data, b"configured")


# ---------------------------------------------------------------------------- runtime
class RuntimeCommandsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        backends.register("clitest", RuntimeDirBackend)

    @classmethod
    def tearDownClass(cls):
        backends._loaded.pop("clitest", None)  # the registry has no public way to unregister
        super().tearDownClass()

    def test_local_and_knative_refuse(self):
        for backend in ("local", "knative"):
            for argv in (["build", "rt"], ["deploy", "rt"], ["list"], ["delete", "rt"]):
                with self.subTest(backend=backend, argv=argv):
                    code, out, err = run("runtime", argv[0], "--backend", backend, *argv[1:])
                    self.assertEqual(code, 1)
                    self.assertEqual(out, "")
                    self.assertIn(f"cloudpool: error: the {backend!r} backend has no runtime to {argv[0]}", err)
                    self.assertNotIn("Traceback", err)

    def test_default_backend_comes_from_configuration(self):
        with mock.patch.dict(os.environ, {"CLOUDPOOL_BACKEND": "local"}):
            code, _out, err = run("runtime", "list")
        self.assertEqual(code, 1)
        self.assertIn("'local' backend has no runtime to list", err)

    def test_unknown_backend(self):
        code, _out, err = run("runtime", "list", "--backend", "nosuch")
        self.assertEqual(code, 1)
        self.assertIn("unknown compute backend 'nosuch'", err)

    def test_build_deploy_list_delete(self):
        with tempfile.TemporaryDirectory() as tmp:
            reqs = os.path.join(tmp, "requirements.txt")
            with open(reqs, "w") as f:
                f.write("pandas>=2  # data frames\n\nrequests\n")
            with mock.patch.dict(os.environ, {"CLOUDPOOL_CLITEST__STATE_DIR": tmp}):
                code, out, err = run("runtime", "build", "--backend", "clitest", "rt1",
                                     "-r", "numpy", "--requirements-file", reqs, "--output", os.path.join(tmp, "out"))
                self.assertEqual(code, 0, err)
                self.assertIn("built runtime 'rt1'", out)
                with open(os.path.join(tmp, "out", "requirements.txt")) as f:
                    self.assertEqual(f.read().split(), ["numpy", "pandas>=2", "requests"])

                code, out, err = run("runtime", "list", "--backend", "clitest")
                self.assertEqual((code, out), (0, "no runtimes deployed\n"), err)
                code, out, err = run("runtime", "deploy", "--backend", "clitest", "rt1",
                                     "--memory", "1024", "--timeout", "60")
                self.assertEqual(code, 0, err)
                self.assertRegex(out, r"memory_mb +1024")
                code, out, err = run("runtime", "deploy", "--backend", "clitest", "rt2")
                code, out, err = run("runtime", "list", "--backend", "clitest")
                self.assertEqual(code, 0, err)
                lines = out.splitlines()
                self.assertEqual(lines[0].split(), ["NAME", "MEMORY_MB", "TIMEOUT", "PYTHON"])
                self.assertEqual(lines[1].split()[:3], ["rt1", "1024", "60.0"])
                self.assertEqual(lines[2].split()[0], "rt2")
                code, out, err = run("runtime", "list", "--backend", "clitest", "--json")
                self.assertEqual([r["name"] for r in json.loads(out)], ["rt1", "rt2"])

                code, out, err = run("runtime", "delete", "--backend", "clitest", "rt1")
                self.assertEqual((code, out), (0, "deleted runtime 'rt1'\n"), err)
                code, out, err = run("runtime", "delete", "--backend", "clitest", "rt1")
                self.assertEqual(code, 1)
                self.assertIn("cloudpool: error: no runtime named 'rt1'", err)
                code, out, err = run("runtime", "list", "--backend", "clitest", "--json")
                self.assertEqual([r["name"] for r in json.loads(out)], ["rt2"])

    def test_backend_configuration_errors_are_reported(self):
        code, _out, err = run("runtime", "list", "--backend", "clitest")
        self.assertEqual(code, 1)
        self.assertIn("needs the option state_dir", err)


# ---------------------------------------------------------------------------- clean
_CRASHING_CLIENT = r"""
import sys, time
from cloudpool import CloudPoolExecutor

def work(x):
    return x + 1

ex = CloudPoolExecutor(1, storage=sys.argv[1], config={"keep_data": True})
assert ex.submit(work, 1).result(timeout=60) == 2
print(ex.executor_id, flush=True)
time.sleep(600)  # killed long before
"""


def _write_marker(root: str, executor_id: str, **fields: Any) -> str:
    prefix = os.path.join(root, executor_id)
    os.makedirs(os.path.join(prefix, "j00000", "status"), exist_ok=True)
    marker = {"host": "elsewhere", "pid": 1, "started": time.time(), "backend": "local",
              "versions": protocol.versions()}
    marker.update(fields)
    with open(os.path.join(prefix, "client.json"), "w") as f:
        json.dump(marker, f)
    with open(os.path.join(prefix, "j00000", "status", "00000000.0000.json"), "w") as f:
        f.write("{}")
    return prefix


def _age_files(prefix: str, seconds: float) -> None:
    when = time.time() - seconds
    for dirpath, _dirs, files in os.walk(prefix):
        for name in files:
            os.utime(os.path.join(dirpath, name), (when, when))


def _eid() -> str:
    return "cp-" + os.urandom(16).hex()


class CleanTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.root = os.path.join(self._tmp.name, "root")
        os.makedirs(self.root)

    def prefixes(self) -> List[str]:
        return sorted(n for n in os.listdir(self.root) if ".cloudpool-tmp-" not in n)

    def test_live_executor_kept_crashed_client_removed(self):
        # A client that is SIGKILLed after its first call: its data stays behind.
        proc = subprocess.Popen([sys.executable, "-c", _CRASHING_CLIENT, self.root],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.kill)
        try:
            ready, _w, _x = select.select([proc.stdout], [], [], 120)  # never wait forever
            crashed = proc.stdout.readline().strip() if ready else ""
        finally:
            proc.send_signal(signal.SIGKILL)
        self.assertRegex(crashed, r"^cp-[0-9a-f]+$", "the client did not report its executor "
                         "within 120 s: " + ("" if ready else "(timed out)"))
        # Not reaped yet: a zombie still answers kill(pid, 0) and must count as gone.
        with CloudPoolExecutor(1, storage=self.root) as live:
            self.assertEqual(live.submit(int, "7").result(timeout=60), 7)
            self.assertEqual(self.prefixes(), sorted([crashed, live.executor_id]))
            self.assertTrue(os.path.exists(os.path.join(self.root, crashed, "client.json")))
            crashed_files = sum(len(f) for _d, _s, f in os.walk(os.path.join(self.root, crashed)))

            code, out, err = run("clean", "--storage", self.root, "--dry-run")
            self.assertEqual(code, 0, err)
            self.assertIn(f"would remove file://{self.root}/{crashed}/: {crashed_files} objects", out)
            self.assertEqual(self.prefixes(), sorted([crashed, live.executor_id]))

            code, out, err = run("clean", "--storage", self.root)
            self.assertEqual(code, 0, err)
            self.assertIn(f"removed file://{self.root}/{crashed}/: {crashed_files} objects", out)
            self.assertIn(f"pid {proc.pid} on this host, is gone", out)
            self.assertIn(f"kept file://{self.root}/{live.executor_id}/ (live: its client, pid {os.getpid()}", out)
            self.assertRegex(out, rf"removed 1 executor prefixes \({crashed_files} objects, .* bytes\)")
            self.assertEqual(self.prefixes(), [live.executor_id])

            # --all never removes a live client's data either.
            code, out, err = run("clean", "--storage", self.root, "--all")
            self.assertEqual(code, 0, err)
            self.assertEqual(self.prefixes(), [live.executor_id])
            self.assertEqual(live.submit(int, "8").result(timeout=60), 8)  # still works
        proc.wait(timeout=30)

    def test_other_hosts_unowned_data_and_reused_pids(self):
        old_other = _write_marker(self.root, _eid(), started=time.time() - 3 * 86400)
        _age_files(old_other, 3 * 86400)
        fresh_other = _write_marker(self.root, _eid())
        unowned_old = _write_marker(self.root, _eid())
        os.unlink(os.path.join(unowned_old, "client.json"))
        _age_files(unowned_old, 2 * 86400)
        unowned_new = _write_marker(self.root, _eid())
        os.unlink(os.path.join(unowned_new, "client.json"))
        # This very process's pid, but a marker written before it started: a reused pid.
        reused = _write_marker(self.root, _eid(), host=socket.gethostname(), pid=os.getpid(),
                               started=time.time() - 30 * 86400)
        # Not executor prefixes: never touched, even with --all.
        for name in ("user-data", "cp-not-an-executor"):
            os.makedirs(os.path.join(self.root, name))
            with open(os.path.join(self.root, name, "keep.txt"), "w") as f:
                f.write("mine")
        os.utime(os.path.join(self.root, "user-data", "keep.txt"), (0, 0))

        code, out, err = run("clean", "--storage", "file://" + self.root)
        self.assertEqual(code, 0, err)
        left = self.prefixes()
        for gone in (old_other, unowned_old, reused):
            self.assertNotIn(os.path.basename(gone), left, out)
        for kept in (fresh_other, unowned_new):
            self.assertIn(os.path.basename(kept), left, out)
        self.assertIn("may still run", out)
        self.assertIn("removed 3 executor prefixes (5 objects", out)

        code, out, err = run("clean", "--storage", self.root, "--all")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.prefixes(), ["cp-not-an-executor", "user-data"])

    def test_clean_on_s3(self):
        moto = servers.moto_s3()
        bucket = _new_bucket(moto)
        with mock.patch.dict(os.environ, moto.env):
            clear_cache()
            try:
                from cloudpool.storage import storage_for

                store, _ = storage_for(f"s3://{bucket}/")
                dead, live = _eid(), _eid()
                marker = protocol.client_marker("local")
                store.put(f"jobs/{dead}/client.json", protocol.json_bytes(dict(marker, pid=2 ** 22 + 7)))
                store.put(f"jobs/{dead}/j00000/function.pickle", b"x" * 100)
                store.put(f"jobs/{live}/client.json", protocol.json_bytes(marker))
                code, out, err = run("clean", "--storage", f"s3://{bucket}/jobs")
                self.assertEqual(code, 0, err)
                self.assertIn(f"removed s3://{bucket}/jobs/{dead}/: 2 objects", out)
                self.assertEqual([i.key for i in store.list("")], [f"jobs/{live}/client.json"])
                code, out, err = run("clean", "--storage", "s3://no-such-bucket-cli/jobs")
                self.assertEqual(code, 1)
                self.assertIn("does not exist", err)
            finally:
                clear_cache()


# ---------------------------------------------------------------------------- config
class ConfigCommandTest(unittest.TestCase):
    def test_sources_and_masked_secrets(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "config.yaml")
            with open(path, "w") as f:
                f.write("storage: s3://from-file/root\nmax_workers: 7\n"
                        "s3: {region: eu-west-1, aws_secret_access_key: hunter2}\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPOOL_")}
            env.update(CLOUDPOOL_CONFIG=path, CLOUDPOOL_TIMEOUT="30", CLOUDPOOL_MAX_WORKERS="3")
            with mock.patch.dict(os.environ, env, clear=True):
                code, out, err = run("config")
                self.assertEqual(code, 0, err)
                self.assertIn(f"configuration file: {path}\n", out)
                rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()[1:]}
                self.assertEqual(rows["storage"], ["s3://from-file/root", f"(file {path})"])
                self.assertEqual(rows["timeout"], ["30.0", "(environment (CLOUDPOOL_*))"])
                self.assertEqual(rows["max_workers"], ["3", "(environment (CLOUDPOOL_*))"])
                self.assertEqual(rows["backend"], ["local", "(default)"])
                self.assertEqual(rows["s3.region"][0], "eu-west-1")
                self.assertEqual(rows["s3.aws_secret_access_key"][0], "****")
                self.assertNotIn("hunter2", out)
                code, out, err = run("config", "--json")
                data = json.loads(out)
                self.assertEqual(data["settings"]["timeout"], {"value": 30.0, "source": "environment (CLOUDPOOL_*)"})
                self.assertNotIn("hunter2", out)

    def test_bad_configuration_is_an_error(self):
        with mock.patch.dict(os.environ, {"CLOUDPOOL_TIMOUT": "3"}):
            code, out, err = run("config")
        self.assertEqual(code, 1)
        self.assertIn("cloudpool: error: unknown setting 'CLOUDPOOL_TIMOUT'", err)
        self.assertIn("did you mean 'timeout'", err)


if __name__ == "__main__":
    unittest.main()
