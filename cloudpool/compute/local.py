"""The ``local`` backend: long-lived worker processes on this machine.

Each worker process loops on its own pipe: receive an invocation event, run
``cloudpool.worker.handle`` on it -- the same entry point and the same storage
protocol the cloud runtimes use -- and send back a notice per stored segment. The
notices only save the manager a poll; the status objects in storage stay the truth.

One reader thread waits on every worker's pipe and process sentinel at once. When a
worker dies, the reader knows which invocation it held and -- from a shared-memory
slot the worker updates before each call -- which call was running, so exactly that
call fails and the rest of its batch can run again elsewhere.

Big arguments do not go through storage here: the backend declares
``Capabilities.inline_limit``, so the manager hands them over inside the event, with
numpy arrays pickled out of band (``protocol.Pieces``), and they follow the pickled
event on the pipe as raw bytes, written from the caller's memory and read into one
buffer the worker's arrays are views of (``pipe_args=False``: through storage instead).

Workers are started on demand (a cold start forks one process, not ``max_workers``)
with the ``fork`` start method on Linux, like the 3.11 stdlib, or any start method
given as ``start_method``/``mp_context``.

Nesting (an executor or ``Pool`` opened inside a mapped function) works as with
``ProcessPoolExecutor``, with the number of processes bounded. Every worker records
in its environment how deep it is (``_CLOUDPOOL_LOCAL_DEPTH``; the leading underscore
keeps it out of the configuration's ``CLOUDPOOL_*`` settings) and its share of the CPUs
(``_CLOUDPOOL_LOCAL_SHARE``: its parent's share, the CPU count at the top, divided by
its executor's ``max_workers``, at least 1). A local executor inside a
worker (depth 1) starts at most that share of processes, whatever ``max_workers``
asks; one nested deeper starts none and runs its calls on threads of the worker
(``max_workers`` of them, at most 32, by default the share; no per-call timeout
there: ``SIGALRM`` needs the main thread, and a running thread cannot be stopped).
So N top-level workers on C CPUs lead to at most N + max(N, C) processes at any depth.

Worker processes are daemonic for their parent -- its exit terminates them, and an
idle worker whose parent died exits within ``_PARENT_CHECK_SECONDS`` -- but each
worker clears the flag in its own view of itself, because multiprocessing forbids a
daemonic process to have children and the inner executor's workers are exactly that.
"""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
from multiprocessing.reduction import ForkingPickler
import os
import pickle
import signal
import sys
import threading
import traceback
from typing import Any, Deque, Dict, List, Optional, Tuple

from .. import worker as worker_module
from ..storage import clear_cache as clear_storage_cache
from . import declared
from .base import Capabilities, ComputeBackend, InvocationLost, SegmentDone

_SIGNAL_NAMES = {-int(s): s.name for s in signal.Signals}
#: How often an idle worker checks that its client process is still alive.
_PARENT_CHECK_SECONDS = 2.0
#: How many levels of local workers are above this process (unset: 0, the client).
DEPTH_ENV = "_CLOUDPOOL_LOCAL_DEPTH"
#: How many CPUs this process's local executors may use in total (unset: all).
SHARE_ENV = "_CLOUDPOOL_LOCAL_SHARE"
#: From this depth on, a local executor runs calls on threads instead of processes.
_THREADS_DEPTH = 2
#: At most this many threads for one executor nested that deep.
_MAX_THREADS = 32
#: Argument blobs at least this big follow their event as raw bytes on the pipe (the
#: event says how many), written straight from the manager's buffer and read straight
#: into one buffer of the right size: no copy into the pickled event, and none of the
#: chunk-by-chunk reassembly of ``Connection.recv_bytes``.
_SPLIT_ARGS_BYTES = 64 * 1024
#: Raw writes and ``readv`` need a POSIX file descriptor under the Connection (not Windows).
_RAW_PIPE = hasattr(os, "readv") and sys.platform != "win32"
#: Largest argument blob sent through the pipe instead of storage (see Capabilities.inline_limit).
_PIPE_ARGS_LIMIT = 1 << 40


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ[name]))
    except (KeyError, ValueError):
        return default


class _PipeHooks(worker_module.WorkerHooks):
    def __init__(self, conn, slot) -> None:
        self.conn = conn
        self.slot = slot
        self.inv: Optional[str] = None

    def call_started(self, index: int) -> None:
        # Shared memory, not a message: free on the hot path, readable after a crash.
        self.slot[0] = index

    def segment_written(self, status: Dict[str, Any]) -> None:
        self.conn.send(("segment", self.inv, status))


class _ThreadHooks(worker_module.WorkerHooks):
    def __init__(self, backend: "LocalBackend") -> None:
        self.backend = backend

    def segment_written(self, status: Dict[str, Any]) -> None:
        if self.backend._notices:
            self.backend._notify(SegmentDone(status))


def _portable(exc: BaseException) -> Optional[BaseException]:
    """``exc`` if it survives pickling (to cross the pipe), else an OSError/RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: send a stand-in
        kind = OSError if isinstance(exc, OSError) else RuntimeError
        return kind(f"{type(exc).__qualname__}: {exc}")


def _worker_main(conn, slot, sys_path: List[str], max_tasks: Optional[int],
                 inherited: List[Any], depth: int = 1, share: int = 1) -> None:
    """Body of one worker process."""
    # The process that started us (the client, or a fork server): if it goes away we
    # are re-parented, and nobody will ever read our results.
    parent_pid = os.getppid()
    # Nesting: our parent still sees us as daemonic (its exit terminates us), but we may
    # start the workers of an executor opened by a call; they are daemonic to us.
    multiprocessing.current_process().daemon = False
    os.environ[DEPTH_ENV] = str(depth)
    os.environ[SHARE_ENV] = str(share)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the client's to handle
    for other in inherited:
        # A forked child holds copies of its siblings' parent-side pipe ends; closing
        # them lets each worker see EOF when the client goes away.
        other.close()
    sys.path[:] = sys_path
    clear_storage_cache()  # SDK clients inherited through fork are not safe to reuse
    hooks = _PipeHooks(conn, slot)
    calls_run = 0
    while True:
        try:
            # Wake up now and then to notice a client that died without closing the pipe.
            while not conn.poll(_PARENT_CHECK_SECONDS):
                if os.getppid() != parent_pid:
                    return
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        inv, event, args_follow = message
        if args_follow:
            try:
                event["args"] = _recv_raw(conn, args_follow)
            except (EOFError, OSError):
                return
        hooks.inv = inv
        slot[0] = -1
        try:
            summary = worker_module.handle(event, hooks)
        except BaseException as exc:  # noqa: BLE001 - e.g. storage unreachable: report, keep serving
            conn.send(("failed", inv, "".join(traceback.format_exception(exc)), _portable(exc)))
        else:
            calls_run += summary.get("calls", 0)
        del event
        retiring = max_tasks is not None and calls_run >= max_tasks
        conn.send(("done", inv, retiring))
        if retiring:
            return  # the backend starts a fresh process when it needs one


def _send_raw(conn, data: Any) -> None:
    """Write ``data`` as is after a message; the worker knows its length from the event."""
    fd = conn.fileno()
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _recv_raw(conn, size: int) -> bytearray:
    """Read the ``size`` raw bytes ``_send_raw`` wrote, into one buffer."""
    fd = conn.fileno()
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("the client closed the pipe in the middle of an argument blob")
        got += n
    return buf


class _Worker:
    __slots__ = ("process", "conn", "slot", "inv", "kill_reason")

    def __init__(self, process, conn, slot) -> None:
        self.process = process
        self.conn = conn
        self.slot = slot
        self.inv: Optional[str] = None
        self.kill_reason: Optional[str] = None


class LocalBackend(ComputeBackend):
    name = "local"
    option_names = declared.LOCAL.options

    def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                 storage_url: str, storage_options: Dict[str, Any]) -> None:
        super().__init__(options, max_workers=max_workers, storage_url=storage_url,
                         storage_options=storage_options)
        self._depth = _env_int(DEPTH_ENV, 0)
        self.max_workers = max_workers or os.cpu_count() or 1
        self._share = _env_int(SHARE_ENV, os.cpu_count() or 1) or 1
        # Deep inside: no new processes at all (see the module docstring).
        self._threads = self._depth >= _THREADS_DEPTH
        if self._threads:
            # Threads cost no process: an explicit max_workers is honoured (calls that
            # wait on I/O overlap), within a sane cap; by default the worker's share.
            self.max_workers = min(max_workers or self._share, _MAX_THREADS)
        elif self._depth > 0:
            # Inside a worker: this worker's share of the CPUs, not a whole machine's.
            self.max_workers = min(max_workers or self._share, self._share)
        self._running_threads = 0
        context = self.options.get("mp_context")
        start_method = self.options.get("start_method")
        if context is not None and start_method is not None:
            raise ValueError("give the local backend either mp_context or start_method, not both")
        if context is None:
            if start_method is None:
                start_method = "fork" if sys.platform == "linux" else "spawn"
            try:
                context = multiprocessing.get_context(start_method)
            except ValueError:
                raise ValueError(
                    f"start_method {start_method!r} is not available here; use one of "
                    f"{multiprocessing.get_all_start_methods()}"
                ) from None
        self._context = context
        max_tasks = self.options.get("max_tasks_per_child")
        if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1):
            raise ValueError(f"max_tasks_per_child must be an integer >= 1 or None, not {max_tasks!r}")
        self._max_tasks: Optional[int] = max_tasks
        # notices=False drops the segment notices so only status polling remains: the
        # tests use it to show that the fast path is an optimisation, not a dependency.
        self._notices = bool(self.options.get("notices", True))
        # pipe_args=False sends big arguments through storage, as remote backends do (tests
        # of that path use it); by default the pipe carries them, which copies less.
        self._pipe_args = bool(self.options.get("pipe_args", True))
        self._lock = threading.Lock()
        self._workers: List[_Worker] = []
        # (invocation id, (the pickled (inv, event, args follow) message for the worker's
        # pipe, the big argument blob sent after it or None))
        self._queue: Deque[Tuple[str, Tuple[bytes, Any]]] = collections.deque()
        self._where: Dict[str, _Worker] = {}
        self._reader: Optional[threading.Thread] = None
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._closing = False

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            max_concurrency=self.max_workers,
            # One invocation queued ahead in total keeps workers busy between batches
            # while leaving everything else cancellable, as ProcessPoolExecutor does.
            max_in_flight=self.max_workers + 1,
            can_cancel=True,
            notifies=self._notices,
            batch_target_seconds=0.02,
            # One call per invocation, so no batch runs past a worker's allowance.
            max_batch_calls=1 if self._max_tasks is not None else None,
            inline_limit=_PIPE_ARGS_LIMIT if self._pipe_args else None,
        )

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "host": os.uname().nodename, "workers": self.max_workers,
                "start_method": self._context.get_start_method()}

    # ------------------------------------------------------------------ manager side
    def start(self, notify) -> None:
        super().start(notify)
        self._reader = threading.Thread(target=self._read_loop, name="cloudpool-local-reader", daemon=True)
        self._reader.start()

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        # Pickled here, in the caller's thread and outside the lock: an event that cannot
        # be pickled fails this invoke() alone, never the reader thread's later dispatch.
        args = event.get("args")
        # A list: the parts of a blob whose big buffers are out of band (protocol.Pieces).
        size = 0 if args is None else sum(map(len, args)) if isinstance(args, list) else len(args)
        if size >= _SPLIT_ARGS_BYTES and _RAW_PIPE:
            event = {k: v for k, v in event.items() if k != "args"}
        else:
            if isinstance(args, list):
                event = dict(event, args=b"".join(args))
            args = None
        message = (ForkingPickler.dumps((inv, event, 0 if args is None else size)), args)
        with self._lock:
            if self._closing:
                raise RuntimeError("the local backend is shut down")
            self._queue.append((inv, message))
            self._dispatch_locked()

    def cancel(self, inv: str, reason: str) -> bool:
        with self._lock:
            for i, (queued_inv, _event) in enumerate(self._queue):
                if queued_inv == inv:
                    del self._queue[i]
                    self._notify(InvocationLost(inv, reason, None, timed_out=(reason == "timeout")))
                    return True
            worker = self._where.get(inv)
            if worker is None:
                return False
            worker.kill_reason = reason
        worker.process.kill()
        return True

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._closing:
                return  # already shut down (shutdown() may be called again, as in the stdlib)
            self._closing = True
            workers = list(self._workers)
            self._queue.clear()
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                continue
        for w in workers:
            w.process.join(timeout=2 if wait else 0.1)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
        self._wake_w.send_bytes(b"x")
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        for w in workers:
            w.conn.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ workers
    def _spawn_locked(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        slot = self._context.RawArray("q", 1)
        fork = self._context.get_start_method() == "fork"
        inherited = [w.conn for w in self._workers] + [self._wake_r, self._wake_w] if fork else []
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, slot, list(sys.path), self._max_tasks, inherited,
                  self._depth + 1, max(1, self._share // self.max_workers)),
            name="cloudpool-local-worker", daemon=True,
        )
        process.start()
        child_conn.close()
        worker = _Worker(process, parent_conn, slot)
        self._workers.append(worker)
        self._wake_w.send_bytes(b"w")  # the reader must start watching it
        return worker

    def _dispatch_locked(self) -> None:
        if self._threads:
            while self._queue and self._running_threads < self.max_workers:
                inv, message = self._queue.popleft()
                self._running_threads += 1
                threading.Thread(target=self._run_in_thread, args=(inv, message),
                                 name="cloudpool-local-thread", daemon=True).start()
            return
        while self._queue:
            idle = next((w for w in self._workers if w.inv is None and w.kill_reason is None), None)
            if idle is None:
                if len(self._workers) >= self.max_workers:
                    return
                idle = self._spawn_locked()
            inv, message = self._queue.popleft()
            idle.inv = inv
            self._where[inv] = idle
            try:
                idle.conn.send_bytes(message[0])
                if message[1] is not None:
                    for part in message[1] if isinstance(message[1], list) else [message[1]]:
                        _send_raw(idle.conn, part)
            except (OSError, ValueError):
                # Died before we could hand it over; its sentinel will fire. Re-queue.
                idle.inv = None
                del self._where[inv]
                idle.kill_reason = "dead"
                self._queue.appendleft((inv, message))

    def _run_in_thread(self, inv: str, message: Tuple[bytes, Any]) -> None:
        """Run one invocation in this process (nested beyond ``_THREADS_DEPTH``)."""
        try:
            _inv, event, args_follow = pickle.loads(message[0])
            if args_follow:
                args = message[1]
                event["args"] = b"".join(args) if isinstance(args, list) else args
            worker_module.handle(event, _ThreadHooks(self))
        except BaseException as exc:  # noqa: BLE001 - e.g. storage unreachable: the invocation is lost
            self._notify(InvocationLost(inv, "the call could not run:\n" + "".join(traceback.format_exception(exc)),
                                        error=_portable(exc)))
        finally:
            with self._lock:
                self._running_threads -= 1
                if not self._closing:
                    self._dispatch_locked()

    # ------------------------------------------------------------------ reader thread
    def _read_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing and not self._workers:
                    return
                by_conn = {w.conn: w for w in self._workers}
                by_sentinel = {w.process.sentinel: w for w in self._workers}
            try:
                ready = multiprocessing.connection.wait(
                    [self._wake_r, *by_conn, *by_sentinel], timeout=None)
            except OSError:
                return  # closed during shutdown
            for obj in ready:
                if obj is self._wake_r:
                    try:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    except (EOFError, OSError):
                        return
                    if self._closing:
                        return
                elif obj in by_conn:
                    self._drain(by_conn[obj])
            for obj in ready:
                if obj in by_sentinel:
                    self._bury(by_sentinel[obj])

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                self._on_message(worker, worker.conn.recv())
        except (EOFError, OSError):
            return  # the sentinel reports the death

    def _on_message(self, worker: _Worker, message) -> None:
        kind = message[0]
        if kind == "segment":
            if self._notices:
                self._notify(SegmentDone(message[2]))
        elif kind == "failed":
            self._notify(InvocationLost(message[1], "the worker could not run the invocation:\n" + message[2],
                                        error=message[3]))
        elif kind == "done":
            with self._lock:
                self._where.pop(message[1], None)
                worker.inv = None
                if message[2]:
                    worker.kill_reason = "retired"  # exiting: never hand it another invocation
                self._dispatch_locked()

    def _bury(self, worker: _Worker) -> None:
        self._drain(worker)  # segments written just before dying still count
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            inv = worker.inv
            if inv is not None:
                self._where.pop(inv, None)
            reason = worker.kill_reason
            if not self._closing:
                self._dispatch_locked()
        worker.conn.close()
        if inv is None:
            return  # died idle (or retired after max_tasks_per_child): nothing lost
        running = worker.slot[0]
        if reason == "timeout":
            why = "was killed after exceeding its timeout"
        elif reason is not None and reason != "dead":
            why = f"was stopped ({reason})"
        elif code is not None and code < 0:
            name = _SIGNAL_NAMES.get(code, str(-code))
            hint = " (the kernel's out-of-memory killer sends this)" if name == "SIGKILL" else ""
            why = f"was killed by {name}{hint}"
        else:
            why = f"exited with code {code}"
        self._notify(InvocationLost(
            inv, f"worker process {worker.process.pid} {why}",
            running_call=running if running >= 0 else None,
            timed_out=(reason == "timeout"),
            killed=(reason in (None, "dead") and code == -signal.SIGKILL),
        ))
