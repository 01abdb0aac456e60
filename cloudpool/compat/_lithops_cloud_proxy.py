"""Lithops' ``lithops.storage.cloud_proxy``: ``open`` and an ``os``-like facade over storage.

This module owns the file-system view Lithops offers on its storage bucket: paths are
keys of the configured storage's bucket (a leading ``/`` is dropped, ``/`` separates
"directories", which exist as long as a key is under them). ``open`` reads an object
whole (``r``/``rb``) or writes one when the file is closed (``w``/``wb``, ``a``/``ab``
append to what is there); ``os.listdir``/``walk``/``remove`` and ``os.path.exists``/
``isfile``/``isdir`` look at keys; every other ``os``/``os.path`` attribute is the real
one. Both are bound to a ``Storage`` (the Lithops config's, by default), are picklable
and so work inside calls too.
"""
from __future__ import annotations

import io
import os as _os
from functools import partial
from typing import Any, Callable, Iterator, List, Optional, Tuple

from ._lithops_storage import Storage

__all__ = ["cloud_open", "CloudFileProxy", "open", "os"]


def _key(path: str) -> str:
    if not isinstance(path, str):
        raise TypeError(f"a cloud path must be a str, not {type(path).__name__}")
    return path.lstrip("/")


def _dir_prefix(path: str) -> str:
    prefix = _key(path)
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class _Upload:
    """Mixin: the buffer's content is stored under ``key`` when the file is closed."""

    _store: Callable[[bytes], None]

    def close(self) -> None:
        if not self.closed:  # type: ignore[attr-defined]
            value = self.getvalue()  # type: ignore[attr-defined]
            self._store(value.encode("utf-8") if isinstance(value, str) else value)
        super().close()  # type: ignore[misc]


class _BytesUpload(_Upload, io.BytesIO):
    pass


class _TextUpload(_Upload, io.StringIO):
    pass


_DEFAULT: List[Storage] = []


def _default_storage() -> Storage:
    """The Lithops config's storage, made on first use (in each process)."""
    if not _DEFAULT:
        _DEFAULT.append(Storage())
    return _DEFAULT[0]


def cloud_open(filename: str, mode: str = "r", cloud_storage: Optional[Storage] = None) -> Any:
    """A file object on the object ``filename`` of ``cloud_storage``'s bucket (default:
    the Lithops config's storage)."""
    storage = cloud_storage or _default_storage()
    key = _key(filename)
    binary = "b" in mode
    if "r" in mode and "+" not in mode:
        data = storage.get_object(storage.bucket, key)
        return io.BytesIO(data) if binary else io.StringIO(data.decode("utf-8"))
    if ("w" in mode or "a" in mode) and "+" not in mode:
        initial = b""
        if "a" in mode:
            try:
                initial = storage.get_object(storage.bucket, key)
            except FileNotFoundError:
                initial = b""
        store = partial(storage.put_object, storage.bucket, key)
        f: Any = _BytesUpload(initial) if binary else _TextUpload(initial.decode("utf-8"))
        if "a" in mode:
            f.seek(0, io.SEEK_END)
        f._store = store
        return f
    raise ValueError(f"mode {mode!r} is not supported on cloud files: use r, rb, w, wb, a or ab")


class _CloudPath:
    """``os.path`` with ``exists``/``isfile``/``isdir`` answered from the bucket's keys."""

    def __init__(self, storage: Optional[Storage]) -> None:
        self._given = storage

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_os.path, name)

    def _keys(self, prefix: str) -> List[str]:
        storage = self._given or _default_storage()
        return storage.list_keys(storage.bucket, prefix)

    def isfile(self, path: str) -> bool:
        return _key(path) in self._keys(_key(path))

    def isdir(self, path: str) -> bool:
        return bool(self._keys(_dir_prefix(path))) or _key(path) == ""

    def exists(self, path: str) -> bool:
        return self.isfile(path) or self.isdir(path)


class CloudFileProxy:
    """An ``os`` whose ``listdir``/``walk``/``remove``/``mkdir``/``makedirs`` and ``path``
    work on a storage bucket; other attributes are the real ``os``'s."""

    def __init__(self, cloud_storage: Optional[Storage] = None) -> None:
        self._given = cloud_storage
        self.path = _CloudPath(cloud_storage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # pickling and copying look these up: not the real os's
            raise AttributeError(name)
        return getattr(_os, name)

    @property
    def _storage(self) -> Storage:
        return self._given or _default_storage()

    def open(self, filename: str, mode: str = "r") -> Any:
        return cloud_open(filename, mode, self._storage)

    def _entries(self, path: str) -> Tuple[List[str], List[str]]:
        prefix = _dir_prefix(path)
        dirs, files = set(), set()
        for key in self._storage.list_keys(self._storage.bucket, prefix):
            rest = key[len(prefix):]
            head, sep, _tail = rest.partition("/")
            (dirs if sep else files).add(head)
        return sorted(dirs), sorted(files)

    def listdir(self, path: str = "") -> List[str]:
        dirs, files = self._entries(path)
        return sorted(set(dirs) | set(files))

    def walk(self, top: str, topdown: bool = True, onerror: Any = None,
             followlinks: bool = False) -> Iterator[Tuple[str, List[str], List[str]]]:
        dirs, files = self._entries(top)
        if topdown:
            yield top, dirs, files
        for name in dirs:
            yield from self.walk(_os.path.join(top, name), topdown, onerror, followlinks)
        if not topdown:
            yield top, dirs, files

    def remove(self, path: str) -> None:
        """Delete the object ``path`` (absent objects are fine, as directories are keys)."""
        self._storage.delete_object(self._storage.bucket, _key(path))

    def mkdir(self, *args: Any, **kwargs: Any) -> None:
        """Directories exist through the keys under them: nothing to do."""

    makedirs = mkdir


open = cloud_open  # noqa: A001  (Lithops' names)
os = CloudFileProxy()
