"""Every exception type cloudpool raises of its own.

Each one is an instance of every exception type that code written for the original
(``concurrent.futures``, ``multiprocessing.Pool``, Lithops, the cloud SDKs) would catch in
the same situation, so switching to cloudpool changes no ``except`` clause. Where the
originals disagree, the class inherits from all of them:

- the executor can no longer run work      -> ``BrokenProcessPool`` (a ``BrokenExecutor``),
  and ``multiprocessing.TimeoutError``: a stdlib ``Pool`` in that state (terminated,
  an initializer that always fails) never answers, so its users wait with
  ``get(timeout)`` and catch the timeout
- one call's worker died or vanished        -> ``BrokenProcessPool`` (executor) and
  ``multiprocessing.TimeoutError`` (the stdlib Pool loses that task and times out);
  ``RuntimeError`` (Lithops), and ``MemoryError`` when the kernel killed it (SIGKILL,
  as the out-of-memory killer does; Lithops raises ``MemoryError`` there)
- a call ran past its time limit            -> ``TimeoutError`` (the builtin, as Lithops)
- the function raised an exception that cannot be pickled back
                                            -> ``TypeError`` / ``pickle.PicklingError``
  (what the stdlib's pickling raises there)
- a bad setting or argument                 -> ``ValueError`` / ``TypeError``
- a missing optional SDK                    -> ``ImportError``

``tests/test_exception_types.py`` runs each situation on the original and on cloudpool
side by side; ``docs/exceptions.md`` is its table.
"""
from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BrokenCloudPool",
    "InitializerError",
    "VersionMismatchError",
    "WorkerLostError",
    "WorkerKilledError",
    "CallTimeoutError",
    "ConfigError",
    "MissingDependencyError",
    "RemoteTraceback",
    "UnpicklableRemoteError",
]


class BrokenCloudPool(BrokenProcessPool, multiprocessing.TimeoutError):
    """The executor cannot run any more work (every pending future fails with this).

    Also a ``multiprocessing.TimeoutError``: where cloudpool fails a ``Pool`` result at
    once (after ``terminate()``, a failing initializer), the stdlib leaves it pending and
    ``get(timeout)`` raises that.
    """


class InitializerError(BrokenCloudPool):
    """The ``initializer`` raised on a worker; the executor is broken, as in the stdlib."""


class VersionMismatchError(BrokenCloudPool):
    """The worker's Python, cloudpickle or cloudpool version differs from the client's."""


class WorkerLostError(BrokenProcessPool, multiprocessing.TimeoutError):
    """The worker running this call died (killed, crashed, out of memory) before finishing it.

    Only the call that was running fails; the executor keeps working. A
    ``BrokenProcessPool`` as in ``ProcessPoolExecutor`` (hence a ``RuntimeError``, as
    Lithops raises there) and a ``multiprocessing.TimeoutError``, which is what a
    stdlib ``Pool`` whose worker died gives ``get(timeout)``: the task is lost.
    """


class WorkerKilledError(WorkerLostError, MemoryError):
    """The worker was killed by SIGKILL, which is what the out-of-memory killer sends.

    Also a ``MemoryError``, as Lithops reports it.
    """


class CallTimeoutError(TimeoutError):
    """A call ran longer than the configured ``timeout``."""


class ConfigError(ValueError):
    """An unknown configuration key, or a value of the wrong type or range."""


class MissingDependencyError(ImportError):
    """An optional SDK needed by the chosen backend or storage is not installed."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as ``__cause__`` of re-raised errors.

    Its ``str`` is the remote traceback text, so an uncaught error prints both the
    local and the remote stack.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class UnpicklableRemoteError(RuntimeError, TypeError, pickle.PicklingError):
    """A worker raised an exception that could not be pickled back to the client.

    The original type name and message are kept in the text and in ``type_name``.
    ``ProcessPoolExecutor`` raises the pickling error itself in that case (a
    ``TypeError`` such as "cannot pickle '_thread.lock' object", or a
    ``PicklingError``), so this is both.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(
            f"the function raised {type_name}: {message} (the exception itself could not be "
            f"pickled back to the client, so it is reported as {type(self).__name__})"
        )
        self.type_name = type_name
        self.remote_message = message

    def __reduce__(self):
        return (type(self), (self.type_name, self.remote_message))


class IntegrityError(OSError):
    """Data read back from storage does not match the checksum it was written with."""
