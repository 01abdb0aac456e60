"""``cloudpool.testing``: run code written for the cloud on this machine, in unit tests.

Code written for a cloud backend and cloud buckets -- ``CloudPoolExecutor(backend=
"aws_lambda", storage="s3://my-bucket/jobs/")``, ``objects("s3://my-bucket/data/")``,
``Storage("gs://...")``, ``cloudpool.multiprocessing.Pool(backend="kubernetes")`` -- runs
unchanged inside a *local cloud*: calls run on local worker processes and every bucket
of ``s3://``, ``gs://``, ``az://`` and ``cos://`` is a directory under one temporary
directory. No credentials, no network, no cloud SDK call. Three ways in::

    from cloudpool.testing import LocalCloudMixin, local_cloud

    class WordCountTest(LocalCloudMixin, unittest.TestCase):   # one local cloud per test
        def test_counts(self):
            self.cloud.put("s3://corpus/texts/a.txt", "to be or not to be\\n")
            ...

    with local_cloud() as cloud:                               # a block
        cloud.put("s3://corpus/texts/a.txt", b"...")

    @local_cloud                                               # a function (or test method)
    def test_it():
        cloudpool.testing.put("s3://corpus/texts/a.txt", b"...")

``put``, ``get``, ``list`` and ``put_tree`` pre-load and inspect the fake buckets (as
methods of the cloud object, or as module functions acting on the innermost active
one). Everything is undone on exit: the registries, the environment variable that
carries the redirection to processes started inside it, and the temporary directory.

What differs from the cloud: workers are local processes (at most ``max_workers``,
default the CPU count, whatever the executor asks for), so they share this machine's
files, environment and installed packages; options of the cloud backend and storage
are checked by name (when their SDK is installed) and otherwise ignored; code that
calls a cloud SDK directly (``boto3.client("s3")``) is not redirected; ``http(s)://``
URLs are not redirected; an executor or ``Storage`` that already reached its storage
before the cloud was entered keeps using the real one. The mechanism lives in
``cloudpool._redirect``.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import unittest
from typing import Any, Callable, Iterable, List, Optional, TypeVar, Union

from . import _redirect
from .storage import split_url, storage_for

# ``list`` is left out: ``from cloudpool.testing import *`` must not shadow the builtin.
__all__ = ["local_cloud", "LocalCloud", "LocalCloudMixin", "LocalCloudTestCase", "current",
           "put", "get", "put_tree", "path", "CLOUD_SCHEMES"]

CLOUD_SCHEMES = _redirect.CLOUD_SCHEMES

F = TypeVar("F", bound=Callable[..., Any])
Data = Union[bytes, bytearray, memoryview, str]


class LocalCloud(contextlib.ContextDecorator):
    """A local cloud: a context manager, and a decorator that runs a function inside one.

    ``buckets`` (e.g. ``["s3://corpus", "gs://out"]``) makes only these buckets exist, so
    that code naming another bucket fails with ``FileNotFoundError`` as in the cloud; by
    default every bucket exists. ``max_workers`` caps the worker processes a cloud
    backend gets (default: the CPU count); ``start_method`` is how they start
    (``"fork"``, ``"spawn"``, ``"forkserver"``; default: the local backend's, fork on Linux).
    """

    def __init__(self, *, buckets: Optional[Iterable[str]] = None,
                 max_workers: Optional[int] = None, start_method: Optional[str] = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers < 1):
            raise ValueError(f"max_workers must be an integer >= 1 or None, not {max_workers!r}")
        self._buckets = None if buckets is None else frozenset(_bucket_name(b) for b in buckets)
        self._max_workers = max_workers or os.cpu_count() or 1
        if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start_method {start_method!r} is not available here; use one of "
                             f"{multiprocessing.get_all_start_methods()}")
        self._start_method = start_method
        self._redirection: Optional[_redirect.Redirection] = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LocalCloud":
        if self._redirection is not None:
            raise RuntimeError("this local cloud is already active; create a new one with local_cloud()")
        root = tempfile.mkdtemp(prefix="cloudpool-local-cloud-")
        for name in sorted(self._buckets or ()):
            scheme, bucket, _key = split_url(name)
            os.makedirs(os.path.join(root, scheme, bucket), exist_ok=True)
        self._redirection = _redirect.Redirection(root=root, buckets=self._buckets,
                                                  max_workers=self._max_workers,
                                                  start_method=self._start_method)
        try:
            _redirect.install(self._redirection)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            self._redirection = None
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        redirection, self._redirection = self._redirection, None
        if redirection is None:
            return
        try:
            _redirect.uninstall(redirection)
        finally:
            # Objects deleted through LocalStorage are removed by background threads;
            # whatever they have not removed yet goes with the whole tree.
            shutil.rmtree(redirection.root, ignore_errors=True)

    def _recreate_cm(self) -> "LocalCloud":
        # Each call of a decorated function gets a fresh cloud (and may recurse).
        return LocalCloud(buckets=self._buckets, max_workers=self._max_workers,
                          start_method=self._start_method)

    @property
    def root(self) -> str:
        """The temporary directory holding ``<scheme>/<bucket>/<key>``."""
        return self._require().root

    def _require(self) -> _redirect.Redirection:
        if self._redirection is None:
            raise RuntimeError("this local cloud is not active: use it inside `with local_cloud() as cloud:`")
        return self._redirection

    # ------------------------------------------------------------------ helpers
    def put(self, url: str, data: Data) -> str:
        """Store ``data`` (bytes, or str as UTF-8) at the cloud URL ``url``; returns ``url``."""
        self._require()
        return put(url, data)

    def get(self, url: str) -> bytes:
        """The bytes at ``url``; ``FileNotFoundError`` if absent."""
        self._require()
        return get(url)

    def list(self, prefix: Optional[str] = None) -> List[str]:
        """Sorted URLs of the objects under ``prefix`` (every fake bucket when None)."""
        self._require()
        return list(prefix)

    def put_tree(self, directory: str, prefix: str) -> List[str]:
        """Upload every file under ``directory`` below the URL ``prefix``; returns their URLs."""
        self._require()
        return put_tree(directory, prefix)

    def path(self, url: str) -> str:
        """The local file that holds the object ``url`` (it may not exist yet)."""
        self._require()
        return path(url)

    def __repr__(self) -> str:
        where = self._redirection.root if self._redirection is not None else "inactive"
        return f"<LocalCloud {where}>"


def local_cloud(func: Optional[F] = None, /, *, buckets: Optional[Iterable[str]] = None,
                max_workers: Optional[int] = None, start_method: Optional[str] = None) -> Any:
    """A ``LocalCloud``: ``with local_cloud() as cloud:``, ``@local_cloud`` or ``@local_cloud(...)``."""
    cloud = LocalCloud(buckets=buckets, max_workers=max_workers, start_method=start_method)
    if func is not None:
        if not callable(func):
            raise TypeError(f"local_cloud() takes keyword arguments only, or decorates a function; "
                            f"got {type(func).__name__}")
        return cloud(func)
    return cloud


class LocalCloudMixin:
    """A ``unittest.TestCase`` mixin: every test runs in a fresh local cloud, ``self.cloud``.

    Put it before ``unittest.TestCase`` in the bases. Class attributes
    ``local_cloud_buckets``, ``local_cloud_max_workers`` and ``local_cloud_start_method``
    configure the cloud. The
    cloud is entered before the test's own ``setUp`` body runs (when that calls
    ``super().setUp()`` first) and left after every cleanup it registered.
    """

    local_cloud_buckets: Optional[Iterable[str]] = None
    local_cloud_max_workers: Optional[int] = None
    local_cloud_start_method: Optional[str] = None
    cloud: LocalCloud

    def setUp(self) -> None:
        cloud = LocalCloud(buckets=self.local_cloud_buckets, max_workers=self.local_cloud_max_workers,
                           start_method=self.local_cloud_start_method)
        self.cloud = self.enterContext(cloud)  # type: ignore[attr-defined]  (unittest.TestCase, 3.11+)
        super().setUp()  # type: ignore[misc]


class LocalCloudTestCase(LocalCloudMixin, unittest.TestCase):
    """``unittest.TestCase`` with ``LocalCloudMixin`` already mixed in."""


# ---------------------------------------------------------------------------- module helpers
def current() -> _redirect.Redirection:
    """The innermost active local cloud's settings; ``RuntimeError`` when there is none."""
    red = _redirect.active()
    if red is None:
        raise RuntimeError("no local cloud is active: use cloudpool.testing inside "
                           "`with local_cloud():`, a @local_cloud function or a LocalCloudMixin test")
    return red


def _bucket_name(name: str) -> str:
    scheme, bucket, key = split_url(name)
    if scheme not in CLOUD_SCHEMES or key.strip("/"):
        raise ValueError(f"a local-cloud bucket is written scheme://bucket with scheme one of "
                         f"{', '.join(CLOUD_SCHEMES)}, not {name!r}")
    return f"{scheme}://{bucket}"


def _fake(url: str, what: str):
    current()
    if not isinstance(url, str):
        raise TypeError(f"{what}() takes a URL string, not {type(url).__name__}")
    scheme = split_url(url)[0]
    if scheme not in CLOUD_SCHEMES:
        raise ValueError(f"{what}({url!r}): the local cloud holds {', '.join(s + '://' for s in CLOUD_SCHEMES)} "
                         f"URLs only; write e.g. s3://bucket/key")
    return storage_for(url)


def put(url: str, data: Data) -> str:
    """Store ``data`` at ``url`` in the active local cloud; returns ``url``."""
    backend, key = _fake(url, "put")
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"put() data must be bytes-like or str, not {type(data).__name__}")
    if not key or key.endswith("/"):
        raise ValueError(f"put({url!r}): name an object, e.g. {url.rstrip('/')}/name.txt")
    backend.put(key, data)
    return url


def get(url: str) -> bytes:
    """The bytes stored at ``url`` in the active local cloud."""
    backend, key = _fake(url, "get")
    return backend.get(key)


def list(prefix: Optional[str] = None) -> List[str]:  # noqa: A001  (the name users expect)
    """Sorted URLs under ``prefix`` (a plain string prefix), or in every bucket when None."""
    if prefix is not None:
        backend, key = _fake(prefix, "list")
        return [backend.url(info.key) for info in backend.list(key)]
    root = current().root
    urls: List[str] = []
    for scheme in CLOUD_SCHEMES:
        scheme_dir = os.path.join(root, scheme)
        if not os.path.isdir(scheme_dir):
            continue
        for bucket in sorted(os.listdir(scheme_dir)):
            backend, _key = storage_for(f"{scheme}://{bucket}/")
            urls.extend(backend.url(info.key) for info in backend.list(""))
    return urls


def put_tree(directory: str, prefix: str) -> List[str]:
    """Upload the files under ``directory`` to ``prefix`` + their relative path; returns the URLs."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"put_tree(): {directory!r} is not a directory")
    base = prefix if prefix.endswith("/") else prefix + "/"
    urls: List[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            local = os.path.join(dirpath, name)
            rel = os.path.relpath(local, directory).replace(os.sep, "/")
            with open(local, "rb") as f:
                urls.append(put(base + rel, f.read()))
    return urls


def path(url: str) -> str:
    """The local file holding the object ``url`` in the active local cloud."""
    backend, key = _fake(url, "path")
    return backend.local_path(key)

