"""AWS Lambda entry point of a cloudpool runtime: one Lambda event -> ``cloudpool.worker.handle``.

The ``aws_lambda`` backend packages this file as ``cloudpool_lambda_handler.py`` at the root
of the function's zip (or copies it into the container image), with the handler setting
``cloudpool_lambda_handler.lambda_handler``. Two kinds of event arrive:

- an invocation event (the JSON form of ``cloudpool.protocol``'s event, bytes as base64),
  sent asynchronously by the backend: the worker runs the batch and writes results and
  status to the executor's storage; the return value only shows in Lambda's logs;
- ``{"cloudpool": "metadata"}``, sent synchronously once by ``cloudpool runtime deploy``:
  answered with this runtime's Python / cloudpickle / cloudpool / protocol versions and
  installed packages, which the backend stores on the function and checks before the
  first invocation of every executor.

Storage credentials come from the function's execution role (boto3's credential chain),
never from the event.
"""
import importlib.metadata
import json
import sys

from cloudpool import protocol, worker

METADATA_REQUEST = {"cloudpool": "metadata"}


def _packages():
    """name -> version of every distribution the function can import (first on sys.path wins)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def metadata():
    return {
        "protocol": protocol.PROTOCOL_VERSION,
        "versions": protocol.versions(),
        "python_full": sys.version.split()[0],
        "packages": _packages(),
    }


def lambda_handler(event, context):
    if event == METADATA_REQUEST:
        return metadata()
    # Lambda hands over the JSON already parsed; re-reading it through the protocol's own
    # decoder restores the base64-encoded bytes values (argument blobs) exactly.
    decoded = protocol.decode_event(json.dumps(event))
    return worker.handle(decoded)
