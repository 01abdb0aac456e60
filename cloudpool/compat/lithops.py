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
- ``FunctionExecutor(backend=, storage=, config=, ...)``: Lithops backend names map to
  cloudpool's (``localhost`` -> ``local``, ``k8s`` -> ``kubernetes``, others as they are);
  ``storage`` is a cloudpool storage URL, ``"localhost"``, or a Lithops storage name with
  its bucket in ``config`` (``{"aws_s3": {"storage_bucket": ...}}``). A ``config`` with a
  ``lithops`` section is read as a Lithops config (the keys in ``_LITHOPS_KEYS`` and the
  S3 sections); any other ``config`` is a cloudpool config.
- Arguments, as in Lithops: each ``map_iterdata`` item is one call; a ``tuple`` item is
  the positional arguments, a ``dict`` item the keyword arguments, anything else the
  first argument; ``extra_args`` (a tuple, or a dict for dict items) is appended to
  every item. A parameter named ``id`` receives the call's index.
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
- Futures are ``concurrent.futures.Future``s (``result(timeout=None)``), not Lithops'
  ``ResponseFuture``; ``concurrent.futures.wait``/``as_completed`` work on them.
- ``map_reduce`` invokes its reducer once every map call has finished (Lithops may start
  it earlier to wait on the workers); the results are the same. ``spawn_reducer`` is
  accepted and checked, and has no other effect.
- ``chunksize``, ``threadpool_size``, ``wait_dur_sec``, ``show_progressbar`` and
  ``download_results`` are accepted: cloudpool sizes batches from measured call times,
  fetches results in parallel and polls adaptively on its own.
- Arguments with no cloudpool equivalent raise ``LithopsCompatError`` (a ``ValueError``)
  naming the argument and what to use instead, before anything runs: ``extra_env``,
  ``runtime_memory``, per-call ``timeout`` (set ``config={"timeout": ...}`` on the
  executor), ``include_modules``/``exclude_modules``, cloud objects in ``clean``, and
  functions that take Lithops' injected ``storage``/``ibm_cos``/``rabbitmq`` clients.
"""
from __future__ import annotations

import concurrent.futures as cf
import inspect
import math
import os
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..config import _default_storage
from ..executor import CloudPoolExecutor
from ..objects import ObjectPart
from ..objects import objects as _make_objects
from ..storage import split_url

__all__ = [
    "FunctionExecutor", "LocalhostExecutor", "ServerlessExecutor", "FuturesList",
    "CloudObjectPart", "LithopsCompatError", "wait", "get_result",
    "ALWAYS", "ANY_COMPLETED", "ALL_COMPLETED",
]

#: ``return_when`` values, as in Lithops: the percentage of calls that must be done
#: (``ANY_COMPLETED`` is "at least one").
ALWAYS = 0
ANY_COMPLETED = -1
ALL_COMPLETED = 100

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
#: Parameters Lithops fills in itself; only ``id`` has a cloudpool meaning.
_INJECTED = ("id", "storage", "ibm_cos", "rabbitmq")
#: Keys of a Lithops config's ``lithops`` section that are understood.
_LITHOPS_KEYS = {"backend", "storage", "mode", "log_level", "data_limit", "execution_timeout",
                 "data_cleaner", "monitoring", "storage_bucket"}
#: Lithops S3-like storage sections and how their keys map to cloudpool's s3 options.
_S3_SECTIONS = ("aws_s3", "minio", "ceph")
_S3_KEYS = {"endpoint": "endpoint_url", "region": "region", "region_name": "region",
            "access_key_id": "aws_access_key_id", "secret_access_key": "aws_secret_access_key",
            "session_token": "aws_session_token", "storage_bucket": None}


class LithopsCompatError(ValueError):
    """A Lithops argument or feature that cloudpool does not provide; the message says what to use."""


def _unsupported(name: str, instead: str) -> LithopsCompatError:
    return LithopsCompatError(f"cloudpool.compat.lithops does not support {name}: {instead}")


def default_localhost_root() -> str:
    """Where Lithops' localhost storage keeps its buckets (``<tmp>/lithops-<user>``)."""
    return os.path.join(os.path.realpath(tempfile.gettempdir()), f"lithops-{os.getenv('USER', 'root')}")


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


# ---------------------------------------------------------------------------- config translation
def _translate_lithops_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A Lithops config -> (cloudpool config, Lithops-level settings: backend, storage, bucket)."""
    out: Dict[str, Any] = {}
    settings: Dict[str, Any] = {}
    lith = config.get("lithops") or {}
    if not isinstance(lith, Mapping):
        raise LithopsCompatError(f"config['lithops'] must be a mapping, not {type(lith).__name__}")
    unknown = sorted(set(lith) - _LITHOPS_KEYS)
    if unknown:
        raise _unsupported(f"the Lithops config key(s) lithops.{', lithops.'.join(unknown)}",
                           f"cloudpool understands lithops.{', lithops.'.join(sorted(_LITHOPS_KEYS))}; "
                           f"give other settings as a cloudpool config (see cloudpool.config.SETTINGS)")
    if lith.get("monitoring") not in (None, "storage"):
        raise _unsupported(f"monitoring={lith['monitoring']!r}",
                           "cloudpool watches calls through their status objects in storage "
                           "(Lithops' 'storage' monitoring); remove the setting")
    if lith.get("mode") == "standalone":
        raise _unsupported("mode='standalone'", "use a serverless or local backend")
    if lith.get("execution_timeout") is not None:
        out["timeout"] = lith["execution_timeout"]
    if lith.get("data_cleaner") is not None:
        out["keep_data"] = not lith["data_cleaner"]
    settings["backend"] = lith.get("backend") or ("localhost" if lith.get("mode") == "localhost" else None)
    settings["storage"] = lith.get("storage")
    settings["bucket"] = lith.get("storage_bucket")
    for section, options in config.items():
        if section == "lithops":
            continue
        if section == "localhost" and not options:
            continue
        if section in _S3_SECTIONS:
            if not isinstance(options, Mapping):
                raise LithopsCompatError(f"config[{section!r}] must be a mapping")
            bad = sorted(set(options) - set(_S3_KEYS))
            if bad:
                raise _unsupported(f"the key(s) {', '.join(bad)} in config[{section!r}]",
                                   f"the understood keys are {', '.join(sorted(_S3_KEYS))}")
            s3 = out.setdefault("s3", {})
            for key, value in options.items():
                if _S3_KEYS[key] is not None:
                    s3[_S3_KEYS[key]] = value
            if options.get("storage_bucket"):
                settings.setdefault("buckets", {})[section] = options["storage_bucket"]
            continue
        raise _unsupported(f"the Lithops config section {section!r}",
                           f"without a 'lithops' section, config= is a cloudpool config: give the "
                           f"backend's cloudpool options there (e.g. config={{'{section}': {{...}}}}) "
                           f"and translate S3 settings to config={{'s3': {{'endpoint_url': ...}}}}")
    return out, settings


def _storage_url(storage: Optional[str], buckets: Mapping[str, str], bucket: Optional[str]) -> Optional[str]:
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
    name_bucket = buckets.get(storage) or bucket
    if not name_bucket:
        raise LithopsCompatError(
            f"storage {storage!r} names no bucket: pass storage='{scheme}://BUCKET/PREFIX', or "
            f"config={{'lithops': {{'storage': '{storage}'}}, '{storage}': {{'storage_bucket': 'BUCKET'}}}}")
    return f"{scheme}://{name_bucket}/cloudpool"


# ---------------------------------------------------------------------------- the executor
class FunctionExecutor:
    """Lithops' ``FunctionExecutor`` over a ``CloudPoolExecutor`` (see the module docstring).

    ``backend``/``storage``/``config`` choose where calls run and where their data
    lives (``None``: cloudpool's configuration, else local processes and a local
    directory). ``localhost_root`` is the directory that ``localhost://bucket/...`` URLs
    name. Further keyword arguments are options of the cloudpool backend, as Lithops
    passes them to its compute backend; ``max_workers`` and ``runtime`` are cloudpool's.
    ``log_level`` is accepted and ignored: cloudpool logs through ``logging``.
    """

    def __init__(self, mode: Optional[str] = None, config: Optional[Mapping[str, Any]] = None,
                 config_file: Optional[str] = None, backend: Optional[str] = None,
                 storage: Optional[str] = None, monitoring: Optional[str] = None,
                 log_level: Any = False, *, localhost_root: Optional[str] = None,
                 max_workers: Optional[int] = None, runtime: Optional[str] = None,
                 **backend_options: Any) -> None:
        if config_file is not None:
            raise _unsupported("config_file", "cloudpool reads ~/.cloudpool/config.yaml or the file "
                               "named by CLOUDPOOL_CONFIG; or pass config={...}, backend= and storage=")
        if monitoring not in (None, "storage"):
            raise _unsupported(f"monitoring={monitoring!r}", "cloudpool watches calls through their "
                               "status objects in storage; leave monitoring unset")
        if mode not in (None, "localhost", "serverless"):
            raise _unsupported(f"mode={mode!r}", "use mode='serverless' (the configured backend) or "
                               "'localhost' (local processes)")
        for name in ("runtime_memory", "runtime_timeout"):
            if backend_options.get(name) is not None:
                raise _unsupported(f"{name}={backend_options[name]!r}", "set the backend's own option "
                                   "in config, e.g. config={'aws_lambda': {'memory_mb': 2048}} or "
                                   "config={'timeout': SECONDS}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, not {type(config).__name__}")
        settings: Dict[str, Any] = {}
        cp_config: Dict[str, Any] = {}
        if config and "lithops" in config:
            cp_config, settings = _translate_lithops_config(config)
        elif config:
            cp_config = dict(config)
        backend = backend or settings.get("backend") or ("localhost" if mode == "localhost" else None)
        storage = storage or settings.get("storage")
        if backend is not None:
            backend = _BACKENDS.get(backend, backend)
        storage_url = _storage_url(storage, settings.get("buckets", {}), settings.get("bucket"))
        self._executor = CloudPoolExecutor(max_workers, backend=backend, storage=storage_url,
                                           runtime=runtime, config=cp_config, **backend_options)
        self._localhost_root = os.path.abspath(localhost_root or default_localhost_root())
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

    def __enter__(self) -> "FunctionExecutor":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown(wait=True)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the executor (what leaving the ``with`` block does)."""
        self._executor.shutdown(wait=wait)

    @staticmethod
    def _reject(name: str, value: Any, instead: str) -> None:
        if value:  # None, [], {} and False are the Lithops defaults
            raise _unsupported(f"{name}={value!r}", instead)

    def _check_common(self, extra_env: Any, runtime_memory: Any, timeout: Any,
                      include_modules: Any, exclude_modules: Any, memory_name: str = "runtime_memory") -> None:
        self._reject("extra_env", extra_env, "workers use their own environment; set variables in "
                     "the runtime image or backend configuration, or pass the values as arguments")
        self._reject(memory_name, runtime_memory, "set the backend's memory option in the executor's "
                     "config, e.g. FunctionExecutor(config={'aws_lambda': {'memory_mb': 2048}})")
        self._reject("timeout", timeout, "cloudpool's call time limit is per executor: "
                     "FunctionExecutor(config={'timeout': SECONDS})")
        for name, value in (("include_modules", include_modules), ("exclude_modules", exclude_modules)):
            self._reject(name, value, "functions are pickled with cloudpickle and the modules they "
                         "import must be installed in the runtime; remove the argument")

    def _record(self, futures: List[cf.Future], call: str) -> None:
        with self._lock:
            self._futures.extend(futures)
            self.last_call = call

    # ------------------------------------------------------------------ argument binding
    def _signature(self, func: Callable) -> Tuple[inspect.Signature, inspect.Signature]:
        if not callable(func):
            raise TypeError(f"the function to run must be callable, not {type(func).__name__}")
        sig = inspect.signature(func)
        for name in ("storage", "ibm_cos", "rabbitmq"):
            if name in sig.parameters:
                raise _unsupported(
                    f"a function parameter named {name!r} (Lithops injects its own client there)",
                    "create a client in the function instead, e.g. cloudpool.Storage('s3://bucket/prefix'), "
                    "or rename the parameter")
        user = sig.replace(parameters=[p for n, p in sig.parameters.items() if n not in _INJECTED])
        return sig, user

    @staticmethod
    def _item_args(item: Any, extra_args: Any) -> Tuple[tuple, dict]:
        """One iterdata item (+ extra_args) -> positional and keyword arguments, Lithops' way."""
        if isinstance(item, dict):
            if extra_args is not None and not isinstance(extra_args, dict):
                raise TypeError(f"extra_args must be a dict when the data items are dicts (keyword "
                                f"arguments), not {type(extra_args).__name__}")
            return (), {**item, **(extra_args or {})}
        if extra_args is not None and not isinstance(extra_args, (tuple, list)):
            raise TypeError(f"extra_args must be a tuple (appended to each item's positional "
                            f"arguments), not {type(extra_args).__name__}")
        extra = tuple(extra_args or ())
        if isinstance(item, tuple):
            return item + extra, {}
        return (item,) + extra, {}

    def _bind(self, func: Callable, sig: inspect.Signature, user: inspect.Signature, item: Any,
              extra_args: Any) -> inspect.BoundArguments:
        args, kwargs = self._item_args(item, extra_args)
        try:
            return user.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"data item {item!r} does not fit {getattr(func, '__name__', func)}"
                            f"{user}: {exc}") from None

    @staticmethod
    def _call_args(sig: inspect.Signature, bound: inspect.BoundArguments,
                   call_id: int) -> Tuple[tuple, dict]:
        if "id" not in sig.parameters:
            return bound.args, bound.kwargs
        kinds = {p.kind for p in sig.parameters.values()}
        if inspect.Parameter.VAR_POSITIONAL in kinds or inspect.Parameter.POSITIONAL_ONLY in kinds:
            raise _unsupported("an 'id' parameter next to *args or positional-only parameters",
                               "Lithops passes every argument by name; make them ordinary parameters")
        kwargs = dict(bound.arguments)
        for name, p in sig.parameters.items():
            if p.kind == inspect.Parameter.VAR_KEYWORD and name in kwargs:
                kwargs.update(kwargs.pop(name))  # **kw arrives as one dict entry: spread it
        kwargs["id"] = call_id
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
        self._check_common(extra_env, runtime_memory, timeout, include_modules, exclude_modules)
        sig, user = self._signature(func)
        bound = self._bind(func, sig, user, data, extra_args)
        if "obj" in user.parameters and isinstance(bound.arguments.get("obj"), str):
            raise _unsupported("call_async with an obj URL", "use map() to process objects, one call per partition")
        args, kwargs = self._call_args(sig, bound, 0)
        future = self._executor.submit(func, *args, **kwargs)
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
        self._check_common(extra_env, runtime_memory, timeout, include_modules, exclude_modules, memory_name)
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or None, not {chunksize!r}")
        calls, sources = self._calls(func, iterdata, extra_args, obj_chunk_size, obj_chunk_number, obj_newline)
        return [self._executor.submit(func, *args, **kwargs) for args, kwargs in calls], sources

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
        self._reject("reduce_runtime_memory", reduce_runtime_memory, "set the backend's memory "
                     "option in the executor's config")
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
        reduce_futures: List[cf.Future] = []
        for group in groups.values():
            cf.wait(group)
            failed = next((f for f in group if f.cancelled() or f.exception() is not None), None)
            if failed is not None:
                # The reducer would get an incomplete list: its future fails with the map's error.
                future: cf.Future = cf.Future()
                future.set_exception(failed.exception() if not failed.cancelled() else cf.CancelledError())
            else:
                future = self._executor.submit(reduce_function, [f.result() for f in group],
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
            raise _unsupported("cs (cloud objects)", "cloudpool has no cloud objects; delete your "
                               "own objects with cloudpool.Storage(url).delete(keys)")
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


_NOT_PROVIDED = {
    "StandaloneExecutor": "use FunctionExecutor with a serverless or local backend",
    "RetryingFunctionExecutor": "pass retry= to cloudpool.CloudPoolExecutor, or retry in the function",
    "Storage": "use cloudpool.Storage('s3://bucket/prefix') (keys relative to the prefix)",
    "multiprocessing": "use cloudpool.multiprocessing",
}


def __getattr__(name: str) -> Any:
    if name in _NOT_PROVIDED:
        raise AttributeError(f"cloudpool.compat.lithops does not provide Lithops' {name}: {_NOT_PROVIDED[name]}")
    raise AttributeError(f"module 'cloudpool.compat.lithops' has no attribute {name!r}")
