"""imzML (imaging mass spectrometry) partitioning: ranges of spectra of the ``.ibd`` binary.

This module owns cutting an imzML image into ``ImzmlPart``s of consecutive spectra and
reading them on a worker. An image is two objects: the ``.imzML`` XML, which holds every
spectrum's pixel coordinates and the byte offsets and lengths of its m/z and intensity
arrays in the ``.ibd`` file beside it (same name, ``.ibd``, ``.IBD`` accepted). The XML
is parsed once with ``pyimzml`` (streamed through ranged GETs of 8 MiB), and the offsets
are kept as an index in the index cache, keyed by the XML object's version and the
``.ibd`` object's size and ETag, so the next listing of the same image reads no XML.

A part owns spectra ``[first, first + count)`` and carries their offsets, lengths and
coordinates (a few dozen bytes per spectrum), so a worker reads only the ``.ibd``: the
spectra's arrays merged into as few ranged GETs as their layout allows (one when they are
contiguous, as writers lay them out). ``chunk_size`` is ``.ibd`` bytes per part, ``chunks``
parts per image; the automatic size is in ``.ibd`` bytes too. Iterating yields
``(coordinates, mzs, intensities)`` per spectrum, like ``pyimzml``'s ``getspectrum``.

Listed ``.ibd`` objects give no parts (they are read through their ``.imzML``). A missing
``.ibd``, an XML pyimzml cannot parse, or zlib-compressed arrays (not supported yet) give
one part that raises ``FormatError`` naming the object when read.
"""
from __future__ import annotations

import io
import json
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from ._grouping import runs
from ._ranged import RangedFile, ReadStats
from .base import FormatError, ObjectRef, Part, PartitionContext, Partitioner, require

__all__ = ["ImzmlPartitioner", "ImzmlPart"]

#: Spectra whose arrays are closer than this are fetched in one GET (the gap is read).
MERGE_GAP = 4096
_DTYPES = {"f": "<f4", "d": "<f8", "i": "<i4", "l": "<i8"}


class ImzmlPart(Part):
    """Spectra ``[first, first + count)`` of one imzML image (``url`` is the ``.imzML``)."""

    format = "imzml"

    def __init__(self, obj: ObjectRef, part: int, parts: int, *, ibd: Optional[ObjectRef] = None,
                 first: int = 0, coordinates: Sequence[Tuple[int, ...]] = (),
                 mz: Sequence[Tuple[int, int]] = (), intensity: Sequence[Tuple[int, int]] = (),
                 dtypes: Tuple[str, str] = ("d", "f"), problem: Optional[str] = None) -> None:
        super().__init__(obj, part, parts)
        self.ibd = ibd
        self.first = first
        self.count = len(coordinates)
        self.coordinates = [tuple(c) for c in coordinates]
        self.mz = [tuple(r) for r in mz]                # (offset, number of values)
        self.intensity = [tuple(r) for r in intensity]  # (offset, number of values)
        self.dtypes = tuple(dtypes)
        self.problem = problem
        self.stats = ReadStats()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["stats"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stats = ReadStats()

    def _identity(self) -> tuple:
        return super()._identity() + (self.first, self.count)

    def __repr__(self) -> str:
        return (f"ImzmlPart({self.url!r}, part {self.part + 1}/{self.parts}, "
                f"spectra [{self.first}, {self.first + self.count}))")

    def _arrays(self) -> List[Tuple[int, int]]:
        size = {"f": 4, "d": 8, "i": 4, "l": 8}
        spans = [(o, o + n * size[self.dtypes[0]]) for o, n in self.mz]
        spans += [(o, o + n * size[self.dtypes[1]]) for o, n in self.intensity]
        return spans

    def _ranges(self) -> List[Tuple[int, int]]:
        merged: List[List[int]] = []
        for lo, hi in sorted(set(self._arrays())):
            if hi <= lo:
                continue
            if merged and lo <= merged[-1][1] + MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return [(lo, hi) for lo, hi in merged]

    def __iter__(self) -> Iterator[Tuple[Tuple[int, ...], Any, Any]]:
        """``(coordinates, mzs, intensities)`` of each spectrum, in the XML's order."""
        if self.problem:
            raise self.error(self.problem)
        np = require("numpy", "imzml", "imzml")
        assert self.ibd is not None
        f = RangedFile(self.ibd.url, self.ibd.size, storage_options=self.ibd.storage_options,
                       stats=self.stats)
        blocks = [(lo, f.read_range(lo, hi)) for lo, hi in self._ranges()]

        def array(offset: int, n: int, code: str) -> Any:
            dtype = np.dtype(_DTYPES[code])
            end = offset + n * dtype.itemsize
            for lo, data in blocks:
                if lo <= offset and end <= lo + len(data):
                    return np.frombuffer(data, dtype=dtype, count=n, offset=offset - lo)
            return np.empty(0, dtype=dtype)  # n == 0

        for coords, (mo, mn), (io_, inn) in zip(self.coordinates, self.mz, self.intensity):
            yield coords, array(mo, mn, self.dtypes[0]), array(io_, inn, self.dtypes[1])

    def read(self) -> List[Tuple[Tuple[int, ...], Any, Any]]:
        """All the part's spectra as a list of ``(coordinates, mzs, intensities)``."""
        return list(self)


def _ibd_ref(obj: ObjectRef) -> Optional[ObjectRef]:
    """The ``.ibd`` beside ``obj`` (HEAD), or ``None`` if there is none."""
    base = obj.url[:-len(".imzml")]
    storage = obj.storage
    key_base = obj.key[:-len(".imzml")]
    for ext in (".ibd", ".IBD", ".Ibd"):
        try:
            info = storage.head(key_base + ext)
        except FileNotFoundError:
            continue
        return ObjectRef(base + ext, info.size, info.etag, info.mtime, obj.storage_options)
    return None


class ImzmlPartitioner(Partitioner):
    name = "imzml"
    extensions = (".imzml",)
    magic = ()
    extra = "imzml"
    requires = ("pyimzml", "numpy")
    defaults = {}

    @classmethod
    def matches_extension(cls, key: str) -> bool:
        return key.lower().endswith((".imzml", ".ibd"))

    def _index(self, obj: ObjectRef, ibd: ObjectRef, ctx: PartitionContext) -> dict:
        params = f"ibd={ibd.url}|{ibd.version()}"
        cache = ctx.index_cache
        if cache is not None:
            blob = cache.load(obj, "imzml-offsets", params)
            if blob is not None:
                try:
                    return json.loads(blob)
                except ValueError:
                    pass  # unreadable: rebuild (a cache must not break a run)
        parser_mod = require("pyimzml.ImzMLParser", "imzml", "imzml")
        f = io.BufferedReader(RangedFile(obj.url, obj.size, storage_options=obj.storage_options),
                              buffer_size=8 * 1024 * 1024)
        try:
            p = parser_mod.ImzMLParser(f, ibd_file=None)
        except Exception as exc:  # pyimzml lets XML, key and value errors of its parser escape
            # (ParseError, KeyError, AttributeError...): all mean "this XML is not imzML".
            raise FormatError(f"cannot parse the imzML XML ({type(exc).__name__}: {exc})") from exc
        compression = [getattr(p, n, None) for n in ("mzCompression", "intensityCompression")]
        index = {
            "mz": list(zip(p.mzOffsets, p.mzLengths)),
            "intensity": list(zip(p.intensityOffsets, p.intensityLengths)),
            "coordinates": [list(c) for c in p.coordinates],
            "dtypes": [p.mzPrecision, p.intensityPrecision],
            "compressed": any(c not in (None, "none", "no compression") and "NoCompression" not in str(c)
                              for c in compression),
        }
        if cache is not None:
            cache.store(obj, "imzml-offsets", json.dumps(index).encode("utf-8"), params)
        return index

    def parts(self, obj: ObjectRef, ctx: PartitionContext) -> List[Any]:
        if obj.key.lower().endswith(".ibd"):
            return []  # read through its .imzML
        if not obj.key.lower().endswith(".imzml"):
            return [ImzmlPart(obj, 0, 1, problem=(
                "not an .imzML object: format 'imzml' reads the XML named *.imzML and the "
                ".ibd beside it; list the .imzML files"))]
        ibd = _ibd_ref(obj)
        if ibd is None:
            return [ImzmlPart(obj, 0, 1, problem=(
                "no .ibd object beside it (the binary data must be named like the .imzML, "
                "ending in .ibd)"))]
        try:
            index = self._index(obj, ibd, ctx)
        except FormatError as exc:
            return [ImzmlPart(obj, 0, 1, ibd=ibd, problem=str(exc))]
        if index["compressed"]:
            return [ImzmlPart(obj, 0, 1, ibd=ibd, problem="compressed binary arrays are not supported")]
        dt = index["dtypes"]
        size = {"f": 4, "d": 8, "i": 4, "l": 8}
        if dt[0] not in size or dt[1] not in size:
            return [ImzmlPart(obj, 0, 1, ibd=ibd, problem=f"unsupported array types {dt}")]
        weights = [mn * size[dt[0]] + inn * size[dt[1]]
                   for (_mo, mn), (_io, inn) in zip(index["mz"], index["intensity"])]
        groups = runs(weights, ctx)
        return [ImzmlPart(obj, k, len(groups), ibd=ibd, first=i,
                          coordinates=index["coordinates"][i:j], mz=index["mz"][i:j],
                          intensity=index["intensity"][i:j], dtypes=(dt[0], dt[1]))
                for k, (i, j) in enumerate(groups)]
