"""Redirect cloud storage and cloud backends to this machine (the engine of ``cloudpool.testing``).

This module owns the *mechanism* of the local cloud; ``cloudpool.testing`` owns its
public face. While a redirection is installed:

- every bucket of ``s3://``, ``gs://``, ``az://`` and ``cos://`` is a directory under one
  local root (``<root>/<scheme>/<bucket>/<key>``), served by ``FakeBucketStorage``, a
  ``LocalStorage`` whose URLs keep their cloud form (``s3://bucket/key``), so listings,
  ``ObjectPart.url`` and error messages read as they would in the cloud;
- every compute backend except ``local`` (``aws_lambda``, ``kubernetes``, ``knative``
  and third-party ones) is a ``StandInBackend``: the local backend's worker processes,
  at most ``max_workers`` of them, accepting (and ignoring) the cloud backend's options.

Both are swapped into the storage and compute registries, so every path that resolves
a URL or a backend name -- the executor, ``objects()``, ``Storage``, the worker -- is
redirected without a code change, and the SDKs are never imported. The redirection is
described in an environment variable as well, so a process *started* (not forked)
inside it -- a ``spawn`` worker, a subprocess -- redirects the same way on import
(``cloudpool.storage`` calls ``activate_from_environment``). Forked workers inherit the
swapped registries directly.

Redirections nest (a stack); ``uninstall`` restores exactly what ``install`` replaced.
"""
from __future__ import annotations

import importlib
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, FrozenSet, List, Optional, Tuple

__all__ = ["Redirection", "CLOUD_SCHEMES", "ENV_VAR", "install", "uninstall", "active",
           "activate_from_environment"]

#: The URL schemes whose buckets become local directories.
CLOUD_SCHEMES: Tuple[str, ...] = ("s3", "gs", "az", "cos")
#: Names the active redirection for processes started inside it. Deliberately not
#: ``CLOUDPOOL_*``: ``cloudpool.config`` reads those as settings.
ENV_VAR = "_CLOUDPOOL_LOCAL_CLOUD"

_FAKE_STORAGE_PREFIX = "FakeBucket_"
_STAND_IN_PREFIX = "StandIn_"


@dataclass(frozen=True)
class Redirection:
    """One installed local cloud."""

    #: Directory holding ``<scheme>/<bucket>/<key>`` for every fake bucket.
    root: str
    #: ``"scheme://bucket"`` names that exist, or None when every bucket exists.
    buckets: Optional[FrozenSet[str]]
    #: Most worker processes a stand-in backend starts.
    max_workers: int
    #: How stand-in backends start their workers (None: the local backend's default).
    start_method: Optional[str] = None

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "max_workers": self.max_workers,
                           "start_method": self.start_method,
                           "buckets": None if self.buckets is None else sorted(self.buckets)})

    @classmethod
    def from_json(cls, text: str) -> "Redirection":
        data = json.loads(text)
        buckets = data.get("buckets")
        return cls(root=data["root"], max_workers=int(data["max_workers"]),
                   start_method=data.get("start_method"),
                   buckets=None if buckets is None else frozenset(buckets))


@dataclass
class _Installed:
    redirection: Redirection
    # (registry, name, its "module:Class" entry, its loaded class) as they were before.
    saved: List[Tuple[Any, str, Optional[Tuple[str, Optional[str]]], Optional[type]]]
    saved_env: Optional[str]
    set_env: bool


_lock = threading.RLock()
_stack: List[_Installed] = []


def active() -> Optional[Redirection]:
    """The redirection in force in this process, or None."""
    return _stack[-1].redirection if _stack else None


def _registries():
    from .compute import backends
    from .storage import storages

    return storages, backends


def install(redirection: Redirection, *, set_env: bool = True) -> None:
    """Swap the fake storages and the stand-in backends into the registries."""
    storages, backends = _registries()
    from .storage import clear_cache

    with _lock:
        saved = []
        # Registry internals are read (never re-implemented) so that uninstall can put
        # back exactly what was there: a lazy "module:Class" entry and/or a loaded class.
        targets = [(storages, scheme, f"{_FAKE_STORAGE_PREFIX}{scheme}") for scheme in CLOUD_SCHEMES]
        targets += [(backends, name, f"{_STAND_IN_PREFIX}{name}") for name in backends.names()
                    if name != "local"]
        for registry, name, attr in targets:
            saved.append((registry, name, registry._known.get(name), registry._loaded.get(name)))
            # A "module:Class" path, resolved on first use: this may run while
            # cloudpool.storage is still being imported (activate_from_environment), when
            # the stand-in's base class cannot be imported yet.
            # The stand-in accepts the real implementation's options, so the configuration
            # checks them against the same declaration (Registry.declared).
            registry.register(name, f"{__name__}:{attr}", replace=True,
                              declared=registry._declared.get(name))
        saved_env = os.environ.get(ENV_VAR)
        if set_env:
            os.environ[ENV_VAR] = redirection.to_json()
        _stack.append(_Installed(redirection, saved, saved_env, set_env))
        clear_cache()  # SDK-backed instances cached before must not serve redirected URLs


def uninstall(redirection: Redirection) -> None:
    """Undo the ``install`` of ``redirection`` (which must be the innermost one)."""
    from .storage import clear_cache

    with _lock:
        if not _stack or _stack[-1].redirection is not redirection:
            raise RuntimeError("local clouds must be exited in the reverse order of entering them")
        entry = _stack.pop()
        for registry, name, known, loaded in reversed(entry.saved):
            if known is None:
                registry._known.pop(name, None)
            else:
                registry._known[name] = known
            if loaded is None:
                registry._loaded.pop(name, None)
            else:
                registry._loaded[name] = loaded
        if entry.set_env:
            if entry.saved_env is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = entry.saved_env
        clear_cache()


def activate_from_environment() -> None:
    """Install the redirection named by ``ENV_VAR`` (a process started inside a local cloud)."""
    text = os.environ.get(ENV_VAR)
    if not text:
        return
    with _lock:
        if any(entry.redirection.to_json() == text for entry in _stack):
            return
        try:
            redirection = Redirection.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"the environment variable {ENV_VAR} is malformed ({exc}); "
                               f"it is set by cloudpool.testing.local_cloud() and should not "
                               f"be set by hand") from None
        install(redirection, set_env=False)


def _require_active() -> Redirection:
    red = active()
    if red is None:
        raise RuntimeError("no local cloud is active in this process: this object was made "
                           "inside cloudpool.testing.local_cloud() and used after it ended")
    return red


# ---------------------------------------------------------------------------- options
_real_classes: Dict[Tuple[int, str], Optional[type]] = {}


def _real_class(registry: Any, name: str) -> Optional[type]:
    """The class the registry held for ``name`` before redirection, if it imports."""
    key = (id(registry), name)
    if key in _real_classes:
        return _real_classes[key]
    found: Optional[type] = None
    with _lock:
        entries = [item for entry in _stack for item in entry.saved
                   if item[0] is registry and item[1] == name]
    if entries:
        _reg, _name, known, loaded = entries[0]  # the outermost: the real one
        if loaded is not None:
            found = loaded
        elif known is not None:
            module_name, _, attr = known[0].partition(":")
            try:
                found = getattr(importlib.import_module(module_name), attr)
            except ImportError:
                found = None  # its SDK is not installed: options cannot be checked
    _real_classes[key] = found
    return found


def _check_options(registry: Any, name: str, kind: str, options: Dict[str, Any]) -> None:
    """Reject option names the real implementation would reject (typos fail in tests too)."""
    if not options:
        return
    real = _real_class(registry, name)
    if real is None:
        return
    unknown = set(options) - set(real.option_names)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {kind} {name!r}; "
                         f"accepted: {sorted(real.option_names) or 'none'}")


# ---------------------------------------------------------------------------- fake storage
class _EveryName(frozenset):
    """Contains every name: in a local cloud no storage option is written into a payload."""

    def __contains__(self, item: object) -> bool:
        return True


def _fake_storage_class(scheme: str) -> type:
    from .storage import storages
    from .storage.local import LocalStorage

    class FakeBucketStorage(LocalStorage):
        """One bucket of the local cloud: a directory, with the cloud's URLs."""

        secret_option_names: ClassVar[FrozenSet[str]] = _EveryName()
        remote = False

        def __init__(self, bucket: str, **options: Any) -> None:
            # LocalStorage's own option check is replaced by the real backend's: the
            # options of the cloud store (endpoint, region, keys) are accepted and unused.
            _check_options(storages, self.scheme, f"{self.scheme}:// storage", options)
            red = _require_active()
            if bucket in ("", ".", "..") or "/" in bucket or "\x00" in bucket:
                raise ValueError(f"invalid bucket name {bucket!r} in a {self.scheme}:// URL")
            self.bucket = bucket
            self.options = {}
            self._root = os.path.join(red.root, self.scheme, bucket)
            self._exists = red.buckets is None or f"{self.scheme}://{bucket}" in red.buckets

        def url(self, key: str = "") -> str:
            return f"{self.scheme}://{self.bucket}/{key}"

        def _no_bucket(self, key: str) -> FileNotFoundError:
            red = active()
            have = ", ".join(sorted(red.buckets)) if red is not None and red.buckets else "none"
            return FileNotFoundError(
                f"{self.url(key)}: bucket {self.bucket!r} does not exist in the local cloud "
                f"(its buckets: {have}); add it to local_cloud(buckets=[...]) or fix the URL")

        def _path(self, key: str) -> str:
            if not self._exists:
                raise self._no_bucket(key)
            if any(segment in (".", "..") for segment in key.split("/")):
                # The filesystem would resolve these and leave the bucket's directory.
                raise ValueError(f"{self.url(key)}: keys with '.' or '..' segments cannot be "
                                 f"stored in the local cloud")
            return super()._path(key)

        def put(self, key: str, data: Any) -> None:
            if key.endswith("/"):
                raise ValueError(f"{self.url(key)}: keys ending in '/' (folder markers) cannot "
                                 f"be stored in the local cloud")
            super().put(key, data)

        def check(self) -> None:
            if not self._exists:
                raise self._no_bucket("")

        def local_path(self, key: str) -> str:
            """Where the object ``key`` lives on this machine."""
            return self._path(key)

    FakeBucketStorage.scheme = scheme
    FakeBucketStorage.__name__ = FakeBucketStorage.__qualname__ = f"{_FAKE_STORAGE_PREFIX}{scheme}"
    return FakeBucketStorage


# ---------------------------------------------------------------------------- stand-in backend
def _stand_in_class(name: str) -> type:
    from .compute import backends
    from .compute.local import LocalBackend

    class StandInBackend(LocalBackend):
        """The local backend, answering to a cloud backend's name inside a local cloud."""

        stands_in_for: ClassVar[str] = ""
        # The cloud backend's own options are checked against the real class in
        # __init__; 'runtime' is listed so the executor hands the setting over.
        option_names = LocalBackend.option_names | {"runtime"}

        def __init__(self, options: Dict[str, Any], *, max_workers: Optional[int],
                     storage_url: str, storage_options: Dict[str, Any]) -> None:
            _check_options(backends, self.stands_in_for, "compute backend", options)
            red = _require_active()
            # The cloud backend's options (memory, region, image...) mean nothing here.
            local_options = {k: v for k, v in options.items() if k in LocalBackend.option_names}
            start_method = red.start_method
            if start_method is None:
                # local_cloud() without a start method means the local backend's: the one
                # configured for it (local: {start_method: ...}), else its platform default.
                from .config import load_config

                start_method = load_config().section("local").get("start_method")
            if start_method is not None and "mp_context" not in local_options:
                local_options.setdefault("start_method", start_method)
            # A cloud backend's max_workers (hundreds) would fork that many processes.
            workers = min(max_workers or red.max_workers, red.max_workers)
            super().__init__(local_options, max_workers=workers, storage_url=storage_url,
                             storage_options=storage_options)

        def describe(self) -> Dict[str, Any]:
            info = super().describe()
            info["stands_in_for"] = self.stands_in_for
            info["local_cloud"] = _require_active().root
            return info

    StandInBackend.stands_in_for = name
    StandInBackend.__name__ = StandInBackend.__qualname__ = f"{_STAND_IN_PREFIX}{name}"
    return StandInBackend


_made: Dict[str, type] = {}


def __getattr__(attr: str) -> type:
    """Registry entries point at ``cloudpool._redirect:FakeBucket_s3`` etc.; built on demand."""
    with _lock:
        cls = _made.get(attr)
        if cls is None:
            if attr.startswith(_FAKE_STORAGE_PREFIX):
                cls = _fake_storage_class(attr[len(_FAKE_STORAGE_PREFIX):])
            elif attr.startswith(_STAND_IN_PREFIX):
                cls = _stand_in_class(attr[len(_STAND_IN_PREFIX):])
            else:
                raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
            _made[attr] = cls
        return cls
