"""cloudpool as a user installs it: a wheel, not this source checkout.

The runtime files (``runtime/<backend>/``) live outside the package in the repository.
These tests build the wheel with pip, check that it carries them, and then run the
runtime commands from the *unpacked wheel* in a fresh interpreter whose ``cloudpool``
is that copy (no checkout beside it): the Lambda zip gets its entry point, and the
Kubernetes build context gets its Dockerfile, entry point and generated project files,
which ``pip install`` then really installs -- what the image build's ``RUN pip install``
does.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
import zipfile

from cloudpool._version import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIME_FILES = ["aws_lambda/handler.py", "aws_lambda/Dockerfile", "kubernetes/entry.py",
                 "kubernetes/Dockerfile", "knative/server.py", "knative/Dockerfile"]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[:6]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


class WheelTest(unittest.TestCase):
    tmp = ""
    wheel = ""
    unpacked = ""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="cp-wheel-")
        # Build from a copy: a build writes build/ and *.egg-info into its source tree.
        src = os.path.join(cls.tmp, "src")
        shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
            ".git", ".cache", "__pycache__", "*.egg-info", "build", "dist", "node_modules", "bench"))
        out = os.path.join(cls.tmp, "dist")
        _run(PIP + ["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", out, src])
        (name,) = [n for n in os.listdir(out) if n.endswith(".whl")]
        cls.wheel = os.path.join(out, name)
        cls.unpacked = os.path.join(cls.tmp, "site")
        with zipfile.ZipFile(cls.wheel) as zf:
            zf.extractall(cls.unpacked)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def in_installed(self, code: str) -> dict:
        """Run ``code`` with the unpacked wheel as the only cloudpool; it prints one JSON line."""
        env = dict(os.environ, PYTHONPATH=self.unpacked, PATH=os.path.join(self.tmp, "no-engine"))
        env.pop("PYTHONSTARTUP", None)
        prelude = textwrap.dedent(f"""
            import json, os, sys
            import cloudpool
            assert os.path.dirname(cloudpool.__file__) == {os.path.join(self.unpacked, 'cloudpool')!r}, cloudpool.__file__
        """)
        proc = _run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=self.tmp)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def test_wheel_carries_the_runtime_files(self):
        with zipfile.ZipFile(self.wheel) as zf:
            names = set(zf.namelist())
        for rel in RUNTIME_FILES:
            with self.subTest(file=rel):
                self.assertIn(f"cloudpool/_runtime/{rel}", names)
                with zipfile.ZipFile(self.wheel) as zf, open(os.path.join(ROOT, "runtime", rel), "rb") as f:
                    self.assertEqual(zf.read(f"cloudpool/_runtime/{rel}"), f.read())
        self.assertFalse([n for n in names if n.startswith(("tests/", "runtime/", "bench/"))],
                         "only the cloudpool package goes into the wheel")

    def test_lambda_zip_from_an_installed_cloudpool(self):
        out = self.in_installed("""
            import io, zipfile
            from cloudpool.compute import aws_lambda
            zf = zipfile.ZipFile(io.BytesIO(aws_lambda.build_zip()))
            print(json.dumps({"handler": zf.read(aws_lambda.HANDLER_MODULE + ".py").decode(),
                              "path": aws_lambda.handler_source_path(),
                              "worker": "cloudpool/worker.py" in zf.namelist(),
                              "runtime_data": [n for n in zf.namelist() if n.startswith("cloudpool/_runtime")]}))
        """)
        with open(os.path.join(ROOT, "runtime", "aws_lambda", "handler.py")) as f:
            self.assertEqual(out["handler"], f.read())
        self.assertTrue(out["path"].startswith(self.unpacked), out["path"])
        self.assertTrue(out["worker"])
        self.assertEqual(out["runtime_data"], [], "the Dockerfiles and entry points are not worker code")

    def test_kubernetes_build_context_from_an_installed_cloudpool_installs(self):
        context = os.path.join(self.tmp, "k8s-context")
        kubeconfig = os.path.join(self.tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:  # read, never contacted: building needs no cluster
            json.dump({"apiVersion": "v1", "kind": "Config",
                       "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                       "users": [{"name": "u", "user": {"token": "t"}}],
                       "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                       "current-context": "c"}, f)
        out = self.in_installed(f"""
            import contextlib, io
            from cloudpool.compute.kubernetes import KubernetesBackend
            backend = KubernetesBackend({{"kubeconfig": {kubeconfig!r}}}, max_workers=None,
                                        storage_url="s3://b/p", storage_options={{}})
            with contextlib.redirect_stdout(io.StringIO()):  # the printed build command
                meta = backend.build_runtime("wheeltest", requirements=["six"], output={context!r})
            print(json.dumps({{"built": meta["built"], "source": meta["project_files_from"]}}))
        """)
        self.assertFalse(out["built"], "no container engine on PATH: the command is printed")
        self.assertIn(f"installed distribution cloudpool {__version__}", out["source"])
        for rel in ("setup.py", "setup.cfg", "pyproject.toml", "runtime/kubernetes/Dockerfile",
                    "runtime/kubernetes/entry.py", "cloudpool/worker.py"):
            self.assertTrue(os.path.isfile(os.path.join(context, rel)), rel)
        self.assertFalse(os.path.exists(os.path.join(context, "cloudpool", "_runtime")))
        with open(os.path.join(context, "setup.cfg")) as f:
            cfg = f.read()
        self.assertIn("cloudpickle>=2.1", cfg)
        self.assertIn("python_requires = >=3.11", cfg)  # from the wheel's Requires-Python
        self.assertRegex(cfg, r"aws =\n    boto3>=1\.26")
        # What the Dockerfile's `pip install ".[aws]"` does, minus the network: it installs
        # this cloudpool, at this version, from the generated project files.
        target = os.path.join(self.tmp, "image-site")
        _run(PIP + ["install", "--quiet", "--no-deps", "--no-build-isolation", "--target", target, context])
        self.assertTrue(os.path.isfile(os.path.join(target, "cloudpool", "worker.py")))
        self.assertTrue(os.path.isdir(os.path.join(target, f"cloudpool-{__version__}.dist-info")))


if __name__ == "__main__":
    unittest.main()
