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
import struct
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
    view = memoryview(blob)[offsets[index]:offsets[index + 1]]
    if view[:4] == OOB_MAGIC:
        return _load_oob(view)
    return pickle.loads(view)


# ---------------------------------------------------------------------------- out-of-band buffers
#: A call's frame that starts with this holds a pickle whose big buffers (numpy arrays,
#: bytearrays, ``PickleBuffer``s) follow it out of band (pickle protocol 5): the client
#: sends them straight from the caller's memory, and the worker's arrays are views of
#: the received blob, not copies. A plain pickle starts with ``\x80``, never with this.
#: Layout: magic, u32 buffer count n, u64 lengths of the pickle and of the n buffers,
#: the pickle, the buffers.
OOB_MAGIC = b"CPB5"
#: Smaller buffers stay in band: a part per small buffer would cost more than the copy.
OOB_MIN_BYTES = 64 * 1024


class Pieces:
    """One pickled call as a list of parts (header, pickle, buffers); ``len`` is its size."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, stream: Any, buffers: List[memoryview]) -> None:
        header = OOB_MAGIC + struct.pack(f"<I{len(buffers) + 1}Q", len(buffers), len(stream),
                                         *(b.nbytes for b in buffers))
        self.parts: List[Any] = [header, stream, *buffers]
        self.nbytes = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


def parts_of(pickled: Any) -> List[Any]:
    """The byte strings whose concatenation is one call's frame."""
    return pickled.parts if isinstance(pickled, Pieces) else [pickled]


def _keep_small_in_band(buffer: pickle.PickleBuffer) -> bool:
    try:
        raw = buffer.raw()
    except BufferError:  # not contiguous: pickled in band
        return True
    return raw.nbytes < OOB_MIN_BYTES


def dumps_each_oob(items: Sequence[Any]) -> Tuple[List[Any], bytes, List[int]]:
    """Like ``dumps_each``, with big buffers out of band.

    Returns one entry per item (a memoryview slice of the shared pickle buffer, or a
    ``Pieces`` when the item has out-of-band buffers), the shared buffer, and offsets into
    it (which are the batch's offsets only when no item is a ``Pieces``).
    """
    buf = io.BytesIO()
    big: List[memoryview] = []

    def callback(buffer: pickle.PickleBuffer) -> bool:
        if _keep_small_in_band(buffer):
            return True
        big.append(buffer.raw())
        return False

    pickler = Pickler(buf, protocol=PICKLE_PROTOCOL, buffer_callback=callback)
    offsets = [0]
    owned: List[List[memoryview]] = []
    for item in items:
        try:
            pickler.dump(item)
        finally:
            pickler.clear_memo()
        offsets.append(buf.tell())
        owned.append(list(big))
        big.clear()
    blob = buf.getvalue()
    view = memoryview(blob)
    out: List[Any] = []
    for i, buffers in enumerate(owned):
        stream = view[offsets[i]:offsets[i + 1]]
        out.append(Pieces(stream, buffers) if buffers else stream)
    return out, blob, offsets


def _load_oob(view: memoryview) -> Any:
    (count,) = struct.unpack_from("<I", view, 4)
    lengths = struct.unpack_from(f"<{count + 1}Q", view, 8)
    pos = 8 + 8 * (count + 1)
    stream = view[pos:pos + lengths[0]]
    pos += lengths[0]
    buffers = []
    for n in lengths[1:]:
        part = view[pos:pos + n]
        # Arrays must be writable, as they are with the stdlib: views of a writable
        # blob (the local pipe's) are; a read-only blob (from storage) is copied.
        buffers.append(part if not part.readonly else bytearray(part))
        pos += n
    return pickle.loads(stream, buffers=buffers)


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
