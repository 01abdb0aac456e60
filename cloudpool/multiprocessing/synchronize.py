"""Synchronization primitives shared through Redis: ``Lock``, ``RLock``, ``Semaphore``,
``BoundedSemaphore``, ``Condition``, ``Event`` and ``Barrier``.

Each behaves as its ``multiprocessing`` namesake -- same methods, return values,
timeouts and exceptions -- but its state lives in Redis, so it works between the client
and workers on any backend (a Lambda and a laptop can share a ``Lock``). Pickling one
sends its Redis URL and key names; every copy is the same object.

How they work (all state changes are single Lua scripts, so they are atomic):

- a semaphore is a counter plus a FIFO queue of waiters; ``release`` hands its unit
  straight to the first live waiter (``_redis.Waiter``), so waiters are served in
  order and never lose a wake-up. ``Lock`` is a semaphore bounded at 1, ``RLock`` adds
  per-thread ownership and recursion (kept in the acquiring process, as the stdlib does);
- ``Condition.wait`` queues a waiter *before* releasing the lock, so a ``notify`` issued
  between the release and the wait still wakes it;
- ``Event`` is a flag plus waiters woken all at once by ``set``;
- ``Barrier`` counts arrivals per generation; the last party runs ``action`` and then
  releases the generation, and a timeout, ``abort`` or a failing action breaks it.

Differences from the stdlib: a process killed while *holding* a lock leaves it held (as
with the stdlib's semaphores); one killed while *waiting* is skipped after its lease
lapses (``_redis.LEASE_MS``). Redis Cluster is not supported (scripts touch waiter keys
they do not declare).
"""
from __future__ import annotations

import threading
import time
from threading import BrokenBarrierError
from typing import Any, Callable, Optional, Tuple

from ._redis import (RedisRef, SharedObject, Waiter, deadline_for, lost, translate_errors)

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier"]


# ---------------------------------------------------------------------------- semaphores
# KEYS: value, queue, waiter. ARGV[2]: '1' to queue when no unit is free.
_SEM_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if tonumber(v) > 0 and redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DECR', KEYS[1]); touch(KEYS[1]); return 1
end
if ARGV[2] ~= '1' then return 0 end
enqueue(KEYS[2], KEYS[3]); touch(KEYS[1])
return 2
"""

# KEYS: value, queue. ARGV[2]: the bound (0: unbounded, -1: nothing may be released).
_SEM_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return -1 end
if wake_one(KEYS[2], '1') == 1 then touch(KEYS[1]); return 1 end
local maxv = tonumber(ARGV[2])
if maxv ~= 0 and tonumber(v) >= maxv then return -2 end
redis.call('INCR', KEYS[1]); touch(KEYS[1])
return 1
"""


class Semaphore(SharedObject):
    """``multiprocessing.Semaphore``: a counter shared through Redis; waiters are served FIFO."""

    _kind = "semaphore"
    _shared_fields = ("_maxvalue",)
    _maxvalue = 0  # 0: unbounded

    def __init__(self, value: int = 1, *, _scope: Optional[RedisRef] = None) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"the semaphore value must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._setup(value, self._bound_for(value), _scope)

    def _bound_for(self, value: int) -> int:
        return 0

    @translate_errors
    def _setup(self, value: int, maxvalue: int, scope: Optional[RedisRef]) -> None:
        self._new_ref(scope)
        self._maxvalue = maxvalue
        self._client.set(self._ref.key("v"), value, px=self._ref.ttl_ms or None)
        if scope is None:
            self._own("v", "q")

    def _acquire_unit(self, block: bool, timeout: Optional[float]) -> bool:
        if timeout is not None and timeout <= 0:
            block = False
        ref = self._ref
        wkey = ref.new_waiter_key()
        r = self._run("sem_acquire", _SEM_ACQUIRE, [ref.key("v"), ref.key("q"), wkey], "1" if block else "0")
        if r == -1:
            raise lost(self)
        if r != 2:
            return r == 1
        waiter = Waiter(self, wkey, ref.key("v"), ref.key("q"), mode="sem")
        return waiter.wait_or_cancel(deadline_for(block, timeout)) is not None

    def _give_back(self, token: bytes) -> None:
        # A unit granted while the wait was interrupted (e.g. KeyboardInterrupt): return it.
        self._release_unit()

    def _release_unit(self) -> None:
        r = self._run("sem_release", _SEM_RELEASE, [self._ref.key("v"), self._ref.key("q")], self._maxvalue)
        if r == -1:
            raise lost(self)
        if r == -2:
            raise ValueError("semaphore or lock released too many times")

    @translate_errors
    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        """Take one unit; wait up to ``timeout`` seconds (forever if None). True if taken."""
        return self._acquire_unit(block, timeout)

    @translate_errors
    def release(self) -> None:
        self._release_unit()

    @translate_errors
    def get_value(self) -> int:
        v = self._client.get(self._ref.key("v"))
        if v is None:
            raise lost(self)
        return int(v)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        try:
            value = str(self.get_value())
        except Exception as exc:  # noqa: BLE001 - repr must not raise; say why the value is missing
            value = f"unknown ({type(exc).__name__})"
        extra = f", maxvalue={self._maxvalue}" if self._maxvalue else ""
        return f"<{type(self).__name__}(value={value}{extra}) {self._ref.prefix}>"


class BoundedSemaphore(Semaphore):
    """``multiprocessing.BoundedSemaphore``: releasing above the initial value raises ValueError."""

    _kind = "bsemaphore"

    def _bound_for(self, value: int) -> int:
        if value == 0:
            return -1  # never releasable: any release is one too many
        return value


class Lock(BoundedSemaphore):
    """``multiprocessing.Lock``: a semaphore bounded at 1; any thread or process may release it."""

    _kind = "lock"

    def __init__(self, *, _scope: Optional[RedisRef] = None) -> None:
        self._setup(1, 1, _scope)

    def _init_local(self) -> None:
        self._owner: Optional[int] = None

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        got = super().acquire(block, timeout)
        if got:
            self._owner = threading.get_ident()
        return got

    def release(self) -> None:
        super().release()
        self._owner = None

    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident()

    def _release_save(self) -> Any:
        self.release()
        return None

    def _acquire_restore(self, saved: Any) -> None:
        self.acquire()

    def __repr__(self) -> str:
        try:
            free = self.get_value() == 1
        except Exception as exc:  # noqa: BLE001 - repr must not raise
            return f"<{type(self).__name__}(unknown: {type(exc).__name__}) {self._ref.prefix}>"
        if free:
            owner = "None"
        elif self._owner is not None:
            owner = f"thread {self._owner} of this process"
        else:
            owner = "SomeOtherThreadOrProcess"
        return f"<{type(self).__name__}(owner={owner}) {self._ref.prefix}>"


class RLock(Lock):
    """``multiprocessing.RLock``: re-entrant for the thread (of this process) that holds it."""

    _kind = "rlock"

    def _init_local(self) -> None:
        self._owner = None
        self._count = 0
        self._local_lock = threading.Lock()

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        me = threading.get_ident()
        with self._local_lock:
            if self._owner == me:
                self._count += 1
                return True
        if not Semaphore.acquire(self, block, timeout):
            return False
        with self._local_lock:
            self._owner = me
            self._count = 1
        return True

    def release(self) -> None:
        with self._local_lock:
            if self._owner != threading.get_ident():
                raise AssertionError("attempt to release recursive lock not owned by thread")
            self._count -= 1
            if self._count:
                return
            self._owner = None
        Semaphore.release(self)

    def _release_save(self) -> Tuple[Optional[int], int]:
        with self._local_lock:
            saved = (self._owner, self._count)
            self._owner, self._count = None, 0
        Semaphore.release(self)
        return saved

    def _acquire_restore(self, saved: Tuple[Optional[int], int]) -> None:
        Semaphore.acquire(self)
        with self._local_lock:
            self._owner, self._count = saved

    def __repr__(self) -> str:
        base = super().__repr__()
        return base[:-1] + f" count={self._count}>" if self._owner is not None else base


# ---------------------------------------------------------------------------- Condition
# KEYS: alive marker, queue, waiter.
_COND_REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
enqueue(KEYS[2], KEYS[3]); touch(KEYS[1])
return 0
"""

# KEYS: alive marker, queue. ARGV[2]: how many to wake.
_COND_NOTIFY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = tonumber(ARGV[2]); local k = 0
while k < n and wake_one(KEYS[2], '1') == 1 do k = k + 1 end
touch(KEYS[1])
return k
"""


class LockDelegate:
    """Lock methods that forward to ``self._lock`` (Condition, and Value/Array's lock)."""

    _lock: "Lock"

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        return self._lock.acquire(block, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)


class Condition(LockDelegate, SharedObject):
    """``multiprocessing.Condition`` over a shared ``Lock``/``RLock`` (an ``RLock`` by default)."""

    _kind = "condition"
    _shared_fields = ("_lock",)

    @translate_errors
    def __init__(self, lock: Optional[Lock] = None, *, _scope: Optional[RedisRef] = None) -> None:
        if lock is None:
            lock = RLock(_scope=_scope)
        elif not isinstance(lock, Lock):
            raise TypeError(
                f"Condition needs a cloudpool.multiprocessing Lock or RLock (shared through Redis), "
                f"not {type(lock).__module__}.{type(lock).__qualname__}; create it with "
                f"cloudpool.multiprocessing.Lock()/RLock()"
            )
        self._lock = lock
        self._new_ref(_scope)
        self._client.set(self._ref.key("a"), 1, px=self._ref.ttl_ms or None)
        if _scope is None:
            self._own("a", "q")


    @translate_errors
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Release the lock, wait for a notify (or the timeout), re-acquire; True if notified."""
        if not self._lock._is_owned():
            raise AssertionError("must acquire() condition before using wait()")
        ref = self._ref
        wkey = ref.new_waiter_key()
        # Queued before the lock is released: a notify right after the release reaches us.
        if self._run("cond_register", _COND_REGISTER, [ref.key("a"), ref.key("q"), wkey]) == -1:
            raise lost(self)
        waiter = Waiter(self, wkey, ref.key("a"), ref.key("q"))
        saved = self._lock._release_save()
        try:
            token = waiter.wait_or_cancel(deadline_for(True, timeout))
        finally:
            self._lock._acquire_restore(saved)
        return token is not None

    def wait_for(self, predicate: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.wait(remaining)
            else:
                self.wait()
            result = predicate()
        return result

    @translate_errors
    def notify(self, n: int = 1) -> None:
        if not self._lock._is_owned():
            raise AssertionError("lock is not owned")
        if self._run("cond_notify", _COND_NOTIFY, [self._ref.key("a"), self._ref.key("q")], n) == -1:
            raise lost(self)

    def notify_all(self) -> None:
        self.notify(n=2 ** 31)

    notifyAll = notify_all

    def __repr__(self) -> str:
        return f"<Condition({self._lock!r}) {self._ref.prefix}>"


# ---------------------------------------------------------------------------- Event
# KEYS: flag, queue, waiter.
_EVENT_WAIT = """
local f = redis.call('GET', KEYS[1])
if not f then return -1 end
if f == '1' then return 1 end
enqueue(KEYS[2], KEYS[3]); touch(KEYS[1])
return 0
"""

# KEYS: flag, queue. ARGV[2]: '1' to set, '0' to clear.
_EVENT_SET = """
if not redis.call('GET', KEYS[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[2]); touch(KEYS[1])
if ARGV[2] == '1' then wake_all(KEYS[2], '1') end
return 1
"""


class Event(SharedObject):
    """``multiprocessing.Event``: a flag shared through Redis; ``set`` wakes every waiter."""

    _kind = "event"

    @translate_errors
    def __init__(self, *, _scope: Optional[RedisRef] = None) -> None:
        self._new_ref(_scope)
        self._client.set(self._ref.key("f"), 0, px=self._ref.ttl_ms or None)
        if _scope is None:
            self._own("f", "q")

    @translate_errors
    def is_set(self) -> bool:
        f = self._client.get(self._ref.key("f"))
        if f is None:
            raise lost(self)
        return f == b"1"

    def _set_flag(self, value: str) -> None:
        if self._run("event_set", _EVENT_SET, [self._ref.key("f"), self._ref.key("q")], value) == -1:
            raise lost(self)

    @translate_errors
    def set(self) -> None:
        self._set_flag("1")

    @translate_errors
    def clear(self) -> None:
        self._set_flag("0")

    @translate_errors
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the flag is set or ``timeout`` passes; returns the flag."""
        ref = self._ref
        wkey = ref.new_waiter_key()
        r = self._run("event_wait", _EVENT_WAIT, [ref.key("f"), ref.key("q"), wkey])
        if r == -1:
            raise lost(self)
        if r == 1:
            return True
        waiter = Waiter(self, wkey, ref.key("f"), ref.key("q"))
        if waiter.wait_or_cancel(deadline_for(True, timeout)) is not None:
            return True
        return self.is_set()

    def __repr__(self) -> str:
        try:
            state = "set" if self.is_set() else "unset"
        except Exception as exc:  # noqa: BLE001 - repr must not raise
            state = f"unknown ({type(exc).__name__})"
        return f"<Event({state}) {self._ref.prefix}>"


# ---------------------------------------------------------------------------- Barrier
# Hash fields: count (arrivals in the current generation), gen, broken.
# KEYS: hash, waiter. ARGV[2]: parties, ARGV[3]: prefix of the per-generation waiter lists.
_BARRIER_ARRIVE = """
local st = redis.call('HMGET', KEYS[1], 'count', 'gen', 'broken')
if not st[1] then return {-1} end
if st[3] == '1' then return {-2} end
local count = tonumber(st[1]); local gen = tonumber(st[2])
if count + 1 >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'count', 0, 'gen', gen + 1); touch(KEYS[1])
  return {count, gen, 1}
end
redis.call('HSET', KEYS[1], 'count', count + 1)
enqueue(ARGV[3] .. gen, KEYS[2]); touch(KEYS[1])
return {count, gen, 0}
"""

# KEYS: hash. ARGV[2]: list prefix, ARGV[3]: the generation to release.
_BARRIER_RELEASE = """
local b = redis.call('HGET', KEYS[1], 'broken')
if not b then return -1 end
if b == '1' then return -2 end
wake_all(ARGV[2] .. ARGV[3], 'ok'); touch(KEYS[1])
return 1
"""

# KEYS: hash. ARGV[2]: list prefix, ARGV[3]: '1' to break, '0' to reset.
_BARRIER_BREAK = """
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then return -1 end
gen = tonumber(gen)
wake_all(ARGV[2] .. gen, 'broken'); wake_all(ARGV[2] .. (gen - 1), 'broken')
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'broken', 1)
else
  redis.call('HSET', KEYS[1], 'broken', 0, 'count', 0, 'gen', gen + 1)
end
touch(KEYS[1])
return 1
"""


class Barrier(SharedObject):
    """``multiprocessing.Barrier``: ``parties`` processes (anywhere) wait for each other.

    ``wait`` returns an arrival index in ``range(parties)``; the last to arrive runs
    ``action`` (pickled with the barrier) before anyone is released. A timeout, ``abort()``
    or a failing action breaks the barrier: every waiter raises ``BrokenBarrierError``.
    """

    _kind = "barrier"
    _shared_fields = ("_parties", "_action", "_timeout")

    @translate_errors
    def __init__(self, parties: int, action: Optional[Callable[[], Any]] = None,
                 timeout: Optional[float] = None, *, _scope: Optional[RedisRef] = None) -> None:
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise TypeError(f"parties must be an int, not {type(parties).__name__}")
        if parties < 1:
            raise ValueError("parties must be > 0")
        if action is not None and not callable(action):
            raise TypeError("action must be callable or None")
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._new_ref(_scope)
        c = self._client
        pipe = c.pipeline()
        pipe.hset(self._ref.key("b"), mapping={"count": 0, "gen": 0, "broken": 0})
        self._ref.touch(pipe, self._ref.key("b"))
        pipe.execute()
        if _scope is None:
            self._own("b")

    @property
    def _lists(self) -> str:
        return self._ref.key("g:")

    def _break(self, broken: bool) -> None:
        if self._run("barrier_break", _BARRIER_BREAK, [self._ref.key("b")], self._lists, "1" if broken else "0") == -1:
            raise lost(self)

    @translate_errors
    def wait(self, timeout: Optional[float] = None) -> int:
        if timeout is None:
            timeout = self._timeout
        ref = self._ref
        wkey = ref.new_waiter_key()
        reply = self._run("barrier_arrive", _BARRIER_ARRIVE, [ref.key("b"), wkey], self._parties, self._lists)
        if reply[0] == -1:
            raise lost(self)
        if reply[0] == -2:
            raise BrokenBarrierError
        index, gen, last = reply
        if last:
            if self._action is not None:
                try:
                    self._action()
                except BaseException:
                    self._break(True)
                    raise
            r = self._run("barrier_release", _BARRIER_RELEASE, [ref.key("b")], self._lists, gen)
            if r == -1:
                raise lost(self)
            if r == -2:
                raise BrokenBarrierError
            return index
        waiter = Waiter(self, wkey, ref.key("b"), f"{self._lists}{gen}")
        token = waiter.wait_or_cancel(deadline_for(True, timeout))
        if token is None:
            self._break(True)  # a timeout breaks the barrier for everyone, as in threading
            raise BrokenBarrierError
        if token != b"ok":
            raise BrokenBarrierError
        return index

    @translate_errors
    def reset(self) -> None:
        """Back to the empty state; parties waiting now get ``BrokenBarrierError``."""
        self._break(False)

    @translate_errors
    def abort(self) -> None:
        """Break the barrier: waiting and future ``wait`` calls raise ``BrokenBarrierError``."""
        self._break(True)

    @property
    def parties(self) -> int:
        return self._parties

    @property
    @translate_errors
    def n_waiting(self) -> int:
        count, broken = self._client.hmget(self._ref.key("b"), "count", "broken")
        if count is None:
            raise lost(self)
        return 0 if broken == b"1" else int(count)

    @property
    @translate_errors
    def broken(self) -> bool:
        b = self._client.hget(self._ref.key("b"), "broken")
        if b is None:
            raise lost(self)
        return b == b"1"

    def __repr__(self) -> str:
        return f"<Barrier(parties={self._parties}) {self._ref.prefix}>"
