"""The manager: one background thread per executor that owns every state change.

Data flow (compare CPython's ``concurrent/futures/process.py``)::

    submit()/map() ──> pending deque ──> [manager] batch + pickle ──> storage (function, big args)
                                              │                        ▲
                                              └─ backend.invoke(event) │ workers write results + status
                                                                       │
    futures <── [manager] apply results <── fetch <── notices (SegmentDone) / LIST status/ poll

The manager sleeps on one inbox. Submissions, cancellations, backend notices and
finished fetches all arrive there, so futures are completed, batches retired and lost
work re-queued by this thread alone; user threads only append to the pending deque.

Batching: a job's first batches hold one call (a probe); once calls of the job have
been timed, a batch holds as many as fit in the backend's ``batch_target_seconds``,
but never more than an even share of what is pending, so every worker gets work.

Polling: per interval, one LIST per job that has calls outstanding, starting after the
oldest outstanding batch -- its cost follows the work still running, not the number
of futures ever created. Backends that push notices are polled only as a safety net.
"""
from __future__ import annotations

import collections
import concurrent.futures
import heapq
import itertools
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures._base import InvalidStateError
from typing import Any, Deque, Dict, List, Optional

from . import _mainscript, _shipping, protocol
from .compute.base import ComputeBackend, InvocationLost, SegmentDone
from .errors import (BrokenCloudPool, CallTimeoutError, InitializerError, IntegrityError,
                     RemoteTraceback, VersionMismatchError, WorkerKilledError,
                     WorkerLostError)
from .retries import RetryPolicy
from .stats import CallRecord, StatsRecorder
from .storage.base import StorageBackend

LOGGER = logging.getLogger("cloudpool")
STDLIB_LOGGER = logging.getLogger("concurrent.futures")

#: Extra time, beyond the call timeout, before a silent invocation is declared lost.
TIMEOUT_GRACE = 10.0
#: Failed reads of one result object before its calls are treated as lost (retried).
MAX_REFETCHES = 5
#: Seconds an executor must stay idle before consumed job data is deleted (else every
#: 5 s, or per thousand keys): short enough to clean up soon after a burst of work.
GARBAGE_IDLE_DELAY = 0.5


class Job:
    """One function, pickled once and shared by all its calls."""

    __slots__ = ("id", "fn", "uploaded", "fn_sum", "next_batch", "outstanding", "est", "error",
                 "policy", "__weakref__")

    def __init__(self, job_id: str, fn: Any, policy: Optional[RetryPolicy] = None) -> None:
        self.id = job_id
        self.fn = fn                      # dropped once uploaded: no stale references
        self.uploaded = False
        self.fn_sum: Optional[str] = None
        self.policy = policy if policy is not None else RetryPolicy()
        self.next_batch = 0
        self.outstanding: Dict[int, "Batch"] = {}
        self.est: Optional[float] = None  # seconds per call, moving average
        self.error: Optional[BaseException] = None


class Call:
    """One call: its future, its job, and its arguments until they are pickled."""

    __slots__ = ("future", "job", "payload", "pickled", "started", "attempt")

    def __init__(self, future: concurrent.futures.Future, job: Job, payload: Any) -> None:
        self.future = future
        self.job = job
        self.payload = payload
        self.pickled: Optional[bytes] = None  # kept only while its batch is in flight
        self.started = False
        self.attempt = 0  # retries so far


class Batch:
    __slots__ = ("job", "number", "inv", "calls", "blob", "offsets", "seen", "progress_at", "last_seen",
                 "result_keys", "fetching", "lost", "refetches", "recheck")

    def __init__(self, job: Job, number: int, calls: List[Call], blob: bytes, offsets: List[int]) -> None:
        self.job = job
        self.number = number
        self.inv = f"{job.id}:{number}"
        self.calls: List[Optional[Call]] = list(calls)
        self.blob = blob
        self.offsets = offsets
        self.seen: set = set()
        self.result_keys: List[str] = []
        self.fetching = 0  # segments being fetched in the background
        self.lost: Optional[InvocationLost] = None  # a loss notice waiting for those fetches
        self.refetches: Dict[str, int] = {}  # status key -> result reads that failed
        self.recheck = False  # its end-of-batch check must run again at the next poll
        self.progress_at = time.monotonic()
        self.last_seen = False

    def unresolved(self) -> List[int]:
        return [i for i, c in enumerate(self.calls) if c is not None]


class _Wake:
    """Inbox message: something was submitted, cancelled or asked; look again."""


class _Terminate:
    """Inbox message: stop everything now (``Pool.terminate``)."""


class _Cancelled:
    """Inbox message: a pending future was cancelled; tell its waiters now."""


WAKE = _Wake()
TERMINATE = _Terminate()
CANCELLED = _Cancelled()


class Manager(threading.Thread):
    def __init__(self, *, backend: ComputeBackend, storage: StorageBackend, keys: protocol.Keys,
                 event_base: Dict[str, Any], config, has_initializer: bool) -> None:
        super().__init__(name=f"cloudpool-manager-{keys.executor_id}", daemon=True)
        self.backend = backend
        self.storage = storage
        self.keys = keys
        self.event_base = event_base
        self.config = config
        self.has_initializer = has_initializer
        self.inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        # Shared with user threads: submissions append, shutdown(cancel_futures) drains.
        self.pending_lock = threading.RLock()
        self.pending: Deque[Call] = collections.deque()
        self.in_flight: Dict[str, Batch] = {}
        self.shutting_down = False
        self.broken: Optional[BaseException] = None
        self._fetch_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._poll_interval = config["poll_interval"]
        self._next_poll = 0.0
        self._fetching = 0
        self.caps = backend.capabilities
        self.idle = True  # blocked on an empty inbox with nothing in flight
        self._purge_needed = False
        self.stats = StatsRecorder()
        # Calls waiting out a retry back-off: (monotonic time due, tie-breaker, call).
        self.delayed: List[Any] = []
        self._delay_seq = itertools.count()
        # First failure of the current storage outage (None while storage answers).
        self._storage_down_since: Optional[float] = None
        self._storage_error: Optional[BaseException] = None
        self._storage_failures = 0  # ever; tells whether a sequence of reads all succeeded
        # Keys of retired batches, deleted in bulk (results are consumed once applied).
        self._garbage: List[str] = []
        self._garbage_added_at = 0.0
        # The user's own modules shipped to remote workers: what was zipped, and where.
        self._modules_signature: Optional[tuple] = None
        self._modules_ref: Optional[Dict[str, str]] = None
        # ... and the user's main script, imported there as __mp_main__ (``_mainscript``).
        self._main_ref: Optional[Dict[str, str]] = None
        self._garbage_at = time.monotonic()
        # The blob ``_pickle_calls`` pickled a whole batch into, for ``_invoke``.
        self._whole: Optional[bytes] = None

    # ------------------------------------------------------------------ user-thread API
    def add(self, calls: List[Call]) -> None:
        with self.pending_lock:
            self.pending.extend(calls)
        self.inbox.put(WAKE)
        if self.idle:
            # Let the sleeping manager take the GIL now, so the first calls are invoked
            # promptly instead of after the submitting thread's 5 ms switch interval.
            time.sleep(0)

    def wake(self) -> None:
        self.inbox.put(WAKE)

    def note_cancelled(self) -> None:
        """A future was cancelled while pending (only then is the pending queue scanned)."""
        self.inbox.put(CANCELLED)

    def terminate(self) -> None:
        """Cancel what is queued and stop what runs; unfinished futures fail, none hangs."""
        self.cancel_pending()
        self.shutting_down = True
        self.inbox.put(TERMINATE)

    def cancel_pending(self) -> None:
        """shutdown(cancel_futures=True): cancel everything not yet invoked."""
        with self.pending_lock:
            keep = collections.deque()
            while self.pending:
                call = self.pending.popleft()
                if call.started:
                    keep.append(call)  # re-queued after a lost worker: it is running
                elif call.future.cancel():
                    call.future.set_running_or_notify_cancel()
            self.pending = keep

    # ------------------------------------------------------------------ thread body
    def run(self) -> None:
        try:
            self.backend.start(self.inbox.put)
            if self.storage.remote:
                self._fetch_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=16, thread_name_prefix="cloudpool-fetch")
            while True:
                self._wait_and_handle()
                if self.broken is None:
                    # Dispatch last: polling and deadlines can free capacity, and the
                    # next wait sleeps without a timeout when nothing is in flight.
                    self._poll_if_due()
                    self._check_deadlines()
                    self._check_storage_outage()
                    self._release_delayed()
                    self._dispatch()
                    self._collect_garbage()
                if self.shutting_down or self.broken is not None:
                    with self.pending_lock:
                        idle = not self.pending and not self.delayed
                    if (idle and not self.in_flight and not self._fetching) or self.broken is not None:
                        break
        except BaseException as exc:  # noqa: BLE001 - never leave futures hanging
            LOGGER.exception("cloudpool manager thread failed")
            broken = BrokenCloudPool(f"the cloudpool manager thread failed: {exc!r}; the executor is not usable anymore")
            broken.__cause__ = exc
            self._break(broken)
        finally:
            self._close()

    def _wait_and_handle(self) -> None:
        timeout = self._seconds_to_next_poll() if self.in_flight or self._fetching else None
        if self.delayed:
            due = max(0.0, self.delayed[0][0] - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        if self._garbage and not self.in_flight:
            # Wake to clean up once the executor has stayed idle (see _collect_garbage).
            due = max(0.0, self._garbage_added_at + GARBAGE_IDLE_DELAY - time.monotonic())
            timeout = due if timeout is None else min(timeout, due)
        if self.shutting_down and timeout is None:
            timeout = 0.1
        self.idle = not self.in_flight
        try:
            message = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        finally:
            self.idle = False
        while True:
            self._handle(message)
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                break
        if self._purge_needed:
            self._purge_needed = False
            self._purge_cancelled()

    def _handle(self, message: Any) -> None:
        if message is WAKE:
            return  # the loop dispatches after every batch of messages
        elif message is CANCELLED:
            self._purge_needed = True  # one scan after the inbox is drained, however many
        elif message is TERMINATE:
            self._stop_in_flight()
        elif isinstance(message, SegmentDone):
            self._on_status(message.status, inline_fetch=not self.storage.remote)
        elif isinstance(message, InvocationLost):
            self._on_lost(message)
        elif isinstance(message, tuple) and message[0] == "fetched":
            self._fetching -= 1
            _tag, inv, status, blob = message
            batch = self.in_flight.get(inv)
            if batch is not None:
                batch.fetching -= 1
                self._apply(batch, status, blob)
                if batch.fetching == 0 and batch.lost is not None and batch.inv in self.in_flight:
                    notice, batch.lost = batch.lost, None
                    self._on_lost(notice)

    def _purge_cancelled(self) -> None:
        """Notify waiters of calls cancelled while pending, as soon as they are cancelled."""
        with self.pending_lock:
            keep = collections.deque()
            for call in self.pending:
                if not call.started and call.future.cancelled():
                    call.future.set_running_or_notify_cancel()
                else:
                    keep.append(call)
            self.pending = keep

    # ------------------------------------------------------------------ dispatch
    def _batch_size(self, job: Job, npending: int) -> int:
        limit = self.config["max_batch_size"]
        if self.caps.max_batch_calls:
            limit = min(limit, self.caps.max_batch_calls)
        if job.est is None:
            return 1  # probe: learn how long a call takes before grouping them
        size = int(self.caps.batch_target_seconds / max(job.est, 1e-6))
        share = math.ceil(npending / self.caps.max_concurrency)
        return max(1, min(size, share, limit))

    def _dispatch(self) -> None:
        while len(self.in_flight) < self.caps.max_in_flight:
            with self.pending_lock:
                if not self.pending:
                    return
                job = self.pending[0].job
                size = self._batch_size(job, len(self.pending))
                calls: List[Call] = []
                while self.pending and len(calls) < size and self.pending[0].job is job:
                    call = self.pending.popleft()
                    if call.started or call.future.set_running_or_notify_cancel():
                        call.started = True
                        calls.append(call)
            if calls:
                self._invoke(job, calls)

    def _upload_function(self, job: Job) -> None:
        """Pickle and store the job's function once; OSError (storage) propagates, retryable."""
        if isinstance(job.fn, (bytes, memoryview)):
            blob = job.fn  # pickled before, its upload failed: try the upload again
        else:
            try:
                blob = self._pickle_function(job.fn)
            except BaseException as exc:  # noqa: BLE001 - reported on every call of the job
                if hasattr(exc, "add_note"):
                    exc.add_note(f"cloudpool: the function {job.fn!r} could not be pickled to send it to "
                                 f"workers; define it at module level, or create the unpicklable "
                                 f"object (lock, connection, file) inside the function instead of "
                                 f"capturing it")
                job.error = exc
                job.fn = None
                return
            job.fn = blob
            job.fn_sum = protocol.checksum(blob)
        self.storage.put(self.keys.function(job.id), blob)
        self._storage_ok()
        job.fn = None
        job.uploaded = True

    def _pickle_function(self, fn: Any) -> bytes:
        if self.caps.remote:
            # Workers elsewhere lack the user's own modules: ship their sources (once
            # per content) before anything that refers to them is invoked.
            self._ship_users_modules()
        return protocol.dumps(fn)

    def _ship_users_modules(self) -> None:
        modules = _shipping.users_modules()
        signature = tuple(sorted((name, _mtime(path)) for name, path in modules.items()))
        if signature == self._modules_signature:
            return
        bundle = _shipping.build_bundle(modules)
        if bundle is not None:
            key = self.keys.modules(bundle.checksum)
            self.storage.put(key, bundle.data)  # OSError: the caller retries the upload
            self._modules_ref = {"key": key, "digest": bundle.checksum,
                                 "sum": protocol.checksum(bundle.data)}
        self._modules_signature = signature
        script = _mainscript.client_script()
        if script is not None and (self._main_ref is None or self._main_ref["digest"] != script.digest):
            key = self.keys.main_script(script.digest)
            self.storage.put(key, script.source)  # OSError: the caller retries the upload
            self._main_ref = {"key": key, "digest": script.digest, "sum": protocol.checksum(script.source),
                              "name": script.name, "package": script.package}

    def _pickle_calls(self, calls: List[Call]) -> List[Call]:
        """Fill ``call.pickled``; fail (and drop) calls whose arguments cannot be pickled."""
        fresh = [c for c in calls if c.pickled is None]
        self._whole = None
        # Through a pipe, big buffers (numpy arrays) go out of band, uncopied until the
        # pipe; through storage they would be joined into one blob anyway.
        oob = self.caps.inline_limit is not None
        if len(fresh) == 1:
            # A lone call is pickled straight to bytes: no staging buffer to copy from.
            fresh[0].pickled = self._pickle_one(fresh[0], oob)
            fresh[0].payload = None
        elif fresh:
            try:
                if oob:
                    pickled, blob, offsets = protocol.dumps_each_oob([c.payload for c in fresh])
                    for c, p in zip(fresh, pickled):
                        c.pickled = p
                else:
                    blob, offsets = protocol.dumps_each([c.payload for c in fresh])
                    view = memoryview(blob)
                    for i, c in enumerate(fresh):
                        c.pickled = view[offsets[i]:offsets[i + 1]]
                if len(fresh) == len(calls) and not any(isinstance(c.pickled, protocol.Pieces) for c in fresh):
                    self._whole = blob  # already the batch's blob, in order: no join needed
            except BaseException:  # noqa: BLE001 - find the culprit(s) one by one
                for c in fresh:
                    c.pickled = self._pickle_one(c, False)
            for c in fresh:
                c.payload = None  # the pickled form is all we keep
        return [c for c in calls if c.pickled is not None]

    @staticmethod
    def _pickle_one(call: Call, oob: bool) -> Any:
        try:
            if oob:
                pickled, blob, _offsets = protocol.dumps_each_oob([call.payload])
                return pickled[0] if isinstance(pickled[0], protocol.Pieces) else blob
            return protocol.dumps(call.payload)
        except BaseException as exc:  # noqa: BLE001 - that call's error
            if hasattr(exc, "add_note"):
                exc.add_note("cloudpool: the call's arguments could not be pickled; pass data that "
                             "pickles (plain values, arrays, paths) and create locks, connections "
                             "or open files inside the function")
            _settle(call.future, exc=exc)
            return None

    def _invoke(self, job: Job, calls: List[Call]) -> None:
        if not job.uploaded and job.error is None:
            try:
                self._upload_function(job)
            except OSError as exc:
                self._storage_failed(exc)
                for c in calls:
                    self._retry_or_fail(c, _copy_exception(exc), "invocation")
                return
        if job.error is not None:
            for c in calls:
                _settle(c.future, exc=job.error)
            return
        calls = self._pickle_calls(calls)
        if not calls:
            return
        whole, self._whole = self._whole, None
        offsets = [0]
        for c in calls:
            offsets.append(offsets[-1] + len(c.pickled))
        total = offsets[-1]
        piped = total > self.config["inline_limit"] and total <= (self.caps.inline_limit or 0)
        if any(isinstance(c.pickled, protocol.Pieces) for c in calls):
            # Big buffers out of band: a pipe takes the parts as they are.
            parts = [p for c in calls for p in protocol.parts_of(c.pickled)]
            blob = parts if piped else b"".join(parts)
        # One call (the common case for big arguments): no copy into a joined buffer.
        elif len(calls) == 1:
            blob = calls[0].pickled
            if isinstance(blob, memoryview):
                blob = bytes(blob)  # a retried call sliced from an earlier batch's buffer
        elif whole is not None:
            blob = whole
        else:
            blob = b"".join(c.pickled for c in calls)
        number = job.next_batch
        job.next_batch += 1
        batch = Batch(job, number, calls, blob, offsets)
        event = dict(self.event_base)
        event.update(job=job.id, batch=number, offsets=offsets, init=self.has_initializer,
                     fn_sum=job.fn_sum)
        if not piped:
            event["args_sum"] = protocol.checksum(blob)
        if self._modules_ref is not None:
            event["modules"] = self._modules_ref
        if self._main_ref is not None:
            event["main"] = self._main_ref
        if piped or total <= self.config["inline_limit"]:
            event["args"] = blob
        else:
            key = self.keys.args(job.id, number)
            try:
                self.storage.put(key, blob)
            except OSError as exc:
                self._storage_failed(exc)
                for c in calls:
                    self._retry_or_fail(c, _copy_exception(exc), "invocation")
                return
            self._storage_ok()
            event["args_key"] = key
        self.in_flight[batch.inv] = batch
        job.outstanding[number] = batch
        now = time.time()
        for c in calls:
            if isinstance(c.future, _timed_future_types):
                c.future._times["invoked"] = now
        try:
            self.backend.invoke(batch.inv, event)
        except Exception as exc:  # noqa: BLE001 - the batch never started: retry or fail its calls
            self._retire(batch)
            # Only a platform that could not be reached is worth another try; a refusal
            # of the event itself (too big, bad settings) would fail again.
            transient = _is_transient(exc)
            for c in calls:
                if transient:
                    self._retry_or_fail(c, _copy_exception(exc), "invocation")
                else:
                    _settle(c.future, exc=exc)

    # ------------------------------------------------------------------ retries
    def _retry_or_fail(self, call: Call, exc: BaseException, cause: str) -> None:
        """Run ``call`` again after a back-off if its policy allows ``cause``; else fail it.

        ``cause`` is "invocation" (the platform lost or refused it), "lost" (its worker
        died), "timeout" or "error" (the function raised ``exc``).
        """
        policy = call.job.policy
        if cause == "invocation":
            # Refusals (no permission, no such bucket/function) come back the same way.
            allowed = not isinstance(exc, (PermissionError, FileNotFoundError))
        elif cause == "lost":
            allowed = policy.worker_lost
        elif cause == "timeout":
            allowed = policy.timeouts
        else:
            allowed = policy.retries_error(exc)
        if allowed and call.attempt < policy.retries and self.broken is None:
            call.attempt += 1
            due = time.monotonic() + policy.delay(call.attempt)
            heapq.heappush(self.delayed, (due, next(self._delay_seq), call))
            LOGGER.debug("cloudpool: retrying a call (attempt %d of %d) after %s: %s",
                         call.attempt + 1, policy.retries + 1, cause, exc)
            return
        if call.attempt and hasattr(exc, "add_note"):
            exc.add_note(f"cloudpool: the call failed on each of its {call.attempt + 1} attempts")
        _settle(call.future, exc=exc, start=not call.started)

    def _release_delayed(self) -> None:
        """Calls whose back-off is over go to the front of the queue (they are oldest)."""
        if not self.delayed:
            return
        now = time.monotonic()
        ready: List[Call] = []
        while self.delayed and self.delayed[0][0] <= now:
            ready.append(heapq.heappop(self.delayed)[2])
        if ready:
            with self.pending_lock:
                self.pending.extendleft(reversed(ready))

    def _retire(self, batch: Batch) -> None:
        self.in_flight.pop(batch.inv, None)
        batch.job.outstanding.pop(batch.number, None)
        batch.blob = b""  # the arguments' buffer: retried calls keep their own slices
        if not self.config["keep_data"]:
            # Its results are applied (or given up): the data is consumed. Deleted in
            # bulk, so cleaning up costs about one request per thousand keys.
            self._garbage.append(self.keys.args(batch.job.id, batch.number))
            self._garbage.extend(batch.seen)
            self._garbage.extend(batch.result_keys)
            self._garbage_added_at = time.monotonic()

    def _collect_garbage(self) -> None:
        if not self._garbage:
            return
        now = time.monotonic()
        # In bulk: a thousand keys, or every few seconds, or once the executor has been
        # idle a moment. Not as soon as nothing is in flight: a caller that submits one
        # call after another is idle between every two, and would pay a delete per call.
        idle_long_enough = not self.in_flight and now - self._garbage_added_at >= GARBAGE_IDLE_DELAY
        if len(self._garbage) < 1000 and now - self._garbage_at < 5.0 and not idle_long_enough:
            return
        keys, self._garbage = self._garbage, []
        self._garbage_at = now
        if self._fetch_pool is not None:
            # A remote store: the delete is a round trip, and with nothing in flight it
            # would run just as the user, handed a result, submits the next call, which
            # then waits behind it (measured: +10 ms per sequential call on S3). The pool
            # finishes it before the shutdown's prefix delete.
            self._fetch_pool.submit(self._delete_consumed, keys).add_done_callback(_log_unexpected_failure)
        else:
            self._delete_consumed(keys)

    def _delete_consumed(self, keys: List[str]) -> None:
        try:
            self.storage.delete(keys)
        except OSError as exc:  # left for the shutdown's prefix delete or `cloudpool clean`
            LOGGER.debug("cloudpool: could not delete %d consumed keys: %s", len(keys), exc)

    # ------------------------------------------------------------------ storage outages
    def _storage_failed(self, exc: BaseException) -> None:
        self._storage_failures += 1
        if not _is_transient(exc):
            return  # an answer (forbidden, no such key), not an outage: storage is up
        if self._storage_down_since is None:
            self._storage_down_since = time.monotonic()
        self._storage_error = exc

    def _storage_ok(self) -> None:
        self._storage_down_since = None
        self._storage_error = None

    def _check_storage_outage(self) -> None:
        """Storage unreachable for longer than ``storage_timeout``: fail what waits on it."""
        since = self._storage_down_since
        if since is None or time.monotonic() - since < self.config["storage_timeout"]:
            return
        err = OSError(f"storage {self.storage.url('')} was unreachable for more than "
                      f"{self.config['storage_timeout']:g} s (setting 'storage_timeout'): {self._storage_error}")
        err.__cause__ = self._storage_error
        self._storage_ok()
        for batch in list(self.in_flight.values()):
            self._fail_calls(batch, batch.unresolved(), err)
            self._retire(batch)
        for _due, _seq, call in self.delayed:
            _settle(call.future, exc=err, start=not call.started)
        self.delayed.clear()
        # Queued calls need the same storage (function, arguments, results): they would
        # only start another round of the same wait.
        with self.pending_lock:
            while self.pending:
                call = self.pending.popleft()
                _settle(call.future, exc=_copy_exception(err), start=not call.started)

    # ------------------------------------------------------------------ results
    def _on_status(self, status: Dict[str, Any], inline_fetch: bool) -> None:
        inv = f"{status['job']}:{status['batch']}"
        batch = self.in_flight.get(inv)
        key = status["key"]
        if batch is None or key in batch.seen:
            return
        batch.seen.add(key)
        batch.progress_at = time.monotonic()
        self._poll_interval = self.config["poll_interval"]
        if status.get("result_key") is None:
            self._apply(batch, status, b"")
        elif inline_fetch or self._fetch_pool is None:
            self._apply(batch, status, self._fetch_result(status))
        else:
            try:
                self._fetch_pool.submit(self._fetch_async, inv, status)
            except RuntimeError:
                # At interpreter exit the stdlib's thread pools refuse new work (their
                # exit hook runs before ours): fetch in this thread instead.
                self._apply(batch, status, self._fetch_result(status))
                return
            self._fetching += 1
            batch.fetching += 1

    def _fetch_result(self, status: Dict[str, Any]) -> Any:
        """The segment's result blob, checked against its checksum; an OSError on failure."""
        key = status["result_key"]
        expected = status.get("result_sum")
        for _attempt in range(2):
            try:
                blob = self.storage.get(key)
            except OSError as exc:
                return exc
            if expected is None or protocol.checksum(blob) == expected:
                return blob
            # A second read tells a torn read from stored corruption.
        return IntegrityError(f"the result {self.storage.url(key)} does not match its checksum "
                              f"({expected}) after two reads: it was corrupted in storage or in transit")

    def _fetch_async(self, inv: str, status: Dict[str, Any]) -> None:
        try:
            blob = self._fetch_result(status)
        except BaseException as exc:  # noqa: BLE001 - an unmapped SDK error: the manager must hear back
            blob = OSError(f"fetching {status.get('result_key')} failed: {exc!r}")
        self.inbox.put(("fetched", inv, status, blob))

    def _apply(self, batch: Batch, status: Dict[str, Any], blob: Any) -> None:
        key = status["key"]
        if _is_transient(blob) and not isinstance(blob, IntegrityError):
            refetches = batch.refetches[key] = batch.refetches.get(key, 0) + 1
            if refetches <= MAX_REFETCHES:
                # Storage did not answer: the result is still there. Forget this status so
                # the next poll reads it again (an outage is bounded by 'storage_timeout').
                self._storage_failed(blob)
                batch.seen.discard(key)
                if status.get("last"):
                    batch.last_seen = False
                return
            # This one object keeps failing while storage answers otherwise: give up on
            # the stored result; its calls run again (or fail) by the retry policy.
        elif isinstance(blob, (bytes, bytearray, memoryview)):
            self._storage_ok()
        fatal = status.get("fatal")
        if fatal:
            self._on_fatal(batch, status, blob)
            return
        if status.get("result_key"):
            batch.result_keys.append(status["result_key"])
        first = status["first"]
        offsets = status["offsets"]
        durations = []
        fetched = time.time()
        for j, info in enumerate(status["calls"]):
            index = first + j
            if index >= len(batch.calls):
                continue
            call = batch.calls[index]
            if call is None:
                continue
            batch.calls[index] = None
            future = call.future
            worker = status["worker"]
            if isinstance(future, _timed_future_types):
                times = future._times
                times.update(started=info.get("t0"), finished=info.get("t1"), fetched=fetched,
                             worker=worker["id"], maxrss_kb=worker.get("maxrss_kb"))
                self.stats.add(CallRecord(batch.job.id, batch.number, index, times["submitted"],
                                          times.get("invoked"), info.get("t0"), info.get("t1"), fetched,
                                          worker["id"], worker.get("maxrss_kb"), bool(info.get("ok")),
                                          call.attempt))
            if "t0" in info and "t1" in info:
                durations.append(info["t1"] - info["t0"])
            if isinstance(blob, BaseException):
                # A corrupt or unreadable result: run the call again (or fail it, by policy).
                self._retry_or_fail(call, _copy_exception(blob), "invocation")
                continue
            try:
                value = protocol.load_at(blob, offsets, j)
            except BaseException as exc:  # noqa: BLE001 - that call's error, not the manager's
                if hasattr(exc, "add_note"):
                    exc.add_note("cloudpool: the call's result could not be unpickled on the client")
                _settle(future, exc=exc)
                continue
            if info.get("ok"):
                _settle(future, result=value)
            else:
                exc, tb = value
                exc.__cause__ = RemoteTraceback(tb)
                policy = call.job.policy
                if isinstance(exc, CallTimeoutError) and policy.timeouts:
                    self._retry_or_fail(call, exc, "timeout")  # the worker's own timer fired
                elif policy.on:
                    self._retry_or_fail(call, exc, "error")
                else:
                    _settle(future, exc=exc)
            del value
        if durations:
            mean = sum(durations) / len(durations)
            job = batch.job
            job.est = mean if job.est is None else 0.5 * job.est + 0.5 * mean
        if status.get("last"):
            batch.last_seen = True
        self._finish_if_complete(batch)

    def _finish_if_complete(self, batch: Batch) -> None:
        """Retire a batch whose last segment is in; fail calls it truly left without results.

        Not while segments are still being fetched (they may hold those calls), and not
        when storage could not be read just now: the next poll looks again.
        """
        if not batch.last_seen or batch.fetching or batch.inv not in self.in_flight:
            return
        if batch.unresolved():
            # A segment is missing from what we have seen: look in storage once.
            if not self._read_batch_statuses(batch) or batch.fetching:
                batch.recheck = True
                return
            if batch.inv not in self.in_flight:
                return  # what was read settled and retired it
        if batch.unresolved():
            missing = ", ".join(map(str, batch.unresolved()))
            self._fail_calls(batch, batch.unresolved(), BrokenCloudPool(
                f"the worker finished batch {batch.inv} but wrote no result for call(s) {missing}"))
        self._retire(batch)

    def _on_fatal(self, batch: Batch, status: Dict[str, Any], blob: Any) -> None:
        fatal = status["fatal"]
        kind = fatal.get("kind")
        if kind == "version":
            self._break(VersionMismatchError(fatal["message"]))
        elif kind == "init":
            tb = fatal.get("traceback", "")
            STDLIB_LOGGER.critical("Exception in initializer:\n%s", tb)
            err = InitializerError(
                f"{fatal['message']}; the executor is not usable anymore (the initializer runs "
                f"on every worker before its first call)")
            err.__cause__ = RemoteTraceback(tb)
            self._break(err)
        else:
            exc: BaseException
            try:
                exc, tb = protocol.load_at(blob, status["offsets"], 0)
                exc.__cause__ = RemoteTraceback(tb)
            except BaseException:  # noqa: BLE001 - the error itself did not survive the trip
                exc = BrokenCloudPool(fatal.get("message", "the worker failed"))
            if hasattr(exc, "add_note"):
                exc.add_note(f"cloudpool: {fatal.get('message')}")
            # Storage trouble while the worker loaded its function or arguments (an
            # outage, a torn read) may pass; a module missing on the runtime will not.
            transient = _is_transient(exc)
            unresolved = batch.unresolved()
            if not transient:
                self._fail_calls(batch, unresolved, exc)
                self._retire(batch)
                return
            calls = [batch.calls[i] for i in unresolved]
            for i in unresolved:
                batch.calls[i] = None
            self._retire(batch)
            for call in calls:
                self._retry_or_fail(call, _copy_exception(exc), "invocation")

    def _fail_calls(self, batch: Batch, indices: List[int], exc: BaseException) -> None:
        for i in indices:
            call = batch.calls[i]
            if call is not None:
                batch.calls[i] = None
                _settle(call.future, exc=exc)

    def _read_batch_statuses(self, batch: Batch) -> bool:
        """Read every status of one batch straight from storage (the source of truth).

        Returns False if storage failed on the way (the picture may be incomplete).
        """
        prefix = self.keys.batch_status_prefix(batch.job.id, batch.number)
        failures = self._storage_failures
        try:
            infos = list(self.storage.list(prefix))
        except OSError as exc:
            # During an outage every lost batch would say the same: warn once per outage.
            log = LOGGER.debug if self._storage_down_since is not None else LOGGER.warning
            log("cloudpool: could not list %s: %s", prefix, exc)
            self._storage_failed(exc)
            return False
        for info in infos:
            if info.key in batch.seen:
                continue
            status = self._read_status(info.key)
            if status is not None:
                self._on_status(status, inline_fetch=True)
        return self._storage_failures == failures

    def _read_status(self, key: str) -> Optional[Dict[str, Any]]:
        try:
            status = self.storage.get_json(key)
        except (OSError, ValueError) as exc:
            LOGGER.warning("cloudpool: could not read status %s: %s", key, exc)
            if isinstance(exc, OSError):
                self._storage_failed(exc)
            return None
        status["key"] = key
        self._storage_ok()
        return status

    # ------------------------------------------------------------------ losses
    def _on_lost(self, notice: InvocationLost) -> None:
        batch = self.in_flight.get(notice.inv)
        if batch is None:
            return
        if batch.fetching:
            # Results of this batch are still on their way: judge the loss once they are
            # applied, or calls that did finish would be failed or run twice.
            batch.lost = notice
            return
        self._read_batch_statuses(batch)  # keep every result the worker did store
        if notice.inv not in self.in_flight:
            return
        unresolved = batch.unresolved()
        culprit = notice.running_call
        cause = "timeout" if notice.timed_out else "lost"
        if culprit is not None and culprit in unresolved:
            if notice.timed_out:
                err: BaseException = CallTimeoutError(
                    f"the call did not finish within its timeout of {self.config['timeout']} s "
                    f"(setting 'timeout'): {notice.reason}")
            else:
                lost = WorkerKilledError if notice.killed else WorkerLostError
                err = lost(f"{notice.reason} while running this call")
            culprit_call = batch.calls[culprit]
            batch.calls[culprit] = None
            # The others never ran or ran without their results being stored: run them
            # again, as they are (this is not a failure of theirs, so no attempt is spent).
            requeue = [batch.calls[i] for i in unresolved if i != culprit]
            self._retire(batch)
            with self.pending_lock:
                self.pending.extendleft(reversed([c for c in requeue if c is not None]))
            if culprit_call is not None:
                self._retry_or_fail(culprit_call, err, cause)
        else:
            # Nobody knows which call was running: the invocation as a whole was lost
            # (throttled away, a container that never started, a connection cut).
            if notice.timed_out:
                err = CallTimeoutError(notice.reason)
            elif isinstance(notice.error, (PermissionError, FileNotFoundError)):
                # The platform refused (no permission, no such function): that is the error.
                err = notice.error
                cause = "invocation"
            else:
                err = (WorkerKilledError if notice.killed else WorkerLostError)(notice.reason)
                cause = "invocation"
            if notice.error is not None and err is not notice.error:
                err.__cause__ = notice.error
            calls = [batch.calls[i] for i in unresolved]
            for i in unresolved:
                batch.calls[i] = None
            self._retire(batch)
            for call in calls:
                if call is not None:
                    # One exception object per call: notes added on a last attempt stay its own.
                    self._retry_or_fail(call, _copy_exception(err), cause)

    def _stop_in_flight(self) -> None:
        err = BrokenCloudPool("the pool was terminated before this call finished")
        with self.pending_lock:
            while self.pending:
                _settle(self.pending.popleft().future, exc=err, start=False)
        for _due, _seq, call in self.delayed:
            _settle(call.future, exc=err, start=False)
        self.delayed.clear()
        for batch in list(self.in_flight.values()):
            self._retire(batch)  # retired first: the loss notice that follows is ignored
            if self.caps.can_cancel:
                self.backend.cancel(batch.inv, "terminated")
            self._fail_calls(batch, batch.unresolved(), err)

    def _check_deadlines(self) -> None:
        timeout = self.config["timeout"]
        if timeout is None or not self.in_flight:
            return
        limit = timeout + TIMEOUT_GRACE + self.config["flush_interval"]
        now = time.monotonic()
        for batch in list(self.in_flight.values()):
            if now - batch.progress_at > limit:
                batch.progress_at = now  # do not cancel twice while the kill lands
                reason = f"no progress for {limit:g} s"
                if not (self.caps.can_cancel and self.backend.cancel(batch.inv, "timeout")):
                    self._on_lost(InvocationLost(batch.inv, reason, None, timed_out=True))

    # ------------------------------------------------------------------ polling
    def _seconds_to_next_poll(self) -> float:
        return max(0.0, self._next_poll - time.monotonic())

    def _poll_if_due(self) -> None:
        if not self.in_flight:
            return
        now = time.monotonic()
        if now < self._next_poll:
            return
        found = self._poll()
        if self.caps.notifies:
            # Notices carry the news; a LIST now and then only guards against a lost one.
            interval = max(1.0, self.config["poll_interval_max"])
        elif found:
            interval = self.config["poll_interval"]
        else:
            interval = min(self._poll_interval * 1.5, self.config["poll_interval_max"])
        self._poll_interval = interval
        self._next_poll = time.monotonic() + interval

    def _poll(self) -> int:
        found = 0
        for batch in [b for b in self.in_flight.values() if b.recheck]:
            batch.recheck = False
            self._finish_if_complete(batch)
        jobs = {b.job for b in self.in_flight.values()}
        for job in jobs:
            if not job.outstanding:
                continue
            oldest = min(job.outstanding)
            start_after = self.keys.batch_status_prefix(job.id, oldest)[:-1]
            try:
                infos = list(self.storage.list(self.keys.status_prefix(job.id), start_after))
            except OSError as exc:
                LOGGER.warning("cloudpool: status poll failed (will retry): %s", exc)
                self._storage_failed(exc)
                continue
            self._storage_ok()
            for info in infos:
                batch_no, _seg = protocol.parse_status_key(info.key)
                batch = job.outstanding.get(batch_no)
                if batch is None or info.key in batch.seen:
                    continue
                status = self._read_status(info.key)
                if status is not None:
                    found += 1
                    self._on_status(status, inline_fetch=False)
        return found

    # ------------------------------------------------------------------ breaking / closing
    def _break(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        for batch in list(self.in_flight.values()):
            self._fail_calls(batch, batch.unresolved(), exc)
            self._retire(batch)
        with self.pending_lock:
            while self.pending:
                call = self.pending.popleft()
                _settle(call.future, exc=exc, start=not call.started)
        for _due, _seq, call in self.delayed:
            _settle(call.future, exc=exc, start=not call.started)
        self.delayed.clear()

    def _close(self) -> None:
        try:
            self.backend.shutdown(wait=True)
        except Exception:  # noqa: BLE001 - shutting down must finish; say what went wrong
            LOGGER.exception("cloudpool: the backend did not shut down cleanly")
        if self._fetch_pool is not None:
            self._fetch_pool.shutdown(wait=True)
        if not self.config["keep_data"]:
            try:
                self.storage.delete_prefix(self.keys.executor_prefix)
            except OSError as exc:
                LOGGER.warning("cloudpool: could not delete job data under %s: %s "
                               "(run 'cloudpool clean')", self.storage.url(self.keys.executor_prefix), exc)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def _log_unexpected_failure(done: "concurrent.futures.Future[Any]") -> None:
    """A background task's unexpected exception (a bug) is logged, not lost with its future."""
    exc = done.exception()
    if exc is not None:
        LOGGER.error("cloudpool: a background clean-up task failed", exc_info=exc)


def _is_transient(exc: Any) -> bool:
    """An OSError worth trying again: not an answer such as 'no such key' or 'forbidden'."""
    return isinstance(exc, OSError) and not isinstance(exc, (PermissionError, FileNotFoundError))


def _copy_exception(exc: BaseException) -> BaseException:
    try:
        copy = type(exc)(*exc.args)
    except Exception:  # noqa: BLE001 - an exception class with its own constructor
        return exc
    copy.__cause__ = exc.__cause__
    return copy


def _settle(future: concurrent.futures.Future, *, result: Any = None, exc: Optional[BaseException] = None,
            start: bool = False) -> None:
    """Complete a future once; later attempts (a duplicate result) are ignored."""
    if start and not future.set_running_or_notify_cancel():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        return


# Filled in by executor.py (CloudFuture); a tuple so isinstance() stays cheap.
_timed_future_types: tuple = ()
