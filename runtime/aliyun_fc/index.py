"""The cloudpool runtime for Alibaba Cloud Function Compute 3.0: an event handler (``index.handler``).

Deployed by ``cloudpool runtime deploy --backend aliyun_fc`` (a zip of this file and this
client's cloudpool and cloudpickle). Function Compute calls ``handler(event, context)``
with the invocation payload as ``bytes`` and a context carrying the request id, the
function's details and temporary credentials of its role (``context.credentials``); the
client invokes asynchronously (``X-Fc-Invocation-Type: Async``), so the return value
only shows in the function's logs and async-invocation records.

Payloads: ``{"cloudpool": "metadata"}`` answers the runtime's versions (the client's
check after deploying); anything else is an invocation event, run with
``cloudpool.worker.handle``, which writes results and status to storage. A batch that
could not run raises, so Function Compute records the invocation as failed.
"""
from __future__ import annotations

import json

METADATA_REQUEST = {"cloudpool": "metadata"}


def metadata() -> dict:
    from importlib import metadata as md

    from cloudpool import protocol

    packages = {d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}
    return {"protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions(), "packages": packages}


def handler(event, context):
    from cloudpool import protocol, worker

    body = event if isinstance(event, (bytes, bytearray)) else str(event).encode()
    if len(body) < 100 and body[:1] == b"{":
        try:
            if json.loads(body) == METADATA_REQUEST:
                return json.dumps(metadata())
        except ValueError:
            pass
    summary = worker.handle(protocol.decode_event(bytes(body)))
    summary = {k: v for k, v in summary.items() if k != "message"}
    summary["request_id"] = getattr(context, "request_id", None)
    return json.dumps(summary)
