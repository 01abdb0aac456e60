"""The compute-backend ABC and the notices a backend sends to the executor's manager.

A backend turns an invocation event (a batch of calls, see ``protocol``) into a run of
``cloudpool.worker.handle(event)`` somewhere: a local process, a Lambda, a Kubernetes
pod, an HTTP service. Results never flow through the backend -- workers write them to
storage -- so a backend only has to *invoke*, optionally *cancel*, and report what it
knows early through ``notify`` (a finished segment, a worker that died). Anything it
cannot report, the manager finds by polling status in storage.

Capabilities are declared, not probed: the manager reads ``capabilities`` to size
batches, bound in-flight invocations and decide how often to poll.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, FrozenSet, List, Optional, Sequence


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the manager plans around these."""

    #: Most invocations running at once.
    max_concurrency: int
    #: Most invocations the manager should hand over at once (running + queued ahead).
    max_in_flight: int
    #: Longest an invocation may run, in seconds (None: unbounded).
    max_timeout: Optional[float] = None
    #: Memory per worker in MiB, when the platform fixes it.
    memory_mb: Optional[int] = None
    #: Largest event the platform accepts, in bytes (None: unbounded).
    payload_limit: Optional[int] = None
    #: The backend can stop a running invocation (``cancel``).
    can_cancel: bool = False
    #: The backend pushes segment/loss notices, so polling is only a safety net.
    notifies: bool = False
    #: Batches are sized to take about this long, amortising the per-invocation cost.
    batch_target_seconds: float = 1.0
    #: Upper bound on calls per invocation imposed by the backend (None: none).
    max_batch_calls: Optional[int] = None
    #: Workers run on other machines, without this machine's files or ``sys.path``:
    #: the client ships modules that are not installed (the user's own code) by value.
    remote: bool = False
    #: Arguments up to this many bytes travel inside the event whatever the
    #: ``inline_limit`` setting, unchecksummed: the event goes through a local pipe, where
    #: storing them would only add a write, a read and two checksums (None: the setting).
    inline_limit: Optional[int] = None


@dataclass
class SegmentDone:
    """A worker stored a segment; ``status`` is the JSON it wrote (plus ``key``)."""

    status: Dict[str, Any]


@dataclass
class InvocationLost:
    """An invocation will write nothing more (its worker died, was killed, or failed to start).

    ``running_call`` is the index in the batch of the call that was running, when the
    backend knows it; ``timed_out`` says the backend killed it for exceeding its timeout;
    ``killed`` that something else killed it with SIGKILL (the out-of-memory killer).
    """

    inv: str
    reason: str
    running_call: Optional[int] = None
    timed_out: bool = False
    error: Optional[BaseException] = field(default=None, repr=False)
    killed: bool = False


Notify = Callable[[Any], None]


class ComputeBackend(ABC):
    """Runs invocation events. Subclasses implement ``invoke`` and declare capabilities."""

    name: ClassVar[str] = ""
    #: Options accepted from config / keyword arguments.
    option_names: ClassVar[FrozenSet[str]] = frozenset()

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        unknown = set(options) - set(self.option_names)
        if unknown:
            from ..config import unknown_options_error  # here: config is not needed otherwise

            raise unknown_options_error(f"the {self.name!r} backend", unknown, self.option_names)
        self.options = dict(options)
        self.storage_url = storage_url
        self.storage_options = dict(storage_options)
        self._notify: Notify = lambda notice: None

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What this backend instance can do."""

    def start(self, notify: Notify) -> None:
        """Called once by the manager before the first invocation; ``notify`` is thread-safe."""
        self._notify = notify

    @abstractmethod
    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        """Start running ``event`` asynchronously; raise only if it surely did not start."""

    def cancel(self, inv: str, reason: str) -> bool:
        """Stop invocation ``inv`` if the platform allows; it must then be reported lost."""
        return False

    def shutdown(self, wait: bool = True) -> None:
        """Release workers and connections."""

    def describe(self) -> Dict[str, Any]:
        """What ``cloudpool hello``/stats show about where calls run."""
        return {"backend": self.name}

    # ------------------------------------------------------------------ runtimes
    # ``cloudpool runtime build|deploy|list|delete`` calls these. A backend that deploys
    # something to its platform sets ``manages_runtimes`` and overrides all four; the
    # others keep the defaults, which refuse with a message naming the backend.

    #: This backend builds and deploys runtimes (container images, functions).
    manages_runtimes: ClassVar[bool] = False

    def _no_runtimes(self, verb: str) -> NotImplementedError:
        return NotImplementedError(
            f"the {self.name!r} backend has no runtime to {verb}: its workers run "
            f"{'on this machine' if self.name == 'local' else 'on a service you deploy yourself'}; "
            f"`cloudpool runtime` applies to backends such as aws_lambda and kubernetes")

    def build_runtime(self, name: str, *, requirements: Sequence[str] = (),
                      output: Optional[str] = None) -> Dict[str, Any]:
        """Build the runtime ``name`` (image or package) with extra pip ``requirements``."""
        raise self._no_runtimes("build")

    def deploy_runtime(self, name: str, *, memory_mb: Optional[int] = None,
                       timeout: Optional[float] = None) -> Dict[str, Any]:
        """Create or update the runtime ``name`` on the platform; returns its metadata."""
        raise self._no_runtimes("deploy")

    def list_runtimes(self) -> List[Dict[str, Any]]:
        """The runtimes this backend deployed (name, versions, memory, timeout...)."""
        raise self._no_runtimes("list")

    def delete_runtime(self, name: str) -> None:
        """Remove the runtime ``name`` from the platform (``FileNotFoundError`` if absent)."""
        raise self._no_runtimes("delete")
