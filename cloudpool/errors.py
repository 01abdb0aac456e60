"""Every exception type cloudpool raises of its own.

Each one subclasses the stdlib exception a user of ``concurrent.futures`` or of the
cloud SDKs would already catch, so switching from ``ProcessPoolExecutor`` changes no
``except`` clause:

- the executor can no longer run work      -> ``BrokenProcessPool`` (a ``BrokenExecutor``)
- one call's worker died or vanished        -> ``BrokenProcessPool`` on that call's future
- a call ran past its time limit            -> ``TimeoutError``
- a bad setting or argument                 -> ``ValueError`` / ``TypeError``
- a missing optional SDK                    -> ``ImportError``
"""
from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BrokenCloudPool",
    "InitializerError",
    "VersionMismatchError",
    "WorkerLostError",
    "CallTimeoutError",
    "ConfigError",
    "MissingDependencyError",
    "RemoteTraceback",
    "UnpicklableRemoteError",
]


class BrokenCloudPool(BrokenProcessPool):
    """The executor cannot run any more work (every pending future fails with this)."""


class InitializerError(BrokenCloudPool):
    """The ``initializer`` raised on a worker; the executor is broken, as in the stdlib."""


class VersionMismatchError(BrokenCloudPool):
    """The worker's Python, cloudpickle or cloudpool version differs from the client's."""


class WorkerLostError(BrokenProcessPool):
    """The worker running this call died (killed, crashed, out of memory) before finishing it.

    Only the call that was running fails; the executor keeps working.
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


class UnpicklableRemoteError(RuntimeError):
    """A worker raised an exception that could not be pickled back to the client.

    The original type name and message are kept in the text and in ``type_name``.
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
