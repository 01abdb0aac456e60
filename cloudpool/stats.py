"""Per-call timing records of an executor, and their summary.

The manager appends one ``CallRecord`` per attempt of a call whose result (or error) it
fetched -- a call retried after a failed attempt has one record per attempt, numbered by
``attempt`` (0 = the first), since each attempt used the platform (and is billed); the
executor's ``stats()`` hands out an ``ExecutorStats`` snapshot. Records are small tuples
of floats, kept for the executor's lifetime, so a 100,000-call job costs a few MB; the
futures themselves are not kept alive for this.

Times are epoch seconds. ``submitted``, ``invoked`` and ``fetched`` are the client's clock;
``started`` and ``finished`` are the worker's, so on a remote platform they carry its
clock skew (as Lithops' timestamps do).
"""
from __future__ import annotations

import statistics
import threading
from typing import Any, Dict, List, NamedTuple, Optional


class CallRecord(NamedTuple):
    """What happened to one call."""

    job: str
    batch: int
    #: The call's position in its batch.
    index: int
    submitted: float
    invoked: Optional[float]
    started: Optional[float]
    finished: Optional[float]
    fetched: float
    #: The worker process that ran it (None when no worker reported, e.g. it was lost).
    worker: Optional[str]
    #: The worker's peak resident memory when it stored the result, in KiB.
    maxrss_kb: Optional[int]
    ok: bool
    #: 0 for a call's first attempt, n for its n-th retry.
    attempt: int = 0

    @property
    def duration(self) -> Optional[float]:
        """Seconds the function ran on the worker."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def invocation(self) -> str:
        return f"{self.job}.{self.batch}"


class StatsRecorder:
    """The manager's side: thread-safe append, cheap snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: List[CallRecord] = []

    def add(self, record: CallRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> List[CallRecord]:
        with self._lock:
            return list(self._records)


def _percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[pos]


class ExecutorStats:
    """A snapshot of an executor's call records; ``summary()`` and ``cost()`` read it."""

    def __init__(self, calls: List[CallRecord], *, backend: str, memory_mb: Optional[int] = None,
                 region: Optional[str] = None) -> None:
        self.calls = calls
        self.backend = backend
        #: Memory configured per worker on the platform (for cost), when the backend fixes it.
        self.memory_mb = memory_mb
        self.region = region

    def __len__(self) -> int:
        return len(self.calls)

    def __repr__(self) -> str:
        return f"<ExecutorStats backend={self.backend!r} calls={len(self.calls)}>"

    @property
    def invocations(self) -> int:
        return len({c.invocation for c in self.calls})

    def summary(self) -> Dict[str, Any]:
        """Counts, wall time and the duration distribution, as plain numbers."""
        calls = self.calls
        durations = sorted(d for d in (c.duration for c in calls) if d is not None)
        start = min((c.submitted for c in calls), default=None)
        end = max((c.fetched for c in calls), default=None)
        rss = [c.maxrss_kb for c in calls if c.maxrss_kb is not None]
        return {
            "backend": self.backend,
            "calls": len(calls),
            "ok": sum(1 for c in calls if c.ok),
            "failed": sum(1 for c in calls if not c.ok),
            "retries": sum(1 for c in calls if c.attempt > 0),
            "invocations": self.invocations,
            "workers": len({c.worker for c in calls if c.worker is not None}),
            "wall_seconds": (end - start) if calls else 0.0,
            "compute_seconds": sum(durations),
            "duration_mean": statistics.fmean(durations) if durations else float("nan"),
            "duration_median": _percentile(durations, 0.5),
            "duration_p95": _percentile(durations, 0.95),
            "max_rss_mb": max(rss) / 1024 if rss else None,
        }

    def cost(self, **overrides: Any) -> Any:
        """Estimated platform cost of these calls (see ``cloudpool.cost``)."""
        from .cost import estimate_cost

        return estimate_cost(self, **overrides)

    def to_rows(self) -> List[Dict[str, Any]]:
        """One dict per call (e.g. for ``pandas.DataFrame(stats.to_rows())``)."""
        return [dict(c._asdict(), duration=c.duration, invocation=c.invocation) for c in self.calls]
