"""``Pipe()`` and its ``Connection`` ends, shared through Redis.

Each direction of a pipe is a Redis list of messages (raw bytes; ``send`` pickles,
``recv`` unpickles), so either end can be handed to any worker. The API is the stdlib
``multiprocessing.connection.Connection``'s: ``send``/``recv``, ``send_bytes``/
``recv_bytes``/``recv_bytes_into``, ``poll(timeout)``, ``close``, ``readable``/``writable``.

Differences, because an end can be copied into any number of processes: ``close()``
closes only this handle (the common "close the child's end in the parent" idiom works),
so a reader is never told that every writer is gone -- ``recv`` on an abandoned pipe
blocks instead of raising ``EOFError``; use ``poll(timeout)`` or a sentinel message.
There is no file descriptor, so ``fileno()`` and ``multiprocessing.connection.wait``
do not apply.
"""
from __future__ import annotations

import io
import pickle
import time
from multiprocessing import BufferTooShort
from typing import Any, Optional, Tuple

import cloudpickle

from ._redis import (RedisRef, SharedObject, WAIT_SLICE, blpop_timeout, lost, orphan_on_collect,
                     translate_errors)

__all__ = ["Pipe", "Connection"]

# KEYS: meta, outbox. ARGV[2]: the message.
_SEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('RPUSH', KEYS[2], ARGV[2]); touch(KEYS[2]); touch(KEYS[1])
return 1
"""


class Connection(SharedObject):
    """One end of a ``Pipe``: reads its inbox list, writes the other end's."""

    _kind = "pipe"
    _shared_fields = ("_inbox", "_outbox", "_readable", "_writable")

    def __init__(self, ref: RedisRef, inbox: Optional[str], outbox: Optional[str]) -> None:
        self._ref = ref
        self._inbox = inbox
        self._outbox = outbox
        self._readable = inbox is not None
        self._writable = outbox is not None
        self._init_local()

    def _init_local(self) -> None:
        self._closed = False
        self._pair: Optional[_PairToken] = None

    # ------------------------------------------------------------------ state
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readable(self) -> bool:
        return self._readable

    @property
    def writable(self) -> bool:
        return self._writable

    def _check_closed(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def _check_readable(self) -> None:
        if not self._readable:
            raise OSError("connection is write-only")

    def _check_writable(self) -> None:
        if not self._writable:
            raise OSError("connection is read-only")

    def close(self) -> None:
        """Close this handle only (other copies of this end keep working)."""
        self._closed = True

    def fileno(self) -> int:
        raise io.UnsupportedOperation(
            "a cloudpool Connection lives in Redis and has no file descriptor; use poll(timeout)")

    # ------------------------------------------------------------------ sending
    @translate_errors
    def send_bytes(self, buf: Any, offset: int = 0, size: Optional[int] = None) -> None:
        self._check_closed()
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        self._send(bytes(m[offset:offset + size]))

    @translate_errors
    def send(self, obj: Any) -> None:
        self._check_closed()
        self._check_writable()
        self._send(cloudpickle.dumps(obj, protocol=5))

    def _send(self, data: bytes) -> None:
        if self._run("pipe_send", _SEND, [self._ref.key("m"), self._outbox], data) == -1:
            raise lost(self)

    # ------------------------------------------------------------------ receiving
    def _pop(self, timeout: Optional[float]) -> Optional[bytes]:
        """The next message, waiting up to ``timeout`` (None: forever)."""
        c = self._client
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if deadline is None:
                slice_ = WAIT_SLICE
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return c.lpop(self._inbox)
                slice_ = min(WAIT_SLICE, remaining)
            got = c.blpop([self._inbox], timeout=blpop_timeout(slice_))
            if got is not None:
                return got[1]
            self._check_alive(c)

    def _check_alive(self, c) -> None:
        meta = self._ref.key("m")
        if self._ref.ttl_ms:
            c.pexpire(self._inbox, self._ref.ttl_ms)  # a waiting reader keeps its messages alive
            alive = c.pexpire(meta, self._ref.ttl_ms)
        else:
            alive = c.exists(meta)
        if not alive:
            raise lost(self, " while this process was waiting on it")

    @translate_errors
    def recv_bytes(self, maxlength: Optional[int] = None) -> bytes:
        self._check_closed()
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._pop(None)
        if maxlength is not None and len(data) > maxlength:
            self._closed = True  # as the stdlib does: the stream is out of step now
            raise OSError("bad message length")
        return data

    @translate_errors
    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        self._check_closed()
        self._check_readable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        if offset < 0:
            raise ValueError("negative offset")
        if offset > m.nbytes:
            raise ValueError("offset too large")
        data = self._pop(None)
        if len(data) > m.nbytes - offset:
            raise BufferTooShort(data)
        m[offset:offset + len(data)] = data
        return len(data)

    @translate_errors
    def recv(self) -> Any:
        self._check_closed()
        self._check_readable()
        return pickle.loads(self._pop(None))

    @translate_errors
    def poll(self, timeout: Optional[float] = 0.0) -> bool:
        """Whether a message is waiting; waits up to ``timeout`` seconds (None: forever)."""
        self._check_closed()
        self._check_readable()
        c = self._client
        if c.llen(self._inbox):
            return True
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if deadline is None:
                slice_ = WAIT_SLICE
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return bool(c.llen(self._inbox))
                slice_ = min(WAIT_SLICE, remaining)
            # Moving the head of the list onto itself blocks until a message exists,
            # without taking it.
            if c.blmove(self._inbox, self._inbox, blpop_timeout(slice_), "LEFT", "LEFT") is not None:
                return True
            self._check_alive(c)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "duplex" if self._readable and self._writable else ("read" if self._readable else "write")
        return f"<Connection {mode} {self._ref.prefix}{' closed' if self._closed else ''}>"


def Pipe(duplex: bool = True, *, _scope: Optional[RedisRef] = None) -> Tuple[Connection, Connection]:
    """A pair of connected ``Connection`` objects, as ``multiprocessing.Pipe``.

    With ``duplex=False`` the first is receive-only and the second send-only.
    """
    ref = RedisRef.new("pipe", _scope, purpose="cloudpool.multiprocessing.Pipe")
    a2b, b2a = ref.key("a2b"), ref.key("b2a")
    holder = Connection(ref, None, None)
    _init_meta(holder)
    if duplex:
        first, second = Connection(ref, b2a, a2b), Connection(ref, a2b, b2a)
    else:
        first, second = Connection(ref, a2b, None), Connection(ref, None, a2b)
    if _scope is None:
        # The keys belong to the pair: they may expire only once both ends are dropped here.
        token = _PairToken()
        first._pair = second._pair = token
        orphan_on_collect(token, ref.url, [ref.key(k) for k in ("m", "a2b", "b2a")])
    return first, second


class _PairToken:
    """Referenced by both ends of a new pipe; collected when the creator has dropped both."""

    __slots__ = ("__weakref__",)


@translate_errors
def _init_meta(conn: Connection) -> None:
    conn._client.set(conn._ref.key("m"), 1, px=conn._ref.ttl_ms or None)
