"""Every exception cloudpool raises is one that code written for the original catches.

Each row of ``ROWS`` is one situation, run twice in the same test: on the original
(``concurrent.futures.ProcessPoolExecutor``, ``multiprocessing.Pool`` or Lithops'
``FunctionExecutor`` on its localhost backend) and on its cloudpool replacement
(``CloudPoolExecutor``, ``cloudpool.multiprocessing.Pool``,
``cloudpool.compat.lithops.FunctionExecutor``, all on the local backend). The test
asserts that the exception cloudpool raises is an instance of the one the original
raised, so an ``except`` clause written for the original still catches it.

``KnativeExceptionTypeTest`` runs the executor and Pool rows again with cloudpool's side on
a remote backend (the knative runtime as local HTTP servers, S3 on moto).
``python -m tests.test_exception_types`` prints the table "situation -> original type
-> cloudpool type" from the same rows (docs/exceptions.md is that output).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import unittest
from typing import Any, Callable, Dict, List, NamedTuple

import cloudpool.compat.lithops as cp_lithops
import cloudpool.multiprocessing as cp_mp
from cloudpool import CloudPoolExecutor

# Long enough that nothing finishes while a test waits a short timeout on it; short
# enough that the originals, which must wait for such calls at shutdown, stay quick.
SLOW = 2.0
SHORT = 0.3  # the timeouts the situations wait


# ---------------------------------------------------------------------------- task functions
# Module level, so the stdlib's workers can import them by reference.
def sleep_then(x: float) -> float:
    time.sleep(x)
    return x


def raise_value_error(_x: Any = None) -> None:
    raise ValueError("raised by the function")


class CustomError(Exception):
    """An exception class of the user's own."""


def raise_custom(_x: Any = None) -> None:
    raise CustomError("raised by the function")


class UnpicklableError(Exception):
    """An exception that cannot travel back: it holds a lock."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable(_x: Any = None) -> None:
    raise UnpicklableError()


def return_lock(_x: Any = None) -> Any:
    return threading.Lock()


def identity(x: Any) -> Any:
    return x


def exit_process(_x: Any = None) -> None:
    os._exit(3)


def kill_process(_x: Any = None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_system_exit(_x: Any = None) -> None:
    raise SystemExit(7)


def failing_initializer() -> None:
    raise ValueError("initializer failed")


# ---------------------------------------------------------------------------- the two sides
#: "knative" runs cloudpool's side on this small cluster (started by KnativeExceptionTypeTest).
# The knative cluster helper is imported where a cluster starts, not here: Lithops ships
# this module to its own workers (the original's rows), where runtime/ does not exist.
_REMOTE: Dict[str, Any] = {}


def _cloudpool_options(kind: str) -> Dict[str, Any]:
    return _REMOTE["knative"].executor_options() if kind == "knative" else {}


def executor(kind: str, *args: Any, **kwargs: Any) -> cf.Executor:
    if kind == "std":
        return cf.ProcessPoolExecutor(*args, **kwargs)
    return CloudPoolExecutor(*args, **kwargs, **_cloudpool_options(kind))


def pool(kind: str, *args: Any, **kwargs: Any) -> Any:
    if kind == "std":
        return multiprocessing.get_context("fork").Pool(*args, **kwargs)
    return cp_mp.Pool(*args, **kwargs, **_cloudpool_options(kind))


def lithops_module(kind: str) -> Any:
    if kind == "std":
        import lithops  # the original, from PyPI (cloudpool[test] installs it)

        return lithops
    return cp_lithops


def function_executor(kind: str, **kwargs: Any) -> Any:
    if kind == "std":
        # Lithops' localhost backend starts `python` from PATH: make it this interpreter.
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        return lithops_module(kind).FunctionExecutor(backend="localhost", storage="localhost",
                                                     log_level="CRITICAL", **kwargs)
    return cp_lithops.FunctionExecutor(backend="localhost", **kwargs)


# ---------------------------------------------------------------------------- situations
# Each takes "std" or "cp" and raises the exception that side raises in that situation.
# Pools are shut down in ``finally`` so a failed assertion leaks no processes.

def ex_result_timeout(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(sleep_then, SLOW).result(timeout=SHORT)


def ex_exception_timeout(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(sleep_then, SLOW).exception(timeout=SHORT)


def ex_map_timeout(kind: str) -> None:
    with executor(kind, 1) as ex:
        list(ex.map(sleep_then, [SLOW], timeout=SHORT))


def ex_as_completed_timeout(kind: str) -> None:
    with executor(kind, 1) as ex:
        list(cf.as_completed([ex.submit(sleep_then, SLOW)], timeout=SHORT))


def _cancelled_future(kind: str, method: str) -> None:
    ex = executor(kind, 1)
    try:
        # One worker busy, more calls queued behind it: the last one is cancelled
        # (the stdlib may already have moved the first queued ones to its call queue).
        futures = [ex.submit(sleep_then, 0.5) for _ in range(6)]
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    last = futures[-1]
    assert last.cancelled(), "the situation needs a cancelled future"
    getattr(last, method)()


def ex_result_cancelled(kind: str) -> None:
    _cancelled_future(kind, "result")


def ex_exception_cancelled(kind: str) -> None:
    _cancelled_future(kind, "exception")


def ex_submit_after_shutdown(kind: str) -> None:
    ex = executor(kind, 1)
    ex.shutdown()
    ex.submit(identity, 1)


def ex_map_after_shutdown(kind: str) -> None:
    ex = executor(kind, 1)
    ex.shutdown()
    ex.map(identity, [1])


def ex_function_raises(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(raise_value_error).result()


def ex_function_raises_own_class(kind: str) -> None:
    with executor(kind, 1) as ex:
        list(ex.map(raise_custom, [1]))


def ex_function_raises_system_exit(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(raise_system_exit).result()


def ex_worker_exits(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(exit_process).result()


def ex_worker_killed(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(kill_process).result()


def ex_initializer_fails(kind: str) -> None:
    with executor(kind, 1, initializer=failing_initializer) as ex:
        ex.submit(identity, 1).result()


def ex_submit_after_initializer_failed(kind: str) -> None:
    with executor(kind, 1, initializer=failing_initializer) as ex:
        f = ex.submit(identity, 1)
        cf.wait([f])
        deadline = time.monotonic() + 30
        while not ex._broken and time.monotonic() < deadline:  # the stdlib marks it a moment later
            time.sleep(0.05)
        ex.submit(identity, 2)


def ex_unpicklable_argument(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(identity, threading.Lock()).result()


def ex_unpicklable_result(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(return_lock).result()


def ex_unpicklable_exception(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(raise_unpicklable).result()


def ex_not_callable(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.submit(42).result()


def ex_max_workers_zero(kind: str) -> None:
    executor(kind, 0)


def ex_max_workers_not_int(kind: str) -> None:
    executor(kind, "2")


def ex_initializer_not_callable(kind: str) -> None:
    executor(kind, 1, initializer=42)


def ex_chunksize_zero(kind: str) -> None:
    with executor(kind, 1) as ex:
        ex.map(identity, [1], chunksize=0)


def ex_map_not_iterable(kind: str) -> None:
    with executor(kind, 1) as ex:
        list(ex.map(identity, 42))


def ex_pickle_executor_future(kind: str) -> None:
    with executor(kind, 1) as ex:
        f = ex.submit(identity, 1)
        f.result()
        f.set_result(2)


# --- multiprocessing.Pool
def pool_get_timeout(kind: str) -> None:
    with pool(kind, 1) as p:
        p.apply_async(sleep_then, (SLOW,)).get(timeout=SHORT)


def pool_map_async_get_timeout(kind: str) -> None:
    with pool(kind, 1) as p:
        p.map_async(sleep_then, [SLOW]).get(timeout=SHORT)


def pool_imap_next_timeout(kind: str) -> None:
    with pool(kind, 1) as p:
        p.imap(sleep_then, [SLOW]).next(timeout=SHORT)


def pool_get_after_terminate(kind: str) -> None:
    p = pool(kind, 1)
    result = p.apply_async(sleep_then, (SLOW,))
    p.terminate()
    p.join()
    result.get(timeout=SHORT)


def pool_map_get_after_terminate(kind: str) -> None:
    p = pool(kind, 1)
    result = p.map_async(sleep_then, [SLOW, SLOW])
    p.terminate()
    p.join()
    result.get(timeout=SHORT)


def pool_imap_next_after_terminate(kind: str) -> None:
    p = pool(kind, 1)
    it = p.imap(sleep_then, [SLOW])
    time.sleep(0.2)  # the feeder has handed the task over
    p.terminate()
    p.join()
    it.next(timeout=SHORT)


def pool_worker_exits(kind: str) -> None:
    with pool(kind, 1) as p:
        # The stdlib replaces the dead worker and the task is lost: get() times out.
        p.apply_async(exit_process).get(timeout=2.0)


def pool_initializer_fails(kind: str) -> None:
    with pool(kind, 1, initializer=failing_initializer) as p:
        # The stdlib restarts the failing workers for ever: get() times out.
        p.apply_async(identity, (1,)).get(timeout=2.0)


def pool_function_raises(kind: str) -> None:
    with pool(kind, 1) as p:
        p.apply(raise_value_error)


def pool_map_function_raises(kind: str) -> None:
    with pool(kind, 1) as p:
        p.map(raise_custom, [1, 2])


def pool_unpicklable_result(kind: str) -> None:
    with pool(kind, 1) as p:
        p.apply(return_lock)


def pool_unpicklable_exception(kind: str) -> None:
    with pool(kind, 1) as p:
        p.apply(raise_unpicklable)


def pool_unpicklable_argument(kind: str) -> None:
    with pool(kind, 1) as p:
        p.apply(identity, (threading.Lock(),))


def pool_apply_after_close(kind: str) -> None:
    p = pool(kind, 1)
    p.close()
    try:
        p.apply_async(identity, (1,))
    finally:
        p.join()


def pool_map_after_terminate(kind: str) -> None:
    p = pool(kind, 1)
    p.terminate()
    try:
        p.map(identity, [1])
    finally:
        p.join()


def pool_enter_after_terminate(kind: str) -> None:
    p = pool(kind, 1)
    p.terminate()
    p.join()
    with p:
        pass


def pool_join_while_running(kind: str) -> None:
    with pool(kind, 1) as p:
        p.join()


def pool_successful_not_ready(kind: str) -> None:
    with pool(kind, 1) as p:
        p.apply_async(sleep_then, (SLOW,)).successful()


def pool_processes_zero(kind: str) -> None:
    pool(kind, 0)


def pool_processes_not_int(kind: str) -> None:
    pool(kind, "2")


def pool_initializer_not_callable(kind: str) -> None:
    pool(kind, 1, initializer=42)


def pool_imap_chunksize_zero(kind: str) -> None:
    with pool(kind, 1) as p:
        p.imap(identity, [1], chunksize=0)


def pool_map_not_iterable(kind: str) -> None:
    with pool(kind, 1) as p:
        p.map(identity, 42)


def pool_pickled(kind: str) -> None:
    with pool(kind, 1) as p:
        pickle.dumps(p)


# --- Lithops' FunctionExecutor
def lithops_get_result_timeout(kind: str) -> None:
    fexec = function_executor(kind)
    try:
        fexec.get_result(fexec.call_async(sleep_then, SLOW), timeout=1)
    finally:
        fexec.wait()


def lithops_function_raises(kind: str) -> None:
    fexec = function_executor(kind)
    fexec.get_result(fexec.call_async(raise_value_error, 1))


def lithops_call_timeout(kind: str) -> None:
    if kind == "std":
        fexec = function_executor(kind)
        fexec.get_result(fexec.call_async(sleep_then, SLOW, timeout=1))
    else:
        fexec = function_executor(kind, config={"timeout": 1})
        fexec.get_result(fexec.call_async(sleep_then, SLOW))


def lithops_worker_exits(kind: str) -> None:
    fexec = function_executor(kind)
    fexec.get_result(fexec.call_async(exit_process, 1))


def lithops_worker_killed(kind: str) -> None:
    fexec = function_executor(kind)
    fexec.get_result(fexec.map(kill_process, [1]))


# ---------------------------------------------------------------------------- the table
class Row(NamedTuple):
    api: str  # "executor", "Pool" or "Lithops"
    situation: str
    run: Callable[[str], None]


ROWS: List[Row] = [
    Row("executor", "`future.result(timeout)` before the call finished", ex_result_timeout),
    Row("executor", "`future.exception(timeout)` before the call finished", ex_exception_timeout),
    Row("executor", "`map(..., timeout=)` iterator past its deadline", ex_map_timeout),
    Row("executor", "`as_completed(fs, timeout)` past its deadline", ex_as_completed_timeout),
    Row("executor", "`result()` of a future cancelled by `shutdown(cancel_futures=True)`", ex_result_cancelled),
    Row("executor", "`exception()` of a cancelled future", ex_exception_cancelled),
    Row("executor", "`submit` after `shutdown()`", ex_submit_after_shutdown),
    Row("executor", "`map` after `shutdown()`", ex_map_after_shutdown),
    Row("executor", "the function raises `ValueError`", ex_function_raises),
    Row("executor", "the function raises the user's own exception class (through `map`)", ex_function_raises_own_class),
    Row("executor", "the function raises `SystemExit`", ex_function_raises_system_exit),
    Row("executor", "the worker process exits (`os._exit`) during the call", ex_worker_exits),
    Row("executor", "the worker process is killed (`SIGKILL`, as by the OOM killer)", ex_worker_killed),
    Row("executor", "the `initializer` raises: the call's future", ex_initializer_fails),
    Row("executor", "the `initializer` raised: a later `submit`", ex_submit_after_initializer_failed),
    Row("executor", "an argument cannot be pickled", ex_unpicklable_argument),
    Row("executor", "the result cannot be pickled", ex_unpicklable_result),
    Row("executor", "the function raises an exception that cannot be pickled", ex_unpicklable_exception),
    Row("executor", "`submit` of something not callable (then `result()`)", ex_not_callable),
    Row("executor", "`max_workers=0`", ex_max_workers_zero),
    Row("executor", "`max_workers='2'`", ex_max_workers_not_int),
    Row("executor", "`initializer` not callable", ex_initializer_not_callable),
    Row("executor", "`map(..., chunksize=0)`", ex_chunksize_zero),
    Row("executor", "`map` over something not iterable", ex_map_not_iterable),
    Row("executor", "`set_result` on a finished future", ex_pickle_executor_future),
    Row("Pool", "`AsyncResult.get(timeout)` before the task finished", pool_get_timeout),
    Row("Pool", "`MapResult.get(timeout)` before the tasks finished", pool_map_async_get_timeout),
    Row("Pool", "`imap(...).next(timeout)` before the task finished", pool_imap_next_timeout),
    Row("Pool", "`AsyncResult.get(timeout)` of a task pending at `terminate()`", pool_get_after_terminate),
    Row("Pool", "`MapResult.get(timeout)` of tasks pending at `terminate()`", pool_map_get_after_terminate),
    Row("Pool", "`imap(...).next(timeout)` of a task pending at `terminate()`", pool_imap_next_after_terminate),
    Row("Pool", "the worker process exits during the task (`get(timeout)`)", pool_worker_exits),
    Row("Pool", "the `initializer` raises (`get(timeout)`)", pool_initializer_fails),
    Row("Pool", "the function raises `ValueError` (`apply`)", pool_function_raises),
    Row("Pool", "the function raises the user's own exception class (`map`)", pool_map_function_raises),
    Row("Pool", "the result cannot be pickled", pool_unpicklable_result),
    Row("Pool", "the function raises an exception that cannot be pickled", pool_unpicklable_exception),
    Row("Pool", "an argument cannot be pickled", pool_unpicklable_argument),
    Row("Pool", "`apply_async` after `close()`", pool_apply_after_close),
    Row("Pool", "`map` after `terminate()`", pool_map_after_terminate),
    Row("Pool", "`with pool:` after `terminate()`", pool_enter_after_terminate),
    Row("Pool", "`join()` while the pool runs", pool_join_while_running),
    Row("Pool", "`AsyncResult.successful()` before it is ready", pool_successful_not_ready),
    Row("Pool", "`processes=0`", pool_processes_zero),
    Row("Pool", "`processes='2'`", pool_processes_not_int),
    Row("Pool", "`initializer` not callable", pool_initializer_not_callable),
    Row("Pool", "`imap(..., chunksize=0)`", pool_imap_chunksize_zero),
    Row("Pool", "`map` over something not iterable", pool_map_not_iterable),
    Row("Pool", "pickling the pool", pool_pickled),
    Row("Lithops", "`get_result(timeout=)` before the call finished", lithops_get_result_timeout),
    Row("Lithops", "the function raises `ValueError`", lithops_function_raises),
    Row("Lithops", "the call runs past its time limit", lithops_call_timeout),
    Row("Lithops", "the worker process exits during the call", lithops_worker_exits),
    Row("Lithops", "the worker process is killed (`SIGKILL`, as by the OOM killer)", lithops_worker_killed),
]


def caught(run: Callable[[str], None], kind: str) -> BaseException:
    """The exception ``run(kind)`` raises (an AssertionError if it raises none)."""
    try:
        run(kind)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a task is one of the rows
        return exc
    raise AssertionError(f"{run.__name__}({kind!r}) raised nothing")


def type_name(cls: type) -> str:
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module in ("concurrent.futures._base", "concurrent.futures.process"):
        module = "concurrent.futures" if module.endswith("_base") else "concurrent.futures.process"
    if module == "multiprocessing.context":
        module = "multiprocessing"
    if module in ("cloudpool.errors", __name__):
        module = "cloudpool.errors" if module == "cloudpool.errors" else "user"
    return f"{module}.{cls.__qualname__}"


_originals: Dict[Callable[[str], None], type] = {}


def original_type(row: Row) -> type:
    """The original's exception type for ``row`` (run once per test run, then reused)."""
    if row.run not in _originals:
        _originals[row.run] = type(caught(row.run, "std"))
    return _originals[row.run]


class _ExceptionTypeCase(unittest.TestCase):
    """Checks one row; the test methods are added per class by ``_add_tests``."""

    kind = "cp"

    def check(self, row: Row) -> None:
        original = original_type(row)
        ours = caught(row.run, self.kind)
        self.assertIsInstance(
            ours, original,
            f"{row.api}: {row.situation}: the original raises {type_name(original)}, "
            f"cloudpool ({self.kind}) raises {type_name(type(ours))} ({ours!r}), which code "
            f"catching the original's type would miss")


class ExceptionTypeTest(_ExceptionTypeCase):
    """One test per row: cloudpool's exception (local backend) is an instance of the original's."""


#: Rows that need the local backend: Lithops' rows go through compat.lithops' localhost.
_LOCAL_ONLY = {"Lithops"}


class KnativeExceptionTypeTest(_ExceptionTypeCase):
    """The executor and Pool rows with cloudpool's side on a remote backend: the knative
    runtime's HTTP servers (two local processes), storage S3 on moto."""

    kind = "knative"

    @classmethod
    def setUpClass(cls):
        from tests.knative_small import SmallCluster

        remote = SmallCluster(hosts=2, concurrency=2)
        _REMOTE["knative"] = remote
        cls.addClassCleanup(_REMOTE.pop, "knative", None)
        cls.addClassCleanup(remote.stop)
        remote.start()


def _add_tests(cls: type, rows: List[Row]) -> None:
    for row in rows:
        name = f"test_{row.api.lower()}_{row.run.__name__.split('_', 1)[1]}"

        def test(self: _ExceptionTypeCase, row: Row = row) -> None:
            self.check(row)

        test.__name__ = name
        test.__doc__ = f"{row.api}: {row.situation}"
        assert name not in cls.__dict__, name
        setattr(cls, name, test)


_add_tests(ExceptionTypeTest, ROWS)
_add_tests(KnativeExceptionTypeTest, [row for row in ROWS if row.api not in _LOCAL_ONLY])


def table() -> str:
    """The markdown table, from running every row on the original and on cloudpool (local
    backend, and the knative runtime for the rows that do not need the local backend)."""
    from tests.knative_small import SmallCluster

    remote = _REMOTE["knative"] = SmallCluster(hosts=2, concurrency=2).start()
    try:
        lines = ["| API | situation | original raises | cloudpool raises (local) | on knative |",
                 "|---|---|---|---|---|"]
        for row in ROWS:
            original = original_type(row)
            cells = []
            local = None
            for kind in ("cp", "knative"):
                if kind == "knative" and row.api in _LOCAL_ONLY:
                    cells.append("n/a (compat.lithops runs on local here)")
                    continue
                ours = type(caught(row.run, kind))
                mark = "" if issubclass(ours, original) else " **(not an instance!)**"
                cells.append("same" if ours is local else f"`{type_name(ours)}`{mark}")
                local = ours
            lines.append(f"| {row.api} | {row.situation} | `{type_name(original)}` | {' | '.join(cells)} |")
        return "\n".join(lines)
    finally:
        remote.stop()
        _REMOTE.pop("knative", None)


if __name__ == "__main__":
    print(table())
