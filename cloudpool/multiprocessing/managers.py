"""``Manager()``: shared ``dict``, ``list``, ``Namespace`` and friends, kept in Redis.

The stdlib's ``SyncManager`` runs a server process that holds the objects and hands out
proxies. Here Redis is the server: ``Manager()`` only reserves a key scope, and each
proxy talks to Redis directly, so proxies work from any worker on any backend.
``shutdown()`` (or leaving ``with Manager() as m:``, or the manager being collected
or the creating process exiting) deletes every object the manager created.

- ``dict()`` -> ``DictProxy``: a Redis hash plus the insertion order; keys are compared
  by their pickled form, which is exact for ``str``/``bytes``/``int``/tuples of those
  (but ``1``, ``1.0`` and ``True`` are three different keys here).
- ``list()`` -> ``ListProxy``: a Redis list; ``append``/``extend``/``pop()``/indexing are
  single commands, other mutations read-modify-write under ``WATCH`` (atomic, retried).
- ``Namespace()`` -> ``NamespaceProxy``: a Redis hash of attributes; names starting with
  ``_`` stay local to the proxy, as in the stdlib.
- ``Value(typecode, value)`` -> ``ValueProxy`` (any picklable object, ``.value``/``get``/``set``);
  ``Array(typecode, seq)``, ``Queue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``,
  ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier`` are the Redis primitives of
  this package, scoped to the manager; ``Pool`` is ``cloudpool.multiprocessing.Pool``.

As with the stdlib's proxies, ``d['k'].append(1)`` changes a copy: assign it back.
After ``shutdown()`` writes through old proxies raise ``SharedStateLostError``.
"""
from __future__ import annotations

import os
import pickle
import secrets
import weakref
from multiprocessing import ProcessError
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import cloudpickle

from . import _redis
from ._redis import KEY_ROOT, RedisRef, SharedObject, lost, translate_errors
from .queues import JoinableQueue, Queue
from .sharedctypes import SharedArray
from .synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

__all__ = ["SyncManager", "DictProxy", "ListProxy", "NamespaceProxy", "ValueProxy"]

_MISSING = object()


def _dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)


def _key(obj: Any) -> bytes:
    # Plain pickle: a key must serialize the same way every time, in every process.
    try:
        return pickle.dumps(obj, protocol=4)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"a Manager dict key must be picklable (it is stored by its pickle): {exc}") from exc


# ---------------------------------------------------------------------------- dict
# KEYS: meta, hash, order, seq. ARGV[2..]: field, value pairs.
_DICT_SET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
for i = 2, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[i])
  end
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
touch(KEYS[1]); touch(KEYS[2]); touch(KEYS[3]); touch(KEYS[4])
return 1
"""

# KEYS: meta, hash, order, seq. ARGV[2]: field, ARGV[3]: default.
_DICT_SETDEFAULT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local v = redis.call('HGET', KEYS[2], ARGV[2])
if v then return {0, v} end
redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
touch(KEYS[1]); touch(KEYS[2]); touch(KEYS[3]); touch(KEYS[4])
return {1, ARGV[3]}
"""

# KEYS: meta, hash, order. ARGV[2]: field ('' with ARGV[3] == 'last': the last inserted).
_DICT_POP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local f = ARGV[2]
if ARGV[3] == 'last' then
  local last = redis.call('ZRANGE', KEYS[3], -1, -1)
  if #last == 0 then return {0} end
  f = last[1]
end
local v = redis.call('HGET', KEYS[2], f)
if not v then return {0} end
redis.call('HDEL', KEYS[2], f); redis.call('ZREM', KEYS[3], f)
touch(KEYS[1])
return {1, f, v}
"""

# KEYS: hash, order. Every (field, value) in insertion order.
_DICT_ITEMS = """
local fs = redis.call('ZRANGE', KEYS[2], 0, -1)
local out = {}
for _, f in ipairs(fs) do
  local v = redis.call('HGET', KEYS[1], f)
  if v then out[#out + 1] = f; out[#out + 1] = v end
end
return out
"""


class DictProxy(SharedObject):
    """A ``dict`` in Redis (what ``Manager().dict()`` returns)."""

    _kind = "dict"

    def __init__(self, scope: RedisRef, *args: Any, **kwargs: Any) -> None:
        self._new_ref(scope)
        self._create()
        initial = dict(*args, **kwargs)
        if initial:
            self.update(initial)

    @translate_errors
    def _create(self) -> None:
        self._client.set(self._ref.key("m"), 1, px=self._ref.ttl_ms or None)

    def _keys(self) -> List[str]:
        return [self._ref.key(k) for k in ("m", "h", "o", "n")]

    def _set_many(self, pairs: Iterable[Tuple[Any, Any]]) -> None:
        args: List[bytes] = []
        for k, v in pairs:
            args += [_key(k), _dumps(v)]
        if args and self._run("dict_set", _DICT_SET, self._keys(), *args) == -1:
            raise lost(self)

    @translate_errors
    def __setitem__(self, key: Any, value: Any) -> None:
        self._set_many([(key, value)])

    @translate_errors
    def __getitem__(self, key: Any) -> Any:
        v = self._client.hget(self._ref.key("h"), _key(key))
        if v is None:
            raise KeyError(key)
        return pickle.loads(v)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def _pop(self, field: bytes, last: bool = False) -> Optional[Tuple[bytes, bytes]]:
        r = self._run("dict_pop", _DICT_POP, self._keys()[:3], field, "last" if last else "")
        if r[0] == -1:
            raise lost(self)
        return None if r[0] == 0 else (r[1], r[2])

    @translate_errors
    def __delitem__(self, key: Any) -> None:
        if self._pop(_key(key)) is None:
            raise KeyError(key)

    @translate_errors
    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        got = self._pop(_key(key))
        if got is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return pickle.loads(got[1])

    @translate_errors
    def popitem(self) -> Tuple[Any, Any]:
        got = self._pop(b"", last=True)
        if got is None:
            raise KeyError("popitem(): dictionary is empty")
        return pickle.loads(got[0]), pickle.loads(got[1])

    @translate_errors
    def setdefault(self, key: Any, default: Any = None) -> Any:
        r = self._run("dict_setdefault", _DICT_SETDEFAULT, self._keys(), _key(key), _dumps(default))
        if r[0] == -1:
            raise lost(self)
        return pickle.loads(r[1])

    @translate_errors
    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        if hasattr(other, "keys"):
            pairs = [(k, other[k]) for k in other.keys()]
        else:
            pairs = list(other)
        pairs += list(kwargs.items())
        self._set_many(pairs)

    @translate_errors
    def items(self) -> List[Tuple[Any, Any]]:
        flat = self._run("dict_items", _DICT_ITEMS, [self._ref.key("h"), self._ref.key("o")])
        return [(pickle.loads(flat[i]), pickle.loads(flat[i + 1])) for i in range(0, len(flat), 2)]

    @translate_errors
    def keys(self) -> List[Any]:
        return [pickle.loads(f) for f in self._client.zrange(self._ref.key("o"), 0, -1)]

    def values(self) -> List[Any]:
        return [v for _k, v in self.items()]

    def copy(self) -> Dict[Any, Any]:
        return dict(self.items())

    @translate_errors
    def clear(self) -> None:
        pipe = self._client.pipeline()
        pipe.exists(self._ref.key("m"))
        pipe.delete(self._ref.key("h"), self._ref.key("o"))
        if not pipe.execute()[0]:
            raise lost(self)

    @translate_errors
    def __len__(self) -> int:
        return int(self._client.hlen(self._ref.key("h")))

    @translate_errors
    def __contains__(self, key: Any) -> bool:
        return bool(self._client.hexists(self._ref.key("h"), _key(key)))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __str__(self) -> str:
        return str(self.copy())

    def __repr__(self) -> str:
        return f"<DictProxy object, typeid 'dict' at {self._ref.prefix}>"


# ---------------------------------------------------------------------------- list
# KEYS: meta, list. ARGV[2..]: items to append.
_LIST_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 2)); touch(KEYS[1]); touch(KEYS[2])
return 1
"""


class ListProxy(SharedObject):
    """A ``list`` in Redis (what ``Manager().list()`` returns)."""

    _kind = "list"

    def __init__(self, scope: RedisRef, sequence: Iterable[Any] = ()) -> None:
        self._new_ref(scope)
        self._create()
        items = list(sequence)
        if items:
            self.extend(items)

    @translate_errors
    def _create(self) -> None:
        self._client.set(self._ref.key("m"), 1, px=self._ref.ttl_ms or None)

    def _snapshot(self) -> List[Any]:
        return [pickle.loads(x) for x in self._client.lrange(self._ref.key("l"), 0, -1)]

    def _rmw(self, change: Callable[[List[Any]], Any]) -> Any:
        """Apply ``change`` to the whole list atomically (optimistic ``WATCH``, retried)."""
        import redis

        lkey, meta = self._ref.key("l"), self._ref.key("m")
        with self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(lkey, meta)
                    if not pipe.exists(meta):
                        raise lost(self)
                    items = [pickle.loads(x) for x in pipe.lrange(lkey, 0, -1)]
                    result = change(items)
                    pipe.multi()
                    pipe.delete(lkey)
                    if items:
                        pipe.rpush(lkey, *[_dumps(x) for x in items])
                    self._ref.touch(pipe, lkey, meta)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    @translate_errors
    def append(self, obj: Any) -> None:
        self.extend([obj])

    @translate_errors
    def extend(self, iterable: Iterable[Any]) -> None:
        data = [_dumps(x) for x in iterable]
        for start in range(0, len(data), 1000):  # Lua's unpack() has a stack limit
            r = self._run("list_append", _LIST_APPEND, [self._ref.key("m"), self._ref.key("l")],
                          *data[start:start + 1000])
            if r == -1:
                raise lost(self)

    @translate_errors
    def __len__(self) -> int:
        return int(self._client.llen(self._ref.key("l")))

    @translate_errors
    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._snapshot()[index]
        i = index.__index__()
        v = self._client.lindex(self._ref.key("l"), i)
        if v is None:
            raise IndexError("list index out of range")
        return pickle.loads(v)

    @translate_errors
    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            values = list(value)

            def change(items: List[Any]) -> None:
                items[index] = values

            self._rmw(change)
            return
        i = index.__index__()

        def put(items: List[Any]) -> None:
            items[i] = value  # IndexError as for a list

        self._rmw(put)

    @translate_errors
    def __delitem__(self, index: Any) -> None:
        def change(items: List[Any]) -> None:
            del items[index]

        self._rmw(change)

    @translate_errors
    def pop(self, index: int = -1) -> Any:
        if index in (-1, 0):
            v = (self._client.rpop if index == -1 else self._client.lpop)(self._ref.key("l"))
            if v is None:
                raise IndexError("pop from empty list")
            return pickle.loads(v)
        return self._rmw(lambda items: items.pop(index))

    @translate_errors
    def insert(self, index: int, obj: Any) -> None:
        self._rmw(lambda items: items.insert(index, obj))

    @translate_errors
    def remove(self, value: Any) -> None:
        self._rmw(lambda items: items.remove(value))

    @translate_errors
    def reverse(self) -> None:
        self._rmw(lambda items: items.reverse())

    @translate_errors
    def sort(self, *, key: Optional[Callable[[Any], Any]] = None, reverse: bool = False) -> None:
        self._rmw(lambda items: items.sort(key=key, reverse=reverse))

    @translate_errors
    def index(self, value: Any, *args: int) -> int:
        return self._snapshot().index(value, *args)

    @translate_errors
    def count(self, value: Any) -> int:
        return self._snapshot().count(value)

    @translate_errors
    def __contains__(self, value: Any) -> bool:
        return value in self._snapshot()

    @translate_errors
    def __iter__(self) -> Iterator[Any]:
        return iter(self._snapshot())

    @translate_errors
    def copy(self) -> List[Any]:
        return self._snapshot()

    def __add__(self, other: Iterable[Any]) -> List[Any]:
        return self.copy() + list(other)

    def __mul__(self, n: int) -> List[Any]:
        return self.copy() * n

    __rmul__ = __mul__

    def __iadd__(self, other: Iterable[Any]) -> "ListProxy":
        self.extend(other)
        return self

    @translate_errors
    def __imul__(self, n: int) -> "ListProxy":
        def change(items: List[Any]) -> None:
            items *= n

        self._rmw(change)
        return self

    def __str__(self) -> str:
        return str(self.copy())

    def __repr__(self) -> str:
        return f"<ListProxy object, typeid 'list' at {self._ref.prefix}>"


# ---------------------------------------------------------------------------- Namespace
# KEYS: meta, hash. ARGV[2]: field, ARGV[3]: value.
_NS_SET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]); touch(KEYS[1]); touch(KEYS[2])
return 1
"""


class NamespaceProxy(SharedObject):
    """An attribute bag in Redis (what ``Manager().Namespace()`` returns)."""

    _kind = "ns"

    def __init__(self, scope: RedisRef, **kwargs: Any) -> None:
        self._new_ref(scope)
        self._create()
        for k, v in kwargs.items():
            setattr(self, k, v)

    @translate_errors
    def _create(self) -> None:
        self._client.set(self._ref.key("m"), 1, px=self._ref.ttl_ms or None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._get(name)

    @translate_errors
    def _get(self, name: str) -> Any:
        v = self._client.hget(self._ref.key("h"), name)
        if v is None:
            raise AttributeError(f"'Namespace' object has no attribute {name!r}")
        return pickle.loads(v)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._set(name, value)

    @translate_errors
    def _set(self, name: str, value: Any) -> None:
        if self._run("ns_set", _NS_SET, [self._ref.key("m"), self._ref.key("h")], name, _dumps(value)) == -1:
            raise lost(self)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._del(name)

    @translate_errors
    def _del(self, name: str) -> None:
        if not self._client.hdel(self._ref.key("h"), name):
            raise AttributeError(name)

    @translate_errors
    def _items(self) -> Dict[str, Any]:
        return {k.decode(): pickle.loads(v) for k, v in self._client.hgetall(self._ref.key("h")).items()}

    def __repr__(self) -> str:
        shown = sorted(f"{k}={v!r}" for k, v in self._items().items())
        return f"Namespace({', '.join(shown)})"


# ---------------------------------------------------------------------------- Value
class ValueProxy(SharedObject):
    """Any picklable object in Redis (what ``Manager().Value()`` returns)."""

    _kind = "val"
    _shared_fields = ("_typecode",)

    @translate_errors
    def __init__(self, scope: RedisRef, typecode: Any, value: Any) -> None:
        self._typecode = typecode  # kept for repr only, as the stdlib ignores it too
        self._new_ref(scope)
        self._client.set(self._ref.key("v"), _dumps(value), px=self._ref.ttl_ms or None)

    @translate_errors
    def get(self) -> Any:
        v = self._client.get(self._ref.key("v"))
        if v is None:
            raise lost(self)
        return pickle.loads(v)

    @translate_errors
    def set(self, value: Any) -> None:
        if not self._client.set(self._ref.key("v"), _dumps(value), px=self._ref.ttl_ms or None, xx=True):
            raise lost(self)

    value = property(get, set)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self.get()!r})"


# ---------------------------------------------------------------------------- the manager
class SyncManager:
    """What ``cloudpool.multiprocessing.Manager()`` returns (already started).

    ``address``, ``authkey``, ``serializer`` and ``ctx`` are accepted for compatibility
    and ignored: the "server" is the configured Redis.
    """

    def __init__(self, address: Any = None, authkey: Any = None, serializer: str = "pickle",
                 ctx: Any = None, *, shutdown_timeout: float = 1.0) -> None:
        self._scope: Optional[RedisRef] = None
        self._state = "initial"
        self._finalizer: Optional[weakref.finalize] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, initializer: Optional[Callable[..., Any]] = None, initargs: Tuple[Any, ...] = ()) -> None:
        """Reserve this manager's key scope. ``initializer`` runs here (there is no server process)."""
        if self._state == "started":
            raise ProcessError("Already started server")
        if self._state == "shutdown":
            raise ProcessError("Manager has shut down")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        base = RedisRef.new("manager", purpose="cloudpool.multiprocessing.Manager")
        self._scope = RedisRef(base.url, f"{KEY_ROOT}:mgr:{secrets.token_hex(8)}:", base.ttl_ms)
        self._state = "started"
        self._finalizer = weakref.finalize(self, _shutdown_scope, self._scope.url, self._scope.prefix,
                                           os.getpid())
        if initializer is not None:
            initializer(*initargs)

    def shutdown(self) -> None:
        """Delete every object this manager created (proxies elsewhere stop working)."""
        if self._finalizer is not None:
            self._finalizer()
        self._state = "shutdown"

    def join(self, timeout: Optional[float] = None) -> None:
        """Nothing to wait for: there is no server process."""

    def connect(self) -> None:
        raise NotImplementedError(
            "cloudpool managers have no server to connect to: pass the proxies themselves to "
            "workers (they carry their Redis URL)")

    @property
    def address(self) -> Optional[str]:
        return None if self._scope is None else f"{_redis._safe_url(self._scope.url)}#{self._scope.prefix}"

    def __enter__(self) -> "SyncManager":
        if self._state == "initial":
            self.start()
        elif self._state != "started":
            raise ProcessError("Unable to start server: the manager has shut down")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __reduce__(self):
        raise TypeError("a Manager cannot be pickled; pass the objects it created (they can be) instead")

    def __repr__(self) -> str:
        return f"<cloudpool SyncManager {self._state} {self.address or ''}>"

    # ------------------------------------------------------------------ factories
    def _scoped(self) -> RedisRef:
        if self._state != "started" or self._scope is None:
            raise ValueError("the Manager is not running: call start() first (Manager() does), "
                             "and do not use it after shutdown()")
        return self._scope

    def _adopt(self, obj: Any) -> Any:
        # Proxies keep their manager alive locally, as the stdlib's do (never pickled).
        object.__setattr__(obj, "_manager", self)
        return obj

    def dict(self, *args: Any, **kwargs: Any) -> DictProxy:
        return self._adopt(DictProxy(self._scoped(), *args, **kwargs))

    def list(self, sequence: Iterable[Any] = ()) -> ListProxy:
        return self._adopt(ListProxy(self._scoped(), sequence))

    def Namespace(self, **kwargs: Any) -> NamespaceProxy:
        return self._adopt(NamespaceProxy(self._scoped(), **kwargs))

    def Value(self, typecode: Any, value: Any, lock: bool = True) -> ValueProxy:
        return self._adopt(ValueProxy(self._scoped(), typecode, value))

    def Array(self, typecode: Any, sequence: Iterable[Any], lock: bool = True) -> SharedArray:
        return self._adopt(SharedArray(typecode, list(sequence), _scope=self._scoped()))

    def Queue(self, maxsize: int = 0) -> Queue:
        return self._adopt(Queue(maxsize, _scope=self._scoped()))

    def JoinableQueue(self, maxsize: int = 0) -> JoinableQueue:
        return self._adopt(JoinableQueue(maxsize, _scope=self._scoped()))

    def Lock(self) -> Lock:
        return self._adopt(Lock(_scope=self._scoped()))

    def RLock(self) -> RLock:
        return self._adopt(RLock(_scope=self._scoped()))

    def Semaphore(self, value: int = 1) -> Semaphore:
        return self._adopt(Semaphore(value, _scope=self._scoped()))

    def BoundedSemaphore(self, value: int = 1) -> BoundedSemaphore:
        return self._adopt(BoundedSemaphore(value, _scope=self._scoped()))

    def Condition(self, lock: Optional[Lock] = None) -> Condition:
        return self._adopt(Condition(lock, _scope=self._scoped()))

    def Event(self) -> Event:
        return self._adopt(Event(_scope=self._scoped()))

    def Barrier(self, parties: int, action: Optional[Callable[[], Any]] = None,
                timeout: Optional[float] = None) -> Barrier:
        return self._adopt(Barrier(parties, action, timeout, _scope=self._scoped()))

    def Pool(self, *args: Any, **kwargs: Any):
        from .pool import Pool

        return Pool(*args, **kwargs)


def _shutdown_scope(url: str, prefix: str, owner_pid: int) -> None:
    if os.getpid() != owner_pid:
        return  # a forked child's copy of the manager
    try:
        _redis.delete_scope(url, prefix)
    except Exception as exc:  # noqa: BLE001 - at exit Redis may be gone; the keys expire anyway
        _redis.LOGGER.warning("cloudpool: could not delete the Manager's keys under %s: %s "
                              "(they expire after key_ttl)", prefix, exc)
