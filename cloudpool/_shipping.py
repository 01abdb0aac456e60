"""Which of the client's modules travel with a job to remote workers, by value.

A remote worker (a Lambda, a pod, an HTTP runtime on another host) has the runtime's
installed packages but not the user's own files: ``tasks.py`` next to the script, a
package in the project's source tree. cloudpickle pickles functions and classes of
importable modules *by reference* (module name + attribute), which would fail there
with ``ModuleNotFoundError``. So before pickling a job for a remote backend, every
loaded module that is the user's own -- not part of Python, not in site-packages, not
cloudpool itself -- is registered with
``cloudpickle.register_pickle_by_value``; its functions and classes then travel in the
pickle. Third-party packages stay by reference: a missing one on the runtime gives the
worker's "install it on the runtime" error naming it, rather than shipping a library.

A package installed in editable mode lives in a source tree too, and is shipped like
the user's code: it is as likely to be missing on the runtime. (Telling it apart needs
``importlib.metadata.packages_distributions()``, which costs about a second.)

Registration is process-wide and kept (arguments and results of later calls need the
same treatment), and is done once per module.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
import threading
from typing import List, Optional, Tuple

import cloudpickle

_lock = threading.Lock()
_registered: set = set()
_install_dirs: Optional[Tuple[str, ...]] = None


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
        except AttributeError:  # virtualenvs of old
            pass
        user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
        if isinstance(user_site, str):
            dirs.add(os.path.realpath(user_site))
        _install_dirs = tuple(sorted(d.rstrip(os.sep) + os.sep for d in dirs))
    return _install_dirs


def is_users_own(module_name: str, module_file: Optional[str]) -> bool:
    """True for a module that exists only in the client's files (ship it by value)."""
    if not module_file or module_name == "__main__":
        return False  # builtins, namespace packages; __main__ is by value anyway
    top = module_name.partition(".")[0]
    if top in ("cloudpool", "cloudpickle"):
        return False
    install_dirs = _installed_locations()
    path = os.path.realpath(module_file)
    return not any(path.startswith(d) for d in install_dirs)


def register_users_modules() -> List[str]:
    """Register every loaded module of the user's own by value; returns the new ones."""
    new: List[str] = []
    with _lock:
        for name, module in list(sys.modules.items()):
            if name in _registered or module is None:
                continue
            _registered.add(name)
            if is_users_own(name, getattr(module, "__file__", None)):
                try:
                    cloudpickle.register_pickle_by_value(module)
                except ValueError:
                    continue  # not importable under that name (e.g. removed from sys.modules)
                new.append(name)
    return new
