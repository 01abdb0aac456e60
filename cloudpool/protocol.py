"""The call protocol: what is written where in storage, and the shape of every message.

Key layout under the storage root (one executor = one unguessable id)::

    <root>/<executor>/client.json                      who owns the executor (host, pid, start time)
    <root>/<executor>/init.pickle                      initializer + initargs (once per executor)
    <root>/<executor>/modules/<digest>.zip             the user's own modules, for remote workers
    <root>/<executor>/modules/<digest>.main.py         the user's main script, for remote workers
    <root>/<executor>/<job>/function.pickle            the function, cloudpickled once per job
    <root>/<executor>/<job>/args/<batch>.pickle        a batch's arguments, when too big to inline
    <root>/<executor>/<job>/results/<batch>.<seg>.pickle   results of one segment of a batch
    <root>/<executor>/<job>/status/<batch>.<seg>.json      status of that segment (JSON, the source of truth)

A *job* is one function; a *batch* is the calls of one invocation; a worker flushes a
*segment* (the calls finished since its last flush) at least every ``flush_interval``
seconds and at the end of the batch, so long batches still report early results.

Payload framing: an argument blob and a result blob are the concatenation of one
pickle per call; the event (arguments) or the status (results) lists the offsets, so
one bad pickle spoils only its own call. The event carries CRC-32 checksums of the
function (``fn_sum``) and of the argument blob (``args_sum``), the status one of the
result blob (``result_sum``); each side verifies what it reads. Status is JSON: it is never unpickled and
never evaluated. Events are plain dicts; ``encode_event`` makes them JSON (bytes as
base64) for platforms whose invocations carry JSON.
"""
from __future__ import annotations

import base64
import io
import zlib
import json
import pickle
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cloudpickle

from ._mainscript import Pickler
from ._version import __version__

PROTOCOL_VERSION = 1
PICKLE_PROTOCOL = 5


def versions() -> Dict[str, str]:
    """The versions that must match between client and worker."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "cloudpickle": cloudpickle.__version__,
        "cloudpool": __version__,
    }


def version_mismatch(client: Dict[str, str], worker: Dict[str, str]) -> Optional[str]:
    """A message naming both sides of every differing version, or None when they match."""
    diffs = [
        f"{name} {client.get(name)!s} on the client but {worker.get(name)!s} on the worker"
        for name in ("python", "cloudpickle", "cloudpool")
        if client.get(name) != worker.get(name)
    ]
    if not diffs:
        return None
    return (
        "the runtime does not match this client: " + "; ".join(diffs)
        + ". Rebuild/redeploy the runtime with the client's versions (cloudpool runtime build) "
        "or install the runtime's versions on the client."
    )


class Keys:
    """The documented key layout for one executor."""

    def __init__(self, root: str, executor_id: str) -> None:
        root = root.strip("/")
        self.root = root
        self.executor_id = executor_id
        self.executor_prefix = f"{root}/{executor_id}/" if root else f"{executor_id}/"

    @property
    def client(self) -> str:
        """The owner marker: ``cloudpool clean`` reads it to tell live executors from crashed ones."""
        return self.executor_prefix + "client.json"

    def modules(self, digest: str) -> str:
        """A zip of the user's own module sources, named by its content."""
        return f"{self.executor_prefix}modules/{digest}.zip"

    def main_script(self, digest: str) -> str:
        """The user's main script source, named by its content (``cloudpool._mainscript``)."""
        return f"{self.executor_prefix}modules/{digest}.main.py"

    @property
    def init(self) -> str:
        return self.executor_prefix + "init.pickle"

    def job_prefix(self, job: str) -> str:
        return f"{self.executor_prefix}{job}/"

    def function(self, job: str) -> str:
        return self.job_prefix(job) + "function.pickle"

    def args(self, job: str, batch: int) -> str:
        return f"{self.job_prefix(job)}args/{batch:08d}.pickle"

    def status_prefix(self, job: str) -> str:
        return self.job_prefix(job) + "status/"

    def status(self, job: str, batch: int, segment: int) -> str:
        return f"{self.status_prefix(job)}{batch:08d}.{segment:04d}.json"

    def result(self, job: str, batch: int, segment: int) -> str:
        return f"{self.job_prefix(job)}results/{batch:08d}.{segment:04d}.pickle"

    def batch_status_prefix(self, job: str, batch: int) -> str:
        return f"{self.status_prefix(job)}{batch:08d}."


def parse_status_key(key: str) -> Tuple[int, int]:
    """``.../status/00000012.0003.json`` -> ``(12, 3)``."""
    name = key.rsplit("/", 1)[-1]
    batch, segment, _ext = name.split(".")
    return int(batch), int(segment)


# ---------------------------------------------------------------------------- checksums
def checksum(data: Any) -> str:
    """A checksum of a payload or result blob, named by its algorithm.

    CRC-32 (what S3 itself checks by default): it catches torn, truncated and mixed-up
    blobs at several GB/s. It is not a signature: whoever can write the bucket can
    write a matching checksum too, so access to the bucket is the security boundary.
    """
    return f"crc32:{zlib.crc32(data):08x}"


def verify(data: Any, expected: Optional[str], what: str) -> None:
    """Raise ``IntegrityError`` naming ``what`` if ``data`` does not match ``expected``."""
    if expected is None:
        return
    actual = checksum(data)
    if actual != expected:
        from .errors import IntegrityError

        raise IntegrityError(f"{what} does not match its checksum ({actual} instead of {expected}): "
                             f"it was corrupted in storage or in transit")


# ---------------------------------------------------------------------------- framing
def dumps_each(items: Sequence[Any]) -> Tuple[bytes, List[int]]:
    """Cloudpickle each item into one buffer; returns the buffer and len(items)+1 offsets.

    One pickler is reused (its memo cleared between items) so each item is an
    independent pickle while the per-item setup cost is paid once.
    """
    buf = io.BytesIO()
    pickler = Pickler(buf, protocol=PICKLE_PROTOCOL)
    offsets = [0]
    for item in items:
        try:
            pickler.dump(item)
        finally:
            pickler.clear_memo()
        offsets.append(buf.tell())
    return buf.getvalue(), offsets


def load_at(blob: Any, offsets: Sequence[int], index: int) -> Any:
    view = memoryview(blob)
    return pickle.loads(view[offsets[index]:offsets[index + 1]])


def dumps(obj: Any) -> bytes:
    """cloudpickle, with the main script's module-level objects by reference (see ``_mainscript``)."""
    buf = io.BytesIO()
    Pickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue()


# ---------------------------------------------------------------------------- events
def encode_event(event: Dict[str, Any]) -> bytes:
    """JSON bytes for platforms that carry JSON payloads (bytes values become base64)."""

    def default(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
        raise TypeError(f"cannot encode {type(value).__name__} in an invocation event")

    return json.dumps(event, default=default, separators=(",", ":")).encode()


def decode_event(data: Any) -> Dict[str, Any]:
    def hook(obj: Dict[str, Any]) -> Any:
        if len(obj) == 1 and "__b64__" in obj:
            return base64.b64decode(obj["__b64__"])
        return obj

    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode()
    if isinstance(data, str):
        return json.loads(data, object_hook=hook)
    return data


def client_marker(backend: str) -> Dict[str, Any]:
    """What ``Keys.client`` holds: enough to tell whether the owning client still runs."""
    import os
    import socket
    import time

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
            "backend": backend, "versions": versions()}


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
