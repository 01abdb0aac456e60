"""Lithops' ``FunctionExecutor`` API on a ``CloudPoolExecutor``: change the import, keep the code.

::

    import cloudpool.compat.lithops as lithops     # was: import lithops

    def word_count(obj):                            # Lithops' reserved parameter name
        return len(obj.data_stream.read().split())

    fexec = lithops.FunctionExecutor()
    fexec.map(word_count, "s3://bucket/texts/", obj_chunk_size=64 * 1024 ** 2)
    print(sum(fexec.get_result()))

This module owns the translation of Lithops' calling conventions into executor calls;
everything else (batching, storage, backends, futures) is ``CloudPoolExecutor``'s.

What is translated
------------------
- ``FunctionExecutor(backend=, storage=, config=, config_file=, ...)``: Lithops backend
  names map to cloudpool's (``localhost`` -> ``local``, ``k8s`` -> ``kubernetes``, others
  as they are); ``storage`` is a cloudpool storage URL, ``"localhost"``, or a Lithops
  storage name with its bucket in ``config``. A ``config`` with Lithops sections
  (``lithops``, ``localhost``, ``aws_s3``, ``minio``...) is a Lithops config, translated
  by ``_lithops_config`` (every documented key is mapped or logged at debug); any other
  ``config`` is a cloudpool config. Without ``config``, Lithops' config file is read if
  there is one (``LITHOPS_CONFIG_FILE``, ``.lithops_config``, ``~/.lithops/config``).
  ``runtime_memory`` sets the Lambda memory; per-call ``timeout`` runs the calls on an
  executor with that time limit; ``extra_env`` is set around each call on the worker.
- ``Storage``, ``CloudObject`` and the injected ``storage`` parameter
  (``_lithops_storage``); ``RetryingFunctionExecutor``; ``setup_lithops_logger``;
  ``default_config``/``extract_storage_config``; ``FuturesList.map`` (chaining).
  ``python -m cloudpool.compat.lithops_alias program.py`` runs a program that keeps its
  ``import lithops`` lines.
- Arguments, as in Lithops: each ``map_iterdata`` item is one call; a ``tuple`` item is
  the positional arguments, a ``dict`` item the keyword arguments (the value under the
  name of the function's ``*args``/``**kwargs`` parameter is spread, as Lithops does),
  anything else the first argument; ``extra_args`` (a tuple, or a dict for dict items) is
  appended to every item. A parameter named ``id`` receives the call's index, one named
  ``storage`` a ``Storage`` on the executor's storage. A function that returns futures
  (of an executor it opened) returns their results, as Lithops composes them.
- Data processing: a function with a parameter named ``obj`` whose value is a URL gets
  one call per partition of the objects under it (``cloudpool.objects``): ``s3://``,
  ``cos://``, ``gs://``, ``az://``, ``http(s)://``, a local path, Lithops' own
  ``aws_s3://``, ``ibm_cos://``, ``gcp_storage://``, ``azure_storage://``, and
  ``localhost://bucket/prefix/``, which is the directory ``bucket/prefix/`` under
  ``localhost_root`` (default: Lithops' own localhost storage directory,
  ``<tmp>/lithops-<user>``). A URL without a scheme (``bucket/prefix/``) is read from the
  executor's storage service, as Lithops does. The ``obj`` a call receives
  (``CloudObjectPart``) has ``bucket``, ``key``, ``backend``, ``part``, ``total_parts``,
  ``chunk_size``, ``newline``, ``data_byte_range`` (inclusive, of the whole lines the
  part owns) and ``data_stream`` (a binary stream of exactly those lines).
- ``wait``/``get_result`` with ``ALWAYS``, ``ANY_COMPLETED``, ``ALL_COMPLETED`` or a
  percentage; ``get_result()`` without futures returns the results it has not returned
  yet; a single result comes as one value (not a list) unless the last call was ``map``,
  as in Lithops.

Differences, each deliberate
----------------------------
- Futures are ``concurrent.futures.Future``s (``result(timeout=None)``) with Lithops'
  ``call_id``, ``error``, ``success`` and ``ready`` attributes, not Lithops'
  ``ResponseFuture``; ``concurrent.futures.wait``/``as_completed`` work on them; they
  cannot be pickled (pickle results instead).
- ``map_reduce`` invokes its reducer once every map call has finished (Lithops may start
  it earlier to wait on the workers); the results are the same. ``spawn_reducer`` is
  accepted and checked, and has no other effect.
- ``chunksize``, ``threadpool_size``, ``wait_dur_sec``, ``show_progressbar``,
  ``download_results``, ``include_modules``/``exclude_modules`` and per-call
  ``runtime_memory`` on backends without a memory setting are accepted and have no
  effect: cloudpool sizes batches from measured call times, fetches results in parallel,
  polls adaptively and pickles functions with cloudpickle.
- Refused, naming the argument and what to use instead (``LithopsCompatError``, a
  ``ValueError``), before anything runs: standalone (VM) mode and backends, storages
  cloudpool has no backend for (redis, swift, infinispan...), ``call_async`` over an
  ``obj`` URL, functions taking Lithops' ``ibm_cos``/``rabbitmq`` clients, ``plot()``.
"""
from __future__ import annotations

import concurrent.futures as cf
import inspect
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..config import _default_storage
from ..executor import CloudPoolExecutor
from ..objects import ObjectPart
from ..objects import objects as _make_objects
from ..storage import split_url
from . import _lithops_config
from ._lithops_config import LithopsCompatError, default_config, extract_storage_config, load_yaml_config
from ._lithops_config import unsupported as _unsupported
from ._lithops_storage import CloudObject, Storage, StorageNoSuchKeyError
from ._lithops_storage import localhost_root as default_localhost_root

__all__ = [
    "FunctionExecutor", "LocalhostExecutor", "ServerlessExecutor", "RetryingFunctionExecutor",
    "FuturesList", "Storage", "CloudObject", "CloudObjectPart", "LithopsCompatError", "wait",
    "get_result", "setup_lithops_logger", "ALWAYS", "ANY_COMPLETED", "ALL_COMPLETED",
    "RetryingFuture", "StorageNoSuchKeyError", "default_config", "extract_storage_config",
    "load_yaml_config", "default_localhost_root",
]

#: ``return_when`` values, as in Lithops: the percentage of calls that must be done
#: (``ANY_COMPLETED`` is "at least one").
ALWAYS = 0
ANY_COMPLETED = -1
ALL_COMPLETED = 100

_logger = logging.getLogger("cloudpool.compat.lithops")

#: Lithops compute backend names that differ from cloudpool's.
_BACKENDS = {"localhost": "local", "k8s": "kubernetes"}
#: Lithops storage names (and URL schemes) -> cloudpool URL schemes.
_SCHEMES = {
    "s3": "s3", "aws_s3": "s3", "minio": "s3", "ceph": "s3",
    "cos": "cos", "ibm_cos": "cos",
    "gs": "gs", "gcp_storage": "gs",
    "az": "az", "azure_storage": "az",
    "http": "http", "https": "https",
    "file": "file", "localhost": "file",
}
#: cloudpool scheme -> the name Lithops gives that storage (``obj.backend``).
_LITHOPS_STORAGE_NAMES = {"s3": "aws_s3", "cos": "ibm_cos", "gs": "gcp_storage",
                          "az": "azure_storage", "file": "localhost", "http": "http", "https": "https"}
#: Parameters Lithops fills in itself: the call's index and a storage client.
_INJECTED = ("id", "storage", "ibm_cos", "rabbitmq")
#: Top-level keys that mark a config dict as a Lithops config (not a cloudpool one).
_LITHOPS_SECTIONS = {"lithops", "localhost", "aws", "aws_s3", "minio", "ceph", "ibm", "ibm_cos",
                     "gcp", "gcp_storage", "azure_storage", "k8s", "serverless", "standalone"}


# ---------------------------------------------------------------------------- the obj argument
class CloudObjectPart:
    """What a function's ``obj`` parameter receives: one partition of one object.

    Lithops' attributes: ``backend`` (Lithops' storage name), ``bucket``, ``key``,
    ``part`` (0-based index among the object's parts), ``total_parts``, ``chunk_size``
    (the nominal part size), ``newline``, ``url``, ``path`` (local files only),
    ``data_byte_range`` (``(first, last)`` inclusive, of the whole lines the part owns;
    ``last < first`` for a part that owns none) and ``data_stream`` (a binary stream of
    exactly those lines, opened on first use). ``object_part`` is the underlying
    ``cloudpool.ObjectPart``. Picklable, without credentials.
    """

    __slots__ = ("object_part", "backend", "bucket", "key", "path", "_stream")

    def __init__(self, object_part: ObjectPart, backend: str, bucket: str, key: str,
                 path: Optional[str] = None) -> None:
        self.object_part = object_part
        self.backend = backend
        self.bucket = bucket
        self.key = key
        self.path = path
        self._stream: Any = None

    def __getstate__(self) -> dict:
        return {"object_part": self.object_part, "backend": self.backend, "bucket": self.bucket,
                "key": self.key, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._stream = None

    @property
    def part(self) -> int:
        return self.object_part.part

    @property
    def total_parts(self) -> int:
        return self.object_part.parts

    @property
    def chunk_size(self) -> int:
        return self.object_part.end - self.object_part.start

    @property
    def newline(self) -> Optional[str]:
        nl = self.object_part.newline
        return None if nl is None else nl.decode("utf-8", "replace")

    @property
    def url(self) -> str:
        return self.object_part.url

    @property
    def data_byte_range(self) -> Tuple[int, int]:
        a, b = self.object_part.data_range()
        return a, b - 1

    @property
    def data_stream(self) -> Any:
        if self._stream is None:
            self._stream = self.object_part.open()
        return self._stream

    def __repr__(self) -> str:
        return (f"<CloudObjectPart {self.backend}://{self.bucket}/{self.key} "
                f"part {self.part + 1}/{self.total_parts}>")


# ---------------------------------------------------------------------------- futures helpers
class _LithopsFutureMixin:
    """Lithops' ``ResponseFuture`` attributes on cloudpool's futures: ``call_id`` (the
    call's index in its map, as Lithops' 5-digit string), ``error`` (the call raised),
    ``success`` and ``ready`` (done without error). Mixed into the future's own class,
    so the future stays a ``concurrent.futures.Future``."""

    _lithops_call_id: int = 0

    @property
    def call_id(self) -> str:
        return f"{self._lithops_call_id:05d}"

    @property
    def error(self) -> bool:
        return self.done() and (self.cancelled() or self.exception() is not None)  # type: ignore[attr-defined]

    @property
    def success(self) -> bool:
        return self.done() and not self.error  # type: ignore[attr-defined]

    ready = success


_LITHOPS_FUTURE_TYPES: Dict[type, type] = {}


def _as_lithops_future(future: cf.Future, call_id: int) -> cf.Future:
    cls = type(future)
    if not issubclass(cls, _LithopsFutureMixin):
        sub = _LITHOPS_FUTURE_TYPES.get(cls)
        if sub is None:
            sub = _LITHOPS_FUTURE_TYPES[cls] = type(f"Lithops{cls.__name__}", (cls, _LithopsFutureMixin), {})
        future.__class__ = sub
    future._lithops_call_id = call_id  # type: ignore[attr-defined]
    return future


class FuturesList(list):
    """The list of futures ``map`` returns, with Lithops' ``wait``/``get_result`` shortcuts."""

    def __init__(self, futures: Iterable[cf.Future] = (), executor: Optional["FunctionExecutor"] = None) -> None:
        super().__init__(futures)
        self._executor = executor

    def wait(self, **kwargs: Any) -> Tuple["FuturesList", "FuturesList"]:
        if self._executor is not None:
            return self._executor.wait(fs=self, **kwargs)
        return wait(self, **kwargs)

    def get_result(self, **kwargs: Any) -> Any:
        if self._executor is not None:
            return self._executor.get_result(fs=self, **kwargs)
        return get_result(self, **kwargs)

    def _chain_executor(self) -> "FunctionExecutor":
        if self._executor is None:
            raise ValueError("this FuturesList belongs to no FunctionExecutor: call map() on the executor")
        return self._executor

    def map(self, map_function: Callable, **kwargs: Any) -> "FuturesList":
        """Lithops' function chaining: ``map_function`` over these calls' results."""
        return self._chain_executor().map(map_function, self, **kwargs)

    def map_reduce(self, map_function: Callable, reduce_function: Callable, **kwargs: Any) -> "FuturesList":
        return self._chain_executor().map_reduce(map_function, self, reduce_function, **kwargs)


def _as_futures(fs: Any) -> List[cf.Future]:
    if isinstance(fs, cf.Future):
        return [fs]
    try:
        futures = list(fs)
    except TypeError:
        raise TypeError(f"fs must be a future or a list of futures, not {type(fs).__name__}") from None
    for f in futures:
        if not isinstance(f, cf.Future):
            raise TypeError(f"fs must hold futures (as returned by map/call_async), not {type(f).__name__}")
    return futures


def _needed(return_when: Any, total: int) -> int:
    """How many futures must be done for ``return_when`` (a Lithops constant or percentage)."""
    if isinstance(return_when, bool) or not isinstance(return_when, int) or not (
            return_when == ANY_COMPLETED or 0 <= return_when <= 100):
        raise ValueError(f"return_when must be ALWAYS (0), ANY_COMPLETED (-1), ALL_COMPLETED (100) "
                         f"or a percentage of done calls between 0 and 100, not {return_when!r}")
    if return_when == ANY_COMPLETED:
        return min(1, total)
    return math.ceil(total * return_when / 100)


def wait(fs: Any, throw_except: bool = True, return_when: int = ALL_COMPLETED,
         download_results: bool = False, timeout: Optional[float] = None,
         threadpool_size: Optional[int] = None, wait_dur_sec: Optional[float] = None,
         show_progressbar: Optional[bool] = None) -> Tuple[FuturesList, FuturesList]:
    """Wait until ``return_when`` of ``fs`` are done or ``timeout`` passes; ``(done, not_done)``.

    With ``throw_except``, a done call that raised re-raises its exception here (with
    the remote traceback as its cause), as Lithops does.
    """
    futures = _as_futures(fs)
    needed = _needed(return_when, len(futures))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pending = [f for f in futures if not f.done()]
        if len(futures) - len(pending) >= needed or not pending:
            break
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        cf.wait(pending, timeout=remaining, return_when=cf.FIRST_COMPLETED)
    done = [f for f in futures if f.done()]
    if throw_except:
        for f in done:
            if not f.cancelled() and f.exception() is not None:
                f.result()  # raises it, remote traceback attached
    return FuturesList(done), FuturesList(f for f in futures if not f.done())


def _results(futures: Sequence[cf.Future], throw_except: bool, timeout: Optional[float]) -> List[Any]:
    _done, not_done = cf.wait(futures, timeout=timeout)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(futures)} calls did not finish within "
                           f"{timeout} s; wait longer (timeout=None waits until they do)")
    out = []
    for f in futures:
        if throw_except:
            out.append(f.result())
        else:
            out.append(None if f.cancelled() or f.exception() is not None else f.result())
    return out


def get_result(fs: Any, throw_except: bool = True, timeout: Optional[float] = None,
               threadpool_size: Optional[int] = None, wait_dur_sec: Optional[float] = None,
               show_progressbar: Optional[bool] = None) -> Any:
    """The results of ``fs`` in order (one value for a single future); failed calls raise,
    or give ``None`` with ``throw_except=False``."""
    results = _results(_as_futures(fs), throw_except, timeout)
    return results[0] if isinstance(fs, cf.Future) else results


def _storage_url(storage: Optional[str], bucket: Optional[str]) -> Optional[str]:
    """A Lithops storage name or a cloudpool URL -> a cloudpool storage URL (None: default)."""
    if storage is None:
        return None
    if not isinstance(storage, str) or not storage:
        raise TypeError(f"storage must be a storage URL or a Lithops storage name, not {storage!r}")
    if "://" in storage or storage.startswith(("/", ".", "~")):
        return storage
    if storage == "localhost":
        return _default_storage()
    scheme = _SCHEMES.get(storage)
    if scheme is None or scheme in ("http", "https"):
        raise LithopsCompatError(
            f"unknown storage {storage!r}: give a cloudpool storage URL (s3://bucket/prefix, "
            f"gs://..., az://..., cos://..., a local path) or one of the Lithops names "
            f"{', '.join(sorted(k for k, v in _SCHEMES.items() if '_' in k or k in ('minio', 'ceph', 'localhost')))}")
    if not bucket:
        raise LithopsCompatError(
            f"storage {storage!r} names no bucket: pass storage='{scheme}://BUCKET/PREFIX', or "
            f"config={{'lithops': {{'storage': '{storage}'}}, '{storage}': {{'storage_bucket': 'BUCKET'}}}}")
    return f"{scheme}://{bucket}/cloudpool"


def _is_lithops_config(config: Mapping[str, Any]) -> bool:
    return any(key in _LITHOPS_SECTIONS for key in config)


class _LithopsCall:
    """What a worker runs for one Lithops call: ``extra_env`` set around the call, and
    futures the function returns resolved to their results (Lithops composes them)."""

    def __init__(self, func: Callable, extra_env: Optional[Mapping[str, str]] = None) -> None:
        self.func = func
        self.extra_env = dict(extra_env or {})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        saved = {k: os.environ.get(k) for k in self.extra_env}
        os.environ.update(self.extra_env)
        try:
            return _resolve(self.func(*args, **kwargs))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _resolve(value: Any) -> Any:
    """A future -> its result; a non-empty list of futures -> their results (else as is)."""
    if isinstance(value, cf.Future):
        return value.result()
    if isinstance(value, list) and value and all(isinstance(v, cf.Future) for v in value):
        return [f.result() for f in value]
    return value


def setup_lithops_logger(log_level: Any = logging.INFO, log_format: Optional[str] = None,
                         stream: Any = None, filename: Optional[str] = None) -> None:
    """Lithops' logger set-up, for cloudpool's loggers: a handler on ``cloudpool`` at ``log_level``."""
    if log_level is None or log_level is False:
        return
    if isinstance(log_level, str):
        level = logging.getLevelName(log_level.upper())
        if not isinstance(level, int):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {log_level!r}")
        log_level = level
    if isinstance(stream, str) and stream.startswith("ext://sys."):
        stream = getattr(sys, stream.rpartition(".")[2])
    handler: logging.Handler = (logging.FileHandler(filename) if filename
                                else logging.StreamHandler(stream or sys.stderr))
    handler.setFormatter(logging.Formatter(log_format or "%(asctime)s [%(levelname)s] %(name)s -- %(message)s"))
    for name in ("cloudpool", "lithops"):
        log = logging.getLogger(name)
        log.setLevel(log_level)
        if not any(getattr(h, "_cloudpool_lithops", False) for h in log.handlers):
            handler._cloudpool_lithops = True  # type: ignore[attr-defined]
            log.addHandler(handler)


# ---------------------------------------------------------------------------- the executor
class FunctionExecutor:
    """Lithops' ``FunctionExecutor`` over a ``CloudPoolExecutor`` (see the module docstring).

    ``backend``/``storage``/``config`` choose where calls run and where their data
    lives. ``config`` is a Lithops config (a dict with a ``lithops`` section or Lithops'
    backend/storage sections) or a cloudpool config; without ``config``, the Lithops
    config file is read if there is one (``config_file``, ``LITHOPS_CONFIG_FILE``,
    ``~/.lithops/config``), else cloudpool's configuration. ``localhost_root`` is the
    directory that ``localhost://bucket/...`` URLs name. ``runtime_memory``,
    ``runtime_timeout``, ``log_level`` and other Lithops options without a cloudpool
    meaning are accepted (see ``_lithops_config``); any other keyword argument is an
    option of the cloudpool backend.
    """

    def __init__(self, mode: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
                 config_file: Optional[str] = None, backend: Optional[str] = None,
                 storage: Optional[str] = None, monitoring: Optional[str] = None,
                 log_level: Any = False, *, localhost_root: Optional[str] = None,
                 max_workers: Optional[int] = None, runtime: Optional[str] = None,
                 runtime_memory: Optional[int] = None, runtime_timeout: Optional[int] = None,
                 remote_invoker: Optional[bool] = None, worker_processes: Optional[int] = None,
                 **backend_options: Any) -> None:
        if monitoring not in (None, "storage"):
            _logger.debug("monitoring=%r: cloudpool watches calls through their status objects; ignored",
                          monitoring)
        if mode not in (None, "localhost", "serverless"):
            raise _unsupported(f"mode={mode!r}", "use mode='serverless' (the configured backend) or "
                               "'localhost' (local processes)")
        for name, value in (("runtime_timeout", runtime_timeout), ("remote_invoker", remote_invoker),
                            ("worker_processes", worker_processes)):
            if value is not None:
                _logger.debug("%s=%r has no cloudpool meaning; ignored", name, value)
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, not {type(config).__name__}")
        if config is None:
            path = _lithops_config.config_file_path(config_file)
            if path is not None:
                config = load_yaml_config(path)
        settings: Dict[str, Any] = {}
        cp_config: Dict[str, Any] = {}
        self.config: Dict[str, Any] = {}
        if config and _is_lithops_config(config):
            self.config = dict(config)
            cp_config, settings = _lithops_config.translate(config)
        elif config:
            cp_config = dict(config)
        if log_level:
            setup_lithops_logger(log_level)
        backend = backend or settings.get("backend") or ("localhost" if mode == "localhost" else None)
        storage = storage or settings.get("storage")
        if backend is not None:
            backend = _BACKENDS.get(backend, backend)
        if runtime_memory is not None:
            if backend == "aws_lambda":
                cp_config.setdefault("aws_lambda", {})["memory_mb"] = int(runtime_memory)
            else:
                _logger.debug("runtime_memory=%r has no meaning on the %s backend; ignored",
                              runtime_memory, backend or "configured")
        storage_url = _storage_url(storage, settings.get("bucket"))
        if storage_url is not None and settings.get("storage_options"):
            scheme = split_url(storage_url)[0]
            cp_config.setdefault(scheme, {}).update(settings["storage_options"])
        if max_workers is None:
            max_workers = settings.get("max_workers")
        self._make_args = dict(backend=backend, storage=storage_url, runtime=runtime, **backend_options)
        self._max_workers = max_workers
        self._cp_config = cp_config
        self._executor = CloudPoolExecutor(max_workers, config=cp_config, **self._make_args)
        self._by_timeout: Dict[float, CloudPoolExecutor] = {}
        self._localhost_root = os.path.abspath(localhost_root or default_localhost_root())
        self._storage: Optional[Storage] = None
        self._wrappers: Dict[Tuple[int, Tuple[Tuple[str, str], ...]], _LithopsCall] = {}
        self._lock = threading.Lock()
        self._futures: List[cf.Future] = []
        self._read: set = set()        # ids of futures whose results get_result() returned
        self._no_output: set = set()   # ids of map_reduce's map futures (get_result skips them)
        self.last_call: Optional[str] = None
        self.executor_id = self._executor.executor_id

    # ------------------------------------------------------------------ plumbing
    @property
    def executor(self) -> CloudPoolExecutor:
        """The ``CloudPoolExecutor`` doing the work."""
        return self._executor

    @property
    def futures(self) -> List[cf.Future]:
        return list(self._futures)

    @property
    def storage(self) -> Storage:
        """The Lithops ``Storage`` a function's ``storage`` parameter receives."""
        if self._storage is None:
            if self.config:
                self._storage = Storage(storage_config=extract_storage_config(self.config),
                                        localhost_root=self._localhost_root)
            else:
                scheme, bucket, _key = split_url(self._executor.config["storage"])
                name = _LITHOPS_STORAGE_NAMES.get(scheme, "localhost")
                if scheme == "file":
                    self._storage = Storage(storage_config={"backend": "localhost", "localhost": {}},
                                            localhost_root=self._localhost_root)
                else:
                    self._storage = Storage(storage_config={"backend": name, name: {
                        "storage_bucket": bucket,
                        **{f"_cloudpool_{k}": v for k, v in self._executor.config.section(scheme).items()}}})
        return self._storage

    def __enter__(self) -> "FunctionExecutor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown(wait=True)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the executor (what leaving the ``with`` block does)."""
        for ex in [self._executor, *self._by_timeout.values()]:
            ex.shutdown(wait=wait)

    def _executor_for(self, timeout: Optional[float]) -> CloudPoolExecutor:
        """The executor with call time limit ``timeout`` (Lithops' per-call ``timeout=``)."""
        if timeout is None or timeout == self._executor.config["timeout"]:
            return self._executor
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        with self._lock:
            ex = self._by_timeout.get(timeout)
            if ex is None:
                self._executor._check_usable()
                ex = self._by_timeout[timeout] = CloudPoolExecutor(
                    self._max_workers, config={**self._cp_config, "timeout": timeout}, **self._make_args)
            return ex

    def _call_for(self, func: Callable, extra_env: Optional[Mapping[str, str]]) -> _LithopsCall:
        """One wrapper per (function, environment), so cloudpool ships the function once."""
        if extra_env is not None and not isinstance(extra_env, Mapping):
            raise TypeError(f"extra_env must be a dict of environment variables, not {type(extra_env).__name__}")
        env = tuple(sorted((str(k), str(v)) for k, v in (extra_env or {}).items()))
        with self._lock:
            call = self._wrappers.get((id(func), env))
            if call is None or call.func is not func:
                call = self._wrappers[(id(func), env)] = _LithopsCall(func, dict(env))
            return call

    @staticmethod
    def _reject(name: str, value: Any, instead: str) -> None:
        if value:  # None, [], {} and False are the Lithops defaults
            raise _unsupported(f"{name}={value!r}", instead)

    def _check_common(self, runtime_memory: Any, include_modules: Any, exclude_modules: Any,
                      memory_name: str = "runtime_memory") -> None:
        for name, value in ((memory_name, runtime_memory), ("include_modules", include_modules),
                            ("exclude_modules", exclude_modules)):
            if value:
                _logger.debug("%s=%r has no per-call meaning in cloudpool; ignored", name, value)

    def _record(self, futures: List[cf.Future], call: str) -> None:
        with self._lock:
            self._futures.extend(futures)
            self.last_call = call

    # ------------------------------------------------------------------ argument binding
    def _signature(self, func: Callable) -> Tuple[inspect.Signature, inspect.Signature]:
        if not callable(func):
            raise TypeError(f"the function to run must be callable, not {type(func).__name__}")
        sig = inspect.signature(func)
        for name in ("ibm_cos", "rabbitmq"):
            if name in sig.parameters:
                raise _unsupported(
                    f"a function parameter named {name!r} (Lithops injects its own client there)",
                    "take a parameter named 'storage' (a Lithops Storage on the executor's storage) "
                    "or create a client in the function, e.g. cloudpool.Storage('s3://bucket/prefix')")
        user = sig.replace(parameters=[p for n, p in sig.parameters.items() if n not in _INJECTED])
        return sig, user

    @staticmethod
    def _item_args(sig: inspect.Signature, item: Any, extra_args: Any) -> Tuple[tuple, dict]:
        """One iterdata item (+ extra_args) -> positional and keyword arguments, Lithops' way.

        A dict item names the arguments; as in Lithops, the value under the name of the
        function's ``*args`` parameter is spread as positional arguments and the one under
        its ``**kwargs`` parameter as keyword arguments (so decorated functions work).
        """
        if isinstance(item, dict):
            if extra_args is not None and not isinstance(extra_args, dict):
                raise TypeError(f"extra_args must be a dict when the data items are dicts (keyword "
                                f"arguments), not {type(extra_args).__name__}")
            payload = {**item, **(extra_args or {})}
            args: tuple = ()
            for name, p in sig.parameters.items():
                if p.kind == inspect.Parameter.VAR_POSITIONAL and name in payload:
                    args = tuple(payload.pop(name) or ())
            for name, p in sig.parameters.items():
                if p.kind == inspect.Parameter.VAR_KEYWORD and isinstance(payload.get(name), Mapping):
                    payload = {**payload.pop(name), **payload}
            return args, payload
        if extra_args is not None and not isinstance(extra_args, (tuple, list)):
            raise TypeError(f"extra_args must be a tuple (appended to each item's positional "
                            f"arguments), not {type(extra_args).__name__}")
        extra = tuple(extra_args or ())
        if isinstance(item, tuple):
            return item + extra, {}
        return (item,) + extra, {}

    def _bind(self, func: Callable, sig: inspect.Signature, user: inspect.Signature, item: Any,
              extra_args: Any) -> inspect.BoundArguments:
        args, kwargs = self._item_args(sig, item, extra_args)
        try:
            return user.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"data item {item!r} does not fit {getattr(func, '__name__', func)}"
                            f"{user}: {exc}") from None

    def _call_args(self, sig: inspect.Signature, bound: inspect.BoundArguments,
                   call_id: int) -> Tuple[tuple, dict]:
        injected = {}
        if "id" in sig.parameters:
            injected["id"] = call_id
        if "storage" in sig.parameters:
            injected["storage"] = self.storage
        if not injected:
            return bound.args, bound.kwargs
        kinds = {p.kind for p in sig.parameters.values()}
        if inspect.Parameter.VAR_POSITIONAL in kinds or inspect.Parameter.POSITIONAL_ONLY in kinds:
            raise _unsupported(f"an {' or '.join(repr(n) for n in injected)} parameter next to *args or "
                               f"positional-only parameters",
                               "Lithops passes every argument by name; make them ordinary parameters")
        kwargs = dict(bound.arguments)
        for name, p in sig.parameters.items():
            if p.kind == inspect.Parameter.VAR_KEYWORD and name in kwargs:
                kwargs.update(kwargs.pop(name))  # **kw arrives as one dict entry: spread it
        kwargs.update(injected)
        return (), kwargs

    # ------------------------------------------------------------------ object URLs
    def _object_source(self, value: str) -> Tuple[str, str, Callable[[ObjectPart], Tuple[str, str, Optional[str]]]]:
        """A Lithops data URL -> (cloudpool URL, Lithops backend name, part -> (bucket, key, path))."""
        if "://" in value:
            given, _, rest = value.partition("://")
            scheme = _SCHEMES.get(given.lower())
            if scheme is None:
                raise LithopsCompatError(f"{value}: unknown storage {given!r}; use one of "
                                         f"{', '.join(sorted(_SCHEMES))}")
        elif value.startswith("/"):
            scheme, rest = "file", value
        else:
            # Lithops reads a URL without a scheme from the executor's storage service.
            scheme = split_url(self._executor.config["storage"])[0]
            rest = value
            given = "localhost" if scheme == "file" else scheme
        backend = _LITHOPS_STORAGE_NAMES[scheme]
        if scheme == "file":
            if value.startswith("/") or given == "file":
                path = "/" + rest.lstrip("/")
                return path, backend, lambda p: (os.path.dirname("/" + p.key),
                                                 os.path.basename(p.key), "/" + p.key)
            root = self._localhost_root
            path = os.path.join(root, rest)
            return path, backend, lambda p: (*_split_relative(os.path.relpath("/" + p.key, root)),
                                             "/" + p.key)
        if scheme in ("http", "https"):
            return f"{scheme}://{rest}", backend, lambda p: (p.bucket, p.key, None)
        return f"{scheme}://{rest}", backend, lambda p: (p.bucket, p.key, None)

    def _partitions(self, value: str, chunk_size: Optional[int], chunk_number: Optional[int],
                    newline: Optional[str]) -> Iterable[CloudObjectPart]:
        url, backend, names = self._object_source(value)
        scheme = split_url(url)[0]
        if chunk_number is not None:  # Lithops: the number wins over the size
            sizing: Dict[str, Any] = {"chunks": chunk_number}
        elif chunk_size is not None:
            sizing = {"chunk_size": chunk_size}
        else:
            sizing = {"chunks": 1}  # Lithops: the whole object in one call
        parts = _make_objects(url, newline=newline, storage_options=self._executor.config.section(scheme),
                              **sizing)
        for part in parts:
            bucket, key, path = names(part)
            yield CloudObjectPart(part, backend, bucket, key, path)

    def _calls(self, func: Callable, iterdata: Any, extra_args: Any, obj_chunk_size: Optional[int],
               obj_chunk_number: Optional[int], obj_newline: Optional[str]) -> Tuple[List[Tuple[tuple, dict]], List[str]]:
        """Every call's (args, kwargs), and the source URL of each (for reduce-by-key)."""
        sig, user = self._signature(func)
        for name, value in (("obj_chunk_size", obj_chunk_size), ("obj_chunk_number", obj_chunk_number)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, not {value!r}")
        if isinstance(iterdata, (list, range, set, frozenset)) or (
                isinstance(iterdata, Iterable) and not isinstance(iterdata, (str, bytes, dict, tuple))):
            items = list(iterdata)
        else:
            items = [iterdata]  # Lithops: one item (a URL, a dict, a tuple of arguments)
        calls: List[Tuple[tuple, dict]] = []
        sources: List[str] = []
        for item in items:
            bound = self._bind(func, sig, user, item, extra_args)
            value = bound.arguments.get("obj")
            if "obj" in user.parameters and isinstance(value, str):
                for part in self._partitions(value, obj_chunk_size, obj_chunk_number, obj_newline):
                    bound.arguments["obj"] = part
                    calls.append(self._call_args(sig, bound, len(calls)))
                    sources.append(part.url)
                continue
            calls.append(self._call_args(sig, bound, len(calls)))
            sources.append("")
        return calls, sources

    # ------------------------------------------------------------------ Lithops API
    def call_async(self, func: Callable, data: Any, extra_env: Optional[Dict[str, str]] = None,
                   runtime_memory: Optional[int] = None, timeout: Optional[int] = None,
                   include_modules: Optional[List[str]] = None,
                   exclude_modules: Optional[List[str]] = None, *, extra_args: Any = None) -> cf.Future:
        """Run ``func`` once on ``data`` (a value, a tuple of arguments or a dict); one future."""
        self._check_common(runtime_memory, include_modules, exclude_modules)
        sig, user = self._signature(func)
        bound = self._bind(func, sig, user, data, extra_args)
        if "obj" in user.parameters and isinstance(bound.arguments.get("obj"), str):
            raise _unsupported("call_async with an obj URL", "use map() to process objects, one call per partition")
        args, kwargs = self._call_args(sig, bound, 0)
        future = _as_lithops_future(self._executor_for(timeout).submit(self._call_for(func, extra_env),
                                                                       *args, **kwargs), 0)
        self._record([future], "call_async")
        return future

    def map(self, map_function: Callable, map_iterdata: Any, chunksize: Optional[int] = None,
            extra_args: Any = None, extra_env: Optional[Dict[str, str]] = None,
            runtime_memory: Optional[int] = None, obj_chunk_size: Optional[int] = None,
            obj_chunk_number: Optional[int] = None, obj_newline: Optional[str] = "\n",
            timeout: Optional[int] = None, include_modules: Optional[List[str]] = None,
            exclude_modules: Optional[List[str]] = None) -> FuturesList:
        """One call per item of ``map_iterdata`` (per partition for ``obj`` URLs); their futures."""
        futures, _sources = self._map(map_function, map_iterdata, chunksize, extra_args, extra_env,
                                      runtime_memory, obj_chunk_size, obj_chunk_number, obj_newline,
                                      timeout, include_modules, exclude_modules)
        self._record(futures, "map")
        return FuturesList(futures, self)

    def _map(self, func: Callable, iterdata: Any, chunksize: Optional[int], extra_args: Any,
             extra_env: Any, runtime_memory: Any, obj_chunk_size: Optional[int],
             obj_chunk_number: Optional[int], obj_newline: Optional[str], timeout: Any,
             include_modules: Any, exclude_modules: Any,
             memory_name: str = "runtime_memory") -> Tuple[List[cf.Future], List[str]]:
        self._check_common(runtime_memory, include_modules, exclude_modules, memory_name)
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or None, not {chunksize!r}")
        if isinstance(iterdata, FuturesList):
            # Lithops' function chaining: each earlier call's result is one item.
            iterdata = [f.result() for f in iterdata]
        calls, sources = self._calls(func, iterdata, extra_args, obj_chunk_size, obj_chunk_number, obj_newline)
        executor = self._executor_for(timeout)
        call = self._call_for(func, extra_env)
        return [_as_lithops_future(executor.submit(call, *args, **kwargs), i)
                for i, (args, kwargs) in enumerate(calls)], sources

    def map_reduce(self, map_function: Callable, map_iterdata: Any, reduce_function: Callable,
                   chunksize: Optional[int] = None, extra_args: Any = None, extra_args_reduce: Any = None,
                   extra_env: Optional[Dict[str, str]] = None, map_runtime_memory: Optional[int] = None,
                   reduce_runtime_memory: Optional[int] = None, timeout: Optional[int] = None,
                   obj_chunk_size: Optional[int] = None, obj_chunk_number: Optional[int] = None,
                   obj_newline: Optional[str] = "\n", obj_reduce_by_key: bool = False,
                   spawn_reducer: int = 20, include_modules: Optional[List[str]] = None,
                   exclude_modules: Optional[List[str]] = None) -> FuturesList:
        """``map``, then ``reduce_function(results, *extra_args_reduce)`` on a worker (one per
        object with ``obj_reduce_by_key``). ``get_result()`` returns the reducer's result."""
        if not callable(reduce_function):
            raise TypeError(f"reduce_function must be callable, not {type(reduce_function).__name__}")
        _needed(spawn_reducer, 1)  # checked like Lithops' return_when values
        self._check_common(reduce_runtime_memory, None, None, "reduce_runtime_memory")
        map_futures, sources = self._map(map_function, map_iterdata, chunksize, extra_args, extra_env,
                                         map_runtime_memory, obj_chunk_size, obj_chunk_number,
                                         obj_newline, timeout, include_modules, exclude_modules,
                                         memory_name="map_runtime_memory")
        groups: Dict[str, List[cf.Future]] = {}
        for future, source in zip(map_futures, sources):
            groups.setdefault(source if obj_reduce_by_key else "", []).append(future)
        if isinstance(extra_args_reduce, dict):
            r_args, r_kwargs = (), dict(extra_args_reduce)
        elif extra_args_reduce is None or isinstance(extra_args_reduce, (tuple, list)):
            r_args, r_kwargs = tuple(extra_args_reduce or ()), {}
        else:
            raise TypeError(f"extra_args_reduce must be a tuple or a dict, not {type(extra_args_reduce).__name__}")
        r_sig = self._signature(reduce_function)[0]
        if "storage" in r_sig.parameters:
            r_kwargs["storage"] = self.storage
        reducer = self._call_for(reduce_function, extra_env)
        reduce_futures: List[cf.Future] = []
        for group in groups.values():
            cf.wait(group)
            failed = next((f for f in group if f.cancelled() or f.exception() is not None), None)
            if failed is not None:
                # The reducer would get an incomplete list: its future fails with the map's error.
                future: cf.Future = cf.Future()
                future.set_exception(failed.exception() if not failed.cancelled() else cf.CancelledError())
            else:
                future = self._executor_for(timeout).submit(reducer, [f.result() for f in group],
                                                            *r_args, **r_kwargs)
            reduce_futures.append(future)
        with self._lock:
            self._no_output.update(id(f) for f in map_futures)
        self._record(map_futures + reduce_futures, "map_reduce")
        return FuturesList(map_futures + reduce_futures, self)

    def wait(self, fs: Any = None, throw_except: bool = True, return_when: int = ALL_COMPLETED,
             download_results: bool = False, timeout: Optional[float] = None,
             threadpool_size: Optional[int] = None, wait_dur_sec: Optional[float] = None,
             show_progressbar: Optional[bool] = None) -> Tuple[FuturesList, FuturesList]:
        """Wait for ``fs`` (default: every call of this executor); ``(done, not_done)``."""
        futures = self.futures if fs is None else _as_futures(fs)
        done, not_done = wait(futures, throw_except=throw_except, return_when=return_when, timeout=timeout)
        return FuturesList(done, self), FuturesList(not_done, self)

    def get_result(self, fs: Any = None, throw_except: bool = True, timeout: Optional[float] = None,
                   threadpool_size: Optional[int] = None, wait_dur_sec: Optional[float] = None,
                   show_progressbar: Optional[bool] = None) -> Any:
        """Results in call order: of ``fs``, or of every call not read by ``get_result()`` yet.

        As in Lithops, a single result is returned as one value (not a list) unless the
        executor's last call was ``map``.
        """
        if fs is None:
            with self._lock:
                futures = [f for f in self._futures if id(f) not in self._read and id(f) not in self._no_output]
        else:
            futures = [f for f in _as_futures(fs) if id(f) not in self._no_output]
        results = _results(futures, throw_except, timeout)
        if fs is None:
            with self._lock:
                self._read.update(id(f) for f in futures)
        if len(results) == 1 and self.last_call != "map":
            return results[0]  # Lithops' rule, whichever futures were asked for
        return results

    def clean(self, fs: Any = None, cs: Any = None, clean_cloudobjects: bool = True,
              clean_fn: bool = False, force: bool = False, on_exit: bool = False) -> None:
        """Forget finished calls (``force``: also cancel the ones not started yet).

        cloudpool itself deletes a call's data in storage once its result is read, and the
        executor's whole prefix at shutdown, so there are no leftovers to delete here.
        """
        if cs:
            cloudobjects = [cs] if isinstance(cs, CloudObject) else list(cs)
            bad = [c for c in cloudobjects if not isinstance(c, CloudObject)]
            if bad:
                raise TypeError(f"cs must hold CloudObjects (from Storage.put_cloudobject), not {bad[0]!r}")
            if clean_cloudobjects:
                self.storage.delete_cloudobjects(cloudobjects)
        targets = self.futures if fs is None else _as_futures(fs)
        if force:
            for f in targets:
                f.cancel()
        gone = {id(f) for f in targets if f.done()}
        with self._lock:
            self._futures = [f for f in self._futures if id(f) not in gone]
            self._read -= gone
            self._no_output -= gone

    def plot(self, *args: Any, **kwargs: Any) -> None:
        raise _unsupported("plot()", "use executor.stats() on FunctionExecutor.executor for per-call timings")

    def job_summary(self, *args: Any, **kwargs: Any) -> None:
        raise _unsupported("job_summary()", "use executor.stats() on FunctionExecutor.executor")

    def __repr__(self) -> str:
        return f"<lithops-compatible FunctionExecutor over {self._executor!r}>"


def _split_relative(rel: str) -> Tuple[str, str]:
    bucket, _, key = rel.partition("/")
    return bucket, key


class LocalhostExecutor(FunctionExecutor):
    """Lithops' ``LocalhostExecutor``: calls on local processes."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        kwargs.setdefault("backend", "localhost")
        super().__init__(config=config, **kwargs)


class ServerlessExecutor(FunctionExecutor):
    """Lithops' ``ServerlessExecutor``: calls on the configured backend."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(mode="serverless", config=config, **kwargs)


# Defined in their own module; imported last, as they build on FunctionExecutor.
from ._lithops_retries import RetryingFunctionExecutor, RetryingFuture  # noqa: E402


_NOT_PROVIDED = {
    "StandaloneExecutor": "use FunctionExecutor with a serverless or local backend",
    "multiprocessing": "use cloudpool.multiprocessing",
}


def __getattr__(name: str) -> Any:
    if name in _NOT_PROVIDED:
        raise AttributeError(f"cloudpool.compat.lithops does not provide Lithops' {name}: {_NOT_PROVIDED[name]}")
    raise AttributeError(f"module 'cloudpool.compat.lithops' has no attribute {name!r}")
