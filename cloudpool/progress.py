"""Progress bars (tqdm) for ``Executor.map`` and ``Pool.map``/``starmap``.

The ``progress`` setting decides: ``true`` always draws, ``false`` never, and ``"auto"``
(the default) draws only when stderr is a terminal -- a batch job's log stays clean,
an interactive user sees the job move. In auto mode a bar appears only after the map
has run for half a second, so quick maps inside loops print nothing.

The bar counts calls (items), advanced from each future's done-callback, so it moves as
results arrive whether or not anybody iterates them yet; it closes itself when the
last one is done. tqdm is thread-safe for ``update``; callbacks run on the manager
thread (or the caller's, for futures already done).
"""
from __future__ import annotations

import sys
import threading
from concurrent.futures import Future
from typing import Any, Optional

#: Seconds a map must run before an automatic bar is drawn.
AUTO_DELAY = 0.5


def enabled(setting: Any) -> bool:
    """Whether the ``progress`` setting asks for a bar in this process."""
    if setting == "auto":
        stream = sys.stderr
        try:
            return bool(stream is not None and stream.isatty())
        except (AttributeError, ValueError):  # a closed or replaced stderr
            return False
    return bool(setting)


class Tracker:
    """One bar over ``total`` items; ``watch(future, n)`` adds ``n`` when it is done."""

    def __init__(self, total: int, *, desc: str, setting: Any) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self._left = total
        self._bar = tqdm(total=total, desc=desc, unit="call", dynamic_ncols=True, leave=True,
                         delay=AUTO_DELAY if setting == "auto" else 0.0, file=sys.stderr)

    def watch(self, future: Future, items: int = 1) -> None:
        future.add_done_callback(lambda _f: self._advance(items))

    def _advance(self, items: int) -> None:
        with self._lock:
            self._left -= items
            done = self._left <= 0
        self._bar.update(items)
        if done:
            self._bar.close()

    def close(self) -> None:
        self._bar.close()


def tracker(total: int, *, desc: str, setting: Any) -> Optional[Tracker]:
    """A ``Tracker`` if the setting asks for one and there is something to count."""
    if total <= 1 or not enabled(setting):
        return None
    return Tracker(total, desc=desc, setting=setting)


def describe(fn: Any) -> str:
    """A short label for a bar: the function's name."""
    inner = getattr(fn, "fn", fn)  # cloudpool.retry wrappers
    return getattr(inner, "__qualname__", None) or type(inner).__name__
