"""Redis plumbing shared by every cross-process primitive of ``cloudpool.multiprocessing``.

This module owns:

- where the Redis URL comes from: ``set_redis_url(url)`` > the ``CLOUDPOOL_REDIS_URL``
  environment variable > the ``url`` key of a ``redis`` section of the cloudpool config;
- one ``redis.Redis`` client per process and URL (dropped after ``fork``);
- ``RedisRef``, the picklable handle every primitive carries: URL + key prefix + expiry.
  A primitive pickles its ``RedisRef`` and its own small settings, never a connection;
- key expiry: every write refreshes the keys' time-to-live (``key_ttl``, one day by
  default), so objects nobody touches disappear; when the process that created an object
  drops it (or exits), its keys are set to expire after ``ORPHAN_GRACE`` seconds unless
  some other process keeps using them;
- the FIFO *waiter* protocol all blocking primitives share (``Waiter``): a blocked client
  registers a private list key, then waits on it with ``BLPOP``; whoever wakes it pushes
  a token there inside a Lua script, so a wake-up is never lost and a timed-out waiter
  either leaves the queue or consumes the token it was already handed;
- turning redis-py's errors into stdlib ones (``ConnectionError``/``TimeoutError``).

Needs Redis >= 6.2 (``BLMOVE``, ``LPOS``); Redis Cluster is not supported (the Lua
scripts touch waiter keys they do not declare).

Keys live under ``cloudpool:mp:<kind>:<id>:`` so ``redis-cli --scan --pattern
'cloudpool:mp:*'`` shows everything cloudpool created; a ``Manager`` scopes its objects
under its own id and deletes them on ``shutdown()``.
"""
from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from ..errors import ConfigError, MissingDependencyError

__all__ = ["set_redis_url", "get_redis_url", "RedisNotConfiguredError", "SharedStateLostError",
           "SharedStateConnectionError", "DEFAULT_KEY_TTL"]

LOGGER = logging.getLogger("cloudpool.multiprocessing")

ENV_URL = "CLOUDPOOL_REDIS_URL"
#: Seconds an object's keys survive without being written to.
DEFAULT_KEY_TTL = 24 * 3600
#: Seconds an object's keys survive after its creator dropped it, unless still used.
ORPHAN_GRACE = 60
#: Longest single BLPOP: between two, a waiter checks that its object still exists.
WAIT_SLICE = 2.0
KEY_ROOT = "cloudpool:mp"

F = TypeVar("F", bound=Callable[..., Any])


class RedisNotConfiguredError(ConfigError):
    """A shared-state primitive was created but no Redis server is configured."""


class SharedStateLostError(RuntimeError):
    """The Redis keys behind a primitive are gone (expired, deleted, or their Manager shut down)."""


class SharedStateConnectionError(ConnectionError):
    """The Redis server holding cloudpool's shared state cannot be reached."""


# ---------------------------------------------------------------------------- configuration
_configured_url: Optional[str] = None
_configured_ttl: Optional[int] = DEFAULT_KEY_TTL
_config_url_cache: Optional[Tuple[str, ...]] = None


def set_redis_url(url: Optional[str], *, key_ttl: Optional[int] = DEFAULT_KEY_TTL) -> None:
    """Use the Redis server at ``url`` (``redis://host:port/db``) for objects created from now on.

    ``None`` forgets the setting (the environment/config apply again). ``key_ttl`` is how
    many seconds an unused object's keys are kept (``None``: forever). Objects already
    created keep the server they were created on; workers need no setting, since each
    object carries its URL.
    """
    global _configured_url, _configured_ttl
    if url is not None:
        _check_url(url, "set_redis_url()")
    if key_ttl is not None and (isinstance(key_ttl, bool) or not isinstance(key_ttl, int) or key_ttl < 1):
        raise ValueError(f"key_ttl must be a whole number of seconds >= 1 or None, not {key_ttl!r}")
    _configured_url = url
    _configured_ttl = key_ttl


def _check_url(url: Any, origin: str) -> str:
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{origin} must be a Redis URL such as redis://127.0.0.1:6379/0, not {url!r}")
    return url


def _url_from_config() -> Optional[str]:
    global _config_url_cache
    if _config_url_cache is None:
        from ..config import load_config

        url = load_config().section("redis").get("url")
        _config_url_cache = (url,) if url else ()
    return _config_url_cache[0] if _config_url_cache else None


def get_redis_url(purpose: str = "cloudpool.multiprocessing's shared state") -> str:
    """The configured Redis URL, or ``RedisNotConfiguredError`` saying how to configure one."""
    if _configured_url is not None:
        return _configured_url
    env = os.environ.get(ENV_URL)
    if env:
        return _check_url(env, ENV_URL)
    url = _url_from_config()
    if url:
        return _check_url(url, "the 'url' option of the config section 'redis'")
    raise RedisNotConfiguredError(
        f"{purpose} needs a Redis server reachable from this process and from the workers, "
        f"and none is configured: set {ENV_URL}=redis://HOST:PORT/DB, or call "
        f"cloudpool.multiprocessing.set_redis_url('redis://HOST:PORT/DB')"
    )


# ---------------------------------------------------------------------------- clients
_clients: Dict[str, Any] = {}
_scripts: Dict[Tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def _forget_clients() -> None:
    # Sockets inherited through fork belong to the parent; a child opens its own.
    global _clients_lock
    _clients.clear()
    _scripts.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_clients)


def _redis_module():
    try:
        import redis
    except ImportError:
        raise MissingDependencyError(
            "cloudpool.multiprocessing's shared-state primitives need the 'redis' package: "
            "pip install 'cloudpool[redis]'"
        ) from None
    return redis


def client_for(url: str):
    c = _clients.get(url)
    if c is None:
        redis = _redis_module()
        with _clients_lock:
            c = _clients.get(url)
            if c is None:
                # Every blocking command here waits at most WAIT_SLICE server-side, so a
                # socket silent for much longer means a dead server or network, not a wait.
                c = redis.Redis.from_url(url, socket_timeout=WAIT_SLICE + 30, socket_connect_timeout=10,
                                         socket_keepalive=True, health_check_interval=30)
                _clients[url] = c
    return c


def translate_errors(method: F) -> F:
    """Re-raise redis-py connection problems as the stdlib's ``ConnectionError``/``TimeoutError``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        redis = _redis_module()
        try:
            return method(self, *args, **kwargs)
        except redis.exceptions.TimeoutError as exc:
            raise TimeoutError(f"Redis at {_safe_url(self._ref.url)} did not answer in time: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            if "unknown command" in str(exc).lower():
                raise RuntimeError(
                    f"the Redis server at {_safe_url(self._ref.url)} is too old for "
                    f"cloudpool.multiprocessing, which needs Redis >= 6.2: {exc}") from exc
            raise
        except redis.exceptions.ConnectionError as exc:
            raise SharedStateConnectionError(
                f"cannot reach the Redis server at {_safe_url(self._ref.url)} that holds "
                f"{type(self).__name__} {self._ref.prefix!r}: {exc}; check that it runs and is "
                f"reachable from every worker ({ENV_URL} / set_redis_url())"
            ) from exc

    return wrapper  # type: ignore[return-value]


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url


# ---------------------------------------------------------------------------- scripts


def script(url: str, name: str, body: str):
    """A registered Lua script (EVALSHA with automatic reload), prefixed with ``LUA_PRELUDE``.

    ``ARGV[1]`` of every script is the time-to-live in milliseconds (0: never expire).
    """
    key = (url, name)
    s = _scripts.get(key)
    if s is None:
        s = client_for(url).register_script(LUA_PRELUDE + body)
        _scripts[key] = s
    return s


_ORPHAN = """
local grace = tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  local left = redis.call('PTTL', k)
  if left == -1 or left > grace then redis.call('PEXPIRE', k, grace) end
end
return 1
"""


# ---------------------------------------------------------------------------- RedisRef
class RedisRef:
    """URL + key prefix + expiry of one shared object; what the object pickles."""

    __slots__ = ("url", "prefix", "ttl_ms")

    def __init__(self, url: str, prefix: str, ttl_ms: int) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_ms = ttl_ms  # 0: keys never expire

    @classmethod
    def new(cls, kind: str, scope: Optional["RedisRef"] = None, purpose: Optional[str] = None) -> "RedisRef":
        if scope is not None:
            return cls(scope.url, f"{scope.prefix}{kind}:{secrets.token_hex(6)}:", scope.ttl_ms)
        url = get_redis_url(purpose or f"cloudpool.multiprocessing.{kind}")
        ttl = _configured_ttl if _configured_url is not None else DEFAULT_KEY_TTL
        return cls(url, f"{KEY_ROOT}:{kind}:{secrets.token_hex(8)}:", int(ttl * 1000) if ttl else 0)

    def key(self, part: str) -> str:
        return self.prefix + part

    def new_waiter_key(self) -> str:
        return self.prefix + "w:" + secrets.token_hex(8)

    def client(self):
        return client_for(self.url)

    def run(self, name: str, body: str, keys: Sequence[str], *args: Any) -> Any:
        """Run Lua script ``body`` (cached under ``name``) with ``ARGV = [ttl_ms, *args]``."""
        return script(self.url, name, body)(keys=list(keys), args=[self.ttl_ms, *args])

    @property
    def ttl_arg(self) -> int:
        return self.ttl_ms

    def touch(self, pipe, *keys: str) -> None:
        if self.ttl_ms:
            for k in keys:
                pipe.pexpire(k, self.ttl_ms)

    def __getstate__(self):
        return (self.url, self.prefix, self.ttl_ms)

    def __setstate__(self, state) -> None:
        self.url, self.prefix, self.ttl_ms = state

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedisRef) and (self.url, self.prefix) == (other.url, other.prefix)

    def __hash__(self) -> int:
        return hash((self.url, self.prefix))

    def __repr__(self) -> str:
        return f"RedisRef({_safe_url(self.url)!r}, {self.prefix!r})"


def lost(obj: Any, what: str = "") -> SharedStateLostError:
    ref: RedisRef = obj._ref
    return SharedStateLostError(
        f"the Redis keys of {type(obj).__name__} {ref.prefix!r} are gone{what}: they expire after "
        f"key_ttl seconds without use (set_redis_url(url, key_ttl=...)), {ORPHAN_GRACE} s after the "
        f"creating process dropped the object, or when its Manager shut down"
    )


def orphan_on_collect(obj: Any, url: str, keys: Sequence[str]) -> None:
    """When ``obj`` (in the process that created it) is collected, let ``keys`` expire soon."""
    weakref.finalize(obj, _orphan, url, list(keys), os.getpid())


_unreachable: set = set()


def _orphan(url: str, keys: List[str], owner_pid: int) -> None:
    if os.getpid() != owner_pid or url in _unreachable:
        return  # a forked child's copy (the creator still has the object), or Redis is down
    try:
        redis = _redis_module()
    except ImportError:
        return
    try:
        # Only shortens the expiry: other processes' writes refresh the full time-to-live.
        script(url, "orphan", _ORPHAN)(keys=keys, args=[0, ORPHAN_GRACE * 1000])
    except redis.exceptions.RedisError as exc:
        if isinstance(exc, redis.exceptions.ConnectionError):
            _unreachable.add(url)  # do not wait on a dead server once per object at exit
        LOGGER.debug("cloudpool: could not shorten the expiry of %s: %s", keys[:1], exc)


def delete_scope(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (a Manager's objects); returns how many."""
    c = client_for(url)
    n = 0
    batch: List[bytes] = []
    for key in c.scan_iter(match=prefix + "*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            n += c.unlink(*batch)
            batch = []
    if batch:
        n += c.unlink(*batch)
    return n


# ---------------------------------------------------------------------------- shared objects
class SharedObject:
    """Base of every Redis-backed primitive: a ``RedisRef`` plus settings, and local state.

    Subclasses list their picklable settings in ``_shared_fields``; everything else is
    per-process state rebuilt by ``_init_local()`` after unpickling.
    """

    _kind = "obj"
    _shared_fields: Tuple[str, ...] = ()
    _ref: RedisRef

    def _new_ref(self, scope: Optional[RedisRef]) -> None:
        self._ref = RedisRef.new(self._kind, scope, purpose=f"cloudpool.multiprocessing.{type(self).__name__}")
        self._init_local()

    def _init_local(self) -> None:
        """Per-process state (never pickled)."""

    def _own(self, *parts: str) -> None:
        """This process created the object: when it drops it, its keys expire soon."""
        orphan_on_collect(self, self._ref.url, [self._ref.key(p) for p in parts])

    @property
    def _client(self):
        return client_for(self._ref.url)

    def _run(self, name: str, body: str, keys: Sequence[str], *args: Any) -> Any:
        return self._ref.run(name, body, keys, *args)

    def __getstate__(self) -> Dict[str, Any]:
        state = {"_ref": self._ref}
        for f in self._shared_fields:
            state[f] = getattr(self, f)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._init_local()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._ref == self._ref

    def __hash__(self) -> int:
        return hash(self._ref)


# ---------------------------------------------------------------------------- waiting
#: A waiter's lease: a waiter that has not renewed it for this long is presumed dead
#: (killed while blocked) and skipped by wake-one operations, so it swallows no release.
LEASE_MS = 6_000

#: Lua helpers every script starts with; ``ARGV[1]`` is the time-to-live in ms (0: none).
LUA_PRELUDE = """
local ttl = tonumber(ARGV[1])
local LEASE = %d
local function touch(k) if ttl > 0 then redis.call('PEXPIRE', k, ttl) end end
local function tokttl(w) if ttl > 0 then redis.call('PEXPIRE', w, ttl) else redis.call('PEXPIRE', w, 86400000) end end
local function enqueue(q, w) redis.call('RPUSH', q, w); touch(q); redis.call('PSETEX', w .. ':l', LEASE, '1') end
local function give(w, token) redis.call('RPUSH', w, token); tokttl(w); redis.call('DEL', w .. ':l') end
local function wake_one(q, token)
  while true do
    local w = redis.call('LPOP', q)
    if not w then return 0 end
    if redis.call('EXISTS', w .. ':l') == 1 then give(w, token); return 1 end
  end
end
local function wake_all(q, token)
  local ws = redis.call('LRANGE', q, 0, -1)
  for _, w in ipairs(ws) do give(w, token) end
  redis.call('DEL', q)
  return #ws
end
""" % LEASE_MS

# KEYS: alive key, queue, waiter. ARGV[2]: 'sem' lets a semaphore waiter that lost its
# place (its lease lapsed) take a free unit instead of queueing again behind it.
_HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
touch(KEYS[1])
if redis.call('LLEN', KEYS[3]) > 0 then return 2 end
redis.call('PSETEX', KEYS[3] .. ':l', LEASE, '1')
if not redis.call('LPOS', KEYS[2], KEYS[3]) then
  if ARGV[2] == 'sem' and tonumber(redis.call('GET', KEYS[1])) > 0 then
    redis.call('DECR', KEYS[1]); redis.call('DEL', KEYS[3] .. ':l'); return 3
  end
  redis.call('RPUSH', KEYS[2], KEYS[3]); touch(KEYS[2])
end
return 1
"""

# KEYS: queue, waiter. Leaves the queue, or takes the token it was handed meanwhile.
_CANCEL = """
redis.call('DEL', KEYS[2] .. ':l')
if redis.call('LREM', KEYS[1], 1, KEYS[2]) > 0 then return false end
return redis.call('LPOP', KEYS[2])
"""


def blpop_timeout(seconds: float) -> float:
    # BLPOP's 0 means "forever"; anything shorter than a millisecond is rounded up.
    return round(max(seconds, 0.001), 3)


class Waiter:
    """One blocked call's private list key (already queued by the caller's Lua script).

    ``wait(deadline)`` returns the token someone pushed, or ``None`` at the deadline (the
    caller then ``cancel()``s, which either leaves the queue or returns a token handed
    over in the meantime, so no wake-up is lost). Between BLPOP slices it renews its
    lease and checks that the object still exists, so a deleted object raises
    ``SharedStateLostError`` instead of hanging.
    """

    __slots__ = ("owner", "key", "alive_key", "queue_key", "mode")

    def __init__(self, owner: SharedObject, key: str, alive_key: str, queue_key: str,
                 mode: str = "") -> None:
        self.owner = owner
        self.key = key
        self.alive_key = alive_key
        self.queue_key = queue_key
        self.mode = mode

    def wait(self, deadline: Optional[float]) -> Optional[bytes]:
        ref = self.owner._ref
        c = client_for(ref.url)
        while True:
            if deadline is None:
                slice_ = WAIT_SLICE
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                slice_ = min(WAIT_SLICE, remaining)
            got = c.blpop([self.key], timeout=blpop_timeout(slice_))
            if got is not None:
                return got[1]
            beat = ref.run("heartbeat", _HEARTBEAT, [self.alive_key, self.queue_key, self.key], self.mode)
            if beat == -1:
                raise lost(self.owner, " while this process was waiting on it")
            if beat == 3:
                return b"1"

    def cancel(self) -> Optional[bytes]:
        return self.owner._ref.run("cancel", _CANCEL, [self.queue_key, self.key])

    def wait_or_cancel(self, deadline: Optional[float]) -> Optional[bytes]:
        """``wait``; at the deadline, or if interrupted, leave the queue (keeping a late token)."""
        try:
            token = self.wait(deadline)
        except BaseException:
            try:
                token = self.cancel()
            except Exception as exc:  # noqa: BLE001 - the original error matters more; the lease expires anyway
                LOGGER.debug("cloudpool: could not leave the wait queue %s: %s", self.queue_key, exc)
                token = None
            if token is not None:
                self.on_abandoned_token(token)
            raise
        if token is None:
            token = self.cancel()
        return token

    def on_abandoned_token(self, token: bytes) -> None:
        """Called with a token received while the wait was being interrupted."""
        handler = getattr(self.owner, "_give_back", None)
        if handler is not None:
            handler(token)


def deadline_for(block: bool, timeout: Optional[float]) -> Optional[float]:
    """Monotonic deadline for a ``block``/``timeout`` pair (stdlib: negative timeouts mean 0)."""
    if not block:
        return time.monotonic()
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, float(timeout))
