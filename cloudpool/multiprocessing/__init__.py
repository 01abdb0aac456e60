"""``cloudpool.multiprocessing``: the ``multiprocessing`` API, running on any cloudpool backend.

``from cloudpool.multiprocessing import Pool`` (or ``import cloudpool.multiprocessing as
multiprocessing``) and unchanged ``multiprocessing`` code runs its work on the
configured backend -- local processes by default, or AWS Lambda, Kubernetes, ...

What lives where:

- ``pool``: ``Pool`` (on a ``CloudPoolExecutor``), its result types, ``ThreadPool``.
- ``process``: ``Process`` (one call on the backend), ``active_children``.
- ``context``: ``get_context``, start methods, ``cpu_count`` (the backend's concurrency).
- Shared state, kept in a Redis server that the client and every worker can reach
  (``set_redis_url(url)`` or ``CLOUDPOOL_REDIS_URL``): ``synchronize`` (``Lock``,
  ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier``),
  ``queues`` (``Queue``, ``SimpleQueue``, ``JoinableQueue``), ``connection`` (``Pipe``),
  ``sharedctypes`` (``Value``, ``Array``, ``RawValue``, ``RawArray``) and ``managers``
  (``Manager()`` with ``dict``/``list``/``Namespace``/...). ``_redis`` holds the
  plumbing they share (configuration, clients, expiry, the waiter protocol).

Everything else that code commonly imports (``TimeoutError``, ``ProcessError``,
``current_process``, ``get_logger``, ...) is the stdlib's own.
"""
from __future__ import annotations

from typing import Any, List

from . import context as _context
from ._redis import (DEFAULT_KEY_TTL, RedisNotConfiguredError, SharedStateConnectionError,
                     SharedStateLostError, get_redis_url, set_redis_url)
from .connection import Pipe
from .context import (CloudPoolContext, get_all_start_methods, get_context, get_start_method,
                      set_start_method)
from .managers import SyncManager
from .queues import JoinableQueue, Queue, SimpleQueue
from .sharedctypes import Array, RawArray, RawValue, Value
from .synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

# The stdlib's exceptions and process-introspection helpers, unchanged.
from multiprocessing import (AuthenticationError, BufferTooShort, ProcessError, TimeoutError,
                             current_process, get_logger, log_to_stderr, parent_process)

__all__ = [
    "Pool", "ThreadPool", "Process", "Manager", "SyncManager",
    "Queue", "SimpleQueue", "JoinableQueue", "Pipe",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "Value", "Array", "RawValue", "RawArray",
    "cpu_count", "active_children", "current_process", "parent_process", "freeze_support",
    "get_context", "get_start_method", "set_start_method", "get_all_start_methods",
    "get_logger", "log_to_stderr", "CloudPoolContext",
    "TimeoutError", "ProcessError", "BufferTooShort", "AuthenticationError",
    "set_redis_url", "get_redis_url", "RedisNotConfiguredError", "SharedStateLostError",
    "SharedStateConnectionError", "DEFAULT_KEY_TTL",
]

# Names whose modules import the executor, loaded on first use so that a worker that
# only unpickles a Queue or a Lock does not import the client machinery.
_LAZY = {
    "Pool": ("cloudpool.multiprocessing.pool", "Pool"),
    "ThreadPool": ("cloudpool.multiprocessing.pool", "ThreadPool"),
    "Process": ("cloudpool.multiprocessing.process", "Process"),
    "pool": ("cloudpool.multiprocessing.pool", None),
    "process": ("cloudpool.multiprocessing.process", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cloudpool.multiprocessing' has no attribute {name!r}") from None
    import importlib

    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def Manager() -> SyncManager:
    """A started manager whose ``dict()``, ``list()``, ``Namespace()``... live in Redis."""
    manager = SyncManager()
    manager.start()
    return manager


def cpu_count() -> int:
    """The configured backend's concurrency (the CPU count on the local backend)."""
    return _context.default_context().cpu_count()


def active_children() -> List[Any]:
    """``Process`` objects started here whose body is still running."""
    from .process import active_children as _active

    return _active()


def freeze_support() -> None:
    """Nothing to do: workers never re-run a frozen program's entry point."""
