"""Lithops' ``RetryingFunctionExecutor``: failed calls run again, with the same input.

This module owns the retry bookkeeping Lithops programs get from
``lithops.RetryingFunctionExecutor``: which call failed how often, when to submit it again
(on the wrapped ``FunctionExecutor``) and when its failure stands. Any failure counts: the
function raised, ran past its time limit or lost its worker.
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._lithops_config import unsupported as _unsupported

# cloudpool.compat.lithops imports this module at its end; importing it back here at
# module level would make the import order matter, so the executor type and the
# return_when arithmetic are looked up when used.
_ALL_COMPLETED = 100  # lithops.ALL_COMPLETED

__all__ = ["RetryingFunctionExecutor", "RetryingFuture"]


class RetryingFuture:
    """One call of ``RetryingFunctionExecutor.map``: its current attempt's future and how
    often it may be run again after failing."""

    def __init__(self, response_future: cf.Future, map_function: Callable, input: Any,
                 retries: Optional[int] = None, **map_kwargs: Any) -> None:
        self.response_future = response_future
        self.map_function = map_function
        self.input = input
        self.retries = retries or 0
        self.map_kwargs = map_kwargs
        self.failure_count = 0
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self.response_future.done()

    @property
    def error(self) -> bool:
        f = self.response_future
        return f.done() and (f.cancelled() or f.exception() is not None)

    def _should_retry(self) -> bool:
        return not self.cancelled and self.failure_count <= self.retries

    def _retry(self, executor: Any) -> None:
        self.response_future = executor.map(self.map_function, [self.input], **self.map_kwargs)[0]

    def cancel(self) -> None:
        """No more attempts after the running one (which is not stopped)."""
        self.cancelled = True

    def status(self, throw_except: bool = True, **_ignored: Any) -> str:
        if not self.done:
            return "running"
        if self.error:
            if throw_except:
                self.response_future.result()
            return "error"
        return "success"

    def result(self, throw_except: bool = True, **_ignored: Any) -> Any:
        """The call's result; its last attempt's exception if that failed (``None`` without ``throw_except``)."""
        cf.wait([self.response_future])
        if not throw_except and self.error:
            return None
        return self.response_future.result()

    def __repr__(self) -> str:
        return f"<RetryingFuture failures={self.failure_count} retries={self.retries} {self.response_future!r}>"


class RetryingFunctionExecutor:
    """Lithops' ``RetryingFunctionExecutor``: ``map(..., retries=N)`` runs a call again, with
    the same input, when it fails (the function raised, timed out or its worker died), at
    most ``N`` times; ``wait`` does the retrying. ``retries`` defaults to the executor's
    Lithops config ``lithops.retries`` (0)."""

    def __init__(self, executor: Any) -> None:
        from .lithops import FunctionExecutor

        if not isinstance(executor, FunctionExecutor):
            raise TypeError(f"RetryingFunctionExecutor wraps a FunctionExecutor, not {type(executor).__name__}")
        self.executor = executor
        self.config = executor.config

    def __enter__(self) -> "RetryingFunctionExecutor":
        self.executor.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.executor.__exit__(*exc_info)

    def map(self, map_function: Callable, map_iterdata: Any, chunksize: Optional[int] = None,
            extra_args: Any = None, extra_env: Optional[Dict[str, str]] = None,
            runtime_memory: Optional[int] = None, obj_chunk_size: Optional[int] = None,
            obj_chunk_number: Optional[int] = None, obj_newline: Optional[str] = "\n",
            timeout: Optional[int] = None, include_modules: Optional[List[str]] = None,
            exclude_modules: Optional[List[str]] = None, retries: Optional[int] = None) -> List[RetryingFuture]:
        if retries is None:
            retries = (self.config.get("lithops") or {}).get("retries", 0)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        kwargs = dict(chunksize=chunksize, extra_args=extra_args, extra_env=extra_env,
                      runtime_memory=runtime_memory, obj_chunk_size=obj_chunk_size,
                      obj_chunk_number=obj_chunk_number, obj_newline=obj_newline, timeout=timeout,
                      include_modules=include_modules, exclude_modules=exclude_modules)
        items = list(map_iterdata) if not isinstance(map_iterdata, (str, bytes, dict, tuple)) else [map_iterdata]
        futures = self.executor.map(map_function, items, **kwargs)
        if len(futures) != len(items):
            raise _unsupported("RetryingFunctionExecutor.map over object URLs (one item, many calls)",
                               "list the objects' URLs yourself, one item per call")
        return [RetryingFuture(f, map_function, item, retries, **kwargs) for item, f in zip(items, futures)]

    def wait(self, fs: List[RetryingFuture], throw_except: bool = True, return_when: int = _ALL_COMPLETED,
             download_results: bool = False, timeout: Optional[float] = None,
             threadpool_size: Optional[int] = None, wait_dur_sec: Optional[float] = None,
             show_progressbar: Optional[bool] = None) -> Tuple[List[RetryingFuture], List[RetryingFuture]]:
        """Wait as ``FunctionExecutor.wait`` does, running failed calls again while they have
        retries left; ``(done, pending)``. A call whose retries are used up counts as done
        (with ``throw_except``, its exception is raised)."""
        from .lithops import _needed

        needed = _needed(return_when, len(fs))
        deadline = None if timeout is None else time.monotonic() + timeout
        final: Dict[int, RetryingFuture] = {}
        while True:
            for rf in fs:
                if id(rf) in final or not rf.done:
                    continue
                if rf.error:
                    rf.failure_count += 1
                    if rf._should_retry():
                        rf._retry(self.executor)
                        continue
                final[id(rf)] = rf
            pending = [rf.response_future for rf in fs if id(rf) not in final]
            if len(final) >= needed or not pending:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            cf.wait(pending, timeout=remaining, return_when=cf.FIRST_COMPLETED)
        done = [rf for rf in fs if id(rf) in final]
        if throw_except:
            for rf in done:
                if rf.error:
                    rf.response_future.result()
        return done, [rf for rf in fs if id(rf) not in final]

    def clean(self, fs: Any = None, cs: Any = None, clean_cloudobjects: bool = True,
              clean_fn: bool = False, force: bool = False) -> None:
        if fs is not None:
            fs = [f.response_future if isinstance(f, RetryingFuture) else f for f in
                  (fs if isinstance(fs, list) else [fs])]
        self.executor.clean(fs, cs, clean_cloudobjects, clean_fn, force)
