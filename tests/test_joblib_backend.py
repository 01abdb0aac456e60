"""The ``"cloudpool"`` joblib backend: joblib and scikit-learn code on the local and knative backends.

Each behaviour is compared with joblib's own process backend, loky, in the same test:
results, the exception a failing task raises, what nested ``Parallel`` calls inside a
task run on, and scikit-learn's ``GridSearchCV`` (iris, shipped with scikit-learn)
finding the same best parameters and the same cross-validation scores.

The knative tests run the backend's HTTP runtime as two local server processes with S3
storage on the shared moto server (``tests/knative_small.py``); the servers have the
repository on PYTHONPATH, so this module's functions unpickle there by reference (as if
installed in the runtime image).
"""
from __future__ import annotations

import functools
import os
import unittest
from typing import Any, Dict, List, Tuple

import joblib
from joblib import Parallel, delayed
from joblib.parallel import get_active_backend

import cloudpool
import cloudpool.joblib as cp_joblib
from cloudpool import CloudPoolExecutor
from tests.knative_small import SmallCluster, local_cluster

# A small grid: 6 candidates x 3 folds, a second or so per backend.
GRID = {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.1]}
CV = 3


# ---------------------------------------------------------------------------- task functions
def square(x: int) -> int:
    return x * x


def where(_x: Any = None) -> Tuple[int, str]:
    """The process (and, on the knative cluster, the host) a task ran on."""
    return os.getpid(), os.environ.get(local_cluster.HOST_INDEX_ENV, "")


def sleep_then(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"task {x} failed")
    return x


def inner_probe(_x: Any = None) -> Dict[str, Any]:
    """What a Parallel call inside a task runs on, one and two levels down."""
    backend, _ = get_active_backend()
    inner = Parallel(n_jobs=-1)(delayed(_inner_inner)() for _ in range(4))
    return {"pid": os.getpid(), "backend": type(backend).__name__, "level": backend.nesting_level,
            "inner_pids": sorted({pid for pid, _, _ in inner}),
            "inner_backends": sorted({(name, level) for _, name, level in inner})}


def _inner_inner() -> Tuple[int, str, int]:
    backend, _ = get_active_backend()
    # Two levels down: this call must not start anything either.
    Parallel(n_jobs=-1)(delayed(square)(i) for i in range(2))
    return os.getpid(), type(backend).__name__, backend.nesting_level


# ---------------------------------------------------------------------------- scikit-learn
def grid_search() -> Dict[str, Any]:
    """GridSearchCV of an SVC on iris under the active joblib backend; what it found."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(SVC(), GRID, cv=CV, n_jobs=-1).fit(X, y)
    keys = ["mean_test_score", "std_test_score", "rank_test_score"] + [
        f"split{i}_test_score" for i in range(CV)]
    return {"best_params": search.best_params_, "best_score": float(search.best_score_),
            "params": list(search.cv_results_["params"]),
            **{k: [float(v) for v in search.cv_results_[k]] for k in keys}}


@functools.lru_cache(maxsize=None)
def loky_grid_search() -> Dict[str, Any]:
    """The reference: the same search on joblib's loky backend (computed once per run)."""
    with joblib.parallel_config(backend="loky", n_jobs=2):
        return grid_search()


class GridSearchMixin:
    """Run the search on cloudpool with ``parallel_config`` options; compare with loky."""

    def cloudpool_options(self) -> Dict[str, Any]:
        raise NotImplementedError

    def test_gridsearchcv_finds_what_loky_finds(self):
        expected = loky_grid_search()
        with joblib.parallel_config(backend="cloudpool", **self.cloudpool_options()):
            backend, _ = get_active_backend()
            got = grid_search()
        self.assertIsInstance(backend, cp_joblib.CloudPoolBackend)
        self.assertEqual(got["best_params"], expected["best_params"])
        self.assertEqual(got["best_score"], expected["best_score"])
        self.assertEqual(got, expected)
        self.assertEqual(len(got["mean_test_score"]), 6)


# ---------------------------------------------------------------------------- local backend
class JoblibLocalTest(GridSearchMixin, unittest.TestCase):
    def cloudpool_options(self) -> Dict[str, Any]:
        return {"max_workers": 2}

    def test_parallel_config_runs_tasks_on_cloudpool_workers(self):
        with joblib.parallel_config(backend="cloudpool", max_workers=2):
            backend, _ = get_active_backend()
            results = Parallel(n_jobs=-1)(delayed(square)(i) for i in range(20))
            pids = Parallel(n_jobs=-1)(delayed(where)() for _ in range(4))
        self.assertIsInstance(backend, cp_joblib.CloudPoolBackend)
        self.assertEqual(results, [i * i for i in range(20)])
        self.assertNotIn(os.getpid(), {pid for pid, _ in pids})  # not run in this process

    def test_older_parallel_backend_api(self):
        with joblib.parallel_backend("cloudpool", n_jobs=2, max_workers=2):
            self.assertIsInstance(get_active_backend()[0], cp_joblib.CloudPoolBackend)
            self.assertEqual(Parallel()(delayed(square)(i) for i in range(5)), [0, 1, 4, 9, 16])

    def test_register_joblib_function(self):
        cloudpool.register_joblib()
        self.assertIs(joblib.parallel.BACKENDS["cloudpool"], cp_joblib.CloudPoolBackend)

    def test_n_jobs_minus_one_is_the_executors_concurrency(self):
        with joblib.parallel_config(backend="cloudpool", max_workers=3):
            self.assertEqual(joblib.effective_n_jobs(-1), 3)
            self.assertEqual(joblib.effective_n_jobs(-2), 2)
            self.assertEqual(joblib.effective_n_jobs(5), 5)
            with self.assertRaises(ValueError):
                joblib.effective_n_jobs(0)

    def test_one_executor_per_block_reused_across_parallel_calls(self):
        with joblib.parallel_config(backend="cloudpool", max_workers=2):
            backend, _ = get_active_backend()
            Parallel(n_jobs=2)(delayed(square)(i) for i in range(4))
            first = backend._executor
            Parallel(n_jobs=2)(delayed(square)(i) for i in range(4))
            self.assertIs(backend._executor, first)

    def test_a_failing_task_raises_what_loky_raises(self):
        errors = []
        for name, options in (("loky", {}), ("cloudpool", {"max_workers": 2})):
            with joblib.parallel_config(backend=name, **options):
                with self.assertRaises(Exception) as cm:
                    Parallel(n_jobs=2)(delayed(fail_on)(i, 3) for i in range(8))
            errors.append(cm.exception)
        self.assertIs(type(errors[1]), type(errors[0]))
        self.assertIsInstance(errors[1], ValueError)
        self.assertIn("task 3 failed", str(errors[1]))
        # The backend is still usable after the failure.
        with joblib.parallel_config(backend="cloudpool", max_workers=2):
            self.assertEqual(Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)), [0, 1, 4])

    def test_parallel_timeout_raises_what_loky_raises(self):
        errors = []
        for name, options in (("loky", {}), ("cloudpool", {"max_workers": 2})):
            with joblib.parallel_config(backend=name, **options):
                with self.assertRaises(Exception) as cm:
                    Parallel(n_jobs=2, timeout=0.5)(delayed(sleep_then)(s) for s in (0.0, 3.0))
            errors.append(cm.exception)
        self.assertIs(type(errors[1]), type(errors[0]))  # joblib raises it, whatever the backend
        self.assertEqual(type(errors[1]).__name__, "TimeoutError")

    def test_generator_outputs(self):
        with joblib.parallel_config(backend="cloudpool", max_workers=2):
            gen = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(10))
            self.assertEqual(list(gen), [i * i for i in range(10)])
            gen = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(square)(i) for i in range(10))
            self.assertEqual(sorted(gen), [i * i for i in range(10)])

    def test_nested_calls_run_as_under_loky_without_new_processes(self):
        probes = {}
        for name, options in (("loky", {}), ("cloudpool", {"max_workers": 2})):
            with joblib.parallel_config(backend=name, **options):
                probes[name] = Parallel(n_jobs=2)(delayed(inner_probe)(i) for i in range(4))
        for name, results in probes.items():
            for r in results:
                # Every inner call ran inside the task's own process: no fork bomb.
                self.assertEqual(r["inner_pids"], [r["pid"]], name)
        strip = [{k: v for k, v in r.items() if k not in ("pid", "inner_pids")} for r in probes["loky"]]
        ours = [{k: v for k, v in r.items() if k not in ("pid", "inner_pids")} for r in probes["cloudpool"]]
        self.assertEqual(ours, strip)
        self.assertEqual(ours[0]["backend"], "ThreadingBackend")
        self.assertEqual(ours[0]["inner_backends"], [("SequentialBackend", 2)])

    def test_require_sharedmem_falls_back_to_threads_like_loky(self):
        with joblib.parallel_config(backend="cloudpool", max_workers=2):
            pids = Parallel(n_jobs=2, require="sharedmem")(delayed(where)() for _ in range(3))
        self.assertEqual({pid for pid, _ in pids}, {os.getpid()})

    def test_an_executor_given_by_the_caller_is_used_and_left_open(self):
        with CloudPoolExecutor(2) as ex:
            with joblib.parallel_config(backend="cloudpool", executor=ex):
                self.assertEqual(Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)), [0, 1, 4])
                backend, _ = get_active_backend()
            self.assertIs(backend._executor, ex)
            self.assertEqual(ex.submit(square, 3).result(), 9)  # still open

    def test_bad_options_are_refused_with_the_fix(self):
        with CloudPoolExecutor(1) as ex:
            with self.assertRaisesRegex(ValueError, "either executor="):
                cp_joblib.CloudPoolBackend(executor=ex, max_workers=2)
        with self.assertRaisesRegex(TypeError, "CloudPoolExecutor"):
            cp_joblib.CloudPoolBackend(executor=object())
        with self.assertRaisesRegex(ValueError, "inner_max_num_threads"):
            cp_joblib.CloudPoolBackend(inner_max_num_threads=2)


# ---------------------------------------------------------------------------- knative backend
class JoblibKnativeTest(GridSearchMixin, unittest.TestCase):
    """The same search with every task on the knative runtime's HTTP servers, S3 on moto."""

    @classmethod
    def setUpClass(cls):
        cls.remote = SmallCluster(hosts=2, concurrency=2)
        cls.addClassCleanup(cls.remote.stop)
        cls.remote.start()

    def cloudpool_options(self) -> Dict[str, Any]:
        return self.remote.executor_options()

    def test_tasks_run_on_the_runtime_hosts(self):
        options = self.cloudpool_options()
        del options["config"]["backend"]  # given as compute= instead (joblib owns backend=)
        with joblib.parallel_config(backend="cloudpool", compute="knative", **options):
            backend, _ = get_active_backend()
            hosts: List[Tuple[int, str]] = Parallel(n_jobs=-1)(delayed(where)() for _ in range(8))
            self.assertEqual(backend._executor.config["backend"], "knative")
        self.assertTrue({h for _, h in hosts} <= {"0", "1"} and all(h for _, h in hosts), hosts)


if __name__ == "__main__":
    unittest.main()
