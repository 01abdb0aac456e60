"""``CloudPoolExecutor``: a ``concurrent.futures.Executor`` whose calls run on a cloudpool backend.

This module holds the stdlib semantics (argument checks, ``submit``/``map``/``shutdown``,
the result iterator, interpreter-exit handling) and nothing cloud-specific: it resolves
the configuration, builds the storage and the backend from their registries, and hands
calls to the executor's manager thread (``_manager``), which does everything else.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from concurrent.futures import _base as _futures_base
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

from . import _manager, progress, protocol
from .compute import backends
from .compute import local as _local_backend  # noqa: F401  (the default: imported up front so cold starts stay short)
from .config import Config, check_options, load_config, open_storage, with_origins
from .errors import BrokenCloudPool
from .retries import Retrying, RetryPolicy, as_policy
from .storage import split_url

if TYPE_CHECKING:
    from .stats import ExecutorStats

__all__ = ["CloudPoolExecutor", "CloudFuture"]

_global_shutdown = False
_live_managers: "weakref.WeakSet[_manager.Manager]" = weakref.WeakSet()
# A forked local worker inherits this set; at its exit multiprocessing runs the threading
# exit hooks, which must not try to join copies of the parent's manager threads.
os.register_at_fork(after_in_child=_live_managers.clear)


def _python_exit() -> None:
    """At interpreter exit, let running managers finish their work (as the stdlib does)."""
    global _global_shutdown
    _global_shutdown = True
    managers = list(_live_managers)
    for m in managers:
        m.shutting_down = True
        m.wake()
    for m in managers:
        m.join()


threading._register_atexit(_python_exit)


#: ``map`` hands its calls to the manager in groups of this many.
_HANDOFF_EVERY = 256


#: Guards the first creation of a future's condition (see ``CloudFuture._condition``).
_CONDITION_CREATION = threading.Lock()


class CloudFuture(Future):
    """A ``concurrent.futures.Future`` that also records when its call moved along.

    ``times`` holds ``submitted``, ``invoked``, ``started``, ``finished`` and ``fetched``
    (epoch seconds; ``started``/``finished`` are the worker's clock) and the worker id.

    Memory: a million pending calls means a million futures, and the stdlib's
    ``threading.Condition`` (an RLock, bound methods and a deque of waiters) is about two
    thirds of a bare ``Future``'s 1.6 KB. Most futures of a large ``map`` are never
    waited on one by one, so the condition is made on first use instead of up front;
    every other attribute is the stdlib's own (``__init__`` sets exactly what
    ``Future.__init__`` sets, which ``tests/test_future_memory.py`` checks against the
    running Python).
    """

    def __init__(self) -> None:
        # Future.__init__ is not called: it would build the condition eagerly.
        self._state = _futures_base.PENDING
        self._result = None
        self._exception = None
        self._waiters: List[Any] = []
        self._done_callbacks: List[Any] = []
        self._times: Dict[str, Any] = {"submitted": time.time()}
        self._manager_ref: Optional[Callable[[], Optional[_manager.Manager]]] = None

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        try:
            return self.__dict__["_lazy_condition"]
        except KeyError:
            with _CONDITION_CREATION:
                # Two threads may both miss; only the first one's condition is kept.
                return self.__dict__.setdefault("_lazy_condition", threading.Condition())

    @property
    def times(self) -> Dict[str, Any]:
        return dict(self._times)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._manager_ref is not None:
            manager = self._manager_ref()
            if manager is not None:
                manager.note_cancelled()  # so waiters learn of it now, not at dispatch time
        return cancelled


_manager._timed_future_types = (CloudFuture,)


class _ChunkRunner:
    """Runs ``fn`` over a chunk of argument tuples (``map`` with ``chunksize > 1``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, chunk: List[tuple]) -> List[Any]:
        return [self.fn(*args) for args in chunk]

    def __reduce__(self):
        return (_ChunkRunner, (self.fn,))


def _chunks(iterator: Iterator[tuple], size: int, sizes: List[int]) -> Iterator[List[tuple]]:
    """Lists of ``size`` items; each chunk's length is appended to ``sizes`` (for progress)."""
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        sizes.append(len(chunk))
        yield chunk


def _without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` in its authority."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class CloudPoolExecutor(Executor):
    """Run calls on a cloudpool backend with ``ProcessPoolExecutor`` semantics.

    With no arguments and no configuration, calls run on local worker processes and
    their data lives in a local temporary directory. ``backend``, ``storage``,
    ``runtime`` and ``max_workers`` override the configuration (see ``cloudpool.config``);
    ``config`` is a mapping in the config-file shape; further keyword arguments are
    options of the chosen backend (``mp_context`` and ``max_tasks_per_child`` are the
    local backend's, for ``ProcessPoolExecutor`` compatibility).
    """

    def __init__(self, max_workers: Optional[int] = None, *, backend: Optional[str] = None,
                 storage: Optional[str] = None, runtime: Optional[str] = None,
                 initializer: Optional[Callable[..., Any]] = None, initargs: Tuple[Any, ...] = (),
                 config: Optional[Mapping[str, Any]] = None,
                 retry: Union[None, int, RetryPolicy] = None, **backend_options: Any) -> None:
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")

        overrides: Dict[str, Any] = dict(config or {})
        for key, value in (("backend", backend), ("storage", storage), ("runtime", runtime),
                           ("max_workers", max_workers)):
            if value is not None:
                overrides[key] = value
        self._config: Config = load_config(overrides, origin="keyword argument of CloudPoolExecutor()")
        self._retry_policy = as_policy(retry, self._config["retries"])
        backend_name = self._config["backend"]
        backend_cls = backends.get(backend_name)
        # Before any network call: a misspelt keyword fails at once.
        check_options(backend_name, backend_options, "keyword argument of CloudPoolExecutor()")

        storage_url = self._config["storage"]
        scheme, bucket, root = split_url(storage_url)
        # A value the storage refuses is reported with where it was set.
        self._storage, storage_options = open_storage(scheme, bucket, config=self._config)
        if not self._storage.writable:
            raise ValueError(f"storage {storage_url!r} is read-only; the executor needs a writable store "
                             f"for payloads and results (s3://, gs://, az://, cos:// or a local path)")
        self._storage.check()

        options = self._config.section(backend_name)
        options.update(backend_options)
        runtime_name = self._config["runtime"]
        if runtime_name is not None:
            # Backends that deploy something name it with their 'runtime' option.
            if "runtime" not in backend_cls.option_names:
                raise ValueError(f"runtime={runtime_name!r} was given, but the {backend_name!r} backend "
                                 f"runs no deployed runtime; remove the runtime setting or choose a "
                                 f"backend such as aws_lambda or kubernetes")
            options.setdefault("runtime", runtime_name)
        try:
            self._backend = backend_cls(options, max_workers=self._config["max_workers"],
                                        storage_url=storage_url, storage_options=storage_options)
        except ValueError as exc:  # a refused option value: say where it was set
            better = with_origins(exc, backend_name, options, self._config, backend_options,
                                  "keyword argument of CloudPoolExecutor()")
            if better is None:
                raise
            raise better from None
        caps = self._backend.capabilities
        self._max_workers = caps.max_concurrency

        self._executor_id = "cp-" + os.urandom(16).hex()  # unguessable job keys
        self._keys = protocol.Keys(root, self._executor_id)
        self._event_base = {
            "protocol": protocol.PROTOCOL_VERSION,
            "versions": protocol.versions(),
            # A password in the configured URL (redis://user:pw@host/...) is the storage's
            # to keep, never the event's; the scheme stays as given (a storage registered
            # under its own scheme may share another's URL spelling).
            "storage": {"url": _without_userinfo(storage_url), "options": self._storage.public_options()},
            "keys": {"root": self._keys.root, "executor": self._executor_id},
            "timeout": self._config["timeout"],
            "flush_interval": self._config["flush_interval"],
        }
        self._initializer = initializer
        self._initargs = initargs
        self._manager: Optional[_manager.Manager] = None
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._job_seq = itertools.count()
        # id(fn) -> (weak or strong reference to fn, Job): one upload per function.
        self._jobs_by_fn: Dict[int, Tuple[Callable[[], Any], _manager.Job]] = {}

    # ------------------------------------------------------------------ properties
    @property
    def _broken(self) -> Any:
        """Truthy once the executor is unusable (mirrors the stdlib attribute)."""
        m = self._manager
        return False if m is None or m.broken is None else str(m.broken)

    @property
    def max_workers(self) -> int:
        """How many calls can run at once (the backend's concurrency)."""
        return self._max_workers

    @property
    def executor_id(self) -> str:
        return self._executor_id

    @property
    def config(self) -> Config:
        return self._config

    @property
    def storage_url(self) -> str:
        return self._storage.url(self._keys.executor_prefix)

    def stats(self) -> "ExecutorStats":
        """Timings of every call fetched so far (see ``cloudpool.stats``); a snapshot."""
        from .stats import ExecutorStats

        records = self._manager.stats.snapshot() if self._manager is not None else []
        caps = self._backend.capabilities
        return ExecutorStats(records, backend=self._backend.name, memory_mb=caps.memory_mb,
                             region=getattr(self._backend, "region", None))

    # ------------------------------------------------------------------ internals
    def _ensure_manager(self) -> _manager.Manager:
        if self._manager is None:
            has_initializer = self._initializer is not None
            # Before anything else is stored: a crashed client's data is then recognisable
            # (`cloudpool clean` removes prefixes whose owner is gone).
            self._storage.put(self._keys.client, protocol.json_bytes(protocol.client_marker(self._backend.name)))
            if has_initializer:
                # Pickled now, in the caller's thread, so a bad initializer fails submit() loudly.
                self._storage.put(self._keys.init, protocol.dumps((self._initializer, self._initargs)))
                self._initializer = self._initargs = None
            m = _manager.Manager(backend=self._backend, storage=self._storage, keys=self._keys,
                                 event_base=self._event_base, config=self._config,
                                 has_initializer=has_initializer)
            m.start()
            _live_managers.add(m)
            self._manager = m
            # If the executor is dropped without shutdown, let the manager finish and exit.
            weakref.finalize(self, _request_shutdown, m)
        return self._manager

    def _check_usable(self) -> None:
        m = self._manager
        if m is not None and m.broken is not None:
            raise type(m.broken)(str(m.broken)) if isinstance(m.broken, BrokenCloudPool) else BrokenCloudPool(str(m.broken))
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _policy_for(self, fn: Callable) -> RetryPolicy:
        return fn.policy if isinstance(fn, Retrying) else self._retry_policy

    def _job_for(self, fn: Callable) -> _manager.Job:
        entry = self._jobs_by_fn.get(id(fn))
        if entry is not None:
            ref, job = entry
            if ref() is fn and job.error is None:
                return job
        job = _manager.Job(f"j{next(self._job_seq):05d}", fn, self._policy_for(fn))
        try:
            ref: Callable[[], Any] = weakref.ref(fn)
        except TypeError:
            ref = (lambda f: (lambda: f))(fn)  # builtins cannot be weakly referenced; they live forever anyway
        if len(self._jobs_by_fn) > 256:
            self._jobs_by_fn.clear()
        self._jobs_by_fn[id(fn)] = (ref, job)
        return job

    def _new_futures(self, job: _manager.Job, payloads: Iterable[Any]) -> List[CloudFuture]:
        m = self._manager
        ref = weakref.ref(m)
        futures: List[CloudFuture] = []
        calls: List[_manager.Call] = []
        for payload in payloads:
            f = CloudFuture()
            f._manager_ref = ref
            futures.append(f)
            calls.append(_manager.Call(f, job, payload))
            if len(calls) >= _HANDOFF_EVERY:
                # Hand calls over as we go, so workers start while a big map is still
                # creating its futures.
                m.add(calls)
                calls = []
        if calls:
            m.add(calls)
        return futures

    # ------------------------------------------------------------------ Executor API
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> CloudFuture:
        if not callable(fn):
            raise TypeError(f"the first argument to submit() must be callable, not {type(fn).__name__}")
        with self._shutdown_lock:
            self._check_usable()
            self._ensure_manager()
            job = self._job_for(fn)
            return self._new_futures(job, [(args, kwargs)])[0]

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Like ``ProcessPoolExecutor.map``: every call is submitted now, results come in order.

        An ``objects(...)`` iterable is partitioned for this executor's parallelism.
        """
        if not callable(fn):
            raise TypeError(f"the first argument to map() must be callable, not {type(fn).__name__}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        for it in iterables:
            try:
                iter(it)
            except TypeError:
                raise TypeError(f"map() arguments must be iterable; got a {type(it).__name__}") from None
        iterables = tuple(self._partitioned(it) for it in iterables)
        end_time = None if timeout is None else timeout + time.monotonic()
        arg_tuples = zip(*iterables)
        with self._shutdown_lock:
            self._check_usable()
            self._ensure_manager()
            sizes: List[int] = []
            if chunksize == 1:
                job = self._job_for(fn)
                futures = self._new_futures(job, (((args, {}) for args in arg_tuples)))
            else:
                job = _manager.Job(f"j{next(self._job_seq):05d}", _ChunkRunner(fn), self._policy_for(fn))
                futures = self._new_futures(job, (((chunk,), {}) for chunk in _chunks(arg_tuples, chunksize, sizes)))
        bar = progress.tracker(len(sizes) and sum(sizes) or len(futures), desc=progress.describe(fn),
                               setting=self._config["progress"])
        if bar is not None:
            for i, f in enumerate(futures):
                bar.watch(f, sizes[i] if sizes else 1)
        results = _result_iterator(futures, end_time)
        if chunksize == 1:
            return results
        return itertools.chain.from_iterable(results)

    def map_reduce(self, map_fn: Callable[[Any], Any], data: Iterable[Any],
                   reduce_fn: Callable[[List[Any]], Any], *, per_object: bool = False,
                   timeout: Optional[float] = None) -> Any:
        """``reduce_fn(list(self.map(map_fn, data)))``, the reduction run as one more call;
        with ``per_object=True`` a dict ``{object url: reduction}`` over ``objects(...)``
        parts. See ``cloudpool.mapreduce``."""
        from .mapreduce import map_reduce
        return map_reduce(self, map_fn, data, reduce_fn, per_object=per_object, timeout=timeout)

    def _partitioned(self, iterable: Iterable[Any]) -> Iterable[Any]:
        iterable = partitioned_for(iterable, self._max_workers, self._config)
        objects_module = sys.modules.get("cloudpool.objects")  # never imported just to check
        if objects_module is not None and isinstance(iterable, objects_module.Objects):
            from .formats import with_executor_cache  # indexes where the workers can read
            iterable = with_executor_cache(iterable, self._storage)
        return iterable

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown_thread = True
            m = self._manager
            if m is None:
                self._backend.shutdown(wait=wait)
                return
            if cancel_futures:
                m.cancel_pending()
            m.shutting_down = True
            m.wake()
        if wait:
            m.join()

    def _terminate(self) -> None:
        """Stop now: cancel queued calls, stop running invocations where the backend can,
        fail every unfinished future (``Pool.terminate`` uses this), and wait for cleanup."""
        with self._shutdown_lock:
            self._shutdown_thread = True
            m = self._manager
            if m is None:
                self._backend.shutdown(wait=False)
                return
            m.terminate()
        m.join()

    # ------------------------------------------------------------------ insight
    def __repr__(self) -> str:
        return (f"<CloudPoolExecutor {self._executor_id} backend={self._config['backend']!r} "
                f"storage={self._config['storage']!r} max_workers={self._max_workers}>")


def partitioned_for(iterable: Iterable[Any], parallelism: int,
                    config: Optional[Config] = None) -> Iterable[Any]:
    """An ``objects(...)`` input sized for ``parallelism`` workers; anything else unchanged.

    With ``config`` (the executor's), the parts take their storage options from it, so an
    executor's ``config=`` reaches its inputs as it reaches its own storage.
    Shared by ``CloudPoolExecutor.map`` and ``cloudpool.multiprocessing.Pool``.
    """
    objects_module = sys.modules.get("cloudpool.objects")  # never imported just to check
    if objects_module is not None and isinstance(iterable, objects_module.Objects):
        return iterable.with_parallelism(parallelism, config)
    return iterable


def _request_shutdown(manager: _manager.Manager) -> None:
    manager.shutting_down = True
    manager.wake()


def _result_iterator(futures: List[Future], end_time: Optional[float]) -> Iterator[Any]:
    """Yield results in order; on timeout or early exit cancel what has not run (stdlib semantics)."""
    futures.reverse()  # pop() from the end is O(1) and drops our reference as we go
    try:
        while futures:
            if end_time is None:
                yield _result_and_forget(futures.pop())
            else:
                yield _result_and_forget(futures.pop(), end_time - time.monotonic())
    finally:
        for f in futures:
            f.cancel()


def _result_and_forget(future: Future, timeout: Optional[float] = None) -> Any:
    try:
        return future.result(timeout)
    finally:
        del future
