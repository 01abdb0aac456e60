"""The provider-agnostic worker: ``handle(event)`` runs one invocation (a batch of calls).

Every backend's runtime ends up here -- the local backend's processes, the HTTP server
of the knative runtime, the Lambda handler -- so local mode exercises exactly the cloud
path. Steps: check versions (before unpickling anything), open the executor's storage,
run the executor's initializer once per process, load the job's function (cached),
load the arguments, run each call, and write results + a JSON status per segment.

Everything a call does wrong (raises, returns something unpicklable, has arguments
that fail to unpickle, exceeds its timeout) is reported on that call; only a version
mismatch, a failing initializer or an unloadable function is fatal for the batch.
"""
from __future__ import annotations

import io
import os
import pickle
import resource
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

from . import _mainscript, _shipping, protocol
from .errors import CallTimeoutError, UnpicklableRemoteError
from .storage import get_storage, split_url
from .storage.base import StorageBackend

_functions: "OrderedDict[str, Callable]" = OrderedDict()
_FUNCTION_CACHE_SIZE = 16
_initialized: set = set()
_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class WorkerHooks:
    """Optional callbacks a backend passes to ``handle`` (the local backend uses both)."""

    def call_started(self, index: int) -> None:
        """Called before call ``index`` of the batch runs."""

    def segment_written(self, status: Dict[str, Any]) -> None:
        """Called after a segment's result and status objects are stored."""


_NO_HOOKS = WorkerHooks()


def _refresh_worker_id() -> None:
    global _WORKER_ID
    _WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


os.register_at_fork(after_in_child=_refresh_worker_id)


def _storage(event: Dict[str, Any]) -> StorageBackend:
    spec = event["storage"]
    scheme, bucket, _key = split_url(spec["url"])
    return get_storage(scheme, bucket, spec.get("options") or {})


def _format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _Timeout:
    """Raises ``CallTimeoutError`` inside a call that runs too long (main thread only)."""

    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self.active = bool(seconds) and threading.current_thread() is threading.main_thread() \
            and hasattr(signal, "setitimer")

    def _fire(self, signum, frame):
        raise CallTimeoutError(
            f"the call ran longer than its timeout of {self.seconds:g} s "
            f"(setting 'timeout'); raise it or split the work"
        )

    def __enter__(self):
        if self.active:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        return False


class _Segment:
    """Results of the calls finished since the last flush, framed one pickle per call."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.buf = io.BytesIO()
        self.pickler = protocol.Pickler(self.buf, protocol=protocol.PICKLE_PROTOCOL)
        self.offsets: List[int] = [0]
        self.calls: List[Dict[str, Any]] = []

    def _dump(self, obj: Any) -> None:
        try:
            self.pickler.dump(obj)
        finally:
            # Also after a failed dump: its memo may name objects whose bytes we truncate.
            self.pickler.clear_memo()

    def add_value(self, value: Any, info: Dict[str, Any]) -> None:
        start = self.buf.tell()
        try:
            self._dump(value)
        except BaseException as exc:  # noqa: BLE001 - an unpicklable result is that call's error
            self.buf.seek(start)
            self.buf.truncate()
            if hasattr(exc, "add_note"):
                exc.add_note(
                    f"cloudpool: the call returned a {type(value).__qualname__}, which could not "
                    f"be pickled back to the client; return plain data instead"
                )
            self.add_error(exc, info)
            return
        info["ok"] = True
        self.offsets.append(self.buf.tell())
        self.calls.append(info)

    def add_error(self, exc: BaseException, info: Dict[str, Any]) -> None:
        tb = _format_exception(exc)
        start = self.buf.tell()
        try:
            self._dump((exc, tb))
        except BaseException:  # noqa: BLE001 - fall back to a picklable stand-in
            self.buf.seek(start)
            self.buf.truncate()
            self._dump((UnpicklableRemoteError(type(exc).__qualname__, str(exc)), tb))
        info["ok"] = False
        info["error"] = f"{type(exc).__qualname__}: {exc}"[:500]
        self.offsets.append(self.buf.tell())
        self.calls.append(info)


def _write_segment(storage: StorageBackend, keys: protocol.Keys, event: Dict[str, Any],
                   number: int, segment: _Segment, last: bool,
                   fatal: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    job, batch = event["job"], event["batch"]
    result_key = None
    result_sum = None
    if segment.offsets[-1] > 0:
        result_key = keys.result(job, batch, number)
        data = segment.buf.getbuffer()
        result_sum = protocol.checksum(data)
        storage.put(result_key, data)
        del data  # a live export would stop the buffer from being reused
    status = {
        "protocol": protocol.PROTOCOL_VERSION,
        "job": job,
        "batch": batch,
        "segment": number,
        "first": segment.first,
        "calls": segment.calls,
        "offsets": segment.offsets,
        "result_key": result_key,
        "result_sum": result_sum,
        "last": last,
        "fatal": fatal,
        "worker": {
            "id": _WORKER_ID,
            "versions": protocol.versions(),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        },
    }
    status_key = keys.status(job, batch, number)
    storage.put(status_key, protocol.json_bytes(status))
    status["key"] = status_key
    return status


def _fatal(storage: StorageBackend, keys: protocol.Keys, event: Dict[str, Any], kind: str,
           message: str, exc: Optional[BaseException], hooks: WorkerHooks) -> Dict[str, Any]:
    segment = _Segment(0)
    fatal: Dict[str, Any] = {"kind": kind, "message": message}
    if exc is not None:
        fatal["traceback"] = _format_exception(exc)
        segment.add_error(exc, {})
        segment.calls = []  # the pickled error is the fatal's, not a call's
    status = _write_segment(storage, keys, event, 0, segment, last=True, fatal=fatal)
    hooks.segment_written(status)
    return status


def _load_function(storage: StorageBackend, key: str, expected_sum: Optional[str]) -> Callable:
    fn = _functions.get(key)
    if fn is None:
        blob = storage.get(key)
        protocol.verify(blob, expected_sum, f"the function {storage.url(key)}")
        fn = pickle.loads(blob)
        _functions[key] = fn
        if len(_functions) > _FUNCTION_CACHE_SIZE:
            _functions.popitem(last=False)
    else:
        _functions.move_to_end(key)
    return fn


def handle(event: Dict[str, Any], hooks: Optional[WorkerHooks] = None) -> Dict[str, Any]:
    """Run one invocation; returns a small summary (also what HTTP runtimes answer)."""
    hooks = hooks or _NO_HOOKS
    event = protocol.decode_event(event)
    storage = _storage(event)
    keys = protocol.Keys(event["keys"]["root"], event["keys"]["executor"])

    mismatch = None
    if event.get("protocol") != protocol.PROTOCOL_VERSION:
        mismatch = (f"protocol {event.get('protocol')} on the client but "
                    f"{protocol.PROTOCOL_VERSION} on the worker")
    mismatch = mismatch or protocol.version_mismatch(event.get("versions", {}), protocol.versions())
    if mismatch:
        _fatal(storage, keys, event, "version", mismatch, None, hooks)
        return {"fatal": "version", "message": mismatch}

    if event.get("modules"):
        # Before anything is unpickled: the initializer and function may live there.
        try:
            _shipping.install(storage.get, event["modules"])
        except BaseException as exc:  # noqa: BLE001 - reported to the client on the batch's calls
            _fatal(storage, keys, event, "load", f"the client's modules could not be installed: {exc}",
                   exc, hooks)
            return {"fatal": "load"}

    if event.get("main"):
        # The client's script, imported as __mp_main__ like spawn does, before the
        # initializer and function (which refer to it by name) are unpickled.
        try:
            _mainscript.install(storage.get, event["main"], keys.executor_id)
        except BaseException as exc:  # noqa: BLE001 - e.g. the script fails at import on the worker
            _fatal(storage, keys, event, "load",
                   f"the client's main script {event['main'].get('name')!r} could not be imported on "
                   f"the worker (as __mp_main__, with its __main__ guard false): "
                   f"{type(exc).__name__}: {exc}", exc, hooks)
            return {"fatal": "load"}

    if event.get("init") and keys.executor_id not in _initialized:
        try:
            initializer, initargs = pickle.loads(storage.get(keys.init))
            initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the client, which breaks the executor
            _fatal(storage, keys, event, "init", f"the initializer raised {type(exc).__name__}: {exc}", exc, hooks)
            return {"fatal": "init"}
        _initialized.add(keys.executor_id)

    try:
        fn = _load_function(storage, keys.function(event["job"]), event.get("fn_sum"))
    except BaseException as exc:  # noqa: BLE001 - e.g. a module missing on the runtime
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            hint = (f"; the module {exc.name!r} is not installed on the runtime: add it to the "
                    f"runtime image or make it importable")
        _fatal(storage, keys, event, "load", f"the function could not be loaded on the worker: {exc}{hint}", exc, hooks)
        return {"fatal": "load"}

    try:
        if event.get("args") is not None:
            args_blob = event["args"]
            what = "the invocation's inline arguments"
        else:
            args_blob = storage.get(event["args_key"])
            what = f"the arguments {storage.url(event['args_key'])}"
        protocol.verify(args_blob, event.get("args_sum"), what)
    except OSError as exc:
        _fatal(storage, keys, event, "args", f"the call arguments could not be read: {exc}", exc, hooks)
        return {"fatal": "args"}
    offsets = event["offsets"]
    ncalls = len(offsets) - 1
    flush_interval = event.get("flush_interval", 0.25)
    timeout = _Timeout(event.get("timeout"))

    segment_number = 0
    segment = _Segment(0)
    last_flush = time.monotonic()
    for index in range(ncalls):
        hooks.call_started(index)
        info: Dict[str, Any] = {"t0": time.time()}
        try:
            args, kwargs = protocol.load_at(args_blob, offsets, index)
        except BaseException as exc:  # noqa: BLE001 - that call's error
            if hasattr(exc, "add_note"):
                exc.add_note("cloudpool: the call's arguments could not be unpickled on the worker")
            info["t1"] = time.time()
            segment.add_error(exc, info)
        else:
            try:
                with timeout:
                    value = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - the function's own error goes back to its future
                info["t1"] = time.time()
                segment.add_error(exc, info)
            else:
                info["t1"] = time.time()
                segment.add_value(value, info)
                value = None
            # Drop the arguments now: the stdlib releases them once the call is done too.
            args = kwargs = None
        now = time.monotonic()
        if now - last_flush >= flush_interval and index + 1 < ncalls:
            status = _write_segment(storage, keys, event, segment_number, segment, last=False)
            hooks.segment_written(status)
            segment_number += 1
            segment = _Segment(index + 1)
            last_flush = now
    status = _write_segment(storage, keys, event, segment_number, segment, last=True)
    hooks.segment_written(status)
    return {"segments": segment_number + 1, "calls": ncalls}
