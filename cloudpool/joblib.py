"""A joblib parallel backend named ``"cloudpool"``: joblib (and scikit-learn) calls on any backend.

::

    import joblib
    import cloudpool.joblib                         # registers the backend (or cloudpool.register_joblib())

    with joblib.parallel_config(backend="cloudpool"):              # local processes
        GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)

    with joblib.parallel_config(backend="cloudpool", config={"backend": "knative", ...},
                                storage="s3://bucket/prefix"):     # a remote backend
        ...

This module owns the translation of joblib's backend protocol (``ParallelBackendBase``)
into ``CloudPoolExecutor`` calls; batching, storage and workers are the executor's.

- Keyword arguments of ``parallel_config``/``parallel_backend`` after ``backend`` are
  ``CloudPoolExecutor``'s (``storage``, ``config``, ``runtime``, ``max_workers``, backend
  options); joblib's own ``backend`` keyword is taken, so the compute backend is given as
  ``compute="knative"`` (or in ``config``). ``executor=`` uses an executor you built and
  own instead.
- One executor per backend instance, i.e. per ``with parallel_config(...)`` block: the
  ``Parallel`` calls in the block (a ``GridSearchCV.fit`` makes several) share its
  workers, like loky's reusable executor; it is shut down when the block's backend
  is dropped (or at interpreter exit).
- ``n_jobs=-1`` means the executor's concurrency (the CPU count locally, the backend's
  limit remotely); a positive ``n_jobs`` bounds how many batches joblib keeps in flight.
  joblib's auto-batching groups short tasks, since each call pays an invocation.
- Nested calls: joblib sends each task the backend its own inner ``Parallel`` calls
  default to (``get_nested_backend``). As for joblib's process backends, that is
  threads in the worker at the first level and sequential below, never new processes
  or invocations, so a task that itself runs ``Parallel(n_jobs=-1)`` cannot multiply
  workers (no fork bomb, no invocation storm). Code that explicitly asks for
  ``backend="cloudpool"`` inside a task gets what it asked for.
- joblib's completion callbacks run on one thread of this backend's, never on the
  executor's manager thread (they pickle and dispatch the next batches).
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import weakref
from typing import Any, Callable, Optional, Set, Tuple

from .errors import MissingDependencyError
from .executor import CloudPoolExecutor

try:
    from joblib import register_parallel_backend
    from joblib._parallel_backends import (AutoBatchingMixin, ParallelBackendBase, SequentialBackend,
                                           ThreadingBackend)
except ImportError as exc:  # joblib is an optional dependency
    raise MissingDependencyError(f"the cloudpool joblib backend needs joblib ({exc}); "
                                 f"install it with: pip install 'cloudpool[joblib]'") from exc

__all__ = ["CloudPoolBackend", "register", "BACKEND_NAME"]

LOGGER = logging.getLogger("cloudpool.joblib")

#: The name to give ``joblib.parallel_config(backend=...)``.
BACKEND_NAME = "cloudpool"


def _shutdown(executor: CloudPoolExecutor, callbacks: cf.ThreadPoolExecutor) -> None:
    executor.shutdown(wait=False)
    callbacks.shutdown(wait=False)


class CloudPoolBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend protocol over a ``CloudPoolExecutor`` (see the module docstring)."""

    supports_retrieve_callback = True  # results come through future callbacks
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False  # joblib falls back to threads for require="sharedmem"

    def __init__(self, nesting_level: Optional[int] = None, inner_max_num_threads: Optional[int] = None,
                 *, executor: Optional[CloudPoolExecutor] = None, compute: Optional[str] = None,
                 **executor_options: Any) -> None:
        if inner_max_num_threads is not None:
            raise ValueError("the cloudpool joblib backend does not set inner_max_num_threads; "
                             "limit threads in the task itself (threadpoolctl) or in the runtime's environment")
        if executor is not None and (compute is not None or executor_options):
            raise ValueError("give either executor= (an executor you built) or CloudPoolExecutor "
                             "options (compute=, storage=, config=, ...), not both")
        if executor is not None and not isinstance(executor, CloudPoolExecutor):
            raise TypeError(f"executor must be a cloudpool.CloudPoolExecutor, not {type(executor).__name__}")
        super().__init__(nesting_level=nesting_level)
        if compute is not None:
            executor_options["backend"] = compute
        self._options = executor_options
        self._executor = executor
        self._owns_executor = executor is None
        self._callbacks: Optional[cf.ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._outstanding: Set[cf.Future] = set()
        self.parallel: Any = None

    # ------------------------------------------------------------------ executor
    def _get_executor(self) -> CloudPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = CloudPoolExecutor(**self._options)
            if self._callbacks is None:
                self._callbacks = cf.ThreadPoolExecutor(1, thread_name_prefix="cloudpool-joblib-callbacks")
                if self._owns_executor:
                    weakref.finalize(self, _shutdown, self._executor, self._callbacks)
                else:
                    weakref.finalize(self, self._callbacks.shutdown, False)
            return self._executor

    # ------------------------------------------------------------------ joblib protocol
    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1  # joblib's meaning of None: sequential unless a config says otherwise
        concurrency = self._get_executor().max_workers
        if n_jobs < 0:
            # joblib's convention: -1 is every worker, -2 all but one, ...
            return max(concurrency + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Optional[str] = None,
                  require: Optional[str] = None, **backend_kwargs: Any) -> int:
        # backend_kwargs are Parallel's memmapping settings (temp_folder, max_nbytes,
        # mmap_mode...): arguments travel by value through storage here, so they do not apply.
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Optional[Callable[[Any], Any]] = None) -> cf.Future:
        executor = self._get_executor()
        future = executor.submit(func)
        with self._lock:
            self._outstanding.add(future)
        callbacks = self._callbacks
        assert callbacks is not None

        def done(f: cf.Future) -> None:
            with self._lock:
                self._outstanding.discard(f)
            if callback is not None:
                try:
                    callbacks.submit(_run_callback, callback, f)
                except RuntimeError:
                    # The callback thread is shut down (interpreter exit): run it here.
                    _run_callback(callback, f)

        future.add_done_callback(done)
        return future

    def retrieve_result_callback(self, future: cf.Future) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: cancel what has not started (the executor stays usable)."""
        with self._lock:
            pending = list(self._outstanding)
        for f in pending:
            f.cancel()

    def terminate(self) -> None:
        """End of one ``Parallel`` call: keep the executor for the block's next call."""
        self.reset_batch_stats()

    def get_nested_backend(self) -> Tuple[ParallelBackendBase, Optional[int]]:
        """What ``Parallel`` calls inside a task default to: threads there, then sequential."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    def __reduce__(self):
        # A task never needs this backend object (get_nested_backend ships another one);
        # refuse loudly rather than pickle an executor.
        raise TypeError("the cloudpool joblib backend cannot be pickled; inside a task use "
                        "the nested backend joblib provides")


def _run_callback(callback: Callable[[Any], Any], future: cf.Future) -> None:
    try:
        callback(future)
    except BaseException:  # noqa: BLE001 - joblib's own callback failing is a bug; keep serving
        LOGGER.exception("cloudpool: a joblib completion callback raised")


def register() -> None:
    """Register the ``"cloudpool"`` joblib backend (done on import of this module)."""
    register_parallel_backend(BACKEND_NAME, CloudPoolBackend)


register()
