"""The cloudpool runtime for Azure Functions: one HTTP-triggered function running batches.

Deployed by ``cloudpool runtime deploy --backend azure_functions`` (zip deploy of this
file, ``host.json``, ``requirements.txt`` and this client's cloudpool and cloudpickle).
Azure's Functions host checks the caller (function key in ``x-functions-key``, or
Microsoft Entra through App Service authentication) before this code runs.

``POST /api/cloudpool`` with:

- ``{"cloudpool": "metadata"}``: answers the runtime's protocol, Python / cloudpickle /
  cloudpool versions and installed packages (the client's version handshake);
- an invocation event (``cloudpool.protocol``): runs it with ``cloudpool.worker.handle``,
  which writes results and status to storage, and answers the worker's summary. Storage
  credentials come from the app's settings or managed identity, never from the event.

Answers: 200 with JSON; 400 for a body that is not an event; 500 when the worker could
not run the batch (the client reports it lost and re-runs what did not finish).
"""
from __future__ import annotations

import json
import logging
import traceback

import azure.functions as func

METADATA_REQUEST = {"cloudpool": "metadata"}


def _json(obj, status: int) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(obj), status_code=status, mimetype="application/json")


def metadata() -> dict:
    from importlib import metadata as md

    from cloudpool import protocol

    packages = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name] = dist.version
    return {"protocol": protocol.PROTOCOL_VERSION, "versions": protocol.versions(), "packages": packages}


def handle(req: func.HttpRequest) -> func.HttpResponse:
    """The function's body, kept apart from the app object so it can run anywhere."""
    from cloudpool import protocol, worker

    body = req.get_body()
    try:
        parsed = json.loads(body) if body[:1] == b"{" and len(body) < 100 else None
    except ValueError:
        parsed = None
    if parsed == METADATA_REQUEST:
        return _json(metadata(), 200)
    try:
        event = protocol.decode_event(body)
    except Exception as exc:  # noqa: BLE001 - any undecodable body is the caller's error
        return _json({"error": f"not a cloudpool invocation event: {type(exc).__name__}: {exc}"}, 400)
    try:
        summary = worker.handle(event)
    except BaseException as exc:  # noqa: BLE001 - the client must learn why, not see a hang
        logging.error("cloudpool: the batch could not run:\n%s", traceback.format_exc())
        return _json({"error": f"{type(exc).__name__}: {str(exc)[:1000]}"}, 500)
    return _json({k: v for k, v in summary.items() if k != "message"}, 200)


app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="cloudpool", methods=["POST"])
def cloudpool(req: func.HttpRequest) -> func.HttpResponse:
    return handle(req)
