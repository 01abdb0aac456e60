"""Issue 13, part 1: code of the user's main script behaves on workers as under spawn.

A real user script (written into a temp dir, run as a subprocess, so its functions
really live in ``__main__``) runs the same checks with the stdlib's spawn-started
``ProcessPoolExecutor`` and with cloudpool, and prints what it saw; the tests compare:

- an initializer's ``global`` write is seen by the mapped function;
- a ``global`` written by one call is seen by later calls of *another* function in that
  worker process;
- ``isinstance`` against the script's classes, on the worker and on the client;
- a lazily built module-level cache is built once per worker process (counted in files,
  outside the interpreter) and reused by two different functions;
- ``__name__`` on the worker (``__mp_main__`` where the script is imported, as spawn does).

``tests/test_knative.py`` (``MainScriptTest``) runs the same script on the knative
backend, where the script's source is shipped and imported on the worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from typing import Any, Dict, List, Optional

from tests._cpython import ROOT

SCRIPT = textwrap.dedent('''
    """A user's script: python script.py SETTINGS_JSON KINDS..."""
    import concurrent.futures as cf
    import json
    import multiprocessing as mp
    import os
    import sys

    G = None
    COUNTER = 0
    _MODEL = None


    def init(value):
        global G
        G = value


    def read(_):
        return G


    def bump(_):
        global COUNTER
        COUNTER += 1
        return os.getpid(), COUNTER


    def peek(_):
        return os.getpid(), COUNTER


    class Point:
        def __init__(self, x):
            self.x = x


    def make(x):
        return Point(x)


    def check(p):
        return isinstance(p, Point) and type(p) is Point


    def _model(folder):
        global _MODEL
        if _MODEL is None:
            with open(os.path.join(folder, str(os.getpid())), "a") as f:
                f.write("built\\n")
            _MODEL = {"pid": os.getpid()}
        return _MODEL


    def use_a(folder):
        return _model(folder)["pid"] == os.getpid()


    def use_b(folder):
        return _model(folder)["pid"] == os.getpid()


    def where(_):
        return __name__


    def open_pool(kind, settings, initializer):
        init_kw = {"initializer": init, "initargs": (42,)} if initializer else {}
        where = {"storage": settings.get("storage"), "config": settings.get("config")}
        if kind == "stdlib":
            return cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), **init_kw)
        if kind == "cloudpool":
            from cloudpool import CloudPoolExecutor
            return CloudPoolExecutor(2, **init_kw, **where)
        if kind == "cloudpool-spawn":
            from cloudpool import CloudPoolExecutor
            return CloudPoolExecutor(2, start_method="spawn", **init_kw, **where)
        if kind == "pool":
            from cloudpool.multiprocessing import Pool
            return Pool(2, **init_kw, **where)
        if kind == "lithops":
            from cloudpool.compat.lithops import FunctionExecutor
            return FunctionExecutor(max_workers=2, **where)
        raise ValueError(kind)


    def mapped(pool, fn, items):
        if hasattr(pool, "get_result"):  # compat.lithops
            return pool.get_result(pool.map(fn, items))
        if hasattr(pool, "starmap"):     # Pool
            return pool.map(fn, items)
        return list(pool.map(fn, items))


    def run(kind, settings, folder):
        seen = {}
        if kind != "lithops":  # Lithops has no initializer
            with open_pool(kind, settings, True) as pool:
                seen["init"] = mapped(pool, read, range(4))
        with open_pool(kind, settings, False) as pool:
            seen["bump"] = mapped(pool, bump, range(6))
            seen["peek"] = mapped(pool, peek, range(6))
            seen["make"] = [isinstance(p, Point) for p in mapped(pool, make, range(3))]
            seen["check"] = mapped(pool, check, [Point(1), Point(2)])
            seen["cache"] = mapped(pool, use_a, [folder] * 4) + mapped(pool, use_b, [folder] * 4)
            seen["name"] = mapped(pool, where, range(2))
            if kind != "stdlib":  # the stdlib cannot send these at all
                # Not reachable by name on a worker: still sent by value, as before.
                seen["lambda"] = mapped(pool, lambda x: [x + 1, check(Point(x))], [1, 2])
                seen["guarded"] = mapped(pool, GUARDED, [1, 2])
        seen["builds"] = []
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name)) as f:
                seen["builds"].append(len(f.read().split()))
        return seen


    if __name__ == "__main__":
        def guarded(x):  # exists only where the guard ran: the client
            return [x * 3, check(Point(x))]
        GUARDED = guarded
        settings = json.loads(sys.argv[1])
        out = {}
        for kind in sys.argv[2:]:
            folder = os.path.join(settings["tmp"], "builds-" + kind)
            os.makedirs(folder)
            out[kind] = run(kind, settings, folder)
        print("RESULT " + json.dumps(out))
''')


def run_script(kinds: List[str], storage: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
               timeout: float = 240) -> Dict[str, Any]:
    """Write ``SCRIPT`` to a fresh temp dir and run it there; what it printed, by kind."""
    with tempfile.TemporaryDirectory(prefix="cp-user-script-") as tmp:
        path = os.path.join(tmp, "user_script.py")
        with open(path, "w") as f:
            f.write(SCRIPT)
        settings = json.dumps({"storage": storage, "config": config, "tmp": tmp})
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT  # cloudpool from this checkout; the script's dir comes first anyway
        proc = subprocess.run([sys.executable, path, settings, *kinds], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=timeout)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise AssertionError(f"the script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(line[len("RESULT "):])


def counters_consistent(bumps: List[List[int]], peeks: List[List[int]]) -> bool:
    """Per worker process: bump counted 1..k, and peek (another function) saw k."""
    per_pid: Dict[int, List[int]] = {}
    for pid, n in bumps:
        per_pid.setdefault(pid, []).append(n)
    if any(sorted(ns) != list(range(1, len(ns) + 1)) for ns in per_pid.values()):
        return False
    return all(n == len(per_pid.get(pid, [])) for pid, n in peeks)


class MainScriptChecks:
    """Assertions shared by the local and the knative runs (mixed into a TestCase)."""

    def assert_like_stdlib(self, got: Dict[str, Any], ref: Dict[str, Any], *, name: Optional[str]) -> None:
        if "init" in got:
            self.assertEqual(got["init"], ref["init"])          # [42, 42, 42, 42]
            self.assertEqual(set(ref["init"]), {42})
        for seen in (ref, got):
            self.assertTrue(counters_consistent(seen["bump"], seen["peek"]), seen)
            # At least one later call of another function saw a write (not all fresh copies).
            self.assertTrue(any(n > 0 for _pid, n in seen["peek"]), seen)
        self.assertEqual(got["make"], ref["make"])
        self.assertEqual(got["make"], [True] * 3)
        self.assertEqual(got["check"], ref["check"])
        self.assertEqual(got["check"], [True, True])
        self.assertEqual(got["cache"], ref["cache"])
        self.assertEqual(got["cache"], [True] * 8)
        # Built once per worker process, whatever the number of processes.
        self.assertEqual(set(ref["builds"]), {1})
        self.assertEqual(set(got["builds"]), {1}, got["builds"])
        if name is not None:
            self.assertEqual(set(got["name"]), {name})
        self.assertEqual(got["lambda"], [[x + 1, True] for x in (1, 2)])
        self.assertEqual(got["guarded"], [[x * 3, True] for x in (1, 2)])


class LocalMainScriptTest(MainScriptChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.out = run_script(["stdlib", "cloudpool", "cloudpool-spawn", "pool", "lithops"])

    def test_stdlib_imports_the_script_as_mp_main(self):
        self.assertEqual(set(self.out["stdlib"]["name"]), {"__mp_main__"})

    def test_executor_forked_workers(self):
        # Forked workers (the local default on Linux, like the 3.11 stdlib) run the
        # client's own copy of the script: __name__ stays "__main__" there, as with fork.
        self.assert_like_stdlib(self.out["cloudpool"], self.out["stdlib"], name="__main__")

    def test_executor_spawned_workers(self):
        self.assert_like_stdlib(self.out["cloudpool-spawn"], self.out["stdlib"], name="__mp_main__")

    def test_pool(self):
        self.assert_like_stdlib(self.out["pool"], self.out["stdlib"], name="__main__")

    def test_compat_lithops(self):
        self.assert_like_stdlib(self.out["lithops"], self.out["stdlib"], name="__main__")


LATE_SCRIPT = textwrap.dedent('''
    from cloudpool import CloudPoolExecutor
    def early(x):
        return x
    ex = CloudPoolExecutor(1)          # no __main__ guard: allowed with fork
    print("early", ex.submit(early, 1).result(60))
    def late(x):                       # defined after the worker was forked
        return x
    try:
        ex.submit(late, 2).result(60)
    except AttributeError as exc:
        print("late", exc)
    ex.shutdown()
''')


class LateDefinitionTest(unittest.TestCase):
    def test_function_defined_after_the_fork_is_a_clear_error(self):
        # As with a fork-started ProcessPoolExecutor, which fails the same way.
        with tempfile.TemporaryDirectory(prefix="cp-user-script-") as tmp:
            path = os.path.join(tmp, "late.py")
            with open(path, "w") as f:
                f.write(LATE_SCRIPT)
            proc = subprocess.run([sys.executable, path], cwd=tmp, capture_output=True, text=True,
                                  timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], "early 1")
        self.assertTrue(lines[1].startswith("late 'late' is not defined in this process's copy of the main script"),
                        proc.stdout)
        self.assertIn("Define it at module level, above the code that creates the executor", lines[1])


class WorkerNamesTest(unittest.TestCase):
    """Which script objects travel by name: those a worker's import of the script defines."""

    def test_guarded_and_nested_definitions(self):
        from cloudpool._mainscript import worker_names

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.py")
            with open(path, "w") as f:
                f.write(textwrap.dedent("""
                    import os, json as j
                    from x import y as z
                    A, (B, C) = 1, (2, 3)
                    def f(): pass
                    class K: pass
                    try:
                        import numpy as np
                    except ImportError:
                        np = None
                    if True:
                        def g(): pass
                    if __name__ == "__main__":
                        def guarded(): pass
                        X = 1
                    else:
                        def other(): pass
                    if "__main__" == __name__:
                        def guarded2(): pass
                """))
            names = worker_names(path)
        self.assertLessEqual({"os", "j", "z", "A", "B", "C", "f", "K", "np", "g", "other"}, names)
        self.assertFalse({"guarded", "guarded2", "X"} & names)


if __name__ == "__main__":
    unittest.main()
