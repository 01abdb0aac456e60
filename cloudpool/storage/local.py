"""Local-disk storage: a directory tree standing in for a bucket.

Keys are paths relative to the filesystem root (``file:///tmp/x`` is key ``tmp/x``), so
the same ``file://`` URL means the same object in the client and in local workers.
Writes go to a temporary sibling and are renamed into place, so a reader (or a poll)
never sees half an object -- the property S3 gives for free.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import threading
from typing import Iterable, Iterator, Optional, Union

from .base import Bytes, CommonPrefix, ObjectInfo, StorageBackend, check_delimiter, fold_level

_TMP_MARK = ".cloudpool-tmp-"


class LocalStorage(StorageBackend):
    scheme = "file"
    remote = False

    def __init__(self, bucket: str = "", **options) -> None:
        super().__init__(bucket, **options)
        # The "bucket" of local storage is always the filesystem root.
        self._root = "/"

    def url(self, key: str = "") -> str:
        return "file:///" + key

    def _path(self, key: str) -> str:
        if "\x00" in key:
            raise ValueError(f"invalid object key {key!r}: contains a NUL byte")
        return os.path.join(self._root, key.lstrip("/"))

    def put(self, key: str, data: Bytes) -> None:
        path = self._path(key)
        tmp = f"{path}{_TMP_MARK}{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def put_file(self, key: str, fileobj) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}{_TMP_MARK}{secrets.token_hex(4)}"
        with open(tmp, "wb") as out:
            while True:
                block = fileobj.read(8 * 1024 * 1024)
                if not block:
                    break
                out.write(block)
        os.replace(tmp, path)

    def get(self, key: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if start:
                    f.seek(start)
                if end is None:
                    return f.read()
                return f.read(max(0, end - (start or 0)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(key)}: no such object") from None
        except IsADirectoryError:
            raise FileNotFoundError(f"{self.url(key)}: no such object (it is a directory)") from None

    def head(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url(key)}: no such object") from None
        if not os.path.isfile(self._path(key)):
            raise FileNotFoundError(f"{self.url(key)}: no such object (it is a directory)")
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def list(self, prefix: str = "", start_after: Optional[str] = None) -> Iterator[ObjectInfo]:
        prefix = prefix.lstrip("/")
        # Walk only the deepest directory the prefix names completely.
        top_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found = []
        for dirpath, dirnames, filenames in os.walk(self._path(top_rel)):
            # Directories being deleted in the background are not part of the store.
            dirnames[:] = [d for d in dirnames if _TMP_MARK not in d]
            rel_dir = os.path.relpath(dirpath, self._root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            for name in filenames:
                if _TMP_MARK in name:
                    continue
                key = rel_dir + name
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    found.append((key, os.path.join(dirpath, name)))
        found.sort()
        for key, path in found:
            try:
                st = os.stat(path)
            except FileNotFoundError:  # deleted between the walk and now
                continue
            yield ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime)

    def list_level(self, prefix: str = "", delimiter: str = "/"
                   ) -> Iterator[Union[ObjectInfo, CommonPrefix]]:
        if check_delimiter(delimiter) != "/":
            return fold_level(self.list(prefix), prefix, delimiter)
        # One directory read instead of a walk of the whole tree below it.
        prefix = prefix.lstrip("/")
        rel_dir, _, start = prefix.rpartition("/")
        rel_dir = rel_dir + "/" if rel_dir else ""
        entries: list = []
        try:
            scan = list(os.scandir(self._path(rel_dir)))
        except (FileNotFoundError, NotADirectoryError):
            return iter(())
        for entry in scan:
            if not entry.name.startswith(start) or _TMP_MARK in entry.name:
                continue
            key = rel_dir + entry.name
            try:
                if entry.is_dir():
                    # As on an object store, a folder exists only while it holds an object.
                    if _holds_a_file(entry.path):
                        entries.append(CommonPrefix(key + "/"))
                elif entry.is_file():
                    st = entry.stat()
                    entries.append(ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime))
            except FileNotFoundError:  # removed while we looked
                continue
        entries.sort(key=lambda e: e.key if isinstance(e, ObjectInfo) else e.prefix)
        return iter(entries)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                continue

    def check(self) -> None:
        return None

    def delete_prefix(self, prefix: str) -> int:
        # A prefix that names a directory is renamed away at once (so it is gone for every
        # reader) and the files are unlinked in the background: removing a job's few
        # files and folders costs milliseconds of disk metadata work that nobody waits for.
        path = self._path(prefix)
        if prefix.endswith("/") and os.path.isdir(path):
            count = sum(len(files) for _d, _s, files in os.walk(path))
            trash = f"{path.rstrip('/')}{_TMP_MARK}trash-{secrets.token_hex(4)}"
            os.rename(path, trash)
            _remove_in_background(trash)
            return count
        return super().delete_prefix(prefix)


def _holds_a_file(path: str) -> bool:
    for _dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if _TMP_MARK not in d]
        if any(_TMP_MARK not in name for name in filenames):
            return True
    return False


_removers: list = []
_removers_lock = threading.Lock()


def _remove_in_background(path: str) -> None:
    thread = threading.Thread(target=shutil.rmtree, args=(path, True), name="cloudpool-rmtree", daemon=True)
    with _removers_lock:
        _removers[:] = [t for t in _removers if t.is_alive()]
        _removers.append(thread)
    thread.start()


@atexit.register
def _finish_removals() -> None:
    with _removers_lock:
        pending = list(_removers)
    for thread in pending:
        thread.join()
