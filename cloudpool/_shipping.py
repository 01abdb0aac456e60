"""The user's own modules, shipped to remote workers as a zip of their source files.

A remote worker (a Lambda, a pod, an HTTP runtime on another host) has the runtime's
installed packages but not the user's own files: ``tasks.py`` next to the script, a
package in the project's source tree. cloudpickle pickles functions and classes of
importable modules *by reference* (module name + attribute), which would fail there
with ``ModuleNotFoundError``.

So for remote backends the client zips the source of every loaded module that is the
user's own -- not part of Python, not in site-packages, not cloudpool itself -- into
one bundle, stored once per content under the executor's prefix; every invocation
event names it, and the worker appends it to ``sys.path`` (zipimport) before it
unpickles anything -- appended, so it supplies only what the runtime itself lacks.
Only source files travel: a module that reads data files next to its ``__file__`` must
find them some other way on a remote worker. The modules are then real modules on the worker: an initializer that sets a
module global and the function that reads it share that module, exactly as with
``ProcessPoolExecutor``. (Pickling such modules *by value* instead gives every pickle
its own copy of the module's globals, and drags whatever the globals hold into the
pickle.) Third-party packages are not shipped: a missing one gives the worker's
"install it on the runtime" error naming it. A package installed in editable mode lives
in a source tree and is shipped like the user's code. Compiled extension modules are
not shipped (they would not load on another platform anyway). The user's main script
travels too, as its own object beside the bundle: ``cloudpool._mainscript`` owns it
(its functions and classes go by name, and the worker imports it as ``__mp_main__``).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import site
import sys
import sysconfig
import tempfile
import threading
import zipfile
from typing import Any, Dict, List, Optional, Tuple

LOGGER = logging.getLogger("cloudpool")

_install_dirs: Optional[Tuple[str, ...]] = None
_installed: Dict[str, str] = {}  # on the worker: bundle checksum -> path put on sys.path
_install_lock = threading.Lock()
#: Stable timestamps in the zip, so the same sources give the same bundle and key.
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _installed_locations() -> Tuple[str, ...]:
    """Directories of Python's own library and of site-packages."""
    global _install_dirs
    if _install_dirs is None:
        dirs = set()
        paths = sysconfig.get_paths()
        for name in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(name):
                dirs.add(os.path.realpath(paths[name]))
        try:
            dirs.update(os.path.realpath(p) for p in site.getsitepackages())
        except AttributeError:  # old virtualenvs have no getsitepackages
            pass
        user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
        if isinstance(user_site, str):
            dirs.add(os.path.realpath(user_site))
        _install_dirs = tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs))
    return _install_dirs


def _archive_name(module_name: str, module_file: str) -> Optional[str]:
    """Where ``module_file`` goes in the bundle so that ``import module_name`` finds it.

    None when the file does not sit where its name says (a module loaded from a path
    under another name): such a module cannot be imported by name anywhere.
    """
    parts = module_name.split(".")
    base = os.path.basename(module_file)
    if base == "__init__.py":
        relative = os.path.join(*parts, "__init__.py")
    else:
        relative = os.path.join(*parts) + ".py"
    if not module_file.endswith(os.sep + relative):
        return None
    return relative.replace(os.sep, "/")


def users_modules() -> Dict[str, str]:
    """Loaded modules of the user's own: archive name -> source file."""
    install_dirs = _installed_locations()
    found: Dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) if module is not None else None
        if not path or name == "__main__" or not path.endswith(".py"):
            continue
        if name.partition(".")[0] in ("cloudpool", "cloudpickle"):
            continue
        real = os.path.realpath(path)
        if any(real.startswith(d) for d in install_dirs):
            continue
        arcname = _archive_name(name, os.path.abspath(path))
        if arcname is not None:
            found[arcname] = path
            # A submodule needs its packages' __init__ files too (they are loaded, so
            # they are in sys.modules as well, unless they are namespace packages).
    return found


class Bundle:
    """The zipped sources and their content address (``checksum`` names the object)."""

    def __init__(self, data: bytes, checksum: str, names: List[str]) -> None:
        self.data = data
        self.checksum = checksum
        self.names = names


def build_bundle(modules: Dict[str, str]) -> Optional[Bundle]:
    """Zip ``modules`` (archive name -> file) deterministically; None if there are none."""
    if not modules:
        return None
    buf = io.BytesIO()
    names: List[str] = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname in sorted(modules):
            try:
                with open(modules[arcname], "rb") as f:
                    source = f.read()
            except OSError as exc:  # deleted or unreadable since it was imported
                LOGGER.warning("cloudpool: not shipping %s to the workers: %s", modules[arcname], exc)
                continue
            info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, source)
            names.append(arcname)
    if not names:
        return None
    data = buf.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest()[:32], names)


# ---------------------------------------------------------------------------- worker side
_folder: Optional[Tuple[int, str]] = None  # (pid, folder) of this process's bundles


def _bundle_folder() -> str:
    """A temporary folder of this process's own for bundles, removed when it exits.

    zipimport reads the zip file whenever a module is imported, so it must exist as
    long as the process does. One folder per process (not one shared by all): it can be
    removed at exit without pulling a file from under another worker. Removal runs from
    ``atexit`` in a plain process and from multiprocessing's exit finalizers in a
    ``multiprocessing`` child (which leaves through ``os._exit``); a forked child makes a
    folder of its own and never removes its parent's. A SIGKILLed process leaves it.
    """
    global _folder
    if _folder is not None and _folder[0] == os.getpid():
        return _folder[1]
    import atexit
    import multiprocessing.util

    folder = tempfile.mkdtemp(prefix="cloudpool-modules-")
    _folder = (os.getpid(), folder)
    atexit.register(_remove_folder, os.getpid(), folder)
    multiprocessing.util.Finalize(None, _remove_folder, args=(os.getpid(), folder), exitpriority=0)
    return folder


def _remove_folder(pid: int, folder: str) -> None:
    if os.getpid() == pid:  # not in a forked child that inherited the registration
        shutil.rmtree(folder, ignore_errors=True)


def install(get_blob: Any, ref: Dict[str, Any]) -> None:
    """Put the bundle ``ref`` (``{"key", "sum"}``) on ``sys.path``, once per process.

    ``get_blob(key)`` reads it from storage; the checksum is verified before use.
    """
    from . import protocol

    digest = ref["digest"]
    with _install_lock:
        if digest in _installed:
            return
        blob = get_blob(ref["key"])
        protocol.verify(blob, ref.get("sum"), f"the module bundle {ref['key']}")
        path = os.path.join(_bundle_folder(), f"{digest}.zip")
        with open(path, "wb") as f:
            f.write(blob)
        # Last on the path: it only supplies what the runtime lacks. A module the
        # runtime has (built into its image, on its PYTHONPATH) keeps being imported
        # from there, with its data files beside it.
        sys.path.append(path)
        import importlib

        importlib.invalidate_caches()
        _installed[digest] = path
