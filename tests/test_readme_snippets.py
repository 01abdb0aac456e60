"""Every Python snippet of README.md, run as written under both fork and spawn.

Each ```python block of README.md is a file under ``examples/readme/`` and is preceded in
README.md by a marker naming that file (``<!-- snippet: examples/readme/quickstart.py -->``).
``ReadmeBlocksTest`` fails when a block has no marker, names a missing file, or differs
from its file, and when a snippet file is not shown in README.md, so the README and the
files cannot drift apart. The other tests run each file in a fresh interpreter, once with
the local backend's workers forked and once spawned (``CLOUDPOOL_LOCAL__START_METHOD``),
in an empty working directory, and check what it prints against a computation made here:

- the quick start against the stdlib (``map`` of the same function, a line count);
- the S3 quick start, which needs an account, on ``cloudpool.testing.local_cloud()``
  with log objects written here and their lines counted here;
- the Pool snippet against ``multiprocessing.Pool`` running the same function;
- the "Seeing a job" snippet: the PNG files it names exist and are PNGs, the number of
  failed calls and the number of calls priced;
- the testing snippet (``wordcount.py`` + ``test_wordcount.py``) by its own unittest run.

Under spawn a worker re-imports the script, so a snippet without its
``if __name__ == "__main__":`` guard fails; ``GuardTest`` shows that an unguarded copy of
the quick start does fail under spawn, so the spawn runs here are real.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from typing import Dict, List, Optional

from cloudpool import _redirect
from cloudpool.testing import local_cloud

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPETS = os.path.join(ROOT, "examples", "readme")
START_METHODS = ("fork", "spawn")

#: ``<!-- snippet: path -->`` on the line before a code fence (blank lines allowed between).
MARKER = re.compile(r"<!--\s*snippet:\s*(\S+)\s*-->")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _square(x: int) -> int:
    return x * x


def readme_snippet_problems(readme: str, root: str = ROOT) -> List[str]:
    """What is wrong between the README text and the snippet files (empty: nothing)."""
    problems = []
    shown = set()
    for block in FENCE.finditer(readme):
        before = readme[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = readme.count("\n", 0, block.start()) + 1
        marker = MARKER.fullmatch(before.strip())
        if marker is None:
            problems.append(f"README.md line {line}: a ```python block without a "
                            f"'<!-- snippet: examples/readme/<file>.py -->' line before it")
            continue
        rel = marker.group(1)
        path = os.path.join(root, rel)
        shown.add(os.path.normpath(path))
        if not os.path.isfile(path):
            problems.append(f"README.md line {line}: the snippet file {rel} does not exist")
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text != block.group(1):
            problems.append(f"README.md line {line}: the block differs from {rel}; copy the file "
                            f"into the README (or the block into the file)")
    for dirpath, _dirs, files in os.walk(os.path.join(root, "examples", "readme")):
        for name in files:
            path = os.path.normpath(os.path.join(dirpath, name))
            if name.endswith(".py") and path not in shown:
                problems.append(f"{os.path.relpath(path, root)} is not shown in README.md (no marker names it)")
    return problems


def run_snippet(path: str, method: str, cwd: str, env: Optional[Dict[str, str]] = None,
                args: tuple = (), timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``path`` (or ``-m`` args) in a fresh interpreter with the given start method."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("CLOUDPOOL_", "AWS_")) and k != _redirect.ENV_VAR}
    full_env.update({"PYTHONPATH": ROOT, "CLOUDPOOL_LOCAL__START_METHOD": method,
                     "CLOUDPOOL_CONFIG": os.devnull, "PYTHONDONTWRITEBYTECODE": "1",
                     "MPLBACKEND": "Agg"})
    full_env.update(env or {})
    argv = [sys.executable, *args] if path is None else [sys.executable, path, *args]
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class SnippetTestCase(unittest.TestCase):
    def run_ok(self, name: str, method: str, cwd: str, **kwargs) -> List[str]:
        proc = run_snippet(os.path.join(SNIPPETS, name), method, cwd, **kwargs)
        self.assertEqual(proc.returncode, 0, f"{name} under {method}:\n{proc.stdout}\n{proc.stderr[-4000:]}")
        return proc.stdout.splitlines()


class ReadmeBlocksTest(unittest.TestCase):
    maxDiff = None

    def test_readme_blocks_are_the_snippet_files(self) -> None:
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        self.assertEqual(readme_snippet_problems(readme), [])

    def test_checker_reports_each_kind_of_drift(self) -> None:
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "examples", "readme"))
            with open(os.path.join(root, "examples", "readme", "a.py"), "w") as f:
                f.write("print(1)\n")
            with open(os.path.join(root, "examples", "readme", "unshown.py"), "w") as f:
                f.write("print(3)\n")
            good = "<!-- snippet: examples/readme/a.py -->\n```python\nprint(1)\n```\n"
            unmarked = "text\n\n```python\nprint(2)\n```\n"
            missing = "<!-- snippet: examples/readme/gone.py -->\n\n```python\nprint(1)\n```\n"
            differs = "<!-- snippet: examples/readme/a.py -->\n```python\nprint(2)\n```\n"
            base = readme_snippet_problems(good, root)
            self.assertEqual(base, ["examples/readme/unshown.py is not shown in README.md (no marker names it)"])
            for text, expected in ((unmarked, "without a '<!-- snippet:"), (missing, "gone.py does not exist"),
                                   (differs, "differs from examples/readme/a.py")):
                problems = [p for p in readme_snippet_problems(good + text, root) if p not in base]
                self.assertEqual(len(problems), 1, problems)
                self.assertIn(expected, problems[0])
            # A bash block needs no marker.
            self.assertEqual(readme_snippet_problems(good + "```bash\nls\n```\n", root), base)


class QuickstartTest(SnippetTestCase):
    def test_runs_under_fork_and_spawn(self) -> None:
        expected = [str(_square(7)), str(list(map(_square, range(10))))]
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd:
                lines = self.run_ok("quickstart.py", method, cwd)
                self.assertEqual(lines[:2], expected)
                # The snippet writes 3 files of 100,000 lines "request <n>"; count them here.
                data = "".join(f"request {n}\n" for n in range(100_000))
                self.assertEqual(lines[2:], [str(3 * data.count("\n"))])
                self.assertEqual(os.listdir(cwd), [])  # nothing left in the working directory

    def test_s3_quickstart_on_the_local_cloud(self) -> None:
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd, \
                    local_cloud(buckets=["s3://my-bucket"], start_method=method) as cloud:
                total = 0
                for i in range(3):
                    lines = [f"{i} GET /item/{n} 200" for n in range(1000 * (i + 1))]
                    cloud.put(f"s3://my-bucket/logs/{i}.log", "\n".join(lines) + "\n")
                    total += len(lines)
                lines = self.run_ok("quickstart_s3.py", method, cwd,
                                    env={_redirect.ENV_VAR: os.environ[_redirect.ENV_VAR]})
                self.assertEqual(lines, [str(total)])


class StorageOptionsSnippetTest(SnippetTestCase):
    def test_per_call_storage_options_on_the_local_cloud(self) -> None:
        # The local cloud checks the options by name (as the real S3 storage would) and
        # then serves the bucket from disk, so the snippet runs unchanged.
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd, \
                    local_cloud(buckets=["s3://bucket"], start_method=method) as cloud:
                sizes = 0
                for i in range(3):
                    data = "".join(f"line {n} of text {i}\n" for n in range(500 * (i + 1)))
                    cloud.put(f"s3://bucket/texts/{i}.txt", data)
                    sizes += len(data.encode())
                lines = self.run_ok("storage_options.py", method, cwd,
                                    env={_redirect.ENV_VAR: os.environ[_redirect.ENV_VAR]})
                self.assertEqual(lines, [str(sizes)])


class JoblibSnippetTest(SnippetTestCase):
    def test_grid_search_matches_a_sequential_one(self) -> None:
        from sklearn.datasets import load_iris
        from sklearn.model_selection import GridSearchCV
        from sklearn.svm import SVC

        X, y = load_iris(return_X_y=True)
        reference = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}, cv=3, n_jobs=1).fit(X, y)
        expected = f"{reference.best_params_} {round(reference.best_score_, 4)}"
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd:
                self.assertEqual(self.run_ok("joblib_gridsearch.py", method, cwd), [expected])


class LithopsSnippetTest(SnippetTestCase):
    def test_lithops_program_with_its_import_changed(self) -> None:
        expected = [str([2 * x for x in (1, 2, 3)])]
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd:
                self.assertEqual(self.run_ok("lithops_program.py", method, cwd), expected)


class PoolSnippetTest(SnippetTestCase):
    def test_same_output_as_the_stdlib_pool(self) -> None:
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            expected = [str(pool.map(_square, range(100), chunksize=10))]
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd:
                self.assertEqual(self.run_ok("pool.py", method, cwd), expected)


class SeeingAJobSnippetTest(SnippetTestCase):
    def test_draws_both_pictures_and_prices_every_call(self) -> None:
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd:
                lines = self.run_ok("seeing_a_job.py", method, cwd)
                timeline, histogram = lines[0], lines[1]
                self.assertEqual(os.path.dirname(timeline), os.path.realpath(cwd))
                self.assertRegex(os.path.basename(timeline), r"^cloudpool-cp-[0-9a-f]+-timeline\.png$")
                self.assertRegex(os.path.basename(histogram), r"^cloudpool-cp-[0-9a-f]+-histogram\.png$")
                for path in (timeline, histogram):
                    with open(path, "rb") as f:
                        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
                self.assertEqual(sorted(os.listdir(cwd)), sorted([os.path.basename(timeline),
                                                                  os.path.basename(histogram)]))
                failed = sum(1 for i in range(80) if i == 13)  # the snippet's work() fails for i == 13
                self.assertEqual(lines[2], f"{failed} failed")
                self.assertRegex(lines[3], r"^\$\d+\.\d{6} for 80 calls in \d+ requests on aws_lambda ")


class TestingSnippetTest(SnippetTestCase):
    def test_wordcount_tests_pass_under_fork_and_spawn(self) -> None:
        for method in START_METHODS:
            with self.subTest(method=method), tempfile.TemporaryDirectory() as cwd:
                for name in ("wordcount.py", "test_wordcount.py"):
                    shutil.copy(os.path.join(SNIPPETS, "testing", name), cwd)
                proc = run_snippet(None, method, cwd, args=("-m", "unittest", "-v", "test_wordcount"))
                self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
                with open(os.path.join(cwd, "test_wordcount.py")) as f:
                    defined = len(re.findall(r"^    def test_", f.read(), re.MULTILINE))
                self.assertIn(f"Ran {defined} tests", proc.stderr)
                self.assertEqual(proc.stderr.count(" ... ok"), defined, proc.stderr)


class GuardTest(SnippetTestCase):
    def test_an_unguarded_copy_fails_under_spawn(self) -> None:
        # The quick start with its __main__ block moved to the top level, as the README
        # had it: fine when workers fork, fails when they are spawned (and re-import it).
        with open(os.path.join(SNIPPETS, "quickstart.py")) as f:
            head, guarded = f.read().split('if __name__ == "__main__":', 1)
        body = guarded.split("\n", 1)[1]
        unguarded = head + "".join(line[4:] + "\n" for line in body.splitlines())
        with tempfile.TemporaryDirectory() as cwd:
            path = os.path.join(cwd, "unguarded.py")
            with open(path, "w") as f:
                f.write(unguarded)
            fork = run_snippet(path, "fork", cwd)
            self.assertEqual(fork.returncode, 0, fork.stderr)
            spawn = run_snippet(path, "spawn", cwd, timeout=120)
            self.assertNotEqual(spawn.returncode, 0, spawn.stdout)
            self.assertIn("WorkerLostError", spawn.stderr)


if __name__ == "__main__":
    unittest.main()
