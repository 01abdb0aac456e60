"""TEMPORARY: the local backend with a working ``max_tasks_per_child`` (``Pool(maxtasksperchild=N)``).

``cloudpool.compute.local`` counts calls in the worker, which exits after sending its
last "done"; the backend, on that "done", may already have handed the exiting worker
the next invocation, which is then lost (the call fails with ``WorkerLostError``).
Here the backend counts the calls it sent each worker and, once a worker has served
``max_tasks_per_child``, gives it no more work and tells it to exit; and an invocation
holds one call, so that no batch runs past a worker's allowance (the base class caps
batches at ``max_tasks_per_child`` calls, which a partly used worker can exceed).

``Pool`` uses this only for ``maxtasksperchild`` on the local backend, under the
private name ``_local_pool``. Delete this module once ``compute/local.py`` retires
workers itself (the fix is described in the multiprocessing report).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

from ..compute import Capabilities, backends
from ..compute.local import LocalBackend

NAME = "_local_pool"


class LifetimeLocalBackend(LocalBackend):
    name = NAME

    def __init__(self, options: Dict[str, Any], **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self._calls_of: Dict[str, int] = {}
        self._served: Dict[int, int] = {}

    @property
    def capabilities(self) -> Capabilities:
        caps = super().capabilities
        if self._max_tasks is None:
            return caps
        # One call per invocation, so no batch straddles a worker's last allowed task.
        return dataclasses.replace(caps, max_batch_calls=1)

    def invoke(self, inv: str, event: Dict[str, Any]) -> None:
        if self._max_tasks is not None:
            with self._lock:
                self._calls_of[inv] = len(event["offsets"]) - 1
        super().invoke(inv, event)

    def _on_message(self, worker, message) -> None:
        if message[0] == "done" and self._max_tasks is not None:
            with self._lock:
                served = self._served.get(id(worker), 0) + self._calls_of.pop(message[1], 0)
                self._served[id(worker)] = served
                retire = served >= self._max_tasks and worker.kill_reason is None
                if retire:
                    worker.kill_reason = "retired"  # the dispatcher skips it from now on
            if retire:
                try:
                    worker.conn.send(None)  # exit now (it may already be exiting by itself)
                except (OSError, ValueError):
                    pass  # already gone: its sentinel reports it, with nothing in hand
        super()._on_message(worker, message)


if NAME not in backends.names():
    backends.register(NAME, LifetimeLocalBackend)
