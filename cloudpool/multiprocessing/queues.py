"""Queues shared through Redis: ``Queue``, ``SimpleQueue`` and ``JoinableQueue``.

Items are cloudpickled into a Redis list (FIFO across every producer and consumer);
a blocking ``get`` is a ``BLPOP``, served in arrival order by Redis. A bounded queue
(``maxsize > 0``) also holds a shared semaphore of free slots: ``put`` takes a slot
before pushing (blocking, or raising ``queue.Full`` -- an item is never dropped) and
``get`` gives one back. ``JoinableQueue`` keeps the count of unfinished items next to
the list and wakes every ``join()`` when it reaches zero.

Unlike the stdlib's queues, these may be pickled at any time (that is how workers get
them), ``put`` pickles the item immediately (so an unpicklable item raises in the
caller, not in a feeder thread), and ``qsize()`` works everywhere. ``close()`` only
closes this process's handle.
"""
from __future__ import annotations

import pickle
import queue
import time
from typing import Any, Optional

import cloudpickle

from ._redis import (RedisRef, SharedObject, Waiter, blpop_timeout, deadline_for, lost,
                     translate_errors, WAIT_SLICE)
from .synchronize import Semaphore

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]

_PICKLE_PROTOCOL = 5

# KEYS: meta, items, unfinished (JoinableQueue only). ARGV[2]: the pickled item.
_PUT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[2]); touch(KEYS[2]); touch(KEYS[1])
if KEYS[3] then redis.call('INCR', KEYS[3]); touch(KEYS[3]) end
return 1
"""

# KEYS: unfinished, joiners.
_TASK_DONE = """
local u = redis.call('GET', KEYS[1])
if not u then return -1 end
if tonumber(u) <= 0 then return -2 end
u = redis.call('DECR', KEYS[1]); touch(KEYS[1])
if u == 0 then wake_all(KEYS[2], '1') end
return 1
"""

# KEYS: unfinished, joiners, waiter.
_JOIN = """
local u = redis.call('GET', KEYS[1])
if not u then return -1 end
if tonumber(u) == 0 then return 1 end
enqueue(KEYS[2], KEYS[3]); touch(KEYS[1])
return 0
"""


class Queue(SharedObject):
    """``multiprocessing.Queue(maxsize=0)`` whose items live in Redis."""

    _kind = "queue"
    _shared_fields = ("_maxsize", "_slots", "_joinable")
    _joinable = False

    @translate_errors
    def __init__(self, maxsize: int = 0, *, _scope: Optional[RedisRef] = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        self._maxsize = maxsize if maxsize > 0 else 0
        self._new_ref(_scope)
        self._slots: Optional[Semaphore] = Semaphore(self._maxsize, _scope=_scope) if self._maxsize else None
        pipe = self._client.pipeline()
        pipe.set(self._ref.key("m"), self._maxsize)
        if self._joinable:
            pipe.set(self._ref.key("u"), 0)
        self._ref.touch(pipe, self._ref.key("m"), self._ref.key("u"))
        pipe.execute()
        if _scope is None:
            self._own("m", "items", "u", "j")

    def _init_local(self) -> None:
        self._closed = False

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def _push(self, data: bytes) -> None:
        keys = [self._ref.key("m"), self._ref.key("items")]
        if self._joinable:
            keys.append(self._ref.key("u"))
        if self._run("queue_put", _PUT, keys, data) == -1:
            raise lost(self)

    @translate_errors
    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Append ``obj``; a full bounded queue blocks (up to ``timeout``) or raises ``queue.Full``."""
        self._check_closed()
        data = cloudpickle.dumps(obj, protocol=_PICKLE_PROTOCOL)
        if self._slots is not None and not self._slots._acquire_unit(block, timeout):
            raise queue.Full
        try:
            self._push(data)
        except BaseException:
            if self._slots is not None:
                self._slots._release_unit()  # the item is not in: give its slot back
            raise

    @translate_errors
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the oldest item; block up to ``timeout`` or raise ``queue.Empty``."""
        self._check_closed()
        c = self._client
        key = self._ref.key("items")
        deadline = deadline_for(block, timeout)
        if deadline is not None and not block:
            data = c.lpop(key)
        else:
            data = self._blocking_pop(c, key, deadline)
        if data is None:
            if not c.exists(self._ref.key("m")):
                raise lost(self)
            raise queue.Empty
        if self._slots is not None:
            self._slots._release_unit()
        return pickle.loads(data)

    def _blocking_pop(self, c, key: str, deadline: Optional[float]) -> Optional[bytes]:
        while True:
            if deadline is None:
                slice_ = WAIT_SLICE
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return c.lpop(key)
                slice_ = min(WAIT_SLICE, remaining)
            got = c.blpop([key], timeout=blpop_timeout(slice_))
            if got is not None:
                return got[1]
            # A waiting consumer keeps the queue alive, and notices if it was deleted.
            meta = self._ref.key("m")
            if self._ref.ttl_ms:
                c.pexpire(key, self._ref.ttl_ms)
                alive = c.pexpire(meta, self._ref.ttl_ms)
            else:
                alive = c.exists(meta)
            if not alive:
                raise lost(self, " while this process was waiting on it")

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get_nowait(self) -> Any:
        return self.get(False)

    @translate_errors
    def qsize(self) -> int:
        return int(self._client.llen(self._ref.key("items")))

    def empty(self) -> bool:
        return self.qsize() == 0

    @translate_errors
    def full(self) -> bool:
        if self._slots is None:
            return False
        return self._slots.get_value() == 0

    def close(self) -> None:
        """Close this handle: later ``put``/``get`` on it raise ValueError. Other copies are unaffected."""
        self._closed = True

    def join_thread(self) -> None:
        """Nothing to flush (``put`` writes to Redis before returning); only checks ``close()`` came first."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """No feeder thread exists, so there is nothing to cancel."""

    def __repr__(self) -> str:
        bound = f"maxsize={self._maxsize}" if self._maxsize else "unbounded"
        return f"<{type(self).__name__}({bound}) {self._ref.prefix}>"


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: ``task_done()`` per item got, ``join()`` until all are done."""

    _kind = "jqueue"
    _joinable = True

    @translate_errors
    def task_done(self) -> None:
        r = self._run("queue_task_done", _TASK_DONE, [self._ref.key("u"), self._ref.key("j")])
        if r == -1:
            raise lost(self)
        if r == -2:
            raise ValueError("task_done() called too many times")

    @translate_errors
    def join(self) -> None:
        """Block until every item ever put has been matched by a ``task_done()``."""
        ref = self._ref
        wkey = ref.new_waiter_key()
        r = self._run("queue_join", _JOIN, [ref.key("u"), ref.key("j"), wkey])
        if r == -1:
            raise lost(self)
        if r == 1:
            return
        Waiter(self, wkey, ref.key("u"), ref.key("j")).wait_or_cancel(None)


class SimpleQueue(SharedObject):
    """``multiprocessing.SimpleQueue``: an unbounded queue with ``get``/``put``/``empty``/``close``."""

    _kind = "squeue"
    _shared_fields = ("_queue",)

    def __init__(self, *, _scope: Optional[RedisRef] = None) -> None:
        self._queue = Queue(_scope=_scope)
        self._ref = self._queue._ref
        self._init_local()

    def _init_local(self) -> None:
        self._closed = False

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"SimpleQueue {self!r} is closed")

    def put(self, obj: Any) -> None:
        self._check_closed()
        self._queue.put(obj)

    def get(self) -> Any:
        self._check_closed()
        return self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def close(self) -> None:
        self._closed = True

    def __getstate__(self):
        return {"_queue": self._queue}

    def __setstate__(self, state) -> None:
        self._queue = state["_queue"]
        self._ref = self._queue._ref
        self._init_local()

    def __repr__(self) -> str:
        return f"<SimpleQueue {self._ref.prefix}>"
