"""The ``aws_lambda`` backend against moto's Lambda API, and (slow tier) real calls in containers.

Fast tier (a moto server whose Lambda stores functions but runs no code; its invocations
answer results queued through moto's own API, ``lambda_stack.LambdaMoto.queue_results``):

- option checks: out-of-range memory/timeout are rejected (never clamped), bad region,
  role, function name, package type; a local-directory storage is refused before sending;
- runtime commands: deploy creates the function with the memory, timeout, role, package,
  handler and runtime asked for, records the runtime's metadata (from its answer to the
  metadata request) in tags, turns off Lambda's own retries; redeploy updates; list
  shows cloudpool runtimes only; delete; image packages; build outputs;
- the handshake: a missing function and a function with other versions are refused with
  clear errors before anything is invoked;
- throttling through ``lambda_stack.ThrottlingProxy`` (a real HTTP proxy answering 429
  ``TooManyRequestsException``): the backend backs off and gets through; with the budget
  exhausted the futures fail with a clear error within a bound.

Slow tier (``@pytest.mark.slow``): moto running each invocation in a podman container of
a Debian Python image (``scripts/install-lambda-deps.sh``), the runtime deployed by
``deploy_runtime``, and ``CloudPoolExecutor(backend="aws_lambda")`` with S3 storage on the
same moto: results in order, a remote exception with its traceback, a function from a
module only the client has, a call timeout, a package missing on the runtime, throttling.
Timings are printed to stderr.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib
import io
import json
import os
import sys
import tempfile
import textwrap
import time
import unittest
import uuid
import zipfile
from unittest import mock

import boto3
import cloudpickle
import pytest

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.compute import aws_lambda, backends
from cloudpool.compute.aws_lambda import LambdaBackend
from cloudpool.compute.base import InvocationLost
from cloudpool.errors import CallTimeoutError, RemoteTraceback, VersionMismatchError, WorkerLostError
from tests import lambda_stack, servers
from tests.lambda_functions import add, raise_key_error, sleep_for, square, where

BOUND = 30.0  # seconds: no failure may take longer to surface
REGION = servers.S3_REGION
CREDENTIALS = {"AWS_ACCESS_KEY_ID": servers.S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.S3_SECRET_KEY,
               "AWS_DEFAULT_REGION": REGION}

# The functions run in Lambda containers, which have neither this repository nor the
# tests package: the executor ships their module's source (cloudpool._shipping), as any
# user's own code must travel; nothing here registers it by hand.

def metadata_answer(**versions) -> str:
    """What runtime/aws_lambda/handler.py answers to the metadata request, with overrides."""
    return json.dumps({"protocol": protocol.PROTOCOL_VERSION, "versions": dict(protocol.versions(), **versions),
                       "python_full": "3.11.9", "packages": {"boto3": "1.34.0", "cloudpickle": cloudpickle.__version__}})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class _Env:
    """boto3's credential chain for the test process only (restored afterwards)."""

    patcher = None

    @classmethod
    def start(cls) -> None:
        if cls.patcher is None:
            cls.patcher = mock.patch.dict(os.environ, CREDENTIALS)
            cls.patcher.start()


def tearDownModule():
    # The credentials are this module's: other modules in the same run may test their absence.
    if _Env.patcher is not None:
        _Env.patcher.stop()
        _Env.patcher = None


def _create_role(endpoint: str) -> str:
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION)
    name = unique("cloudpool-lambda")
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))["Role"]["Arn"]


def _create_bucket(endpoint: str) -> str:
    bucket = unique("cp-lambda")
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=bucket)
    return bucket


# ============================================================================ option checks
class LambdaOptionsTest(unittest.TestCase):
    """Bad options fail at construction with a message naming the option and the fix."""

    def make(self, storage_url="s3://bucket/prefix", max_workers=None, **options):
        options.setdefault("region", REGION)
        return LambdaBackend(options, max_workers=max_workers, storage_url=storage_url, storage_options={})

    def assertRefused(self, message_part, **options):
        with self.assertRaises(ValueError) as cm:
            self.make(**options)
        self.assertIn(message_part, str(cm.exception))
        return cm.exception

    def test_registry_maps_the_name(self):
        self.assertIs(backends.get("aws_lambda"), LambdaBackend)

    def test_memory_out_of_range_is_rejected_not_clamped(self):
        for bad in (0, 127, 10241, 65536):
            err = self.assertRefused("memory_mb", memory_mb=bad)
            self.assertIn("128..10240", str(err))
        for bad in (512.5, "1024", True):
            self.assertRefused("memory_mb", memory_mb=bad)
        for good in (128, 1769, 10240):
            backend = self.make(memory_mb=good)
            self.assertEqual(backend.memory_mb, good)
            self.assertEqual(backend.capabilities.memory_mb, good)

    def test_timeout_out_of_range_is_rejected_not_clamped(self):
        for bad in (0, -5, 901, 3600):
            err = self.assertRefused("'timeout'", timeout=bad)
            self.assertIn("1..900", str(err))
        backend = self.make(timeout=900)
        self.assertEqual(backend.capabilities.max_timeout, 900.0)
        self.assertEqual(self.make(timeout=1).timeout, 1)

    def test_region_role_name_and_package_checks(self):
        self.assertRefused("region", region="moon-base-1")
        self.assertRefused("region", region="US-EAST-1")
        self.assertRefused("'role'", role="cloudpool-role")
        self.assertRefused("'role'", role="arn:aws:iam::123:role/x")  # account ids have 12 digits
        self.assertRefused("function_name", function_name="has spaces")
        self.assertRefused("function_name", function_name="x" * 65)
        self.assertRefused("package_type", package_type="jar")
        self.assertRefused("package_type='image'", image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/cp:1")
        self.assertRefused("invoke_concurrency", invoke_concurrency=0)
        self.assertRefused("retry_seconds", retry_seconds=-1)
        self.assertRefused("endpoint_url", endpoint_url="127.0.0.1:5000")
        self.assertRefused("architecture", architecture="sparc")
        self.assertRefused("unknown option", memory=512)  # the option is memory_mb
        ok = self.make(role="arn:aws:iam::123456789012:role/cloudpool-lambda",
                       function_name="arn:aws:lambda:us-east-1:123456789012:function:cp")
        self.assertEqual(ok.role, "arn:aws:iam::123456789012:role/cloudpool-lambda")

    def test_region_comes_from_boto3_or_the_error_says_how_to_set_it(self):
        with mock.patch.dict(os.environ, {"AWS_DEFAULT_REGION": "eu-west-3"}):
            self.assertEqual(LambdaBackend({}, max_workers=None, storage_url="s3://b/p", storage_options={}).region,
                             "eu-west-3")
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
        env["AWS_CONFIG_FILE"] = os.path.join(tempfile.gettempdir(), "cloudpool-no-such-aws-config")
        with mock.patch.dict(os.environ, env, clear=True):
            with self.assertRaises(ValueError) as cm:
                LambdaBackend({}, max_workers=None, storage_url="s3://b/p", storage_options={})
        self.assertIn("AWS_DEFAULT_REGION", str(cm.exception))

    def test_default_function_name_names_the_versions(self):
        name = aws_lambda.default_function_name()
        v = protocol.versions()
        self.assertRegex(name, r"^[A-Za-z0-9_-]{1,64}$")
        self.assertIn(v["python"].replace(".", ""), name)
        self.assertIn(v["cloudpickle"].replace(".", "_"), name)
        self.assertEqual(self.make().function_name, name)

    def test_capabilities_are_declared(self):
        caps = self.make(max_workers=7, memory_mb=2048, timeout=120).capabilities
        self.assertEqual(caps.max_concurrency, 7)
        self.assertEqual(caps.max_timeout, 120.0)
        self.assertEqual(caps.memory_mb, 2048)
        self.assertEqual(caps.payload_limit, 256 * 1024)
        self.assertFalse(caps.notifies)
        self.assertTrue(caps.remote)
        self.assertGreaterEqual(caps.batch_target_seconds, 1.0)

    def test_local_storage_is_refused_before_anything_is_sent(self):
        backend = self.make(storage_url="file:///tmp/cloudpool-x")
        with self.assertRaises(ValueError) as cm:
            backend.invoke("j:0", {"job": "j", "batch": 0, "keys": {"root": "", "executor": "e"}})
        self.assertIn("s3://", str(cm.exception))

    def test_oversized_event_is_refused_naming_inline_limit(self):
        backend = self.make()
        event = {"job": "j", "batch": 0, "keys": {"root": "", "executor": "e"}, "args": b"x" * (200 * 1024)}
        with self.assertRaises(ValueError) as cm:
            backend.invoke("j:0", event)
        self.assertIn("inline_limit", str(cm.exception))


# ============================================================================ runtimes on moto's API
class _PlainMotoCase(unittest.TestCase):
    moto: lambda_stack.LambdaMoto

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _Env.start()
        cls.moto = lambda_stack.plain_moto()
        cls.role = _create_role(cls.moto.endpoint_url)
        cls.lam = boto3.client("lambda", endpoint_url=cls.moto.endpoint_url, region_name=REGION)

    def backend(self, storage_url="", **options) -> LambdaBackend:
        options.setdefault("endpoint_url", self.moto.endpoint_url)
        options.setdefault("region", REGION)
        options.setdefault("role", self.role)
        max_workers = options.pop("max_workers", 2)
        backend = LambdaBackend(options, max_workers=max_workers, storage_url=storage_url, storage_options={})
        self.addCleanup(backend.shutdown)
        return backend

    def deploy(self, name, answer=None, **options):
        self.moto.queue_results([answer or metadata_answer()])
        backend = self.backend(function_name=name, **options)
        return backend, backend.deploy_runtime(name)


class LambdaRuntimeApiTest(_PlainMotoCase):
    """deploy/list/delete against moto's Lambda API, and what they create."""

    def test_deploy_creates_the_function_as_asked_and_records_metadata(self):
        name = unique("cp-deploy")
        _, meta = self.deploy(name, memory_mb=2048, timeout=120)
        config = self.lam.get_function(FunctionName=name)["Configuration"]
        self.assertEqual(config["MemorySize"], 2048)
        self.assertEqual(config["Timeout"], 120)
        self.assertEqual(config["Role"], self.role)
        self.assertEqual(config["PackageType"], "Zip")
        self.assertEqual(config["Handler"], "cloudpool_lambda_handler.lambda_handler")
        self.assertEqual(config["Runtime"], f"python{sys.version_info.major}.{sys.version_info.minor}")
        # The metadata came from the function's answer (queued in moto), and is in its tags.
        self.assertEqual(meta["versions"], protocol.versions())
        self.assertEqual(meta["python_full"], "3.11.9")
        tags = self.lam.list_tags(Resource=config["FunctionArn"])["Tags"]
        self.assertEqual(tags["cloudpool:runtime"], name)
        self.assertEqual(tags["cloudpool:cloudpickle"], cloudpickle.__version__)
        self.assertEqual(tags["cloudpool:python"], protocol.versions()["python"])
        self.assertIn("boto3==1.34.0", tags["cloudpool:packages:00"])
        # Lambda must not re-run a failed batch on its own: the client re-queues what is lost.
        invoke_config = self.lam.get_function_event_invoke_config(FunctionName=name)
        self.assertEqual(invoke_config["MaximumRetryAttempts"], 0)

    def test_deployed_package_holds_entry_point_and_client_versions(self):
        out = tempfile.mkdtemp(prefix="cp-lambda-build-")
        self.addCleanup(lambda: __import__("shutil").rmtree(out, ignore_errors=True))
        built = self.backend().build_runtime("cp-build", output=out)
        self.assertEqual(built["package_type"], "zip")
        with zipfile.ZipFile(built["path"]) as zf:
            names = set(zf.namelist())
            handler = zf.read("cloudpool_lambda_handler.py").decode()
        self.assertIn("cloudpool/worker.py", names)
        self.assertIn("cloudpickle/cloudpickle.py", names)
        self.assertIn(f"cloudpickle-{cloudpickle.__version__}.dist-info/METADATA", names)
        self.assertFalse([n for n in names if "__pycache__" in n or n.endswith(".pyc")])
        self.assertIn("def lambda_handler(event, context)", handler)
        # Deterministic: the same inputs give the same package (no needless redeploys).
        again = self.backend().build_runtime("cp-build", output=out)
        self.assertEqual(again["sha256"], built["sha256"])

    def test_build_installs_requirements_into_the_package(self):
        wheel_dir = tempfile.mkdtemp(prefix="cp-lambda-wheel-")
        self.addCleanup(lambda: __import__("shutil").rmtree(wheel_dir, ignore_errors=True))
        wheel = os.path.join(wheel_dir, "cptinydep-1.0-py3-none-any.whl")
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("cptinydep/__init__.py", "ANSWER = 42\n")
            zf.writestr("cptinydep-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: cptinydep\nVersion: 1.0\n")
            zf.writestr("cptinydep-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            zf.writestr("cptinydep-1.0.dist-info/RECORD", "")
        built = self.backend().build_runtime("cp-reqs", requirements=[wheel], output=wheel_dir)
        with zipfile.ZipFile(built["path"]) as zf:
            self.assertEqual(zf.read("cptinydep/__init__.py"), b"ANSWER = 42\n")
        with self.assertRaises(RuntimeError) as cm:
            self.backend().build_runtime("cp-reqs", requirements=[os.path.join(wheel_dir, "missing.whl")],
                                         output=wheel_dir)
        self.assertIn("pip could not install", str(cm.exception))

    def test_image_build_context_pins_the_client_versions(self):
        out = tempfile.mkdtemp(prefix="cp-lambda-image-")
        self.addCleanup(lambda: __import__("shutil").rmtree(out, ignore_errors=True))
        built = self.backend(package_type="image").build_runtime("cp-image", requirements=["requests"], output=out)
        ctx = built["context"]
        with open(os.path.join(ctx, "requirements.txt")) as f:
            self.assertEqual(f.read().split(), [f"cloudpickle=={cloudpickle.__version__}", "requests"])
        with open(os.path.join(ctx, "Dockerfile")) as f:
            dockerfile = f.read()
        self.assertIn("cloudpool_lambda_handler.lambda_handler", dockerfile)
        self.assertTrue(os.path.isfile(os.path.join(ctx, "cloudpool", "worker.py")))
        self.assertTrue(os.path.isfile(os.path.join(ctx, "cloudpool_lambda_handler.py")))

    def test_redeploy_updates_memory_and_timeout(self):
        name = unique("cp-update")
        backend, _ = self.deploy(name, memory_mb=512, timeout=30)
        self.moto.queue_results([metadata_answer()])
        meta = backend.deploy_runtime(name, memory_mb=4096, timeout=900)
        config = self.lam.get_function(FunctionName=name)["Configuration"]
        self.assertEqual((config["MemorySize"], config["Timeout"]), (4096, 900))
        self.assertEqual((meta["memory_mb"], meta["timeout"]), (4096, 900))
        with self.assertRaises(ValueError):
            backend.deploy_runtime(name, memory_mb=64)

    def test_list_shows_cloudpool_runtimes_only_and_delete_removes(self):
        name = unique("cp-list")
        backend, _ = self.deploy(name)
        other = unique("not-cloudpool")
        self.lam.create_function(FunctionName=other, Runtime="python3.11", Role=self.role, Handler="app.handler",
                                 Code={"ZipFile": _tiny_zip()})
        listed = {r["name"]: r for r in backend.list_runtimes()}
        self.assertIn(name, listed)
        self.assertNotIn(other, listed)
        self.assertEqual(listed[name]["versions"], protocol.versions())
        self.assertEqual(listed[name]["memory_mb"], aws_lambda.DEFAULT_MEMORY_MB)
        with self.assertRaises(PermissionError):
            backend.delete_runtime(other)  # not ours: left alone
        backend.delete_runtime(name)
        self.assertNotIn(name, {r["name"] for r in backend.list_runtimes()})
        with self.assertRaises(FileNotFoundError) as cm:
            backend.delete_runtime(name)
        self.assertIn("cloudpool runtime deploy --backend aws_lambda", str(cm.exception))

    def test_deploy_needs_a_role_and_a_metadata_answer(self):
        backend = LambdaBackend({"endpoint_url": self.moto.endpoint_url, "region": REGION}, max_workers=1,
                                storage_url="", storage_options={})
        with self.assertRaises(ValueError) as cm:
            backend.deploy_runtime(unique("cp-norole"))
        self.assertIn("'role'", str(cm.exception))
        self.moto.queue_results(["Simple Lambda happy path OK"])
        with self.assertRaises(RuntimeError) as cm:
            self.backend().deploy_runtime(unique("cp-garbage"))
        self.assertIn("did not answer cloudpool runtime metadata", str(cm.exception))

    def test_image_package_deploys_the_given_image(self):
        name = unique("cp-img")
        uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/cloudpool:1"
        with self.assertRaises(ValueError) as cm:
            self.backend(function_name=name, package_type="image").deploy_runtime(name)
        self.assertIn("image_uri", str(cm.exception))
        self.moto.queue_results([metadata_answer()])
        self.backend(function_name=name, package_type="image", image_uri=uri).deploy_runtime(name, memory_mb=3008)
        fn = self.lam.get_function(FunctionName=name)
        self.assertEqual(fn["Configuration"]["PackageType"], "Image")
        self.assertEqual(fn["Configuration"]["MemorySize"], 3008)
        self.assertEqual(fn["Code"]["ImageUri"], uri)


def _tiny_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", "def handler(event, context):\n    return event\n")
    return buf.getvalue()


# ============================================================================ handshake and throttling
class LambdaHandshakeAndThrottlingTest(_PlainMotoCase):
    """Refusals before invoking, and 429 handling, through a real throttling proxy."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.bucket = _create_bucket(cls.moto.endpoint_url)
        cls.proxy = lambda_stack.ThrottlingProxy(cls.moto.endpoint_url)

    @classmethod
    def tearDownClass(cls):
        cls.proxy.close()
        super().tearDownClass()

    def setUp(self):
        with self.proxy.lock:
            self.proxy.throttle = self.proxy.throttled = self.proxy.invokes = 0

    def executor(self, function_name, **options) -> CloudPoolExecutor:
        options.setdefault("endpoint_url", self.proxy.endpoint_url)
        config = {"aws_lambda": dict(options, function_name=function_name, region=REGION),
                  "s3": {"endpoint_url": self.moto.endpoint_url, "region": REGION}}
        ex = CloudPoolExecutor(max_workers=2, backend="aws_lambda", storage=f"s3://{self.bucket}/{unique('run')}",
                               config=config)
        self.addCleanup(ex.shutdown, wait=False, cancel_futures=True)
        return ex

    def test_executor_rejects_bad_options_at_construction(self):
        with self.assertRaises(ValueError) as cm:
            CloudPoolExecutor(backend="aws_lambda", storage=f"s3://{self.bucket}/x", region=REGION, memory_mb=20000,
                              config={"s3": {"endpoint_url": self.moto.endpoint_url, "region": REGION}})
        self.assertIn("memory_mb", str(cm.exception))

    def test_missing_function_fails_the_calls_naming_the_deploy_command(self):
        ex = self.executor(unique("cp-missing"))
        start = time.monotonic()
        with self.assertRaises(FileNotFoundError) as cm:
            ex.submit(square, 3).result(timeout=BOUND)
        self.assertLess(time.monotonic() - start, BOUND)
        self.assertIn("cloudpool runtime deploy --backend aws_lambda", str(cm.exception))
        self.assertEqual(self.proxy.invokes, 0)

    def test_version_mismatch_is_refused_naming_both_sides(self):
        name = unique("cp-old")
        self.deploy(name, answer=metadata_answer(cloudpickle="0.0.1"))
        ex = self.executor(name)
        with self.assertRaises(VersionMismatchError) as cm:
            ex.submit(square, 3).result(timeout=BOUND)
        text = str(cm.exception)
        self.assertIn("0.0.1", text)
        self.assertIn(cloudpickle.__version__, text)
        self.assertIn(name, text)
        self.assertEqual(self.proxy.invokes, 0, "nothing may be invoked on a mismatching runtime")
        with self.assertRaises(VersionMismatchError):
            ex.submit(square, 4)  # the executor is broken, as with a worker's own refusal

    def test_function_without_tags_is_asked_for_its_metadata(self):
        name = unique("cp-untagged")
        self.lam.create_function(FunctionName=name, Runtime="python3.11", Role=self.role,
                                 Handler=aws_lambda.HANDLER, Code={"ZipFile": _tiny_zip()})
        self.moto.queue_results([metadata_answer(python="3.7")])
        backend = self.backend(function_name=name)
        with self.assertRaises(VersionMismatchError) as cm:
            backend._check_function()
        self.assertIn("3.7 on the worker", str(cm.exception))

    def test_throttled_invocations_back_off_and_get_through(self):
        name = unique("cp-throttle")
        self.deploy(name)
        self.proxy.throttle = 3
        backend = self.backend(function_name=name, endpoint_url=self.proxy.endpoint_url, retry_seconds=20)
        notices = []
        backend.start(notices.append)
        start = time.monotonic()
        backend.invoke("j00000:0", {"job": "j00000", "batch": 0, "keys": {"root": "r", "executor": "e"}})
        deadline = start + BOUND
        while backend.counts["accepted"] < 1 and time.monotonic() < deadline and not notices:
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        self.assertEqual(notices, [])
        self.assertEqual(backend.counts["accepted"], 1)
        self.assertEqual(backend.counts["throttled"], 3)
        self.assertEqual((self.proxy.throttled, self.proxy.invokes), (3, 4))
        # Three back-offs of at least 0.1, 0.2, 0.4 s (half of 0.2/0.4/0.8 after jitter).
        self.assertGreaterEqual(elapsed, 0.7)
        self.assertIn("invocations", backend.describe())

    def test_exhausted_throttling_budget_fails_the_futures_within_a_bound(self):
        name = unique("cp-throttle-out")
        self.deploy(name)
        self.proxy.throttle = 10 ** 9
        ex = self.executor(name, retry_seconds=1.5)
        start = time.monotonic()
        futures = [ex.submit(square, i) for i in range(3)]
        done, not_done = cf.wait(futures, timeout=BOUND)
        elapsed = time.monotonic() - start
        self.assertEqual(not_done, set(), "throttled calls must fail, not hang")
        for f in futures:
            exc = f.exception()
            self.assertIsInstance(exc, WorkerLostError)
            self.assertIn("TooManyRequestsException", str(exc))
            self.assertIn("retry_seconds=1.5", str(exc))
        self.assertLess(elapsed, BOUND)
        self.assertGreaterEqual(self.proxy.throttled, 3)

    def test_other_invoke_errors_are_reported_at_once_with_lambdas_message(self):
        name = unique("cp-denied")
        self.deploy(name)
        self.proxy.refusal = (403, "AccessDeniedException", "User is not authorized to perform: lambda:InvokeFunction")
        self.addCleanup(setattr, self.proxy, "refusal", (429, "TooManyRequestsException", "Rate Exceeded."))
        self.proxy.throttle = 1
        backend = self.backend(function_name=name, endpoint_url=self.proxy.endpoint_url, retry_seconds=20)
        notices = []
        backend.start(notices.append)
        start = time.monotonic()
        backend.invoke("j00000:0", {"job": "j00000", "batch": 0, "keys": {"root": "r", "executor": "e"}})
        while not notices and time.monotonic() < start + BOUND:
            time.sleep(0.02)
        self.assertLess(time.monotonic() - start, 5.0, "a refusal that is not throttling is not retried")
        self.assertEqual(len(notices), 1)
        self.assertIsInstance(notices[0], InvocationLost)
        self.assertEqual(notices[0].inv, "j00000:0")
        self.assertIn("AccessDeniedException", notices[0].reason)
        self.assertIn("not authorized", notices[0].reason)
        self.assertEqual((self.proxy.invokes, backend.counts["accepted"]), (1, 0))


# ============================================================================ real containers
@pytest.mark.slow
class LambdaContainerTest(unittest.TestCase):
    """The real thing: each invocation runs the deployed zip in a podman container."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _Env.start()
        t0 = time.monotonic()
        cls.moto = lambda_stack.container_moto()
        cls.bucket = _create_bucket(cls.moto.endpoint_url)
        cls.role = _create_role(cls.moto.endpoint_url)
        cls.name = unique("cp-real")
        cls.options = {"endpoint_url": cls.moto.endpoint_url, "region": REGION, "function_name": cls.name,
                       "role": cls.role, "timeout": 60, "memory_mb": 512}
        t1 = time.monotonic()
        backend = LambdaBackend(dict(cls.options), max_workers=1, storage_url="", storage_options={})
        cls.meta = backend.deploy_runtime(cls.name)
        t2 = time.monotonic()
        print(f"\n[test_aws_lambda] podman + moto up in {t1 - t0:.1f} s; deploy (incl. one metadata "
              f"invocation in a container) {t2 - t1:.1f} s", file=sys.stderr)

    def executor(self, **config) -> CloudPoolExecutor:
        lam = dict(self.options)
        lam.update(config.pop("aws_lambda", {}))
        conf = {"aws_lambda": lam, "s3": {"endpoint_url": self.moto.endpoint_url, "region": REGION}}
        conf.update(config)
        ex = CloudPoolExecutor(max_workers=3, backend="aws_lambda",
                               storage=f"s3://{self.bucket}/{unique('run')}", config=conf)
        self.addCleanup(ex.shutdown, wait=False, cancel_futures=True)
        return ex

    def test_deployed_metadata_comes_from_the_container(self):
        self.assertEqual(self.meta["versions"], protocol.versions())
        self.assertIn("boto3", self.meta["packages"])
        self.assertEqual(self.meta["packages"]["cloudpickle"], cloudpickle.__version__)
        self.assertNotEqual(self.meta["python_full"], sys.version.split()[0], "expected the image's own Python")

    def test_submit_and_map_in_order(self):
        ex = self.executor()
        t0 = time.monotonic()
        f = ex.submit(add, 2, 3)
        info = ex.submit(where).result(timeout=BOUND)
        self.assertEqual(f.result(timeout=BOUND), 5)
        single = time.monotonic() - t0
        self.assertEqual(info["function"], self.name)
        self.assertEqual(info["task_root"], "/var/task")
        self.assertNotEqual(info["pid"], os.getpid())
        t1 = time.monotonic()
        self.assertEqual(list(ex.map(square, range(12), chunksize=4)), [i * i for i in range(12)])
        mapped = time.monotonic() - t1
        times = f.times
        print(f"\n[test_aws_lambda] 2 submits {single:.1f} s; map of 12 in 3 chunks {mapped:.1f} s; "
              f"invoke->start {times['started'] - times['invoked']:.2f} s, "
              f"finish->fetched {times['fetched'] - times['finished']:.2f} s", file=sys.stderr)

    def test_remote_exception_keeps_its_type_and_traceback(self):
        ex = self.executor()
        with self.assertRaises(KeyError) as cm:
            ex.submit(raise_key_error, "missing-key").result(timeout=BOUND)
        self.assertEqual(cm.exception.args, ("missing-key",))
        cause = cm.exception.__cause__
        self.assertIsInstance(cause, RemoteTraceback)
        self.assertIn("raise_key_error", cause.tb)
        self.assertIn("/var/task/cloudpool/worker.py", cause.tb)

    # The client ships modules that are not installed (the user's own code) by value to
    # remote backends (Capabilities.remote, cloudpool._shipping); without that the
    # worker in the container could not load the function.
    def test_function_from_a_module_only_the_client_has(self):
        tmp = tempfile.mkdtemp(prefix="cp-lambda-usermod-")
        self.addCleanup(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
        modname = "cp_lambda_user_" + uuid.uuid4().hex[:6]
        with open(os.path.join(tmp, modname + ".py"), "w") as f:
            f.write(textwrap.dedent("""
                FACTOR = 7

                def scale(x):
                    return x * FACTOR
            """))
        sys.path.insert(0, tmp)
        self.addCleanup(sys.path.remove, tmp)
        module = importlib.import_module(modname)
        self.addCleanup(sys.modules.pop, modname, None)
        ex = self.executor()
        self.assertEqual(list(ex.map(module.scale, [1, 2, 3], chunksize=3)), [7, 14, 21])

    def test_call_timeout(self):
        ex = self.executor(timeout=2)
        start = time.monotonic()
        with self.assertRaises(CallTimeoutError):
            ex.submit(sleep_for, 40).result(timeout=BOUND)
        self.assertLess(time.monotonic() - start, BOUND)

    def test_package_missing_on_the_runtime_is_named(self):
        import numpy  # installed on the client, not in the Lambda image

        ex = self.executor()
        with self.assertRaises(ModuleNotFoundError) as cm:
            ex.submit(numpy.sqrt, 4.0).result(timeout=BOUND)
        self.assertEqual(cm.exception.name, "numpy")
        text = str(cm.exception) + " ".join(getattr(cm.exception, "__notes__", []))
        self.assertIn("not installed on the runtime", text)

    def test_throttled_then_served_and_no_secret_in_events(self):
        proxy = lambda_stack.ThrottlingProxy(self.moto.endpoint_url, throttle=2)
        self.addCleanup(proxy.close)
        # The client's own S3 keys (secret storage options; moto accepts any): the function
        # must work with its own credentials, and these must appear in no event.
        secret_id, secret_key = "AKIDCLOUDPOOLSECRET01", "cloudpool-secret-must-not-travel"
        ex = self.executor(aws_lambda={"endpoint_url": proxy.endpoint_url, "retry_seconds": 30},
                           s3={"endpoint_url": self.moto.endpoint_url, "region": REGION,
                               "aws_access_key_id": secret_id, "aws_secret_access_key": secret_key})
        self.assertEqual(ex.submit(add, 40, 2).result(timeout=BOUND), 42)
        self.assertEqual(proxy.throttled, 2)
        self.assertGreaterEqual(proxy.invokes, 3)
        self.assertTrue(proxy.bodies)
        for body in proxy.bodies:
            self.assertIn(b'"storage"', body)
            self.assertNotIn(secret_id.encode(), body)
            self.assertNotIn(secret_key.encode(), body)


if __name__ == "__main__":
    unittest.main()
