"""Retry policies: which failed calls run again, how often, and after how long.

A policy is set per executor (``CloudPoolExecutor(retry=...)`` or the ``retries``
setting) and can be overridden per function with ``cloudpool.retry(fn, ...)``, whose
result is what you submit or map::

    ex.map(retry(fetch_page, retries=5, on=(ConnectionError,)), urls)

What counts as transient, by cause:

- **invocation failures** -- the platform refused or lost the invocation before it
  reported anything (``invoke`` raised, throttling outlived the backend's own
  back-off, a container that never started): always retried, up to ``retries``.
- **worker loss** -- the process running a call died (SIGKILL, out of memory,
  ``os._exit``): retried only with ``worker_lost=True``, because the same call usually
  kills its worker again; the stdlib never retries it.
- **timeouts** -- a call that exceeded the ``timeout`` setting: only with ``timeouts=True``.
- **exceptions the function raised**: only those listed in ``on``.

A retried call keeps its future, so ``map`` results stay in input order, and runs in a
new batch under new storage keys: a late duplicate of the first attempt cannot
overwrite the retry's result. Waits between attempts grow exponentially with jitter,
from ``backoff`` up to ``backoff_max`` seconds; attempts are bounded, never endless.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Type, Union

__all__ = ["RetryPolicy", "retry", "Retrying", "DEFAULT_RETRIES"]

#: Extra attempts for invocation failures when nothing is configured.
DEFAULT_RETRIES = 2


def _exception_types(on: Any) -> Tuple[Type[BaseException], ...]:
    if isinstance(on, type):
        on = (on,)
    if not isinstance(on, tuple) or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
        raise TypeError(f"retry 'on' must be an exception class or a tuple of them, not {on!r}")
    return on


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed call is retried (see the module docstring for the causes)."""

    #: Extra attempts after the first (0 disables retrying).
    retries: int = DEFAULT_RETRIES
    #: First wait before a retry, in seconds; doubled (with jitter) for each further attempt.
    backoff: float = 0.5
    #: Longest wait between two attempts, in seconds.
    backoff_max: float = 30.0
    #: Exceptions raised by the function that are worth another attempt.
    on: Tuple[Type[BaseException], ...] = ()
    #: Also retry a call whose worker died while running it.
    worker_lost: bool = False
    #: Also retry a call that ran out of its time limit.
    timeouts: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {self.retries!r}")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"retry {name} must be a number of seconds >= 0, not {value!r}")
        object.__setattr__(self, "on", _exception_types(self.on))
        for name in ("worker_lost", "timeouts"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"retry {name} must be true or false, not {getattr(self, name)!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1 = the first retry)."""
        base = min(self.backoff_max, self.backoff * (2 ** max(0, attempt - 1)))
        return base * random.uniform(0.5, 1.0)

    def retries_error(self, exc: BaseException) -> bool:
        return bool(self.on) and isinstance(exc, self.on)


def as_policy(value: Union[None, int, RetryPolicy], default_retries: int) -> RetryPolicy:
    """The executor's policy from its ``retry=`` argument and the ``retries`` setting."""
    if value is None:
        return RetryPolicy(retries=default_retries)
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return RetryPolicy(retries=value)
    raise TypeError(f"retry must be a cloudpool.RetryPolicy, an int (extra attempts) or None, "
                    f"not {type(value).__name__}")


class Retrying:
    """A function carrying its own retry policy; calls it unchanged on the worker."""

    __slots__ = ("fn", "policy", "__weakref__")

    def __init__(self, fn: Callable[..., Any], policy: RetryPolicy) -> None:
        self.fn = fn
        self.policy = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return (Retrying, (self.fn, self.policy))

    def __repr__(self) -> str:
        return f"retry({self.fn!r}, {self.policy})"


def retry(fn: Callable[..., Any], *, retries: int = DEFAULT_RETRIES, backoff: float = 0.5,
          backoff_max: float = 30.0, on: Any = (), worker_lost: bool = False,
          timeouts: bool = False, policy: Optional[RetryPolicy] = None) -> Retrying:
    """``fn`` with its own retry policy, to hand to ``submit``/``map`` instead of ``fn``."""
    if not callable(fn):
        raise TypeError(f"retry() needs a callable, not {type(fn).__name__}")
    if policy is None:
        policy = RetryPolicy(retries=retries, backoff=backoff, backoff_max=backoff_max, on=on,
                             worker_lost=worker_lost, timeouts=timeouts)
    elif not isinstance(policy, RetryPolicy):
        raise TypeError(f"policy must be a cloudpool.RetryPolicy, not {type(policy).__name__}")
    if isinstance(fn, Retrying):
        fn = fn.fn
    return Retrying(fn, policy)
