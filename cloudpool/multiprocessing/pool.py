"""``Pool``: the ``multiprocessing.Pool`` API and semantics on top of one ``CloudPoolExecutor``.

Data flow (compare CPython's ``Lib/multiprocessing/pool.py``)::

    apply_async / map_async ── submit (caller's thread) ──┐
    imap / imap_unordered ── feeder thread per iterator ──┤  bounded look-ahead
                                                          v
                      CloudPoolExecutor ── manager thread ── backend workers
                                                          │ future done
                                                          v
                 completion thread (one per Pool): decode results, fill ApplyResult /
                 MapResult / IMapIterator, run callback / error_callback, wake waiters

- One executor per Pool: ``processes`` -> ``max_workers``; ``maxtasksperchild`` -> the
  local backend's ``max_tasks_per_child`` (a fresh worker process after N tasks, a task
  being one ``apply`` or one chunk). Other backends accept and ignore it: a FaaS
  invocation is already a fresh, short-lived worker as far as user code can tell.
- A task's result is pickled *in the worker* by ``_Task``, so an unpicklable result
  raises ``multiprocessing.pool.MaybeEncodingError`` as in the stdlib, and errors come
  back with ``multiprocessing.pool.RemoteTraceback`` as their ``__cause__``.
- Callbacks run on the Pool's completion thread, never on the executor's manager
  thread: a slow callback delays other callbacks (as in the stdlib, whose result
  handler thread runs them) but never the calls themselves.
- ``imap``/``imap_unordered`` are lazy: a feeder thread pulls the input one chunk at a
  time and keeps at most ``2 * processes`` chunks submitted but not yet consumed,
  submitting more as the consumer takes results. An input iterator's exception is
  raised by ``next()`` at its position. After ``close()`` the look-ahead is lifted so
  ``join()`` runs every remaining task, as the stdlib does; an iterator dropped before
  its end stops pulling input (the stdlib would keep feeding all of it).
- ``terminate()`` (and ``__exit__``) cancels queued calls, stops running ones where the
  backend can (``_terminate()`` on the executor), and fails every unfinished result
  with ``BrokenCloudPool`` -- the stdlib leaves them hanging, so code written for it
  catches the ``multiprocessing.TimeoutError`` of ``get(timeout)``, which this also is.
  At interpreter exit, pools still alive are terminated, as the stdlib does.

Differences from the stdlib: a failing ``initializer`` breaks the pool (every task
raises ``InitializerError``) instead of respawning workers forever; a worker that dies
fails only its task (``WorkerLostError``) instead of hanging the pool. Both errors are
also ``multiprocessing.TimeoutError``s, what the stdlib's ``get(timeout)`` raises in
those cases (docs/exceptions.md has the whole table); arguments and
results travel with cloudpickle, so lambdas and local functions work.
"""
from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import multiprocessing.pool as _stdlib_pool
import os
import pickle
import threading
import time
import warnings
import weakref
from concurrent.futures import Future
from multiprocessing import TimeoutError
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import cloudpickle

from .. import errors as _errors
from .. import protocol
from .. import progress
from ..config import load_config
from ..executor import CloudPoolExecutor, partitioned_for

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator",
           "IMapUnorderedIterator", "ThreadPool", "RUN", "CLOSE", "TERMINATE"]

LOGGER = logging.getLogger("cloudpool.multiprocessing")

# The stdlib's state names, so code (and CPython's tests) comparing ``pool._state`` work.
RUN = _stdlib_pool.RUN
CLOSE = _stdlib_pool.CLOSE
TERMINATE = _stdlib_pool.TERMINATE
INIT = _stdlib_pool.INIT

#: Threads run locally whatever the backend, so ``ThreadPool`` is the stdlib's.
ThreadPool = _stdlib_pool.ThreadPool

#: Chunks an imap keeps submitted but not yet consumed, per worker ...
LOOKAHEAD_PER_WORKER = 2
#: ... and at least this many *items* per worker: with chunksize=1 a window of a few
#: one-item tasks leaves the executor nothing to batch, and every item pays a full
#: invocation (1,000 calls: 0.92 s with 4 in flight, 0.31 s with 64 per worker).
LOOKAHEAD_ITEMS_PER_WORKER = 64

_Outcome = Tuple[bool, Any]


# ---------------------------------------------------------------------------- worker side
def _encode(value: Any) -> bytes:
    try:
        # The main script's classes by reference, so results are instances of the client's.
        return protocol.dumps(value)
    except Exception as exc:  # noqa: BLE001 - any pickling failure is the stdlib's MaybeEncodingError
        raise MaybeEncodingError(exc, _safe_repr(value)) from None


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - describe the value without its repr
        return f"<{type(value).__qualname__} object (repr failed: {exc!r})>"


class _Task:
    """What a worker runs for one Pool submission: one call, or one chunk of calls.

    The result is pickled here, in the worker, so a result that cannot travel is
    reported as ``MaybeEncodingError`` like the stdlib's, not as a pickling error.
    """

    __slots__ = ("fn", "mode", "__weakref__")

    def __init__(self, fn: Callable[..., Any], mode: str) -> None:
        self.fn = fn
        self.mode = mode  # "apply", "map" (chunk of items) or "starmap" (chunk of arg tuples)

    def __call__(self, *args: Any, **kwargs: Any) -> bytes:
        try:
            if self.mode == "apply":
                value = self.fn(*args, **kwargs)
            elif self.mode == "map":
                value = [self.fn(x) for x in args[0]]
            else:
                value = [self.fn(*a) for a in args[0]]
        except Exception as exc:
            try:
                cloudpickle.dumps(exc, protocol=5)
            except Exception as pickling_error:  # noqa: BLE001 - as the stdlib: the error cannot travel
                raise MaybeEncodingError(pickling_error, _safe_repr(exc)) from None
            raise
        return _encode(value)

    def __reduce__(self):
        return (_Task, (self.fn, self.mode))


# ---------------------------------------------------------------------------- client side
def _terminated_error() -> BaseException:
    return _errors.BrokenCloudPool("the pool was terminated before this task finished")


def _stdlib_error(exc: BaseException) -> BaseException:
    """Give a worker's error the stdlib Pool's ``RemoteTraceback`` cause (and type)."""
    cause = exc.__cause__
    if isinstance(exc, _errors.UnpicklableRemoteError):
        # An error that could not travel back: the stdlib Pool reports that as
        # MaybeEncodingError. ``_Task`` already raises one in the worker; this covers an
        # error that still failed to pickle there (the worker then sent this stand-in).
        exc = MaybeEncodingError(exc, f"<{exc.type_name} raised by the function>")
    if isinstance(cause, _errors.RemoteTraceback):
        exc.__cause__ = RemoteTraceback(cause.tb)
    return exc


def _outcome(future: Future) -> _Outcome:
    """(True, value) or (False, exception) of a finished task future."""
    if future.cancelled():
        return False, _terminated_error()
    exc = future.exception()
    if exc is not None:
        return False, _stdlib_error(exc)
    try:
        return True, pickle.loads(future.result())
    except Exception as exc:  # noqa: BLE001 - e.g. a module missing on the client: that task's error
        if hasattr(exc, "add_note"):
            exc.add_note("cloudpool: the task's result could not be unpickled on the client")
        return False, exc


class _Completions:
    """The Pool's completion thread and the set of results still unfinished.

    Done-callbacks of futures (run by the executor's manager thread) only ``post`` here;
    this thread decodes results and runs user callbacks, so neither can stall the manager.
    The thread starts on first use and ends once the Pool is closed/terminated/collected
    and nothing is unfinished.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: "collections.deque[Any]" = collections.deque()
        self.cond = threading.Condition()
        self.unfinished: Set[Any] = set()
        self.stopping = False
        self.thread: Optional[threading.Thread] = None
        self.when_idle: Optional[Callable[[], None]] = None

    def add(self, result: Any) -> None:
        with self.cond:
            self.unfinished.add(result)

    def discard(self, result: Any) -> None:
        with self.cond:
            self.unfinished.discard(result)
            if not self.unfinished:
                self.cond.notify_all()

    def post(self, handler: Callable[[Any], None], arg: Any) -> None:
        with self.cond:
            self.queue.append((handler, arg))
            self.cond.notify_all()
            if self.thread is not None and self.thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            try:
                thread.start()
            except RuntimeError:
                # Interpreter shutdown forbids new threads: deliver here instead (the
                # executor's manager thread, finishing its last calls).
                self.queue.pop()
            else:
                self.thread = thread
                return
        handler(arg)

    def stop(self, when_idle: Optional[Callable[[], None]] = None) -> None:
        """No new results will come: end the thread once the unfinished ones are done."""
        with self.cond:
            self.stopping = True
            if when_idle is not None:
                self.when_idle = when_idle
            thread = self.thread
            idle = not self.unfinished and not self.queue
            self.cond.notify_all()
        if idle and (thread is None or not thread.is_alive()):
            self._idle()

    def _idle(self) -> None:
        with self.cond:
            callback, self.when_idle = self.when_idle, None
        if callback is not None:
            callback()

    def wait_idle(self) -> None:
        with self.cond:
            while self.unfinished or self.queue:
                self.cond.wait()

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not (self.stopping and not self.unfinished):
                    self.cond.wait()
                if not self.queue:
                    self.thread = None  # stopping and idle: a later post() would start a new one
                    break
                handler, arg = self.queue.popleft()
            try:
                handler(arg)
            except BaseException:  # noqa: BLE001 - a user callback raised: report it, keep serving
                LOGGER.exception("cloudpool: a Pool callback raised; the result is still delivered")
            # Drop references now, not when the next item arrives (results must not linger).
            handler = arg = None
            with self.cond:
                if not self.queue and not self.unfinished:
                    self.cond.notify_all()
        self._idle()


class ApplyResult:
    """The stdlib's ``ApplyResult``/``AsyncResult``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, completions: _Completions, callback: Optional[Callable[[Any], Any]],
                 error_callback: Optional[Callable[[BaseException], Any]]) -> None:
        self._completions = completions
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success: Optional[bool] = None
        self._value: Any = None
        completions.add(self)

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._success)

    def wait(self, timeout: Optional[float] = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        """Completion thread: store the outcome, run the callback, then wake waiters."""
        self._success, self._value = ok, value
        try:
            if ok and self._callback is not None:
                self._callback(value)
            elif not ok and self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._callback = self._error_callback = None
            self._event.set()
            self._completions.discard(self)

    def _on_future(self, future: Future) -> None:
        ok, value = _outcome(future)
        self._set(ok, value)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """``map_async``'s result: ready once every chunk is done; the first error (in completion order) wins."""

    def __init__(self, completions: _Completions, callback: Optional[Callable[[Any], Any]],
                 error_callback: Optional[Callable[[BaseException], Any]]) -> None:
        super().__init__(completions, callback, error_callback)
        self._lock = threading.Lock()
        self._chunks: Dict[int, List[Any]] = {}
        self._expected: Optional[int] = None
        self._done = 0
        self._error: Optional[BaseException] = None

    def _on_chunk(self, item: Tuple[int, Future]) -> None:
        index, future = item
        ok, value = _outcome(future)
        del item, future
        with self._lock:
            self._done += 1
            if not ok:
                self._fail_locked(value)
            elif self._error is None:
                self._chunks[index] = value
            finished = self._expected is not None and self._done == self._expected
        if finished:
            self._finish()

    def _fail_locked(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._chunks.clear()

    def _input_failed(self, exc: BaseException) -> None:
        with self._lock:
            self._fail_locked(exc)

    def _expect(self, n: int) -> None:
        """Called once all ``n`` chunks are submitted."""
        with self._lock:
            self._expected = n
            finished = self._done == n
        if not finished:
            return
        if n == 0 and self._error is None:
            # As the stdlib: an empty map is ready at once, without calling the callback.
            self._success, self._value = True, []
            self._event.set()
            self._completions.discard(self)
            return
        self._completions.post(lambda _arg: self._finish(), None)

    def _finish(self) -> None:
        if self._error is not None:
            self._set(False, self._error)
            return
        chunks, self._chunks = self._chunks, {}
        value: List[Any] = []
        for i in range(len(chunks)):
            value.extend(chunks.pop(i))
        self._set(True, value)


# ---------------------------------------------------------------------------- imap
class _IMapCore:
    """State shared by an imap's feeder thread, the completion thread and its consumer.

    Slots are numbered in input order: one per submitted chunk, plus one for an input
    error (or a termination) where the input stopped. ``_in_window`` counts chunks
    submitted and not yet taken by the consumer; the feeder waits while it is full.
    """

    def __init__(self, pool: "Pool", task: _Task, iterable: Iterable[Any], chunksize: int,
                 ordered: bool) -> None:
        self._executor = pool._executor
        self._completions = pool._completions
        self._task = task
        self._iterable: Optional[Iterable[Any]] = iterable
        self._chunksize = chunksize
        self._ordered = ordered
        self._window = max(2, LOOKAHEAD_PER_WORKER * pool._processes,
                           -(-LOOKAHEAD_ITEMS_PER_WORKER * pool._processes // chunksize))
        self._cond = threading.Condition()
        self._ready_ordered: Dict[int, Tuple[bool, Any, bool]] = {}
        self._ready_unordered: Deque[Tuple[bool, Any, bool]] = collections.deque()
        self._items: Deque[Any] = collections.deque()  # rest of the chunk being consumed
        self._submitted = 0
        self._taken = 0
        self._in_window = 0
        self._outstanding = 0
        self._total: Optional[int] = None  # slots in all, once the input has ended
        self._stopped = False
        self._unbounded = False
        self._completions.add(self)
        self._feeder = threading.Thread(target=self._feed, name=f"{self._completions.name}-imap-feeder",
                                        daemon=True)
        self._feeder.start()

    # ------------------------------------------------------------------ feeder thread
    def _feed(self) -> None:
        try:
            self._feed_loop()
        except BaseException as exc:  # noqa: BLE001 - never leave the consumer waiting
            LOGGER.exception("cloudpool: the imap feeder failed")
            self._end_input(exc)

    def _feed_loop(self) -> None:
        try:
            it = iter(self._iterable)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - e.g. not iterable: raised by next(), as the stdlib
            self._end_input(exc)
            return
        finally:
            self._iterable = None
        while True:
            with self._cond:
                while not (self._stopped or self._unbounded or self._in_window < self._window):
                    self._cond.wait()
                if self._stopped:
                    return
            try:
                chunk = list(itertools.islice(it, self._chunksize))
            except Exception as exc:  # noqa: BLE001 - the input's own error, raised at its position
                self._end_input(exc)
                return
            if not chunk:
                self._end_input(None)
                return
            with self._cond:
                if self._stopped:
                    return
                index = self._submitted
                self._submitted += 1
                self._outstanding += 1
                self._in_window += 1
            try:
                future = self._executor.submit(self._task, chunk)
            except Exception as exc:  # noqa: BLE001 - terminated or broken pool: that chunk's error
                self._store(index, False, exc, is_chunk=True)
                self._end_input(None)
                return
            del chunk
            future.add_done_callback(
                lambda f, i=index, post=self._completions.post: post(self._on_chunk, (i, f)))
            del future

    def _end_input(self, exc: Optional[BaseException]) -> None:
        with self._cond:
            if self._total is not None:
                return
            if exc is not None:
                slot = (False, exc, False)
                if self._ordered:
                    self._ready_ordered[self._submitted] = slot
                else:
                    self._ready_unordered.append(slot)
                self._total = self._submitted + 1
            else:
                self._total = self._submitted
            self._cond.notify_all()
            finished = self._outstanding == 0
        if finished:
            self._completions.discard(self)

    # ------------------------------------------------------------------ completion thread
    def _on_chunk(self, item: Tuple[int, Future]) -> None:
        index, future = item
        ok, value = _outcome(future)
        del item, future
        self._store(index, ok, value, is_chunk=True)

    def _store(self, index: int, ok: bool, value: Any, is_chunk: bool) -> None:
        with self._cond:
            slot = (ok, value, is_chunk)
            if self._ordered:
                self._ready_ordered[index] = slot
            else:
                self._ready_unordered.append(slot)
            self._outstanding -= 1
            self._cond.notify_all()
            finished = self._total is not None and self._outstanding == 0
        if finished:
            self._completions.discard(self)

    # ------------------------------------------------------------------ control
    def stop(self, exc: Optional[BaseException]) -> None:
        """Pull no more input; with ``exc``, the consumer gets it where the input stopped."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._end_input(exc)

    def unbound(self) -> None:
        """``close()``: feed the rest of the input regardless of consumption, as the stdlib does."""
        with self._cond:
            self._unbounded = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ consumer
    def next(self, timeout: Optional[float]) -> Any:
        with self._cond:
            if self._items:
                return self._items.popleft()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                slot = self._take_locked()
                if slot is not None:
                    break
                if self._total is not None and self._taken >= self._total:
                    raise StopIteration
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self._cond.wait(remaining)
            ok, value, is_chunk = slot
            self._taken += 1
            if is_chunk:
                self._in_window -= 1
                self._cond.notify_all()  # room for the feeder
            if not ok:
                raise value
            first, *rest = value
            self._items.extend(rest)
            return first

    def _take_locked(self) -> Optional[Tuple[bool, Any, bool]]:
        if self._ordered:
            return self._ready_ordered.pop(self._taken, None)
        if self._ready_unordered:
            return self._ready_unordered.popleft()
        return None


class IMapIterator:
    """What ``imap`` returns: ``next(timeout)`` and iteration, results in input order."""

    def __init__(self, pool: "Pool", core: _IMapCore) -> None:
        self._pool = pool  # as the stdlib: the pool stays alive while its iterator does
        self._core = core
        weakref.finalize(self, core.stop, None)  # dropped early: stop pulling input

    def __iter__(self) -> "IMapIterator":
        return self

    def next(self, timeout: Optional[float] = None) -> Any:
        return self._core.next(timeout)

    __next__ = next


class IMapUnorderedIterator(IMapIterator):
    """What ``imap_unordered`` returns: results in completion order."""


# ---------------------------------------------------------------------------- Pool
_live_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()
_pool_counter = itertools.count(1)


def _terminate_pools_at_exit() -> None:
    # As the stdlib's Pool finalizer: unfinished work is stopped, not awaited, at exit.
    # Forked local workers run this hook too when they exit: their copies are not theirs.
    for pool in list(_live_pools):
        if pool._owner_pid != os.getpid() or pool._state == TERMINATE:
            continue
        try:
            pool.terminate()
        except Exception as exc:  # noqa: BLE001 - keep terminating the others; say what failed
            LOGGER.warning("cloudpool: could not terminate %r at exit: %s", pool, exc)


# Registered after the executor's own exit hook, hence run before it (they run in reverse).
threading._register_atexit(_terminate_pools_at_exit)


class Pool:
    """``multiprocessing.Pool`` whose workers are cloudpool invocations on any backend.

    ``processes`` is the concurrency (default: the backend's, the CPU count locally);
    ``initializer(*initargs)`` runs once per worker process; ``maxtasksperchild``
    restarts local worker processes after that many tasks (other backends accept and
    ignore it). ``context`` may be a stdlib context (its start method is used by the
    local backend) or ``cloudpool.multiprocessing.get_context(...)``. The keyword-only
    ``backend``, ``storage``, ``runtime``, ``config`` and further backend options are
    ``CloudPoolExecutor``'s.
    """

    _state = INIT  # until __init__ finishes, so __del__ of a half-built pool is quiet

    def __init__(self, processes: Optional[int] = None, initializer: Optional[Callable[..., Any]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None, *, backend: Optional[str] = None, storage: Optional[str] = None,
                 runtime: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
                 **backend_options: Any) -> None:
        if processes is not None:
            if isinstance(processes, bool) or not isinstance(processes, int):
                raise TypeError(f"processes must be an int or None, not {type(processes).__name__}")
            if processes < 1:
                raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")

        method, context_options = _context_settings(context)
        options: Dict[str, Any] = dict(context_options)
        explicit = {"backend": backend, "storage": storage, "runtime": runtime, "config": config}
        options.update({k: v for k, v in explicit.items() if v is not None})
        options.update(backend_options)
        if maxtasksperchild is not None or method is not None:
            if _backend_name(options) == "local":
                if method is not None and "mp_context" not in options:
                    options.setdefault("start_method", method)
                if maxtasksperchild is not None:
                    options.setdefault("max_tasks_per_child", maxtasksperchild)
        self._maxtasksperchild = maxtasksperchild
        self._executor = CloudPoolExecutor(max_workers=processes, initializer=initializer,
                                           initargs=tuple(initargs), **options)
        # The backend's real concurrency (processes=None lets the backend choose).
        self._processes: int = self._executor.max_workers
        self._name = f"cloudpool-Pool-{next(_pool_counter)}"
        self._completions = _Completions(self._name)
        self._tasks: Dict[Tuple[str, int], Tuple[Callable[[], Any], _Task]] = {}
        self._iterators: "weakref.WeakSet[_IMapCore]" = weakref.WeakSet()
        self._owner_pid = os.getpid()
        self._state = RUN
        _live_pools.add(self)

    # ------------------------------------------------------------------ internals
    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _task(self, fn: Callable[..., Any], mode: str) -> _Task:
        """One ``_Task`` per function and mode, so the executor uploads each function once."""
        if not callable(fn):
            raise TypeError(f"the function given to the Pool must be callable, not {type(fn).__name__}")
        key = (mode, id(fn))
        entry = self._tasks.get(key)
        if entry is not None and entry[0]() is fn:
            return entry[1]
        try:
            ref: Callable[[], Any] = weakref.ref(fn)
        except TypeError:
            ref = (lambda f: (lambda: f))(fn)  # builtins cannot be weakly referenced
        if len(self._tasks) > 256:
            self._tasks.clear()
        task = _Task(fn, mode)
        self._tasks[key] = (ref, task)
        return task

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], mode: str,
                   chunksize: Optional[int], callback: Optional[Callable[[Any], Any]],
                   error_callback: Optional[Callable[[BaseException], Any]]) -> MapResult:
        self._check_running()
        iterable = partitioned_for(iterable, self._processes, self._executor.config)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        else:
            _check_chunksize(chunksize)
        task = self._task(func, mode)
        result = MapResult(self._completions, callback, error_callback)
        if len(iterable) == 0:
            result._expect(0)
            return result
        post = self._completions.post
        bar = progress.tracker(len(iterable), desc=progress.describe(func),
                               setting=self._executor.config["progress"])
        n = 0
        chunk: Optional[List[Any]] = None
        it = iter(iterable)
        while True:
            try:
                chunk = list(itertools.islice(it, chunksize))
            except Exception as exc:  # noqa: BLE001 - the input's own error fails the map, as the stdlib
                result._input_failed(exc)
                break
            if not chunk:
                break
            try:
                future = self._executor.submit(task, chunk)
            except Exception as exc:
                if n == 0:
                    self._completions.discard(result)
                    raise
                result._input_failed(exc)
                break
            future.add_done_callback(lambda f, i=n: post(result._on_chunk, (i, f)))
            if bar is not None:
                bar.watch(future, len(chunk))
            n += 1
        chunk = None  # not kept alive by this frame (arguments are released once sent)
        result._expect(n)
        return result

    def _imap(self, func: Callable[..., Any], iterable: Iterable[Any], mode: str, chunksize: int,
              ordered: bool) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        core = _IMapCore(self, self._task(func, mode), partitioned_for(iterable, self._processes, self._executor.config),
                         chunksize, ordered)
        self._iterators.add(core)
        return (IMapIterator if ordered else IMapUnorderedIterator)(self, core)

    # ------------------------------------------------------------------ API
    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Optional[Mapping[str, Any]] = None) -> Any:
        """``func(*args, **kwds)`` on a worker; blocks for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: Optional[Mapping[str, Any]] = None, callback: Optional[Callable[[Any], Any]] = None,
                    error_callback: Optional[Callable[[BaseException], Any]] = None) -> ApplyResult:
        self._check_running()
        task = self._task(func, "apply")
        result = ApplyResult(self._completions, callback, error_callback)
        try:
            future = self._executor.submit(task, *args, **(kwds or {}))
        except BaseException:
            self._completions.discard(result)
            raise
        post = self._completions.post
        future.add_done_callback(lambda f: post(result._on_future, f))
        return result

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: Optional[int] = None) -> List[Any]:
        """``list(map(func, iterable))`` computed by the workers, ``chunksize`` items per task."""
        return self._map_async(func, iterable, "map", chunksize, None, None).get()

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: Optional[int] = None,
                  callback: Optional[Callable[[Any], Any]] = None,
                  error_callback: Optional[Callable[[BaseException], Any]] = None) -> MapResult:
        return self._map_async(func, iterable, "map", chunksize, callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None) -> List[Any]:
        """Like ``map`` with ``func(*args)`` for each ``args`` in ``iterable``."""
        return self._map_async(func, iterable, "starmap", chunksize, None, None).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None, callback: Optional[Callable[[Any], Any]] = None,
                      error_callback: Optional[Callable[[BaseException], Any]] = None) -> MapResult:
        return self._map_async(func, iterable, "starmap", chunksize, callback, error_callback)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Lazy ordered map: consumes ``iterable`` as results are taken."""
        return self._imap(func, iterable, "map", chunksize, ordered=True)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> IMapUnorderedIterator:
        """Lazy map yielding results as they complete."""
        return self._imap(func, iterable, "map", chunksize, ordered=False)  # type: ignore[return-value]

    def close(self) -> None:
        """Accept no more tasks; the submitted ones (and imap inputs) still run."""
        if self._state != RUN:
            return
        self._state = CLOSE
        for core in list(self._iterators):
            core.unbound()
        executor = self._executor
        self._completions.stop(when_idle=lambda: executor.shutdown(wait=False))

    def terminate(self) -> None:
        """Stop now: queued tasks are cancelled, running ones stopped where the backend can,
        and unfinished results fail with ``BrokenCloudPool``."""
        self._state = TERMINATE
        for core in list(self._iterators):
            core.stop(_terminated_error())
        self._executor._terminate()
        self._completions.stop()
        self._completions.join()

    def join(self) -> None:
        """Wait for every task (and callback) after ``close()`` or ``terminate()``."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        if threading.current_thread() is self._completions.thread:
            raise RuntimeError("Pool.join() cannot be called from one of the pool's callbacks "
                               "(it would wait for itself)")
        self._completions.wait_idle()
        self._executor.shutdown(wait=True)
        self._completions.join()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn: Callable[..., None] = warnings.warn, RUN: str = RUN) -> None:
        if self._state == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
        completions = self.__dict__.get("_completions")
        if completions is not None:
            # Lets the completion thread end once outstanding results are in; the
            # executor, collected with the pool, finishes its calls and shuts down.
            completions.stop()

    def __repr__(self) -> str:
        cls = type(self)
        size = self.__dict__.get("_processes", "?")
        return f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={size}>"


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")


def _context_settings(context: Any) -> Tuple[Optional[str], Dict[str, Any]]:
    """(start method, executor options) from a stdlib or cloudpool context (or the default)."""
    from .context import CloudPoolContext, default_context

    if context is None:
        context = default_context()
    if isinstance(context, CloudPoolContext):
        return context.get_start_method(allow_none=True), context.executor_options()
    if isinstance(context, multiprocessing.context.BaseContext):
        return context.get_start_method(), {}
    raise TypeError(f"context must be a multiprocessing or cloudpool.multiprocessing context, "
                    f"not {type(context).__name__}")


def _backend_name(options: Mapping[str, Any]) -> str:
    if options.get("backend"):
        return options["backend"]
    overrides = dict(options.get("config") or {})
    return load_config(overrides)["backend"]
