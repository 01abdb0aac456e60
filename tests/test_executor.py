"""CloudPoolExecutor on the local backend: semantics, errors, worker death, timeouts, protocol.

Everything here runs real worker processes and real local storage; nothing is mocked.
Each failure case asserts the exact exception type, a message that names the problem,
and that it arrives within a bound (no hang).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import pickle
import signal
import tempfile
import threading
import time
import unittest

from cloudpool import CloudPoolExecutor
from cloudpool import protocol, worker
from cloudpool.errors import (BrokenCloudPool, CallTimeoutError, ConfigError, InitializerError,
                              RemoteTraceback, UnpicklableRemoteError, VersionMismatchError,
                              WorkerLostError)
from cloudpool.storage import storages
from cloudpool.storage.local import LocalStorage

BOUND = 30  # seconds: no failure case may take longer to surface


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail_with_value_error(x):
    raise ValueError(f"bad input {x}")  # remote-line-marker


def return_lock(_):
    return threading.Lock()


class UnpicklableError(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable(_):
    raise UnpicklableError("holding a lock")


def sigkill_self(_):
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(code):
    os._exit(code)


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def write_pid_and_sleep(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
    return "not reached"


def allocate_too_much(_):
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))
    return len(bytearray(4 << 30))


def ignore_alarm_and_sleep(seconds):
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.setitimer = lambda *a, **k: None  # a call that disarms the worker's own timer
    time.sleep(seconds)
    return "woke"


def big_result(n):
    return b"x" * n


def nbytes(data):
    return len(data)


_INIT_STATE = {"value": None}


def set_state(value):
    _INIT_STATE["value"] = value


def get_state():
    return _INIT_STATE["value"], os.getpid()


def get_state_pid_after(delay_ms):
    time.sleep(delay_ms / 1000)
    return delay_ms, os.getpid()


def failing_init():
    raise RuntimeError("initializer exploded")


class TempStorageMixin:
    """Each test gets its own local 'bucket' directory (scratch files go there too).

    Subclasses for remote stores (tests/test_executor_remote_storage.py) override
    ``storage_url`` and ``storage_config`` to run the same tests through S3, GCS, ...
    """

    storage_config: dict = {}

    def setUp(self):
        super().setUp()
        self._tmp = tempfile.TemporaryDirectory(prefix="cloudpool-test-")
        self.storage_url = "file://" + self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()
        super().tearDown()

    def executor(self, *args, **kwargs):
        kwargs.setdefault("storage", self.storage_url)
        config = dict(self.storage_config)
        config.update(kwargs.pop("config", {}))
        return CloudPoolExecutor(*args, config=config, **kwargs)

    def stored_files(self):
        """Keys under the test's storage URL, relative to it."""
        from cloudpool.storage import storage_for

        scheme = self.storage_url.split("://", 1)[0]
        backend, root = storage_for(self.storage_url, self.storage_config.get(scheme, {}))
        root = root.rstrip("/") + "/"
        return sorted(info.key[len(root):] for info in backend.list(root))


class SemanticsTest(TempStorageMixin, unittest.TestCase):
    def test_submit_map_and_kwargs(self):
        with self.executor(2) as ex:
            self.assertEqual(ex.submit(add, 1, 2, c=3).result(timeout=BOUND), 6)
            self.assertEqual(list(ex.map(square, range(50))), [x * x for x in range(50)])
            self.assertEqual(list(ex.map(add, range(10), range(10), chunksize=3)),
                             [2 * x for x in range(10)])

    def test_futures_are_stdlib_futures(self):
        with self.executor(2) as ex:
            fs = [ex.submit(square, i) for i in range(20)]
            self.assertTrue(all(isinstance(f, cf.Future) for f in fs))
            done, not_done = cf.wait(fs, timeout=BOUND)
            self.assertEqual(len(done), 20)
            self.assertEqual(sorted(f.result() for f in cf.as_completed(fs)), [i * i for i in range(20)])
            seen = []
            fs[0].add_done_callback(lambda f: seen.append(f.result()))
            self.assertEqual(seen, [0])

    def test_map_validates_arguments_early(self):
        with self.executor(1) as ex:
            with self.assertRaisesRegex(ValueError, "chunksize must be >= 1"):
                ex.map(square, range(3), chunksize=0)
            with self.assertRaisesRegex(ValueError, "chunksize must be >= 1"):
                ex.map(square, range(3), chunksize=-5)
            with self.assertRaisesRegex(TypeError, "must be iterable"):
                ex.map(square, 42)
            with self.assertRaisesRegex(TypeError, "must be callable"):
                ex.submit(42)

    def test_max_workers_validation(self):
        with self.assertRaisesRegex(ValueError, "max_workers must be greater than 0"):
            CloudPoolExecutor(0)
        with self.assertRaises(TypeError):
            CloudPoolExecutor("4")

    def test_large_arguments_and_results_go_through_storage(self):
        payload = b"y" * (3 << 20)  # above the inline limit: stored as an args object
        # (pipe_args=False: the local backend's pipe would carry them otherwise; the
        # option is the local backend's, so suites running this on another backend skip it)
        local_only = {"pipe_args": False} if self.storage_config.get("backend", "local") == "local" else {}
        with self.executor(2, config={"keep_data": True}, **local_only) as ex:
            self.assertEqual(ex.submit(nbytes, payload).result(timeout=BOUND), len(payload))
            self.assertEqual(len(ex.submit(big_result, 5 << 20).result(timeout=BOUND)), 5 << 20)
        self.assertTrue(any("/args/" in f for f in self.stored_files()))

    def test_cancel_until_invoked(self):
        with self.executor(1) as ex:
            blocker = ex.submit(sleep_then, 1.0, "first")
            time.sleep(0.3)  # the blocker is running; the rest must wait in the queue
            queued = [ex.submit(square, i) for i in range(10)]
            cancelled = [f for f in queued if f.cancel()]
            self.assertGreaterEqual(len(cancelled), 8)
            self.assertTrue(all(f.cancelled() for f in cancelled))
            self.assertFalse(blocker.cancel())  # already invoked
            self.assertEqual(blocker.result(timeout=BOUND), "first")
            for f in queued:
                if f not in cancelled:
                    self.assertEqual(f.result(timeout=BOUND), queued.index(f) ** 2)

    def test_map_timeout(self):
        with self.executor(2) as ex:
            it = ex.map(sleep_then, [0, 5], ["a", "b"], timeout=1.5)
            self.assertEqual(next(it), "a")
            start = time.monotonic()
            with self.assertRaises(TimeoutError):
                next(it)
            self.assertLess(time.monotonic() - start, 3)

    def test_initializer_runs_once_per_worker(self):
        with self.executor(2, initializer=set_state, initargs=("ready",)) as ex:
            results = [ex.submit(get_state).result(timeout=BOUND) for _ in range(6)]
        self.assertTrue(all(value == "ready" for value, _pid in results))

    def test_failing_initializer_breaks_executor(self):
        ex = self.executor(2, initializer=failing_init)
        try:
            with self.assertLogs("concurrent.futures", "CRITICAL") as logs:
                f = ex.submit(square, 3)
                with self.assertRaises(InitializerError) as cm:
                    f.result(timeout=BOUND)
            self.assertIsInstance(cm.exception, cf.BrokenExecutor)
            self.assertIn("initializer exploded", str(cm.exception))
            self.assertTrue(any("RuntimeError: initializer exploded" in line for line in logs.output))
            with self.assertRaises(cf.BrokenExecutor):
                ex.submit(square, 1)
        finally:
            ex.shutdown()

    def test_max_tasks_per_child_gives_fresh_processes_and_loses_nothing(self):
        with self.executor(3, max_tasks_per_child=1) as ex:
            pids = [pid for _value, pid in ex.map(get_state_pid_after, range(12))]
        self.assertEqual(len(pids), 12)
        self.assertEqual(len(set(pids)), 12)  # every call in a process of its own

    def test_shutdown_removes_job_data_unless_kept(self):
        with self.executor(2) as ex:
            list(ex.map(square, range(10)))
        self.assertEqual(self.stored_files(), [])
        with self.executor(2, config={"keep_data": True}) as ex:
            list(ex.map(square, range(10)))
            prefix = ex.executor_id
        self.assertTrue(self.stored_files())
        self.assertTrue(all(f.startswith(prefix) for f in self.stored_files()))


class ErrorsTest(TempStorageMixin, unittest.TestCase):
    def test_remote_exception_keeps_type_and_traceback(self):
        with self.executor(2) as ex:
            f = ex.submit(fail_with_value_error, 7)
            with self.assertRaises(ValueError) as cm:
                f.result(timeout=BOUND)
        self.assertEqual(str(cm.exception), "bad input 7")
        self.assertIsInstance(cm.exception.__cause__, RemoteTraceback)
        self.assertIn("remote-line-marker", cm.exception.__cause__.tb)

    def test_unpicklable_argument_fails_only_its_call(self):
        with self.executor(2) as ex:
            fs = ex.map(square, [1, 2])
            bad = ex.submit(square, threading.Lock())
            good = ex.submit(square, 4)
            with self.assertRaisesRegex(TypeError, "lock") as cm:
                bad.result(timeout=BOUND)
            self.assertIn("arguments could not be pickled", "".join(getattr(cm.exception, "__notes__", [])))
            self.assertEqual(good.result(timeout=BOUND), 16)
            self.assertEqual(list(fs), [1, 4])

    def test_unpicklable_result(self):
        with self.executor(2) as ex:
            f = ex.submit(return_lock, None)
            with self.assertRaisesRegex(TypeError, "lock") as cm:
                f.result(timeout=BOUND)
            self.assertIn("could not be pickled back", "".join(cm.exception.__notes__))
            self.assertEqual(ex.submit(square, 3).result(timeout=BOUND), 9)

    def test_unpicklable_exception(self):
        with self.executor(1) as ex:
            with self.assertRaises(UnpicklableRemoteError) as cm:
                ex.submit(raise_unpicklable, None).result(timeout=BOUND)
        self.assertIn("UnpicklableError: holding a lock", str(cm.exception))
        self.assertIn("holding a lock", cm.exception.__cause__.tb)

    def test_unpicklable_function(self):
        lock = threading.Lock()
        with self.executor(1) as ex:
            f = ex.submit(lambda: lock.locked())
            with self.assertRaisesRegex(TypeError, "lock") as cm:
                f.result(timeout=BOUND)
            self.assertIn("could not be pickled to send it to workers", "".join(cm.exception.__notes__))

    def test_memory_error_is_raised_on_the_future(self):
        with self.executor(1) as ex:
            with self.assertRaises(MemoryError):
                ex.submit(allocate_too_much, None).result(timeout=BOUND)
            # The worker survived and is still usable.
            self.assertEqual(ex.submit(square, 5).result(timeout=BOUND), 25)


class WorkerDeathTest(TempStorageMixin, unittest.TestCase):
    def test_sigkill_fails_only_the_running_call(self):
        with self.executor(2) as ex:
            neighbours = [ex.submit(sleep_then, 0.2, i) for i in range(6)]
            victim = ex.submit(sigkill_self, None)
            start = time.monotonic()
            with self.assertRaises(WorkerLostError) as cm:
                victim.result(timeout=BOUND)
            self.assertLess(time.monotonic() - start, 10)
            self.assertIn("SIGKILL", str(cm.exception))
            self.assertIsInstance(cm.exception, cf.BrokenExecutor)
            self.assertEqual([f.result(timeout=BOUND) for f in neighbours], list(range(6)))
            self.assertEqual(ex.submit(square, 6).result(timeout=BOUND), 36)

    def test_killed_from_outside_mid_call(self):
        pid_file = os.path.join(self._tmp.name, "pid")
        with self.executor(1) as ex:
            f = ex.submit(write_pid_and_sleep, pid_file)
            deadline = time.monotonic() + BOUND
            while not os.path.exists(pid_file) or not open(pid_file).read():
                self.assertLess(time.monotonic(), deadline, "the call never started")
                time.sleep(0.05)
            os.kill(int(open(pid_file).read()), signal.SIGKILL)
            with self.assertRaisesRegex(WorkerLostError, "killed by SIGKILL"):
                f.result(timeout=BOUND)

    def test_os_exit_before_any_status(self):
        with self.executor(1) as ex:
            with self.assertRaisesRegex(WorkerLostError, "exited with code 3"):
                ex.submit(exit_hard, 3).result(timeout=BOUND)
            self.assertEqual(ex.submit(square, 2).result(timeout=BOUND), 4)

    def test_batch_after_a_crash_still_completes(self):
        # A crash in the middle of a batch: earlier results are kept, later calls re-run.
        with self.executor(1) as ex:
            list(ex.map(square, range(20)))  # teach the manager that calls are fast: batches grow
            args = list(range(40))
            fs = [ex.submit(square, i) for i in args[:20]] + [ex.submit(exit_hard, 9)] + \
                 [ex.submit(square, i) for i in args[20:]]
            results = []
            for f in fs:
                try:
                    results.append(f.result(timeout=BOUND))
                except WorkerLostError:
                    results.append("lost")
        self.assertEqual(results, [i * i for i in args[:20]] + ["lost"] + [i * i for i in args[20:]])


class TimeoutTest(TempStorageMixin, unittest.TestCase):
    def test_call_timeout_enforced_on_worker(self):
        with self.executor(1, config={"timeout": 1}) as ex:
            start = time.monotonic()
            with self.assertRaisesRegex(CallTimeoutError, "timeout of 1 s"):
                ex.submit(sleep_then, 30, None).result(timeout=BOUND)
            self.assertLess(time.monotonic() - start, 5)
            self.assertIsInstance(CallTimeoutError(), TimeoutError)
            self.assertEqual(ex.submit(square, 3).result(timeout=BOUND), 9)

    def test_call_that_defeats_the_worker_timer_is_killed_by_the_client(self):
        with self.executor(1, config={"timeout": 1}) as ex:
            start = time.monotonic()
            with self.assertRaises(CallTimeoutError):
                ex.submit(ignore_alarm_and_sleep, 60).result(timeout=BOUND)
            self.assertLess(time.monotonic() - start, 20)


class ProtocolTest(TempStorageMixin, unittest.TestCase):
    def test_results_arrive_by_polling_alone(self):
        # With the local fast path switched off, status objects in storage are all there is.
        with self.executor(2, notices=False, config={"poll_interval": 0.02}) as ex:
            self.assertEqual(list(ex.map(square, range(300))), [x * x for x in range(300)])
            with self.assertRaises(ValueError):
                ex.submit(fail_with_value_error, 1).result(timeout=BOUND)

    def test_key_layout_and_json_status(self):
        with self.executor(2, config={"keep_data": True}) as ex:
            list(ex.map(square, range(500)))
            eid = ex.executor_id
        files = self.stored_files()
        statuses = [f for f in files if "/status/" in f]
        self.assertTrue(any(f.endswith("/function.pickle") for f in files))
        self.assertTrue(statuses and all(f.startswith(f"{eid}/") and f.endswith(".json") for f in statuses))
        calls = 0
        for name in statuses:
            with open(os.path.join(self._tmp.name, name)) as f:
                status = json.load(f)  # JSON, never pickle
            calls += len(status["calls"])
            self.assertEqual(status["worker"]["versions"], protocol.versions())
        self.assertEqual(calls, 500)
        # Calls were grouped: far fewer invocations (and status objects) than calls.
        self.assertLess(len(statuses), 100)

    def test_version_mismatch_is_refused_naming_both_sides(self):
        storage = LocalStorage("")
        keys = protocol.Keys(self._tmp.name.lstrip("/"), "cp-test")
        storage.put(keys.function("j1"), protocol.dumps(square))
        blob, offsets = protocol.dumps_each([((3,), {})])
        event = {"protocol": protocol.PROTOCOL_VERSION,
                 "versions": {**protocol.versions(), "cloudpool": "0.0.1", "python": "2.7"},
                 "storage": {"url": self.storage_url, "options": {}},
                 "keys": {"root": keys.root, "executor": "cp-test"},
                 "job": "j1", "batch": 0, "offsets": offsets, "args": blob}
        summary = worker.handle(json.loads(protocol.encode_event(event)))
        self.assertEqual(summary["fatal"], "version")
        status = storage.get_json(keys.status("j1", 0, 0))
        self.assertIn("cloudpool 0.0.1 on the client but", status["fatal"]["message"])
        self.assertIn("python 2.7 on the client but", status["fatal"]["message"])
        self.assertFalse(storage.exists(keys.result("j1", 0, 0)))

    def test_client_breaks_on_version_mismatch(self):
        # The client claims another cloudpool version; a spawned worker reports its real one.
        ex = self.executor(1, start_method="spawn")
        ex._event_base["versions"] = {**protocol.versions(), "cloudpool": "9.9.9"}
        try:
            with self.assertRaises(VersionMismatchError) as cm:
                ex.submit(square, 2).result(timeout=BOUND)
            self.assertIn("cloudpool 9.9.9 on the client", str(cm.exception))
            self.assertIsInstance(cm.exception, cf.BrokenExecutor)
        finally:
            ex.shutdown()


class CountingStorage(LocalStorage):
    """Local storage that counts LIST requests (registered under a test-only scheme)."""

    scheme = "countfile"
    lists = 0

    def list(self, prefix="", start_after=None):
        type(self).lists += 1
        return super().list(prefix, start_after)


storages.register("countfile", CountingStorage, replace=True)


class PollingCostTest(TempStorageMixin, unittest.TestCase):
    def test_lists_per_interval_not_per_future(self):
        for n in (50, 3000):
            CountingStorage.lists = 0
            start = time.monotonic()
            with CloudPoolExecutor(2, storage="countfile://local" + self._tmp.name, notices=False,
                                   config={"poll_interval": 0.05, "poll_interval_max": 0.05}) as ex:
                self.assertEqual(sum(ex.map(square, range(n))), sum(x * x for x in range(n)))
            elapsed = time.monotonic() - start
            # One LIST per job per interval (plus the final reads), whatever n is.
            self.assertLessEqual(CountingStorage.lists, elapsed / 0.05 + 5, (n, CountingStorage.lists, elapsed))


class ConfigErrorsTest(unittest.TestCase):
    def test_unknown_keyword_config_key(self):
        with self.assertRaisesRegex(ConfigError, r"'timout'.*did you mean 'timeout'"):
            CloudPoolExecutor(config={"timout": 3})

    def test_bad_value(self):
        with self.assertRaisesRegex(ValueError, "timeout must be a positive number"):
            CloudPoolExecutor(config={"timeout": "soon"})

    def test_unknown_environment_variable(self):
        old = os.environ.get("CLOUDPOOL_MAX_WORKER")
        os.environ["CLOUDPOOL_MAX_WORKER"] = "3"
        try:
            with self.assertRaisesRegex(ConfigError, r"CLOUDPOOL_MAX_WORKER.*did you mean 'max_workers'"):
                CloudPoolExecutor()
        finally:
            os.environ.pop("CLOUDPOOL_MAX_WORKER")

    def test_config_file_typo_and_precedence(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("backend: local\nmax_workers: 3\nlocal: {start_methd: spawn}\n")
        os.environ["CLOUDPOOL_CONFIG"] = f.name
        try:
            with self.assertRaisesRegex(ValueError, r"start_methd.*'local' backend"):
                CloudPoolExecutor()
            with open(f.name, "w") as out:
                out.write("max_workers: 3\nbackend: lokal\n")
            with self.assertRaisesRegex(ValueError, r"unknown compute backend 'lokal'.*did you mean 'local'"):
                CloudPoolExecutor()
            with open(f.name, "w") as out:
                out.write("max_workers: 3\n")
            os.environ["CLOUDPOOL_MAX_WORKERS"] = "2"
            ex = CloudPoolExecutor()
            self.assertEqual(ex._max_workers, 2)  # env beats file
            ex.shutdown()
            ex = CloudPoolExecutor(4)
            self.assertEqual(ex._max_workers, 4)  # keyword beats env
            ex.shutdown()
        finally:
            os.environ.pop("CLOUDPOOL_CONFIG")
            os.environ.pop("CLOUDPOOL_MAX_WORKERS", None)
            os.unlink(f.name)

    def test_missing_config_file_named_explicitly(self):
        os.environ["CLOUDPOOL_CONFIG"] = "/nonexistent/cloudpool.yaml"
        try:
            with self.assertRaisesRegex(ConfigError, "does not exist"):
                CloudPoolExecutor()
        finally:
            os.environ.pop("CLOUDPOOL_CONFIG")

    def test_unknown_backend_option(self):
        with self.assertRaisesRegex(ValueError, r"memroy.*'local' backend"):
            CloudPoolExecutor(memroy=1024)


if __name__ == "__main__":
    unittest.main()
