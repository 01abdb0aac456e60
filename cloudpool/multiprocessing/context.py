"""Contexts: what ``get_context()`` returns, and the default one behind the module functions.

A ``CloudPoolContext`` binds executor options (``backend``, ``storage``, ``runtime``,
``config``, backend options) and a start method to ``Pool``, ``Process`` and
``cpu_count``, the way a stdlib context binds a start method. The start method
(``'fork'``, ``'spawn'``, ``'forkserver'``) matters only on the local backend, where it
becomes the ``start_method`` of its worker processes; other backends ignore it. The
Redis-backed primitives are the same in every context (Redis is configured globally,
see ``set_redis_url``).
"""
from __future__ import annotations

import multiprocessing
import threading
from typing import Any, Dict, List, Optional

__all__ = ["CloudPoolContext", "get_context", "default_context", "set_start_method",
           "get_start_method", "get_all_start_methods"]

class CloudPoolContext:
    """A namespace like ``multiprocessing.get_context()``'s, bound to cloudpool executor options."""

    # The stdlib's exception types, so ``ctx.TimeoutError`` etc. work as they do on a stdlib context.
    TimeoutError = multiprocessing.TimeoutError
    ProcessError = multiprocessing.ProcessError
    BufferTooShort = multiprocessing.BufferTooShort
    AuthenticationError = multiprocessing.AuthenticationError

    def __init__(self, method: Optional[str] = None, **options: Any) -> None:
        if method is not None and method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"cannot find context for {method!r}; start methods here are "
                             f"{multiprocessing.get_all_start_methods()}")
        self._method = method
        self._options: Dict[str, Any] = dict(options)
        self._process_class: Optional[type] = None
        self._lock = threading.Lock()

    def __getstate__(self) -> Dict[str, Any]:
        # Picklable (a context-bound Process class travels with its context): settings only.
        return {"method": self._method, "options": self._options}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["method"], **state["options"])

    # ------------------------------------------------------------------ settings
    def get_start_method(self, allow_none: bool = False) -> Optional[str]:
        if self._method is None and not allow_none:
            return multiprocessing.get_start_method()
        return self._method

    def executor_options(self) -> Dict[str, Any]:
        """Keyword arguments for ``CloudPoolExecutor`` (without the start method)."""
        return dict(self._options)

    def _full_executor_options(self) -> Dict[str, Any]:
        from .pool import _backend_name

        options = self.executor_options()
        if self._method is not None and "mp_context" not in options and _backend_name(options) == "local":
            options.setdefault("start_method", self._method)
        return options

    # ------------------------------------------------------------------ compute
    def Pool(self, processes: Optional[int] = None, initializer: Any = None, initargs: Any = (),
             maxtasksperchild: Optional[int] = None, **options: Any):
        from .pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild, context=self, **options)

    @property
    def Process(self) -> type:
        """``Process`` bound to this context (a subclass, so ``class P(ctx.Process)`` works)."""
        from .process import Process

        if self is _default:
            return Process
        with self._lock:
            if self._process_class is None:
                self._process_class = type("Process", (Process,), {
                    "_context": self, "__module__": Process.__module__,
                    "__qualname__": "Process", "__doc__": Process.__doc__})
            return self._process_class

    def cpu_count(self) -> int:
        """The backend's concurrency: how many calls it runs at once (the CPU count locally)."""
        from ..executor import CloudPoolExecutor

        executor = CloudPoolExecutor(**self._full_executor_options())
        try:
            return int(executor.max_workers)
        finally:
            executor.shutdown(wait=False)

    def active_children(self) -> List[Any]:
        from .process import active_children

        return active_children()

    def current_process(self) -> Any:
        return multiprocessing.current_process()

    def parent_process(self) -> Any:
        return multiprocessing.parent_process()

    def freeze_support(self) -> None:
        """Nothing to do: workers never re-run the main module's frozen entry point."""

    def get_logger(self):
        return multiprocessing.get_logger()

    def log_to_stderr(self, level: Any = None):
        return multiprocessing.log_to_stderr(level)

    def get_context(self, method: Optional[str] = None) -> "CloudPoolContext":
        return get_context(method, **self._options) if method is not None else self

    # ------------------------------------------------------------------ shared state (Redis)
    def Manager(self):
        from .managers import SyncManager

        m = SyncManager()
        m.start()
        return m

    def Queue(self, maxsize: int = 0):
        from .queues import Queue

        return Queue(maxsize)

    def JoinableQueue(self, maxsize: int = 0):
        from .queues import JoinableQueue

        return JoinableQueue(maxsize)

    def SimpleQueue(self):
        from .queues import SimpleQueue

        return SimpleQueue()

    def Pipe(self, duplex: bool = True):
        from .connection import Pipe

        return Pipe(duplex)

    def Lock(self):
        from .synchronize import Lock

        return Lock()

    def RLock(self):
        from .synchronize import RLock

        return RLock()

    def Semaphore(self, value: int = 1):
        from .synchronize import Semaphore

        return Semaphore(value)

    def BoundedSemaphore(self, value: int = 1):
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value)

    def Condition(self, lock: Any = None):
        from .synchronize import Condition

        return Condition(lock)

    def Event(self):
        from .synchronize import Event

        return Event()

    def Barrier(self, parties: int, action: Any = None, timeout: Optional[float] = None):
        from .synchronize import Barrier

        return Barrier(parties, action, timeout)

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True):
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock)

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True):
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock)

    def RawValue(self, typecode_or_type: Any, *args: Any):
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any):
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def __repr__(self) -> str:
        return f"<CloudPoolContext method={self._method!r} options={self._options!r}>"


_default = CloudPoolContext()


def default_context() -> CloudPoolContext:
    return _default


def get_context(method: Optional[str] = None, **options: Any) -> CloudPoolContext:
    """A context for ``method`` (local start method) and executor ``options``.

    With neither, the default context (the one the module-level functions use).
    """
    if method is None and not options:
        return _default
    unknown_method = method is not None and method not in multiprocessing.get_all_start_methods()
    if unknown_method:
        raise ValueError(f"cannot find context for {method!r}")
    return CloudPoolContext(method, **options)


def set_start_method(method: Optional[str], force: bool = False) -> None:
    """Start method of the default context's local worker processes (as the stdlib's)."""
    if _default._method is not None and not force:
        raise RuntimeError("context has already been set")
    if method is not None and method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"cannot find context for {method!r}")
    _default._method = method


def get_start_method(allow_none: bool = False) -> Optional[str]:
    return _default.get_start_method(allow_none)


def get_all_start_methods() -> List[str]:
    return multiprocessing.get_all_start_methods()
