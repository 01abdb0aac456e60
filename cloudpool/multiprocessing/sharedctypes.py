"""``Value``, ``Array``, ``RawValue`` and ``RawArray`` shared through Redis.

A value or array of a ctypes simple type (``'i'``, ``'d'``, ``'c'``, ``ctypes.c_long``,
...) is stored as its C bytes in one Redis string, packed and unpacked with ctypes
itself, so overflow, truncation and ``bytes``/``str`` conversions match the stdlib's
shared memory exactly. Each element read or write is one atomic Redis command;
compound updates (``v.value += 1``) need the lock, as with the stdlib:
``with v.get_lock(): v.value += 1``.

``Value``/``Array`` carry a shared ``RLock`` (or the ``lock`` given); ``lock=False`` and
the ``Raw*`` forms have none. ``get_obj()`` returns the object itself: there is no local
ctypes buffer (so ``numpy.frombuffer(arr.get_obj())`` does not apply). ctypes
``Structure`` types are not supported.
"""
from __future__ import annotations

import ctypes
from multiprocessing.sharedctypes import typecode_to_type
from typing import Any, Iterator, List, Optional, Sequence, Union

from ._redis import RedisRef, SharedObject, lost, translate_errors
from .synchronize import Lock, LockDelegate, RLock

__all__ = ["Value", "Array", "RawValue", "RawArray"]

TypeLike = Union[str, type]


def _ctype(typecode_or_type: TypeLike) -> type:
    if isinstance(typecode_or_type, str):
        try:
            return typecode_to_type[typecode_or_type]
        except KeyError:
            raise ValueError(f"bad typecode {typecode_or_type!r} (must be one of "
                             f"{''.join(sorted(typecode_to_type))})") from None
    t = typecode_or_type
    if isinstance(t, type) and issubclass(t, ctypes._SimpleCData):
        return t
    raise TypeError(
        f"cloudpool.multiprocessing shares values of ctypes simple types only (a typecode such as "
        f"'i' or 'd', or ctypes.c_int, c_double, c_char, ...), not {t!r}; share a Structure as a "
        f"Manager().Namespace() or an Array per field"
    )


def _resolve_lock(lock: Any, scope: Optional[RedisRef]) -> Optional[Lock]:
    if lock is True or lock is None:
        return RLock(_scope=scope)
    if lock is False:
        return None
    if isinstance(lock, Lock):
        return lock
    raise TypeError(
        f"lock must be True, False or a cloudpool.multiprocessing Lock/RLock (shared through Redis), "
        f"not {type(lock).__module__}.{type(lock).__qualname__}"
    )


class _Synchronized(LockDelegate):
    """The lock methods of ``Value``/``Array`` (stdlib ``Synchronized*``)."""

    _lock: Lock

    def get_lock(self) -> Lock:
        return self._lock


class SharedValue(SharedObject):
    """One ctypes value in Redis (``RawValue``; see ``SynchronizedValue`` for ``Value``)."""

    _kind = "value"
    _shared_fields = ("_type",)

    @translate_errors
    def __init__(self, typecode_or_type: TypeLike, *args: Any, _scope: Optional[RedisRef] = None) -> None:
        self._type = _ctype(typecode_or_type)
        initial = bytes(self._type(*args))
        self._new_ref(_scope)
        self._client.set(self._ref.key("d"), initial, px=self._ref.ttl_ms or None)
        if _scope is None:
            self._own("d")

    @property
    @translate_errors
    def value(self) -> Any:
        data = self._client.get(self._ref.key("d"))
        if data is None:
            raise lost(self)
        return self._type.from_buffer_copy(data).value

    @value.setter
    @translate_errors
    def value(self, new: Any) -> None:
        data = bytes(self._type(new))
        # XX: only while it exists, so a deleted value is reported rather than recreated.
        if not self._client.set(self._ref.key("d"), data, px=self._ref.ttl_ms or None, xx=True):
            raise lost(self)

    def get_obj(self) -> "SharedValue":
        return self

    def __repr__(self) -> str:
        try:
            shown = repr(self.value)
        except Exception as exc:  # noqa: BLE001 - repr must not raise
            shown = f"<unavailable: {type(exc).__name__}>"
        return f"<{type(self).__name__}({self._type.__name__}, {shown}) {self._ref.prefix}>"


class SynchronizedValue(_Synchronized, SharedValue):
    """``multiprocessing.Value``: a shared value plus its lock."""

    _shared_fields = ("_type", "_lock")

    def __init__(self, typecode_or_type: TypeLike, *args: Any, lock: Any = True,
                 _scope: Optional[RedisRef] = None) -> None:
        self._lock = _resolve_lock(lock, _scope)
        SharedValue.__init__(self, typecode_or_type, *args, _scope=_scope)


class SharedArray(SharedObject):
    """A fixed-length ctypes array in Redis (``RawArray``; see ``SynchronizedArray``)."""

    _kind = "array"
    _shared_fields = ("_type", "_length")

    @translate_errors
    def __init__(self, typecode_or_type: TypeLike, size_or_initializer: Union[int, Sequence[Any]],
                 *, _scope: Optional[RedisRef] = None) -> None:
        self._type = _ctype(typecode_or_type)
        if isinstance(size_or_initializer, int) and not isinstance(size_or_initializer, bool):
            if size_or_initializer < 0:
                raise ValueError("array size must be >= 0")
            self._length = size_or_initializer
            initial = bytes(ctypes.sizeof(self._type) * self._length)
        else:
            items = list(size_or_initializer)
            self._length = len(items)
            initial = bytes((self._type * self._length)(*items))
        self._new_ref(_scope)
        c = self._client
        c.set(self._ref.key("d"), initial, px=self._ref.ttl_ms or None)
        if _scope is None:
            self._own("d")

    @property
    def _itemsize(self) -> int:
        return ctypes.sizeof(self._type)

    def __len__(self) -> int:
        return self._length

    def _read(self, start: int, stop: int) -> bytes:
        """Bytes of elements ``[start, stop)``."""
        size = self._itemsize
        if stop <= start:
            if not self._client.exists(self._ref.key("d")):
                raise lost(self)
            return b""
        data = self._client.getrange(self._ref.key("d"), start * size, stop * size - 1)
        if len(data) != (stop - start) * size:
            raise lost(self)
        return data

    def _write(self, start: int, data: bytes) -> None:
        pipe = self._client.pipeline()
        pipe.exists(self._ref.key("d"))
        pipe.setrange(self._ref.key("d"), start * self._itemsize, data)
        self._ref.touch(pipe, self._ref.key("d"))
        if not pipe.execute()[0]:
            self._client.delete(self._ref.key("d"))  # SETRANGE just recreated it, zero-padded
            raise lost(self)

    def _index(self, i: int) -> int:
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError("invalid index")
        return i

    def _decode(self, data: bytes, n: int) -> List[Any]:
        return (self._type * n).from_buffer_copy(data)[:]

    @translate_errors
    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step == 1:
                return self._decode(self._read(start, stop), max(0, stop - start))
            return self._decode(self._read(0, self._length), self._length)[index]
        i = self._index(index.__index__())
        return self._type.from_buffer_copy(self._read(i, i + 1)).value

    @translate_errors
    def __setitem__(self, index: Union[int, slice], value: Any) -> None:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            positions = range(start, stop, step)
            values = list(value)
            if len(values) != len(positions):
                raise ValueError("Can only assign sequence of same size")
            if not positions:
                return
            if step == 1:
                self._write(start, bytes((self._type * len(values))(*values)))
                return
            pipe = self._client.pipeline()  # MULTI/EXEC: every element lands, or none
            pipe.exists(self._ref.key("d"))
            for pos, v in zip(positions, values):
                pipe.setrange(self._ref.key("d"), pos * self._itemsize, bytes(self._type(v)))
            self._ref.touch(pipe, self._ref.key("d"))
            if not pipe.execute()[0]:
                self._client.delete(self._ref.key("d"))
                raise lost(self)
            return
        i = self._index(index.__index__())
        self._write(i, bytes(self._type(value)))

    def __iter__(self) -> Iterator[Any]:
        return iter(self[:])

    # -- ``c_char``/``c_wchar`` arrays, as ctypes exposes them
    def _check_text(self) -> None:
        if self._type not in (ctypes.c_char, ctypes.c_wchar):
            raise AttributeError(f"{self._type.__name__} arrays have no 'value'/'raw'; only 'c' and 'u' arrays do")

    @property
    @translate_errors
    def value(self) -> Union[bytes, str]:
        self._check_text()
        arr = (self._type * self._length).from_buffer_copy(self._read(0, self._length))
        return arr.value

    @value.setter
    @translate_errors
    def value(self, new: Union[bytes, str]) -> None:
        self._check_text()
        arr = (self._type * self._length)()
        arr.value = new
        self._write(0, bytes(arr))

    @property
    @translate_errors
    def raw(self) -> bytes:
        if self._type is not ctypes.c_char:
            raise AttributeError("only 'c' arrays have 'raw'")
        return self._read(0, self._length)

    @raw.setter
    @translate_errors
    def raw(self, new: bytes) -> None:
        if self._type is not ctypes.c_char:
            raise AttributeError("only 'c' arrays have 'raw'")
        arr = (self._type * self._length)()
        arr.raw = new
        self._write(0, bytes(arr))

    def get_obj(self) -> "SharedArray":
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._type.__name__}, {self._length}) {self._ref.prefix}>"


class SynchronizedArray(_Synchronized, SharedArray):
    """``multiprocessing.Array``: a shared array plus its lock."""

    _shared_fields = ("_type", "_length", "_lock")

    def __init__(self, typecode_or_type: TypeLike, size_or_initializer: Union[int, Sequence[Any]],
                 *, lock: Any = True, _scope: Optional[RedisRef] = None) -> None:
        self._lock = _resolve_lock(lock, _scope)
        SharedArray.__init__(self, typecode_or_type, size_or_initializer, _scope=_scope)


def RawValue(typecode_or_type: TypeLike, *args: Any) -> SharedValue:
    """A shared value without a lock."""
    return SharedValue(typecode_or_type, *args)


def RawArray(typecode_or_type: TypeLike, size_or_initializer: Union[int, Sequence[Any]]) -> SharedArray:
    """A shared array without a lock."""
    return SharedArray(typecode_or_type, size_or_initializer)


def Value(typecode_or_type: TypeLike, *args: Any, lock: Any = True) -> Union[SharedValue, SynchronizedValue]:
    """A shared value; with ``lock`` (default) it has ``get_lock()`` like the stdlib's."""
    if lock is False:
        return SharedValue(typecode_or_type, *args)
    return SynchronizedValue(typecode_or_type, *args, lock=lock)


def Array(typecode_or_type: TypeLike, size_or_initializer: Union[int, Sequence[Any]], *,
          lock: Any = True) -> Union[SharedArray, SynchronizedArray]:
    """A shared array; with ``lock`` (default) it has ``get_lock()`` like the stdlib's."""
    if lock is False:
        return SharedArray(typecode_or_type, size_or_initializer)
    return SynchronizedArray(typecode_or_type, size_or_initializer, lock=lock)
