#!/usr/bin/env python3
"""The cloudpool runtime for AWS Batch: the program each child of an array job runs.

A Batch job cannot receive a payload, so the ``aws_batch`` backend
(``cloudpool/compute/aws_batch.py``) stores one invocation event per array index before
it submits the job. This entry point:

1. reads its index from ``AWS_BATCH_JOB_ARRAY_INDEX`` (set by Batch in each child of an
   array job), or from ``CLOUDPOOL_BATCH_INDEX`` (set by the backend on a job that is not
   an array: Batch arrays have at least two children, so one batch is a plain job);
2. opens the executor's storage from ``CLOUDPOOL_STORAGE_URL`` and
   ``CLOUDPOOL_STORAGE_OPTIONS`` (public options only: credentials come from the job's
   IAM role, never from the job's environment);
3. reads ``$CLOUDPOOL_EVENTS_PREFIX<index, six digits>.json`` and runs it with
   ``cloudpool.worker.handle``, which writes results and status to storage.

Exit status: 0 when the batch ran to its end (failed calls are results; a fatal
"version" status is already stored for the client); 1 when the event could not be read
or results not stored: Batch then marks the child FAILED and the client reports it lost.
"""
from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    from cloudpool import protocol, worker
    from cloudpool.storage import get_storage, split_url

    try:
        raw = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX") or os.environ["CLOUDPOOL_BATCH_INDEX"]
        index = int(raw)
        url = os.environ["CLOUDPOOL_STORAGE_URL"]
        options = json.loads(os.environ.get("CLOUDPOOL_STORAGE_OPTIONS") or "{}")
        prefix = os.environ["CLOUDPOOL_EVENTS_PREFIX"]
    except (KeyError, ValueError) as exc:
        print(f"cloudpool: this container lacks its job's settings ({type(exc).__name__}: {exc}); it must "
              f"be submitted by the aws_batch backend (AWS_BATCH_JOB_ARRAY_INDEX or CLOUDPOOL_BATCH_INDEX, "
              f"CLOUDPOOL_STORAGE_URL, CLOUDPOOL_EVENTS_PREFIX)", file=sys.stderr)
        return 1
    key = f"{prefix}{index:06d}.json"
    try:
        scheme, bucket, _root = split_url(url)
        storage = get_storage(scheme, bucket, options)
        event = protocol.decode_event(storage.get(key))
        summary = worker.handle(event)
    except BaseException:  # noqa: BLE001 - the job must fail visibly, with the reason in its log
        traceback.print_exc()
        return 1
    print(json.dumps({"index": index, "event": key, **{k: v for k, v in summary.items() if k != "message"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
