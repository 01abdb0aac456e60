#!/usr/bin/env python3
"""The cloudpool runtime for Kubernetes: the program each pod of an Indexed Job runs.

A pod cannot receive a payload, so the ``kubernetes`` backend (``cloudpool/compute/
kubernetes.py``) stores one invocation event per completion index before it creates the
Job. This entry point:

1. reads ``JOB_COMPLETION_INDEX`` (set by Kubernetes for ``completionMode: Indexed``);
2. opens the executor's storage from ``CLOUDPOOL_STORAGE_URL`` and
   ``CLOUDPOOL_STORAGE_OPTIONS`` (public options only: credentials come from the pod's
   environment -- Secrets via ``envFrom`` -- or its service account, never from the Job);
3. reads its event, ``$CLOUDPOOL_EVENTS_PREFIX<index, six digits>.json``, and runs it with
   ``cloudpool.worker.handle``, which writes results and status to storage.

While calls run, the index of the running call is kept in the container's termination
message file (``/dev/termination-log``, or ``$CLOUDPOOL_TERMINATION_LOG``), so a pod
killed mid-call (out of memory, evicted) tells the client which call it was running.

Exit status: 0 when the batch ran to its end (calls that raised are results, and a fatal
"version"/"init"/"load" status is already stored for the client), 1 when the event could
not be read or the worker could not store its results: the pod then shows as failed and
the client reports its calls lost.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

TERMINATION_LOG = "/dev/termination-log"


class _TerminationNote:
    """``WorkerHooks`` that keep the running call's index where Kubernetes reads it on exit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, text: str) -> None:
        try:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError:
            pass  # no termination log (not in a pod): the note is only a hint

    def call_started(self, index: int) -> None:
        self.write(f"cloudpool-running-call={index}\n")

    def segment_written(self, status) -> None:
        pass


def main() -> int:
    from cloudpool import protocol, worker
    from cloudpool.storage import get_storage, split_url

    note = _TerminationNote(os.environ.get("CLOUDPOOL_TERMINATION_LOG", TERMINATION_LOG))
    try:
        index = int(os.environ["JOB_COMPLETION_INDEX"])
        url = os.environ["CLOUDPOOL_STORAGE_URL"]
        options = json.loads(os.environ.get("CLOUDPOOL_STORAGE_OPTIONS") or "{}")
        prefix = os.environ["CLOUDPOOL_EVENTS_PREFIX"]
    except (KeyError, ValueError) as exc:
        message = (f"cloudpool-error=this pod lacks its Job's settings ({type(exc).__name__}: {exc}); "
                   f"it must be started by the kubernetes backend as an Indexed Job")
        note.write(message + "\n")
        print(message, file=sys.stderr)
        return 1
    key = f"{prefix}{index:06d}.json"
    try:
        scheme, bucket, _root = split_url(url)
        storage = get_storage(scheme, bucket, options)
        event = protocol.decode_event(storage.get(key))
        hooks = worker.WorkerHooks()
        hooks.call_started = note.call_started  # type: ignore[method-assign]
        summary = worker.handle(event, hooks)
    except BaseException as exc:  # noqa: BLE001 - the pod must fail visibly, with the reason
        traceback.print_exc()
        # The running call's index stays in the note (if a call was running): appended.
        try:
            with open(note.path, "a", encoding="utf-8") as f:
                f.write(f"cloudpool-error={type(exc).__name__}: {str(exc)[:500]}\n")
        except OSError:
            pass
        return 1
    note.write("")  # finished: no call was running
    print(json.dumps({"index": index, "event": key, **{k: v for k, v in summary.items() if k != "message"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
