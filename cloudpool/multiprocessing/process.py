"""``Process``: one ``target(*args, **kwargs)`` (or ``run()``) run as one call on a cloudpool backend.

Each started ``Process`` has its own single-worker ``CloudPoolExecutor`` (on the local
backend: one worker process, as the stdlib's ``Process`` is one process), so
``terminate()`` can stop exactly that call where the backend allows it (the local
backend kills the worker; on backends that cannot cancel a running invocation the
call runs on, but the ``Process`` reports itself terminated).

Semantics follow ``multiprocessing.Process``: ``start`` once, ``join(timeout)``,
``is_alive``, ``exitcode`` (``None`` while running, ``0`` on success, ``1`` if ``run``
raised -- the remote traceback is printed to ``sys.stderr`` as the stdlib's child
prints it -- the code of a ``SystemExit``, ``-SIGTERM``/``-SIGKILL`` after
``terminate``/``kill``), ``close``. At interpreter exit, daemonic processes are
terminated and the others waited for, as in the stdlib. ``pid`` is ``None`` (the call
may run on another machine) and there is no ``sentinel``.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import signal
import sys
import threading
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional

from .. import errors as _errors
from ..executor import CloudPoolExecutor

__all__ = ["Process", "active_children"]

_counter = itertools.count(1)
# Started and not yet finished (strong references, as the stdlib's: a started Process
# that the program dropped must still be found at exit).
_children: "set[Process]" = set()
_children_lock = threading.Lock()

# Attributes that describe the local handle, not the work: never sent to the worker.
_LOCAL_STATE = ("_executor", "_future", "_exitcode", "_finish_lock", "_finished", "_closed",
                "_stopped_with", "_owner_pid")


def _run_process(process: "Process") -> int:
    """Worker side: run the process body; the exit code is the stdlib's."""
    try:
        process.run()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write(f"{code}\n")
        return 1
    return 0


class Process:
    """``multiprocessing.Process`` whose body runs as one call on the configured backend."""

    #: The context whose executor options this class uses (per-context subclasses set it).
    _context: ClassVar[Any] = None

    def __init__(self, group: None = None, target: Optional[Callable[..., Any]] = None,
                 name: Optional[str] = None, args: Iterable[Any] = (),
                 kwargs: Optional[Mapping[str, Any]] = None, *, daemon: Optional[bool] = None) -> None:
        if group is not None:
            raise AssertionError("group argument must be None for now")
        self._target = target
        self._args = tuple(args)
        self._kwargs: Dict[str, Any] = dict(kwargs or {})
        self._name = name if name is not None else f"CloudProcess-{next(_counter)}"
        self._daemon = bool(daemon) if daemon is not None else False
        self._executor: Optional[CloudPoolExecutor] = None
        self._future: Optional[concurrent.futures.Future] = None
        self._exitcode: Optional[int] = None
        self._finish_lock = threading.Lock()
        self._finished = False
        self._closed = False
        self._stopped_with: Optional[int] = None

    # ------------------------------------------------------------------ the body
    def run(self) -> None:
        """The body (override in subclasses); by default ``target(*args, **kwargs)``."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    def __getstate__(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _LOCAL_STATE}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ lifecycle
    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    def _executor_options(self) -> Dict[str, Any]:
        from .context import default_context

        context = type(self)._context or default_context()
        return context._full_executor_options()

    def start(self) -> None:
        """Submit the body as one call; returns at once."""
        self._check_closed()
        if self._future is not None:
            raise AssertionError("cannot start a process twice")
        executor = CloudPoolExecutor(max_workers=1, **self._executor_options())
        try:
            future = executor.submit(_run_process, self)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        self._future = future
        self._owner_pid = os.getpid()
        with _children_lock:
            _children.add(self)
        future.add_done_callback(self._on_done)

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until the body finished (or ``timeout`` seconds passed)."""
        self._check_closed()
        if self._future is None:
            raise AssertionError("can only join a started process")
        concurrent.futures.wait([self._future], timeout=timeout)
        if self._future.done():
            self._finish()

    def is_alive(self) -> bool:
        self._check_closed()
        if self._future is None or self._stopped_with is not None:
            return False
        return not self._future.done()

    @property
    def exitcode(self) -> Optional[int]:
        self._check_closed()
        if self._stopped_with is not None:
            return self._stopped_with
        if self._future is None or not self._future.done():
            return None
        self._finish()
        return self._exitcode

    def _stop(self, signum: int) -> None:
        self._check_closed()
        if self._future is None or self._future.done():
            return
        self._stopped_with = -signum
        if self._executor is not None:
            self._executor._terminate()  # cancels it, and kills the worker where the backend can
        self._finish()

    def terminate(self) -> None:
        """Stop the call (where the backend can); ``exitcode`` becomes ``-SIGTERM``."""
        self._stop(signal.SIGTERM)

    def kill(self) -> None:
        """As ``terminate``; ``exitcode`` becomes ``-SIGKILL``."""
        self._stop(signal.SIGKILL)

    def close(self) -> None:
        """Release the executor; the object is unusable afterwards."""
        if self._closed:
            return
        if self._future is not None and not self._future.done() and self._stopped_with is None:
            raise ValueError("Cannot close a process while it is still running. "
                             "You should first call join() or terminate().")
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._executor = None
        self._future = None
        self._closed = True
        with _children_lock:
            _children.discard(self)

    def _on_done(self, _future: concurrent.futures.Future) -> None:
        # Done-callbacks may run while the executor holds its own locks (a cancel()
        # inside _terminate()): record the outcome only; join()/close()/GC shut it down.
        self._finish(shutdown=False)

    def _finish(self, shutdown: bool = True) -> None:
        """Once the call is done: exit code, the child's traceback, then executor shutdown."""
        with self._finish_lock:
            if self._future is None:
                return
            if not self._finished:
                self._finished = True
                self._exitcode = self._outcome(self._future)
            executor = None
            if shutdown:
                executor, self._executor = self._executor, None
        with _children_lock:
            _children.discard(self)
        if executor is not None:
            executor.shutdown(wait=False)

    def _outcome(self, future: concurrent.futures.Future) -> int:
        if future.cancelled():
            return -signal.SIGTERM
        exc = future.exception()
        if exc is None:
            return int(future.result())
        if self._stopped_with is not None:
            return self._stopped_with
        self._report(exc)
        return 1

    def _report(self, exc: BaseException) -> None:
        # As the stdlib's child does on an uncaught exception: "Process <name>:" + traceback.
        cause = exc.__cause__
        if isinstance(cause, _errors.RemoteTraceback):
            text = cause.tb
        else:
            import traceback

            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"Process {self._name}:\n{text}")
        sys.stderr.flush()

    # ------------------------------------------------------------------ attributes
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        self._name = name

    @property
    def daemon(self) -> bool:
        return self._daemon

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        if self._future is not None:
            raise AssertionError("process has already started")
        self._daemon = bool(daemonic)

    @property
    def pid(self) -> None:
        """Always ``None``: the call may run on another machine, in a process not ours."""
        return None

    ident = pid

    @property
    def sentinel(self) -> int:
        raise NotImplementedError(
            "a cloudpool Process has no sentinel handle (it may run on another machine); "
            "use join(timeout) or is_alive()")

    def __repr__(self) -> str:
        if self._closed:
            status = "closed"
        elif self._future is None:
            status = "initial"
        elif self.exitcode is not None:
            status = f"stopped exitcode={self.exitcode}"
        else:
            status = "started"
        daemon = " daemon" if self._daemon else ""
        return f"<{type(self).__name__} name={self._name!r} {status}{daemon}>"


def active_children() -> List[Process]:
    """Started processes whose body is still running (finished ones are forgotten)."""
    with _children_lock:
        started = list(_children)
    return [p for p in started if not p._closed and p.is_alive()]


def _terminate_daemons_at_exit() -> None:
    # As the stdlib at exit: daemonic children are terminated; the executor's own exit
    # hook (which runs after this one) waits for the others.
    with _children_lock:
        started = list(_children)
    for p in started:
        if p._owner_pid != os.getpid():
            continue  # a forked worker exiting: the processes are its parent's
        if p._daemon and not p._closed and p.is_alive():
            p.terminate()


threading._register_atexit(_terminate_daemons_at_exit)
