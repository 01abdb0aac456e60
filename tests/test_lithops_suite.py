"""Lithops' own tests, run against ``cloudpool.compat.lithops``.

The test files come from the Lithops source distribution on PyPI (``lithops==3.7.0``,
whose ``lithops/tests/`` holds the 48 tests of ``test_map``, ``test_map_reduce``,
``test_call_async``, ``test_future``, ``test_storage`` and ``test_retries``: 45 functions,
``test_retries.test_success`` parametrized four ways; 3.8.0 rewrote two of these files
into unit tests of Lithops' future internals), fetched by
``scripts/install-test-deps.sh`` into ``.cache/`` (or by this test with ``pip download``
when it is missing). They are unpacked into a temporary directory, never copied into this
repository, and run by pytest in a subprocess as Lithops' ``conftest.py`` runs them (its
``default_config()`` for localhost), with ``import lithops`` served by
``cloudpool.compat.lithops`` through ``cloudpool.compat.lithops_alias``.

``test_map_reduce`` downloads five text files from a public bucket in its class set-up;
CI has no internet, so the plugin below serves generated text files of similar sizes
from a local HTTP server to the set-up's ``urlopen`` (the tests count the words of
whatever they uploaded). ``test_url_processing`` makes the *workers* read those URLs over
HTTPS, which cannot be redirected, so it is an expected failure.

The test passes when at least 40 pass and every one that does not is in
``EXPECTED_FAILURES`` with its reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import xml.etree.ElementTree as ET
from typing import Dict, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LITHOPS_VERSION = "3.7.0"
SDIST = os.path.join(ROOT, ".cache", f"lithops-{LITHOPS_VERSION}.tar.gz")
FILES = ("test_map.py", "test_map_reduce.py", "test_call_async.py", "test_future.py",
         "test_storage.py", "test_retries.py")
MIN_PASSED = 47  # all but the one that needs the internet

#: Lithops tests that do not pass here, and why (test id -> reason).
EXPECTED_FAILURES: Dict[str, str] = {
    "test_map_reduce.py::TestMapReduce::test_url_processing":
        "its workers read five files from a public HTTPS bucket; CI has no internet",
}

#: ``lithops/__init__.py`` of the temporary tree: the alias, plus Lithops' tests package.
SHIM_INIT = '''\
import importlib.util
import os
import sys

from cloudpool.compat.lithops_alias import install

install()
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "lithops.tests", os.path.join(_here, "tests", "__init__.py"),
    submodule_search_locations=[os.path.join(_here, "tests")])
_tests = importlib.util.module_from_spec(_spec)
sys.modules["lithops.tests"] = _tests
_spec.loader.exec_module(_tests)
'''

#: A pytest plugin: serves the data set test_map_reduce would download, from 127.0.0.1.
PLUGIN = '''\
import functools
import http.server
import os
import random
import threading
import urllib.request

DATA_HOST = "s3-eu-west-1.amazonaws.com"
NAMES = ["vocab.enron.txt", "vocab.kos.txt", "vocab.nips.txt", "vocab.nytimes.txt", "vocab.pubmed.txt"]


def _make_data(directory):
    rng = random.Random(13)
    words = ["w%d" % i for i in range(5000)]
    for n, name in enumerate(NAMES):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
                 for _ in range(20000 + 15000 * n)]
        with open(os.path.join(directory, name), "w") as f:
            f.write("\\n".join(lines) + "\\n")


class _Redirect(urllib.request.BaseHandler):
    handler_order = 100  # before the default HTTPS handler

    def __init__(self, port):
        self.port = port

    def https_open(self, req):
        if req.host != DATA_HOST:
            return None
        name = req.full_url.rstrip("/").rsplit("/", 1)[-1]
        return urllib.request.urlopen("http://127.0.0.1:%d/%s" % (self.port, name))


def pytest_configure(config):
    directory = os.environ["LITHOPS_SUITE_DATA"]
    os.makedirs(directory, exist_ok=True)
    _make_data(directory)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    urllib.request.install_opener(urllib.request.build_opener(_Redirect(server.server_address[1])))
'''


def ensure_sdist() -> str:
    """The Lithops sdist: from .cache/ (the install script puts it there), else pip download."""
    if not os.path.exists(SDIST):
        os.makedirs(os.path.dirname(SDIST), exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
                               "--no-deps", "--no-build-isolation", f"lithops=={LITHOPS_VERSION}",
                               "-d", os.path.dirname(SDIST)],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not os.path.exists(SDIST):
            raise AssertionError(f"could not fetch the Lithops {LITHOPS_VERSION} sdist from PyPI "
                                 f"(run scripts/install-test-deps.sh):\n{proc.stdout}\n{proc.stderr}")
    return SDIST


def build_tree(sdist: str, tmp: str) -> str:
    """``tmp/shim/lithops/{__init__.py, tests/...}``: the alias and Lithops' unmodified tests."""
    shim = os.path.join(tmp, "shim")
    tests = os.path.join(shim, "lithops", "tests")
    os.makedirs(tests)
    prefix = f"lithops-{LITHOPS_VERSION}/lithops/tests/"
    wanted = {"__init__.py", "conftest.py", "functions.py", *FILES}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.name.startswith(prefix) and member.name[len(prefix):] in wanted:
                with tar.extractfile(member) as src, open(os.path.join(tests, member.name[len(prefix):]), "wb") as dst:
                    shutil.copyfileobj(src, dst)
    missing = wanted - set(os.listdir(tests))
    if missing:
        raise AssertionError(f"{sdist} lacks lithops/tests/{', '.join(sorted(missing))}")
    with open(os.path.join(shim, "lithops", "__init__.py"), "w") as f:
        f.write(SHIM_INIT)
    with open(os.path.join(shim, "lithops_suite_plugin.py"), "w") as f:
        f.write(PLUGIN)
    return shim


def run_suite(shim: str, tmp: str) -> Tuple[Dict[str, str], str]:
    """Run Lithops' tests; ``({test id: outcome}, output)``."""
    report = os.path.join(tmp, "report.xml")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([shim, ROOT]), HOME=tmp,
               LITHOPS_SUITE_DATA=os.path.join(tmp, "data"), TMPDIR=tmp)
    env.pop("LITHOPS_CONFIG_FILE", None)
    env.pop("CLOUDPOOL_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "lithops_suite_plugin",
         "-q", "--rootdir", shim, f"--junitxml={report}", "-o", "junit_family=xunit2",
         *[os.path.join("lithops", "tests", f) for f in FILES]],
        cwd=shim, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    if not os.path.exists(report):
        raise AssertionError(f"pytest wrote no report ({proc.returncode}):\n{output}")
    outcomes: Dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        # classname is lithops.tests.test_x[.Class]; the id is file::[Class::]name
        file = next((m + ".py" for m in module if m.startswith("test_")), "?")
        cls = module[-1] if not module[-1].startswith("test_") else None
        test_id = "::".join(filter(None, [file, cls, case.get("name")]))
        kinds = {child.tag for child in case}
        outcomes[test_id] = ("failed" if kinds & {"failure", "error"} else
                             "skipped" if "skipped" in kinds else "passed")
    return outcomes, output


class LithopsOwnTestsTest(unittest.TestCase):
    def test_lithops_tests_pass_against_compat(self) -> None:
        sdist = ensure_sdist()
        with tempfile.TemporaryDirectory() as tmp:
            shim = build_tree(sdist, tmp)
            outcomes, output = run_suite(shim, tmp)
        passed = sorted(t for t, o in outcomes.items() if o == "passed")
        not_passed = sorted(t for t, o in outcomes.items() if o != "passed")
        base = lambda t: t.split("[")[0]  # noqa: E731  parametrized ids share their function's reason
        unexpected = [t for t in not_passed if base(t) not in EXPECTED_FAILURES]
        summary = (f"{len(passed)} passed, {len(not_passed)} not passed of {len(outcomes)}; "
                   f"unexpected: {unexpected}\n{output}")
        self.assertEqual(len(outcomes), 48, summary)  # the six files hold 48 tests in 3.7.0
        self.assertEqual(unexpected, [], summary)
        self.assertGreaterEqual(len(passed), MIN_PASSED, summary)


if __name__ == "__main__":
    unittest.main()
