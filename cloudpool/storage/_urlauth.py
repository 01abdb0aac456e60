"""Credentials written into a storage URL (``scheme://user:password@host:port/...``).

Such a URL must not travel: ``url()``, parts and events carry ``scheme://host:port/...``
only. What the URL held is remembered here per ``(scheme, host:port)`` for this process,
and exported to the environment under an underscored name (``CLOUDPOOL_*`` variables
are settings) so that local worker processes, forked or spawned, find it too. Workers on
other machines need the credential in their own environment, as for any other store.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Dict, Optional, Tuple
from urllib.parse import quote, unquote

_remembered: Dict[Tuple[str, str], Tuple[Optional[str], Optional[str]]] = {}
_lock = threading.Lock()


def variable(scheme: str, hostport: str) -> str:
    """The environment variable holding the credentials for one endpoint."""
    return f"_CLOUDPOOL_{scheme.upper()}_AUTH_" + re.sub(r"[^A-Za-z0-9]", "_", hostport)


def split(scheme: str, netloc: str) -> str:
    """``netloc`` without its ``user:password@``, which is remembered; returns host:port."""
    userinfo, _, hostport = netloc.rpartition("@")
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if not has_password:  # scheme://secret@host, as redis-cli -u accepts
            user, password = "", user
        remember(scheme, hostport, unquote(user) or None, unquote(password))
    return hostport


def remember(scheme: str, hostport: str, user: Optional[str], password: Optional[str]) -> None:
    with _lock:
        _remembered[(scheme, hostport)] = (user, password)
    os.environ[variable(scheme, hostport)] = f"{quote(user or '', safe='')}:{quote(password or '', safe='')}"


def lookup(scheme: str, hostport: str) -> Optional[Tuple[Optional[str], Optional[str]]]:
    """``(user, password)`` from a URL seen by this process or its parent, else None."""
    with _lock:
        found = _remembered.get((scheme, hostport))
    if found:
        return found
    exported = os.environ.get(variable(scheme, hostport))
    if exported:
        user, _, password = exported.partition(":")
        return unquote(user) or None, unquote(password) or None
    return None


def forget_all() -> None:
    """Tests: drop what this process remembers (the environment is the caller's to patch)."""
    with _lock:
        _remembered.clear()
