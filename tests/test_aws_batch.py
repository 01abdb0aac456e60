"""The ``aws_batch`` backend against moto's Batch API, and (slow tier) real jobs in containers.

Fast tier (a moto server with no container engine: its Batch API stores compute
environments, queues and job definitions, and every job it tries to run FAILS because it
cannot reach Docker -- which exercises the client's failed-child path for real):

- option checks: unknown option, out-of-range memory/vCPUs/timeout, bad region, missing
  region, bad role ARN; a local-directory storage is refused before submitting;
- runtime commands: deploy creates the compute environment and job queue when missing
  and registers the job definition (image, command, resources, timeout, no Batch retries,
  version tags); redeploy makes a new revision; list shows cloudpool runtimes only;
  delete deregisters and refuses definitions that are not cloudpool's;
- the handshake: a missing job definition and one recorded with other versions are
  refused before anything is submitted;
- submission: the SubmitJob request moto recorded (array size = batches, the events
  prefix, public storage options only: no secret); children that FAIL are reported lost
  within a bound; SubmitJob answered 429 is backed off and gets through.

Slow tier (``@pytest.mark.slow``): podman builds the image from ``cloudpool runtime build``
output (on the local Python image of ``scripts/install-lambda-deps.sh``), moto runs each
job in a podman container on the host network, with S3 storage on the same moto:
``CloudPoolExecutor(backend="aws_batch")`` results equal the builtin ``map``, and a
remote exception keeps its type and traceback. moto 5.2 does not set
``AWS_BATCH_JOB_ARRAY_INDEX`` in array children (it sets no ``AWS_BATCH_*`` variable), so
this tier runs one job per batch (``array_jobs=False``); the array path is covered by the
fast tier's request checks and by ``entry.py`` reading the variable in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import boto3
import pytest

from cloudpool import CloudPoolExecutor, protocol
from cloudpool.compute import backends
from cloudpool.compute.aws_batch import AwsBatchBackend
from cloudpool.compute.aws_lambda import metadata_tags
from cloudpool.errors import RemoteTraceback, VersionMismatchError, WorkerLostError
from tests import lambda_stack, servers
from tests.lambda_functions import add, raise_key_error, square
from tests.test_aws_lambda import CREDENTIALS, REGION, _create_bucket, _create_role, _Env, unique

BOUND = 60.0  # seconds: moto walks a job through its states in ~0.5 s steps
IMAGE = "localhost/cloudpool-batch-test:latest"


def make(options=None, **kw) -> AwsBatchBackend:
    opts = {"region": REGION}
    opts.update(options or {})
    return AwsBatchBackend(opts, max_workers=kw.pop("max_workers", 2), storage_url=kw.pop("storage_url", ""),
                           storage_options={})


def cli(options, moto, *argv: str):
    """The ``cloudpool`` command with the aws_batch options in a config file; (code, out, err)."""
    from cloudpool.storage import clear_cache
    from tests.test_cli import run

    conf = {"aws_batch": options, "s3": {"endpoint_url": moto.endpoint_url, "region": REGION}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(conf, f)  # JSON is YAML
    try:
        with mock.patch.dict(os.environ, {"CLOUDPOOL_CONFIG": f.name}):
            clear_cache()
            return run(*argv)
    finally:
        clear_cache()
        os.unlink(f.name)


def hello(options, storage: str, moto):
    """``cloudpool hello --backend aws_batch``; (code, out, err)."""
    return cli(options, moto, "hello", "--backend", "aws_batch", "--storage", storage, "--json", "--timeout", "240")


class BatchOptionsTest(unittest.TestCase):
    def assertRefused(self, options, *words, exc=ValueError):
        with self.assertRaises(exc) as ctx:
            make(options)
        for word in words:
            self.assertIn(word, str(ctx.exception))

    def test_registered_with_the_aws_extra(self):
        self.assertIs(backends.get("aws_batch"), AwsBatchBackend)

    def test_bad_options_name_the_setting_and_the_range(self):
        self.assertRefused({"memroy_mb": 1024}, "memroy_mb")
        self.assertRefused({"memory_mb": 256}, "memory_mb", "512")
        self.assertRefused({"vcpus": 0.1}, "vcpus", "0.25")
        self.assertRefused({"timeout": 30}, "timeout", "60")
        self.assertRefused({"timeout": 10.5}, "timeout", "whole")
        self.assertRefused({"region": "moon-1"}, "region", "us-east-1")
        self.assertRefused({"job_role": "admin"}, "job_role", "arn:aws:iam::")
        self.assertRefused({"job_queue": "bad queue!"}, "job_queue")
        self.assertRefused({"array_jobs": "yes"}, "array_jobs")
        self.assertRefused({"subnets": "subnet-1"}, "subnets")

    def test_missing_region_names_the_fix(self):
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
        with mock.patch.dict(os.environ, env, clear=True), \
                mock.patch.dict(os.environ, {"AWS_CONFIG_FILE": os.devnull}):
            with self.assertRaises(ValueError) as ctx:
                AwsBatchBackend({}, max_workers=1, storage_url="", storage_options={})
        self.assertIn("AWS_DEFAULT_REGION", str(ctx.exception))

    def test_local_directory_storage_is_refused_before_submitting(self):
        backend = make(storage_url="file:///tmp/somewhere")
        with self.assertRaises(ValueError) as ctx:
            backend.invoke("inv-1", {})
        self.assertIn("s3://", str(ctx.exception))

    def test_deploy_without_image_names_the_option(self):
        with self.assertRaises(ValueError) as ctx:
            make().deploy_runtime("x")
        self.assertIn("'image'", str(ctx.exception))

    def test_build_writes_a_context_with_this_cloudpool(self):
        out = os.path.join(servers.ROOT, ".cache", "batch-build-test")
        meta = make().build_runtime("rt", requirements=["numpy"], output=out)
        site = os.path.join(out, "site")
        for path in ("Dockerfile", "site/cloudpool/worker.py", "site/cloudpickle/__init__.py",
                     "site/cloudpool_batch_entry.py"):
            self.assertTrue(os.path.isfile(os.path.join(out, path)), path)
        self.assertFalse(os.path.isdir(os.path.join(site, "cloudpool", "_runtime")))
        self.assertIn("numpy", meta["command"])
        self.assertEqual(meta["versions"], protocol.versions())


class BatchCostTest(unittest.TestCase):
    def test_each_batch_is_a_fargate_job_billed_at_least_a_minute(self):
        from tests.test_cost import three_invocations
        est = three_invocations(backend="aws_batch", memory_mb=2048).cost(vcpus=1)
        # 501 ms, 1200 ms and 0.1 ms: each under Fargate's one-minute minimum -> 3 x 60 s.
        self.assertAlmostEqual(est.billed_seconds, 180.0, places=9)
        self.assertAlmostEqual(est.compute_usd, 180 * (0.04048 + 2 * 0.004445) / 3600, places=12)
        self.assertEqual(est.request_usd, 0.0)
        self.assertIn("fargate", est.source.lower())


class _MotoCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _Env.start()
        cls.moto = lambda_stack.plain_moto()
        cls.batch = boto3.client("batch", endpoint_url=cls.moto.endpoint_url, region_name=REGION)
        # Optional on AWS (Batch uses its service-linked role), required by moto.
        cls.service_role = _create_role(cls.moto.endpoint_url)

    def options(self, **extra):
        opts = {"endpoint_url": self.moto.endpoint_url, "region": REGION, "image": "example/cloudpool:1",
                "job_queue": unique("q"), "job_definition": unique("jd"), "status_interval": 0.5,
                "collect_window": 0.2, "service_role": self.service_role}
        opts.update(extra)
        return opts


class BatchRuntimeApiTest(_MotoCase):
    def test_deploy_list_redeploy_delete(self):
        opts = self.options(memory_mb=1024, vcpus=0.5, timeout=120)
        backend = make(opts)
        meta = backend.deploy_runtime()
        self.assertEqual(meta["versions"], protocol.versions())
        queue = self.batch.describe_job_queues(jobQueues=[opts["job_queue"]])["jobQueues"]
        self.assertEqual(len(queue), 1)
        env_name = queue[0]["computeEnvironmentOrder"][0]["computeEnvironment"]
        env = self.batch.describe_compute_environments(computeEnvironments=[env_name])["computeEnvironments"]
        self.assertEqual(env[0]["type"], "UNMANAGED")
        d = self.batch.describe_job_definitions(jobDefinitionName=opts["job_definition"],
                                                status="ACTIVE")["jobDefinitions"]
        self.assertEqual(len(d), 1)
        props = d[0]["containerProperties"]
        self.assertEqual(props["image"], "example/cloudpool:1")
        self.assertEqual(props["command"], ["python3", "/opt/cloudpool/cloudpool_batch_entry.py"])
        self.assertEqual({r["type"]: r["value"] for r in props["resourceRequirements"]},
                         {"VCPU": "0.5", "MEMORY": "1024"})
        self.assertEqual(d[0]["timeout"]["attemptDurationSeconds"], 120)
        self.assertEqual(d[0]["retryStrategy"]["attempts"], 1)
        self.assertEqual(d[0]["tags"]["cloudpool:python"], protocol.versions()["python"])

        listed = {r["name"]: r for r in backend.list_runtimes()}
        self.assertIn(opts["job_definition"], listed)
        self.assertEqual(listed[opts["job_definition"]]["memory_mb"], 1024)
        again = make(dict(opts, memory_mb=2048)).deploy_runtime()
        self.assertEqual(again["revision"], meta["revision"] + 1)
        self.assertEqual({r["name"]: r for r in backend.list_runtimes()}[opts["job_definition"]]["memory_mb"], 2048)

        backend.delete_runtime(opts["job_definition"])
        self.assertNotIn(opts["job_definition"], {r["name"] for r in backend.list_runtimes()})
        with self.assertRaises(FileNotFoundError) as ctx:
            backend.delete_runtime(opts["job_definition"])
        self.assertIn("runtime list --backend aws_batch", str(ctx.exception))

    def test_runtime_commands_through_the_cli(self):
        opts = self.options()
        name = opts["job_definition"]
        code, out, err = cli(opts, self.moto, "runtime", "deploy", name, "--backend", "aws_batch", "--memory", "1024",
                             "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["memory_mb"], 1024)
        code, out, err = cli(opts, self.moto, "runtime", "list", "--backend", "aws_batch", "--json")
        self.assertEqual(code, 0, err)
        self.assertIn(name, [r["name"] for r in json.loads(out)])
        code, out, err = cli(opts, self.moto, "runtime", "delete", name, "--backend", "aws_batch")
        self.assertEqual(code, 0, err)
        code, _out, err = cli(opts, self.moto, "runtime", "delete", name, "--backend", "aws_batch")
        self.assertEqual(code, 1)
        self.assertIn("does not exist", err)

    def test_list_and_delete_leave_other_job_definitions_alone(self):
        other = unique("theirs")
        self.batch.register_job_definition(jobDefinitionName=other, type="container",
                                           containerProperties={"image": "busybox", "vcpus": 1, "memory": 512})
        backend = make(self.options())
        self.assertNotIn(other, {r["name"] for r in backend.list_runtimes()})
        with self.assertRaises(PermissionError):
            backend.delete_runtime(other)
        self.assertEqual(len(self.batch.describe_job_definitions(jobDefinitionName=other,
                                                                 status="ACTIVE")["jobDefinitions"]), 1)


class BatchSubmitTest(_MotoCase):
    def setUp(self):
        self.bucket = _create_bucket(self.moto.endpoint_url)

    def executor(self, opts, **kw) -> CloudPoolExecutor:
        conf = {"aws_batch": opts, "s3": {"endpoint_url": self.moto.endpoint_url, "region": REGION,
                                          "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                          "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"]}}
        ex = CloudPoolExecutor(max_workers=kw.get("max_workers", 3), backend="aws_batch",
                               storage=f"s3://{self.bucket}/{unique('run')}", config=conf)
        self.addCleanup(ex.shutdown, wait=False, cancel_futures=True)
        return ex

    def test_missing_job_definition_is_refused_naming_deploy(self):
        ex = self.executor(self.options())
        t0 = time.monotonic()
        with self.assertRaises(FileNotFoundError) as ctx:
            ex.submit(add, 1, 2).result(timeout=BOUND)
        self.assertIn("cloudpool runtime deploy --backend aws_batch", str(ctx.exception))
        self.assertLess(time.monotonic() - t0, BOUND)

    def test_hello_names_the_deploy_command_when_the_runtime_is_missing(self):
        code, _out, err = hello(self.options(), f"s3://{self.bucket}/hello", self.moto)
        self.assertEqual(code, 1)
        self.assertIn("cloudpool runtime deploy --backend aws_batch", err)
        self.assertNotIn("Traceback", err)

    def test_other_versions_are_refused_before_submitting(self):
        opts = self.options()
        make(opts).deploy_runtime()
        meta = {"protocol": protocol.PROTOCOL_VERSION, "versions": dict(protocol.versions(), cloudpickle="0.0.1"),
                "packages": {}}
        self.batch.register_job_definition(jobDefinitionName=opts["job_definition"], type="container",
                                           containerProperties={"image": "x", "vcpus": 1, "memory": 512},
                                           tags=metadata_tags(opts["job_definition"], meta))
        ex = self.executor(opts)
        with self.assertRaises(VersionMismatchError) as ctx:
            ex.submit(add, 1, 2).result(timeout=BOUND)
        self.assertIn("0.0.1", str(ctx.exception))
        self.assertEqual(self.batch.list_jobs(jobQueue=opts["job_queue"], jobStatus="SUBMITTED")["jobSummaryList"], [])

    def test_array_request_and_failed_children_are_reported_lost(self):
        opts = self.options(collect_window=2.0)
        make(opts).deploy_runtime()
        ex = self.executor(opts, max_workers=3)
        t0 = time.monotonic()
        futures = [ex.submit(square, i) for i in range(3)]
        # moto has no container engine here: every child FAILS, and the client says so.
        for f in futures:
            with self.assertRaises(WorkerLostError) as ctx:
                f.result(timeout=BOUND)
            self.assertIn("FAILED", str(ctx.exception))
        self.assertLess(time.monotonic() - t0, BOUND)
        parents = [j for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
                   for j in self.batch.list_jobs(jobQueue=opts["job_queue"], jobStatus=status)["jobSummaryList"]
                   if ":" not in j["jobId"]]
        self.assertTrue(parents)
        jobs = self.batch.describe_jobs(jobs=[p["jobId"] for p in parents])["jobs"]
        sizes = sorted(j.get("arrayProperties", {}).get("size", 1) for j in jobs)
        self.assertEqual(sizes[-1], 3, f"expected one array of the 3 batches first, got {sizes}")
        first = next(j for j in jobs if j.get("arrayProperties", {}).get("size") == 3)
        env = {e["name"]: e["value"] for e in first["container"]["environment"]}
        self.assertTrue(env["CLOUDPOOL_STORAGE_URL"].startswith(f"s3://{self.bucket}/"))
        self.assertIn("/aws_batch/", env["CLOUDPOOL_EVENTS_PREFIX"])
        dumped = json.dumps(first)
        self.assertNotIn(CREDENTIALS["AWS_SECRET_ACCESS_KEY"], dumped)
        self.assertNotIn("aws_secret_access_key", dumped)

    def test_submit_throttling_is_backed_off(self):
        opts = self.options()
        make(opts).deploy_runtime()
        proxy = lambda_stack.ThrottlingProxy(self.moto.endpoint_url, throttle=3, path_prefix="/v1/submitjob",
                                             path_part="submitjob")
        self.addCleanup(proxy.close)
        backend = make(dict(opts, endpoint_url=proxy.endpoint_url, retry_seconds=20))
        t0 = time.monotonic()
        resp = backend._call("submit", "a test job", backend.client.submit_job, jobName="throttle-test",
                             jobQueue=opts["job_queue"], jobDefinition=opts["job_definition"])
        self.assertTrue(resp["jobId"])
        self.assertEqual(proxy.throttled, 3)
        self.assertEqual(backend.counts["throttled"], 3)
        self.assertLess(time.monotonic() - t0, 20)
        # With no budget left, the refusal surfaces at once with AWS's code.
        proxy.throttle, proxy.throttled = 1, 0
        quick = make(dict(opts, endpoint_url=proxy.endpoint_url, retry_seconds=0))
        with self.assertRaises(RuntimeError) as ctx:
            quick._call("submit", "a test job", quick.client.submit_job, jobName="throttle-test",
                        jobQueue=opts["job_queue"], jobDefinition=opts["job_definition"])
        self.assertIn("TooManyRequestsException", str(ctx.exception))


class BatchEntryTest(unittest.TestCase):
    """runtime/aws_batch/entry.py run as a process, reading its event by AWS_BATCH_JOB_ARRAY_INDEX."""

    def test_missing_settings_fail_the_job_with_the_reason(self):
        from cloudpool.compute._runtime_files import runtime_file
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDPOOL_", "AWS_BATCH_"))}
        env["PYTHONPATH"] = servers.ROOT if "PYTHONPATH" not in os.environ else os.environ["PYTHONPATH"]
        proc = subprocess.run([sys.executable, runtime_file("aws_batch", "entry.py")], env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("AWS_BATCH_JOB_ARRAY_INDEX", proc.stderr)


@pytest.mark.slow
class BatchContainerTest(unittest.TestCase):
    """The real thing: moto runs each job's container through podman, storage on moto's S3."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        _Env.start()
        t0 = time.monotonic()
        cls.moto = lambda_stack.container_moto()
        cls.bucket = _create_bucket(cls.moto.endpoint_url)
        service_role = _create_role(cls.moto.endpoint_url)
        podman = servers._shared("podman", lambda_stack.PodmanService)
        opts = {"region": REGION, "endpoint_url": cls.moto.endpoint_url, "image": IMAGE,
                "job_queue": unique("q"), "job_definition": unique("jd"), "status_interval": 1.0,
                "collect_window": 0.3, "timeout": 120, "array_jobs": False,
                "service_role": service_role}
        backend = make(opts)
        context = os.path.join(servers.ROOT, ".cache", "batch-image")
        backend.build_runtime("test", output=context)
        env = dict(os.environ, CONTAINERS_CONF=lambda_stack.CONTAINERS_CONF, DOCKER_HOST=podman.docker_host)
        # The image exactly as `cloudpool runtime build` lays it out (boto3 is in the base).
        cls._podman(env, "build", "-q", "--build-arg", f"BASE_IMAGE={lambda_stack.PYTHON_IMAGE}",
                    "--build-arg", "REQUIREMENTS=", "-t", IMAGE + "-base", context)
        # On AWS the container's S3 credentials come from the job role; moto has no role
        # endpoint for Batch containers, so this test layer stands in for it with moto's
        # test keys. Nothing of the backend's (job, events) carries them.
        with open(os.path.join(context, "Containerfile.test"), "w") as f:
            f.write(f"FROM {IMAGE}-base\nENV " + " ".join(f"{k}={v}" for k, v in CREDENTIALS.items()) + "\n")
        cls._podman(env, "build", "-q", "-f", os.path.join(context, "Containerfile.test"), "-t", IMAGE, context)
        t1 = time.monotonic()
        backend.deploy_runtime()
        cls.options = opts
        print(f"\n[test_aws_batch] podman + moto up and image built in {t1 - t0:.1f} s", file=sys.stderr)

    @staticmethod
    def _podman(env, *args) -> None:
        proc = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"podman {args[0]} failed: {proc.stderr[-2000:]}")

    def executor(self) -> CloudPoolExecutor:
        conf = {"aws_batch": dict(self.options), "s3": {"endpoint_url": self.moto.endpoint_url, "region": REGION}}
        ex = CloudPoolExecutor(max_workers=3, backend="aws_batch", storage=f"s3://{self.bucket}/{unique('run')}",
                               config=conf)
        self.addCleanup(ex.shutdown, wait=False, cancel_futures=True)
        return ex

    def test_map_in_containers_equals_builtin_map(self):
        ex = self.executor()
        t0 = time.monotonic()
        got = list(ex.map(square, range(6), timeout=300))
        print(f"\n[test_aws_batch] map of 6 calls through Batch jobs in containers: "
              f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
        self.assertEqual(got, list(map(square, range(6))))

    def test_remote_exception_keeps_type_and_traceback(self):
        ex = self.executor()
        with self.assertRaises(KeyError) as ctx:
            ex.submit(raise_key_error, "k").result(timeout=300)
        self.assertIsInstance(ctx.exception.__cause__, RemoteTraceback)

    def test_cloudpool_hello_runs_a_call_in_a_batch_container(self):
        code, out, err = hello(dict(self.options), f"s3://{self.bucket}/{unique('hello')}", self.moto)
        self.assertEqual(code, 0, err)
        report = json.loads(out)
        self.assertEqual(report["backend"], "aws_batch")
        self.assertNotEqual(report["worker"]["pid"], os.getpid())
        self.assertEqual(report["description"]["job_definition"], self.options["job_definition"])
        self.assertEqual(report["description"]["runtime"]["versions"], protocol.versions())
