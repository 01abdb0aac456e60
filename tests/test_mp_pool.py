"""``cloudpool.multiprocessing.Pool`` beyond CPython's own tests (see ``test_mp_conformance``).

Real local worker processes, nothing mocked: argument checks and misuse errors,
``chunksize``, lazy and streaming ``imap``/``imap_unordered``, callbacks (on the
pool's completion thread, never stalling the executor's manager), ``terminate``,
``join`` after ``close``, error types, ``maxtasksperchild``, interpreter exit and
garbage collection, contexts and ``cpu_count``.
"""
from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import warnings
from concurrent.futures.process import BrokenProcessPool
from unittest import mock

import cloudpool.multiprocessing as cmp
from cloudpool.errors import InitializerError, WorkerLostError
from cloudpool.multiprocessing import Pool
from cloudpool.multiprocessing.pool import LOOKAHEAD_ITEMS_PER_WORKER, LOOKAHEAD_PER_WORKER

from tests._cpython import ROOT

BOUND = 30.0


def square(x):
    return x * x


def add(a, b):
    return a + b


def slow_square(x, seconds=0.0):
    time.sleep(seconds)
    return x * x


def sleep_then(value, seconds):
    time.sleep(seconds)
    return value


def fail(x):
    raise ValueError(f"bad {x}")  # remote-marker


def return_lock(_x=None):
    return threading.Lock()


class LockedError(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable(_x=None):
    raise LockedError()


def die(_x=None):
    os._exit(7)


def pid(_x=None):
    return os.getpid()


def set_env(name, value):
    os.environ[name] = value


def get_env(name):
    return os.environ.get(name)


def bad_initializer():
    raise RuntimeError("initializer failed")


class Counter:
    """An input iterator that counts how much of it was consumed."""

    def __init__(self, limit=None):
        self.pulled = 0
        self.limit = limit
        self.lock = threading.Lock()

    def __iter__(self):
        for i in itertools.count():
            if self.limit is not None and i >= self.limit:
                return
            with self.lock:
                self.pulled += 1
            yield i


def _submits(pool):
    """Count executor submissions (one per task: one apply or one chunk)."""
    return mock.patch.object(pool._executor, "submit", wraps=pool._executor.submit)


class SharedPoolTestCase(unittest.TestCase):
    processes = 2

    @classmethod
    def setUpClass(cls):
        cls.pool = Pool(cls.processes)

    @classmethod
    def tearDownClass(cls):
        cls.pool.terminate()
        cls.pool.join()


# ---------------------------------------------------------------------------- validation and misuse
class PoolValidationTest(unittest.TestCase):
    def test_constructor_arguments(self):
        for bad in (0, -1):
            with self.assertRaisesRegex(ValueError, "Number of processes must be at least 1"):
                Pool(bad)
        with self.assertRaises(TypeError):
            Pool(2.5)
        for bad in (0, -1, 0.5, "12"):
            with self.assertRaisesRegex(ValueError, "maxtasksperchild"):
                Pool(2, maxtasksperchild=bad)
        with self.assertRaisesRegex(TypeError, "initializer must be a callable"):
            Pool(2, initializer=3)
        with self.assertRaises(TypeError):
            Pool(2, context=object())

    def test_misuse(self):
        p = Pool(1)
        with self.assertRaisesRegex(ValueError, "Pool is still running"):
            p.join()
        with self.assertRaisesRegex(NotImplementedError, "cannot be passed between processes or pickled"):
            pickle.dumps(p)
        with self.assertRaisesRegex(ValueError, "Chunksize must be 1\\+"):
            p.imap(square, [1], chunksize=0)
        with self.assertRaises(ValueError):
            p.map(square, [1], chunksize=0)
        with self.assertRaises(TypeError):
            p.apply_async(3)
        res = p.apply_async(sleep_then, (1, 0.5))
        with self.assertRaisesRegex(ValueError, "not ready"):
            res.successful()
        with self.assertRaises(multiprocessing.TimeoutError):
            res.get(timeout=0.05)
        self.assertIs(cmp.TimeoutError, multiprocessing.TimeoutError)
        self.assertEqual(res.get(BOUND), 1)
        self.assertTrue(res.successful())
        p.close()
        for call in (lambda: p.apply_async(square, (1,)), lambda: p.map(square, [1]),
                     lambda: p.imap(square, [1]), lambda: p.imap_unordered(square, [1]),
                     lambda: p.starmap_async(add, [(1, 2)]), lambda: p.__enter__()):
            with self.assertRaisesRegex(ValueError, "Pool not running"):
                call()
        p.join()
        p.close()  # idempotent, as the stdlib
        p.terminate()
        p.join()

    def test_join_from_a_callback_is_refused(self):
        p = Pool(1)
        errors = []

        def callback(_value):
            try:
                p.join()
            except (RuntimeError, ValueError) as exc:
                errors.append(exc)

        p.apply_async(square, (2,), callback=callback).wait(BOUND)
        self.assertIsInstance(errors.pop(), ValueError)  # still running
        res = p.apply_async(sleep_then, (1, 0.3), callback=callback)
        p.close()
        res.wait(BOUND)
        p.join()
        self.assertIsInstance(errors.pop(), RuntimeError)  # closed, but it would wait for itself


# ---------------------------------------------------------------------------- chunksize
class ChunksizeTest(SharedPoolTestCase):
    def test_chunksize_is_honoured(self):
        with _submits(self.pool) as submit:
            self.assertEqual(self.pool.map(square, range(20), chunksize=5), [x * x for x in range(20)])
        self.assertEqual(submit.call_count, 4)
        with _submits(self.pool) as submit:
            self.assertEqual(self.pool.starmap(add, [(i, i) for i in range(10)], chunksize=3),
                             [2 * i for i in range(10)])
        self.assertEqual(submit.call_count, 4)
        with _submits(self.pool) as submit:
            self.assertEqual(list(self.pool.imap(square, range(20), chunksize=7)), [x * x for x in range(20)])
        self.assertEqual(submit.call_count, 3)

    def test_default_chunksize_is_the_stdlib_one(self):
        # ceil(100 / (4 * processes)) items per task, as multiprocessing.Pool.map computes it.
        with _submits(self.pool) as submit:
            self.pool.map(square, range(100))
        self.assertEqual(submit.call_count, -(-100 // -(-100 // (4 * self.processes))))
        with _submits(self.pool) as submit:
            list(self.pool.imap(square, range(10)))  # imap: 1 by default
        self.assertEqual(submit.call_count, 10)

    def test_apply_map_starmap_async(self):
        self.assertEqual(self.pool.apply(add, (1,), {"b": 2}), 3)
        self.assertEqual(self.pool.starmap_async(add, [(1, 2), (3, 4)]).get(BOUND), [3, 7])
        self.assertEqual(self.pool.map_async(square, iter(range(5))).get(BOUND), [0, 1, 4, 9, 16])
        self.assertEqual(self.pool.map(lambda x: x + 1, [1, 2]), [2, 3])  # cloudpickle ships lambdas


# ---------------------------------------------------------------------------- lazy imap
class LazyIMapTest(SharedPoolTestCase):
    def window_items(self, chunksize=1):
        chunks = max(2, LOOKAHEAD_PER_WORKER * self.processes,
                     -(-LOOKAHEAD_ITEMS_PER_WORKER * self.processes // chunksize))
        return chunks * chunksize

    def test_infinite_generator_with_islice(self):
        for method in (self.pool.imap, self.pool.imap_unordered):
            source = Counter()
            got = list(itertools.islice(method(square, source), 10))
            if method == self.pool.imap:
                self.assertEqual(got, [x * x for x in range(10)])
            else:
                self.assertEqual(len(got), 10)
            self.assertLessEqual(source.pulled, 10 + self.window_items() + 1)

    def test_input_is_consumed_only_as_results_are_taken(self):
        source = Counter(limit=1000)
        it = self.pool.imap(square, source, chunksize=3)
        self.assertEqual(next(it), 0)
        time.sleep(0.5)  # plenty of time to run ahead, if it were eager
        self.assertLessEqual(source.pulled, self.window_items(3) + 3)
        pulled_before = source.pulled
        self.assertEqual([next(it) for _ in range(30)], [x * x for x in range(1, 31)])
        time.sleep(0.3)
        self.assertGreater(source.pulled, pulled_before)  # submitting as results drain
        self.assertLessEqual(source.pulled, 31 + self.window_items(3) + 3)

    def test_a_dropped_iterator_stops_pulling_input(self):
        source = Counter()
        it = self.pool.imap(square, source)
        next(it)
        del it
        gc.collect()
        time.sleep(0.3)
        pulled = source.pulled
        time.sleep(0.3)
        self.assertEqual(source.pulled, pulled)

    def test_results_stream_as_they_complete(self):
        it = self.pool.imap_unordered(sleep_then, [], chunksize=1)
        self.assertEqual(list(it), [])
        # imap_unordered: the fast result first; imap: in order, the slow one blocks.
        it = self.pool.imap_unordered(slow_square_star, [(1, 1.5), (2, 0.0)])
        t0 = time.monotonic()
        self.assertEqual(next(it), 4)
        self.assertLess(time.monotonic() - t0, 1.2)
        self.assertEqual(next(it), 1)
        it = self.pool.imap(slow_square_star, [(1, 1.0), (2, 0.0)])
        with self.assertRaises(multiprocessing.TimeoutError):
            it.next(timeout=0.2)
        self.assertEqual(it.next(timeout=BOUND), 1)
        self.assertEqual(it.next(timeout=BOUND), 4)
        with self.assertRaises(StopIteration):
            next(it)

    def test_input_error_is_raised_by_next_at_its_position(self):
        def gen():
            yield 1
            yield 2
            raise KeyError("input broke")

        it = self.pool.imap(square, gen())
        self.assertEqual([next(it), next(it)], [1, 4])
        with self.assertRaises(KeyError):
            next(it)
        with self.assertRaises(StopIteration):
            next(it)
        it = self.pool.imap(square, 5)  # not iterable: raised by next(), not by imap()
        with self.assertRaises(TypeError):
            next(it)

    def test_task_errors_do_not_end_the_iteration(self):
        it = self.pool.imap(fail_on_odd, range(4))
        self.assertEqual(next(it), 0)
        with self.assertRaises(ValueError):
            next(it)
        self.assertEqual(next(it), 2)

    def test_close_runs_the_rest_of_the_input(self):
        p = Pool(2)
        source = Counter(limit=200)
        it = p.imap(square, source)
        self.assertEqual(next(it), 0)
        p.close()
        p.join()  # everything runs, as the stdlib does, though nobody consumes it
        self.assertEqual(source.pulled, 200)
        self.assertEqual(sum(1 for _ in it), 199)


def slow_square_star(args):
    return slow_square(*args)


def fail_on_odd(x):
    if x % 2:
        raise ValueError(x)
    return x


# ---------------------------------------------------------------------------- callbacks
class CallbackTest(SharedPoolTestCase):
    def test_callbacks_run_on_the_pool_thread_with_the_original_objects(self):
        seen = []
        res = self.pool.apply_async(square, (3,), callback=lambda v: seen.append((v, threading.current_thread().name)))
        self.assertEqual(res.get(BOUND), 9)
        self.assertEqual(seen[0][0], 9)  # called before get() returned
        self.assertTrue(seen[0][1].startswith("cloudpool-Pool-"), seen[0][1])
        errors = []
        res = self.pool.map_async(fail, [1, 2], callback=errors.append, error_callback=errors.append)
        res.wait(BOUND)
        self.assertEqual(len(errors), 1)
        exc = errors[0]
        self.assertIs(type(exc), ValueError)
        self.assertIsInstance(exc.__cause__, multiprocessing.pool.RemoteTraceback)
        self.assertIn("remote-marker", exc.__cause__.tb)
        self.assertFalse(res.successful())
        with self.assertRaises(ValueError):
            res.get()

    def test_a_slow_callback_does_not_stall_the_executor(self):
        release = threading.Event()
        started = threading.Event()

        def slow_callback(_value):
            started.set()
            release.wait(BOUND)

        self.pool.apply_async(square, (1,), callback=slow_callback)
        self.assertTrue(started.wait(BOUND))
        try:
            # The manager thread keeps completing calls while the callback blocks.
            t0 = time.monotonic()
            self.assertEqual(self.pool._executor.submit(square, 5).result(timeout=BOUND), 25)
            self.assertLess(time.monotonic() - t0, 10)
        finally:
            release.set()

    def test_a_failing_callback_is_logged_and_the_result_delivered(self):
        def bad_callback(_value):
            raise RuntimeError("callback failed")

        with self.assertLogs("cloudpool.multiprocessing", logging.ERROR) as logs:
            res = self.pool.apply_async(square, (4,), callback=bad_callback)
            self.assertEqual(res.get(BOUND), 16)
            self.assertEqual(self.pool.apply(square, (2,)), 4)
        self.assertIn("callback raised", logs.output[0])

    def test_empty_map_is_ready_at_once_without_callback(self):
        calls = []
        res = self.pool.map_async(square, [], callback=calls.append)
        self.assertTrue(res.ready())
        self.assertEqual(res.get(0), [])
        self.assertEqual(calls, [])  # as the stdlib


# ---------------------------------------------------------------------------- errors
class PoolErrorTest(SharedPoolTestCase):
    def test_unpicklable_result_is_maybe_encoding_error(self):
        errors = []
        res = self.pool.apply_async(return_lock, error_callback=errors.append)
        with self.assertRaises(multiprocessing.pool.MaybeEncodingError) as cm:
            res.get(BOUND)
        self.assertIs(errors[0], cm.exception)
        self.assertIn("lock", str(cm.exception))
        with self.assertRaises(multiprocessing.pool.MaybeEncodingError):
            self.pool.map(return_lock, [1, 2])

    def test_unpicklable_exception_is_maybe_encoding_error(self):
        with self.assertRaises(multiprocessing.pool.MaybeEncodingError) as cm:
            self.pool.apply(raise_unpicklable)
        self.assertIn("holds a lock", str(cm.exception))

    def test_worker_death_fails_only_its_task(self):
        with self.assertRaises(WorkerLostError) as cm:
            self.pool.apply(die)
        self.assertIsInstance(cm.exception, BrokenProcessPool)
        self.assertEqual(self.pool.apply(square, (6,)), 36)  # the pool keeps working

    def test_failing_initializer_breaks_the_pool(self):
        p = Pool(1, initializer=bad_initializer)
        self.addCleanup(p.terminate)
        with self.assertRaises(InitializerError) as cm:
            p.apply(square, (1,))
        self.assertIn("initializer failed", str(cm.exception))

    def test_initializer_runs_in_each_worker(self):
        p = Pool(2, initializer=set_env, initargs=("CLOUDPOOL_TEST_INIT", "done"))
        self.addCleanup(p.terminate)
        self.assertEqual(p.map(get_env, ["CLOUDPOOL_TEST_INIT"] * 4, chunksize=1), ["done"] * 4)
        self.assertIsNone(os.environ.get("CLOUDPOOL_TEST_INIT"))  # it ran in the workers only


# ---------------------------------------------------------------------------- lifecycle
class LifecycleTest(unittest.TestCase):
    def test_terminate_stops_running_tasks_quickly(self):
        p = Pool(2)
        res = p.map_async(time.sleep, [60] * 6, chunksize=1)
        single = p.apply_async(time.sleep, (60,))
        time.sleep(0.5)  # let some start
        t0 = time.monotonic()
        p.terminate()
        p.join()
        self.assertLess(time.monotonic() - t0, 10)
        with self.assertRaises(BrokenProcessPool):
            res.get(BOUND)
        with self.assertRaisesRegex(BrokenProcessPool, "terminated"):
            single.get(BOUND)

    def test_terminate_wakes_an_imap_consumer(self):
        p = Pool(1)
        it = p.imap(time.sleep, [60] * 3)
        threading.Timer(0.5, p.terminate).start()
        with self.assertRaises(BrokenProcessPool):
            it.next(timeout=BOUND)
        p.join()

    def test_context_manager_terminates(self):
        with Pool(1) as p:
            res = p.apply_async(time.sleep, (60,))
            time.sleep(0.3)
        self.assertTrue(res.ready())
        self.assertFalse(res.successful())
        with self.assertRaisesRegex(ValueError, "Pool not running"):
            with p:
                pass

    def test_join_after_close_waits_for_all_work_and_callbacks(self):
        p = Pool(2)
        done = []
        results = [p.apply_async(sleep_then, (i, 0.3), callback=lambda v: (time.sleep(0.1), done.append(v)))
                   for i in range(4)]
        it = p.imap_unordered(square, range(5))
        p.close()
        p.join()
        self.assertTrue(all(r.ready() for r in results))
        self.assertEqual(sorted(done), [0, 1, 2, 3])
        self.assertEqual(sorted(it), [0, 1, 4, 9, 16])

    def test_resource_warning_and_no_hang_when_collected_running(self):
        p = Pool(1)
        p.apply(square, (1,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del p
            gc.collect()
        self.assertTrue(any(issubclass(w.category, ResourceWarning) for w in caught))

    def test_maxtasksperchild_replaces_local_worker_processes(self):
        p = Pool(2, maxtasksperchild=2)
        self.addCleanup(p.terminate)
        pids = [r.get(BOUND) for r in [p.apply_async(pid) for _ in range(12)]]
        self.assertGreaterEqual(len(set(pids)), 6)
        self.assertTrue(all(pids.count(x) <= 2 for x in set(pids)))
        q = Pool(2)
        self.addCleanup(q.terminate)
        self.assertLessEqual(len(set(q.map(pid, range(12), chunksize=1))), 2)


class PoolWorkerLifetimeTest(unittest.TestCase):
    """maxtasksperchild with map chunks: each chunk is one task."""

    def test_chunks_count_as_tasks(self):
        with Pool(1, maxtasksperchild=1) as p:
            pids = p.map(pid, range(6), chunksize=2)
        self.assertEqual(len(set(pids)), 3)


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


class PoolInterpreterExitTest(unittest.TestCase):
    def test_pool_in_an_object_alive_at_exit(self):
        # CPython's test_worker_finalization_via_atexit_handler_of_multiprocessing, with our Pool.
        proc = _run_child("""
            from cloudpool.multiprocessing import Pool
            problem = None
            class A:
                def __init__(self):
                    self.pool = Pool(processes=1)
            def test():
                global problem
                problem = A()
                problem.pool.map(float, tuple(range(10)))
            if __name__ == "__main__":
                test()
        """)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_exit_with_running_tasks_terminates_them(self):
        t0 = time.monotonic()
        proc = _run_child("""
            import time
            from cloudpool.multiprocessing import Pool
            if __name__ == "__main__":
                p = Pool(2)
                p.map_async(time.sleep, [120] * 4, chunksize=1)
                time.sleep(0.5)
        """)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertLess(time.monotonic() - t0, 30)

    def test_collected_pool_does_not_hang_exit(self):
        proc = _run_child("""
            from cloudpool.multiprocessing import Pool
            def f(x):
                return x + 1
            if __name__ == "__main__":
                print(Pool(2).map(f, range(5)))
        """)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("[1, 2, 3, 4, 5]", proc.stdout)


# ---------------------------------------------------------------------------- contexts
class ContextTest(unittest.TestCase):
    def test_cpu_count_is_the_backends_concurrency(self):
        self.assertEqual(cmp.cpu_count(), os.cpu_count())
        self.assertEqual(cmp.get_context(config={"max_workers": 3}).cpu_count(), 3)

    def test_start_method_reaches_the_local_backend(self):
        ctx = cmp.get_context("spawn")
        self.assertEqual(ctx.get_start_method(), "spawn")
        p = ctx.Pool(1)
        self.addCleanup(p.terminate)
        self.assertEqual(p._executor._backend._context.get_start_method(), "spawn")
        p2 = Pool(1, context=multiprocessing.get_context("forkserver"))
        self.addCleanup(p2.terminate)
        self.assertEqual(p2._executor._backend._context.get_start_method(), "forkserver")
        with self.assertRaises(ValueError):
            cmp.get_context("nope")

    def test_namespace(self):
        for name in ("Pool", "Process", "Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Lock", "RLock",
                     "Semaphore", "BoundedSemaphore", "Event", "Condition", "Barrier", "Value", "Array",
                     "Manager", "cpu_count", "TimeoutError", "get_context", "current_process",
                     "active_children"):
            self.assertTrue(hasattr(cmp, name), name)
            self.assertTrue(hasattr(cmp.get_context(), name), name)
        self.assertIs(cmp.pool.ThreadPool, multiprocessing.pool.ThreadPool)
        with cmp.pool.ThreadPool(2) as tp:
            self.assertEqual(tp.map(square, [1, 2]), [1, 4])


if __name__ == "__main__":
    unittest.main()


class PoolObjectsInputTest(unittest.TestCase):
    """objects(...) handed to Pool.map / imap is partitioned for the pool's workers."""

    def test_objects_partitioned_for_pool(self):
        import tempfile

        from cloudpool import objects
        from cloudpool.multiprocessing import Pool

        workers = (os.cpu_count() or 1) + 1  # differs from the default parallelism
        with tempfile.TemporaryDirectory() as tmp:
            data = b"".join(b"line %08d of the input\n" % i for i in range(800_000))  # ~19 MB
            with open(os.path.join(tmp, "a.txt"), "wb") as f:
                f.write(data)
            with Pool(workers) as p:
                sizes = p.map(_part_bytes, objects(tmp))
                streamed = sorted(p.imap_unordered(_part_bytes, objects(tmp)))
        self.assertEqual(sum(sizes), len(data))
        self.assertEqual(sorted(sizes), streamed)
        # Automatic sizing aims at 4 parts per worker of *this pool* (1 MiB floor).
        self.assertEqual(len(sizes), 4 * workers)


def _part_bytes(part):
    return len(part.read())
