"""Redis as object storage: ``redis://[user:password@]host:port/DB/key`` through redis-py.

Layout. The "bucket" is ``host:port``; the first segment of every key is the database
number and the rest is the Redis key, holding the object as a plain string value. So
``redis://127.0.0.1:6379/0/texts/a.txt`` is ``GET texts/a.txt`` in database 0, and data
that other tools wrote with ``SET`` (redis-cli, Lithops' Redis storage...) is read and
listed like any object.

Listing uses ``SCAN MATCH <prefix>* TYPE string`` and sorts the keys client-side, rather
than keeping a sorted-set index beside the data (which ``ZRANGEBYLEX`` would page in key
order). Why: an index sees only objects written through it, so data put there by anything
else would be invisible to ``objects()``; it doubles every write and can drift from the
data when a key expires or is deleted by another client. The price: a listing walks the
whole keyspace of the database server-side (SCAN has no prefix index), and the sort needs
all matching keys first, so a listing is not fetched lazily page by page. Keep a job's
storage in a database of its own when the database holds millions of other keys.

Limits. A Redis string holds at most 512 MiB (``proto-max-bulk-len``): bigger objects are
refused before anything is sent, with ``OSError(EFBIG)`` naming the URL.

Credentials. A password in the URL, the ``password`` storage option, or the environment
(``REDIS_USERNAME``/``REDIS_PASSWORD``) is used to connect; it is never part of
``url()``, of ``public_options()`` or of anything pickled. A password given in a URL is
remembered for that ``host:port`` in this process and exported as
``_CLOUDPOOL_REDIS_AUTH_<host>_<port>`` (not ``CLOUDPOOL_*``: those are settings) so local
worker processes, forked or spawned, find it; workers on other machines need
``REDIS_PASSWORD`` (or that variable) in their environment, like any other credential chain.

Errors and retries: refused credentials -> ``PermissionError``; a missing key or a
database number the server does not have -> ``FileNotFoundError``; anything else ->
``OSError``, all naming the URL. Connection failures and time-outs (and a server still
loading its data) are retried with ``StorageRetry``; Redis' own answers (WRONGTYPE,
NOAUTH...) never are.
"""
from __future__ import annotations

import errno
import itertools
import os
import re
from typing import Any, BinaryIO, ClassVar, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple

import redis
import redis.exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import _urlauth, declared
from .base import Bytes, ObjectInfo, PerProcess, StorageBackend, StorageRetry, positive_int_option

__all__ = ["RedisStorage"]

MiB = 1024 * 1024

#: Redis' default proto-max-bulk-len: the largest string value a server accepts.
REDIS_MAX_VALUE = 512 * MiB

def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _transient(exc: BaseException) -> Optional[float]:
    # AuthenticationError subclasses ConnectionError, but another try cannot fix it.
    if isinstance(exc, (rexc.AuthenticationError, rexc.AuthorizationError)):
        return None
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, rexc.TryAgainError)):
        return 0.0
    return None


class RedisStorage(StorageBackend):
    """``redis://host:port/DB/key``: string values in one Redis server's databases."""

    scheme = "redis"
    option_names: ClassVar[FrozenSet[str]] = declared.REDIS.options
    secret_option_names: ClassVar[FrozenSet[str]] = declared.REDIS.secrets
    #: Largest object stored; tests lower it rather than send 512 MiB.
    max_value_size: ClassVar[int] = REDIS_MAX_VALUE
    #: Keys asked for per SCAN step, and per pipelined STRLEN batch of a listing.
    list_page_size: ClassVar[int] = 1000

    def __init__(self, bucket: str, **options: Any) -> None:
        # The configuration's redis section also holds cloudpool.multiprocessing's server
        # ('url'), which may carry a password: not a storage option, never kept.
        options = {k: v for k, v in options.items() if k != "url"}
        hostport = _urlauth.split("redis", bucket)
        super().__init__(hostport, **options)
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis:// storage needs host:port, not {hostport!r}; "
                             f"write redis://[user:password@]HOST:PORT/DB/PREFIX, e.g. "
                             f"redis://127.0.0.1:6379/0/data/")
        self.host = host.strip("[]")
        self.port = int(port)
        self.max_attempts = positive_int_option("redis", "max_attempts", options.get("max_attempts", 6))
        self._retry = StorageRetry(attempts=self.max_attempts)
        self._clients: PerProcess[Dict[int, Any]] = PerProcess(dict)

    # ------------------------------------------------------------------ connection
    def _credentials(self) -> Tuple[Optional[str], Optional[str]]:
        """Options first, then a URL seen in this process, then the environment."""
        if self.options.get("password") is not None:
            return self.options.get("username"), self.options["password"]
        remembered = _urlauth.lookup("redis", self.bucket)
        if remembered:
            return remembered
        return (self.options.get("username") or os.environ.get("REDIS_USERNAME"),
                os.environ.get("REDIS_PASSWORD"))

    def _client(self, db: int) -> Any:
        clients = self._clients.get()
        client = clients.get(db)
        if client is None:
            username, password = self._credentials()
            timeout = float(self.options.get("socket_timeout", 30))
            client = redis.Redis(
                host=self.host, port=self.port, db=db, username=username, password=password,
                socket_timeout=timeout, socket_connect_timeout=min(timeout, 10.0),
                # Retries are StorageRetry's (bounded, jittered), not redis-py's on top.
                retry=Retry(NoBackoff(), 0), max_connections=64,
            )
            clients[db] = client
        return client

    def _call(self, request: Any) -> Any:
        return self._retry.run(request, _transient)

    def _split(self, key: str) -> Tuple[int, str]:
        db, sep, rest = key.partition("/")
        if not sep or not db.isdigit():
            raise ValueError(
                f"{self.url(key)}: a redis:// key starts with the database number; write "
                f"redis://{self.bucket}/DB/KEY, e.g. redis://{self.bucket}/0/{key}")
        return int(db), rest

    def url(self, key: str = "") -> str:
        return f"redis://{self.bucket}/{key}"

    # ------------------------------------------------------------------ errors
    def _error(self, exc: BaseException, key: str, action: str) -> OSError:
        url = self.url(key)
        text = str(exc)
        if isinstance(exc, (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError,
                            rexc.AuthenticationWrongNumberOfArgsError)) or \
                re.match(r"(NOAUTH|WRONGPASS|NOPERM)\b", text):
            return PermissionError(
                f"{url}: {action} refused by Redis at {self.bucket} ({text}); check the password "
                f"(in the URL, the storage option 'password', or REDIS_PASSWORD)")
        if "DB index is out of range" in text or "invalid DB index" in text:
            return FileNotFoundError(f"{url}: database {key.partition('/')[0]!r} does not exist on "
                                     f"the Redis server at {self.bucket} ({text})")
        if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError)):
            return OSError(f"{url}: {action} failed after {self.max_attempts} attempts, the last with "
                           f"{type(exc).__name__}: {text} (is redis-server running at {self.bucket}? "
                           f"the storage option max_attempts sets how many tries)")
        if text.startswith("WRONGTYPE"):
            return OSError(f"{url}: {action} failed: the Redis key holds a {self._type_name(key)}, "
                           f"not a string value, so it is no object")
        return OSError(f"{url}: {action} failed: {text}")

    def _type_name(self, key: str) -> str:
        try:
            db, rkey = self._split(key)
            return self._client(db).type(rkey).decode()
        except (rexc.RedisError, ValueError):
            return "value of another type"

    def _missing(self, key: str) -> FileNotFoundError:
        return FileNotFoundError(f"{self.url(key)}: no such object")

    def _too_big(self, key: str, size: int) -> OSError:
        return OSError(errno.EFBIG,
                       f"{self.url(key)}: {size} bytes is more than Redis keeps in one value (at most "
                       f"{self.max_value_size} bytes: its proto-max-bulk-len, 512 MiB by default); "
                       f"split the data into several objects or use an object store (s3://, gs://, az://)")

    # ------------------------------------------------------------------ primitives
    def put(self, key: str, data: Bytes) -> None:
        db, rkey = self._split(key)
        body = data if isinstance(data, bytes) else bytes(data)
        if len(body) > self.max_value_size:
            raise self._too_big(key, len(body))
        try:
            self._call(lambda: self._client(db).set(rkey, body))
        except rexc.RedisError as exc:
            raise self._error(exc, key, "SET") from exc

    def put_file(self, key: str, fileobj: BinaryIO) -> None:
        # Read one byte past the limit: enough to refuse without holding a huge file.
        data = fileobj.read(self.max_value_size + 1)
        if len(data) > self.max_value_size:
            raise self._too_big(key, len(data) + len(fileobj.read()))
        self.put(key, data)

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        db, rkey = self._split(key)
        start = start or 0
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range must not be negative, got [{start}, {end})")
        if end is not None and start >= end:
            return b""
        client = self._client(db)

        def read() -> Optional[bytes]:
            if start == 0 and end is None:
                return client.get(rkey)
            # GETRANGE answers "" for a missing key: EXISTS in the same transaction tells.
            with client.pipeline(transaction=True) as pipe:
                exists, data = pipe.exists(rkey).getrange(rkey, start, -1 if end is None else end - 1).execute()
            return data if exists else None

        try:
            data = self._call(read)
        except rexc.RedisError as exc:
            raise self._error(exc, key, "GET") from exc
        if data is None:
            raise self._missing(key)
        return bytes(data)

    def head(self, key: str) -> ObjectInfo:
        db, rkey = self._split(key)
        client = self._client(db)

        def ask() -> Tuple[Any, Any]:
            with client.pipeline(transaction=True) as pipe:
                kind, size = pipe.type(rkey).strlen(rkey).execute(raise_on_error=False)
            return kind, size

        try:
            kind, size = self._call(ask)
        except rexc.RedisError as exc:
            raise self._error(exc, key, "HEAD") from exc
        if kind == b"none":
            raise self._missing(key)
        if isinstance(size, Exception):
            raise self._error(size, key, "HEAD")
        return ObjectInfo(key=key, size=int(size))

    def _databases(self, prefix: str) -> List[int]:
        """The databases holding keys whose number starts with ``prefix`` (no '/' in it)."""
        try:
            keyspace = self._call(lambda: self._client(0).info("keyspace"))
        except rexc.RedisError as exc:
            raise self._error(exc, prefix, "INFO keyspace") from exc
        dbs = [int(name[2:]) for name in keyspace if name.startswith("db") and name[2:].isdigit()]
        return [db for db in dbs if str(db).startswith(prefix)]

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        if "/" in prefix:
            db, rest = self._split(prefix)
            targets = [(db, rest)]
        else:
            targets = [(db, "") for db in self._databases(prefix)]
        # "1/..." < "10/..." < "2/...": key order across databases is by the number as text.
        for db, rest in sorted(targets, key=lambda t: f"{t[0]}/"):
            yield from self._list_db(db, rest, start_after)

    def _list_db(self, db: int, rest: str, start_after: Optional[str]) -> Iterator[ObjectInfo]:
        client = self._client(db)
        where = f"{db}/{rest}"
        try:
            names = self._call(lambda: {
                k.decode("utf-8", "surrogateescape")
                for k in client.scan_iter(match=_glob_escape(rest) + "*", count=self.list_page_size,
                                          _type="string")})
        except rexc.RedisError as exc:
            raise self._error(exc, where, "SCAN") from exc
        keys = sorted(k for k in names if start_after is None or f"{db}/{k}" > start_after)
        for i in range(0, len(keys), self.list_page_size):
            batch = keys[i:i + self.list_page_size]

            def sizes(batch: List[str] = batch) -> List[Any]:
                with client.pipeline(transaction=False) as pipe:
                    for k in batch:
                        pipe.exists(k)
                        pipe.strlen(k)
                    return pipe.execute(raise_on_error=False)

            try:
                answers = self._call(sizes)
            except rexc.RedisError as exc:
                raise self._error(exc, where, "STRLEN") from exc
            for k, exists, size in zip(batch, answers[0::2], answers[1::2]):
                if exists == 1:
                    if isinstance(size, Exception):  # replaced by another type since the SCAN
                        continue
                    yield ObjectInfo(key=f"{db}/{k}", size=int(size))

    def delete(self, keys: Iterable[str]) -> None:
        by_db: Dict[int, List[str]] = {}
        for key in keys:
            db, rkey = self._split(key)
            by_db.setdefault(db, []).append(rkey)
        for db, rkeys in by_db.items():
            it = iter(rkeys)
            while True:
                chunk = list(itertools.islice(it, 1000))
                if not chunk:
                    break
                try:
                    # UNLINK frees big values in the background; absent keys are fine.
                    self._call(lambda: self._client(db).unlink(*chunk))
                except rexc.RedisError as exc:
                    raise self._error(exc, f"{db}/{chunk[0]}", "DELETE") from exc

    def check(self) -> None:
        try:
            self._call(lambda: self._client(0).ping())
        except rexc.RedisError as exc:
            raise self._error(exc, "", "PING") from exc
