"""Name -> implementation tables for storages and compute backends.

An entry is a ``"module:Class"`` string imported on first use, so that
``import cloudpool`` never imports a cloud SDK. A missing SDK turns into a
``MissingDependencyError`` that says which extra to install. Third parties add
entries through an entry-point group (``cloudpool.storage`` / ``cloudpool.compute``)
without touching this package. A table may also have a fallback: a function asked for
a class when no entry knows a name (storages use it to serve any scheme fsspec knows).
"""
from __future__ import annotations

import difflib
import importlib
from typing import Dict, FrozenSet, Generic, NamedTuple, Optional, Tuple, Type, TypeVar

from .errors import MissingDependencyError

T = TypeVar("T")


class Declared(NamedTuple):
    """The options an implementation accepts, and the subset that are credentials.

    Built-in implementations keep theirs in an SDK-free module (``storage/declared.py``,
    ``compute/declared.py``) named at registration, so the configuration can check a
    section's options without importing boto3 & co.
    """

    options: FrozenSet[str]
    #: Never written into payloads or pickled parts: workers use their own credentials.
    secrets: FrozenSet[str] = frozenset()


class Registry(Generic[T]):
    """A lazily imported table of implementations of one ABC."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        # name -> (import path "module:Class", extra that provides its SDK or None)
        self._known: Dict[str, Tuple[str, Optional[str]]] = {}
        self._loaded: Dict[str, Type[T]] = {}
        # name -> "module:ATTR" of its ``Declared`` options, importable without the SDK.
        self._declared: Dict[str, str] = {}
        self._entry_points_read = False
        # "module:function" called with an unknown name, returning a class or None.
        self._fallback: Optional[Tuple[str, Optional[str]]] = None

    def set_fallback(self, target: str, extra: Optional[str] = None) -> None:
        """For names no entry knows, ask ``target`` (``"module:function"``, imported on
        first need) for a class; ``extra`` names what to install when its module is missing."""
        self._fallback = (target, extra)

    def _from_fallback(self, name: str) -> Optional[Type[T]]:
        if self._fallback is None:
            return None
        path, _extra = self._fallback
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return None  # the fallback's own package is not installed: the name is unknown
        cls = getattr(module, attr)(name)
        if cls is not None:
            self._loaded[name] = cls
        return cls

    def register(self, name: str, target: "str | Type[T]", extra: Optional[str] = None,
                 *, replace: bool = False, declared: Optional[str] = None) -> None:
        """Add ``name``; ``target`` is a class or a ``"module:Class"`` path imported on use.

        ``declared`` is the ``"module:ATTR"`` path of a ``Declared`` naming the class's
        options, in a module that imports no SDK (without it, the class is imported to
        read its ``option_names``).
        """
        if not replace and (name in self._known or name in self._loaded):
            raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True")
        if declared is not None:
            self._declared[name] = declared
        else:
            self._declared.pop(name, None)
        if isinstance(target, str):
            self._known[name] = (target, extra)
            self._loaded.pop(name, None)
        else:
            self._loaded[name] = target

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        # Imported here: importlib.metadata costs ~20 ms and most runs never need it.
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._known and ep.name not in self._loaded:
                self._known[ep.name] = (ep.value, None)

    def __contains__(self, name: str) -> bool:
        # Built-in and registered names first: reading the entry points (~20 ms at
        # every executor's construction) is only needed for a name not known yet.
        if name in self._known or name in self._loaded:
            return True
        self._read_entry_points()
        return name in self._known or name in self._loaded

    def names(self) -> list:
        self._read_entry_points()
        return sorted(set(self._known) | set(self._loaded))

    def declared(self, name: str) -> Optional[Declared]:
        """The options ``name`` accepts, without importing its SDK when it says how.

        ``None`` when they cannot be known here (a third-party class whose SDK is
        missing): the class then checks its options itself when it is built.
        """
        if name in self._declared:  # (replacing the class without a declaration drops it)
            module_name, _, attr = self._declared[name].partition(":")
            return getattr(importlib.import_module(module_name), attr)
        cls = self._loaded.get(name)
        if cls is None:
            try:
                cls = self.get(name)
            except MissingDependencyError:
                return None
        return Declared(frozenset(cls.option_names),  # type: ignore[attr-defined]
                        frozenset(getattr(cls, "secret_option_names", frozenset())))

    def get(self, name: str) -> Type[T]:
        """Return the class registered as ``name``, importing it if needed."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._known:
            # Scanning installed distributions is slow (tens of ms): only for names we lack.
            self._read_entry_points()
        if name not in self._known:
            found = self._from_fallback(name)
            if found is not None:
                return found
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            more = ""
            if self._fallback is not None and self._fallback[1]:
                more = (f"; and, with cloudpool[{self._fallback[1]}] installed, any scheme "
                        f"{self._fallback[1]} has an implementation for")
            raise ValueError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self.names())}{more}"
            )
        path, extra = self._known[name]
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            how = f"pip install 'cloudpool[{extra}]'" if extra else f"install the package providing {module_name}"
            raise MissingDependencyError(
                f"the {self.kind} {name!r} needs the package {missing!r}, which is not "
                f"installed: {how}"
            ) from exc
        cls = getattr(module, attr)
        self._loaded[name] = cls
        return cls
