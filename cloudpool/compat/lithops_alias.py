"""Run Lithops programs without changing a line: ``import lithops`` gets ``cloudpool.compat.lithops``.

::

    python -m cloudpool.compat.lithops_alias my_lithops_program.py ARGS...

or, in code that must keep its ``import lithops`` lines, call ``install()`` first.

This module owns only the aliasing: it registers ``cloudpool.compat.lithops`` as
``lithops`` in ``sys.modules``, with the submodules Lithops programs import from
(``lithops.config``, ``lithops.storage``, ``lithops.storage.utils``,
``lithops.storage.cloud_proxy``, ``lithops.utils``, ``lithops.util.joblib``,
``lithops.retries``, ``lithops.wait``, ``lithops.executors``), and ``lithops.multiprocessing``
as ``cloudpool.multiprocessing`` (both follow the stdlib's API). It refuses to replace a
real Lithops already imported in the process. Worker processes started by ``fork`` (the
local backend on Linux) inherit the alias; functions defined in the aliased program are
shipped by value as usual.
"""
from __future__ import annotations

import importlib
import logging
import os
import runpy
import sys
import types
from typing import Dict, List, Optional

from . import _lithops_cloud_proxy, _lithops_config, _lithops_storage
from . import lithops as _compat

__all__ = ["install", "main"]

LOGGER = logging.getLogger("cloudpool.compat.lithops")

def register_lithops() -> None:
    """``lithops.util.joblib.register_lithops``: joblib's ``"lithops"`` backend runs on cloudpool.

    It is cloudpool's own joblib backend (``cloudpool.joblib``) under Lithops' name, so
    ``with joblib.parallel_backend("lithops"):`` runs every task through a
    ``CloudPoolExecutor`` configured as usual (``CLOUDPOOL_*``, the config file).
    """
    # Imported here: joblib is an optional dependency (cloudpool[joblib]).
    from joblib import register_parallel_backend

    from .. import joblib as cloudpool_joblib

    register_parallel_backend("lithops", cloudpool_joblib.CloudPoolBackend)


#: submodule -> the names it offers (all taken from cloudpool.compat.lithops' modules).
_SUBMODULES: Dict[str, Dict[str, object]] = {
    "config": {name: getattr(_lithops_config, name) for name in (
        "default_config", "load_config", "load_yaml_config", "extract_storage_config")},
    "storage": {"Storage": _compat.Storage},
    "storage.cloud_proxy": {name: getattr(_lithops_cloud_proxy, name) for name in (
        "cloud_open", "CloudFileProxy", "open", "os")},
    "storage.utils": {name: getattr(_lithops_storage, name) for name in (
        "CloudObject", "StorageNoSuchKeyError", "StorageNoSuchBucketError")},
    "utils": {"setup_lithops_logger": _compat.setup_lithops_logger, "FuturesList": _compat.FuturesList},
    "util": {},
    "util.joblib": {"register_lithops": register_lithops},
    "retries": {"RetryingFunctionExecutor": _compat.RetryingFunctionExecutor,
                "RetryingFuture": _compat.RetryingFuture},
    "wait": {name: getattr(_compat, name) for name in (
        "wait", "get_result", "ALWAYS", "ANY_COMPLETED", "ALL_COMPLETED")},
    "executors": {name: getattr(_compat, name) for name in (
        "FunctionExecutor", "LocalhostExecutor", "ServerlessExecutor")},
}


def install(name: str = "lithops") -> None:
    """Make ``import lithops`` (and its submodules above) import cloudpool.compat.lithops."""
    current = sys.modules.get(name)
    if current is _compat:
        return
    if current is not None and getattr(current, "FunctionExecutor", None) is not None:
        raise RuntimeError(f"a real {name!r} module is already imported ({current!r}); "
                           f"install the alias before anything imports Lithops")
    sys.modules[name] = _compat
    for sub, names in _SUBMODULES.items():
        module = types.ModuleType(f"{name}.{sub}", f"cloudpool.compat.lithops' stand-in for {name}.{sub}")
        module.__dict__.update(names)
        sys.modules[f"{name}.{sub}"] = module
    # `import lithops.storage; lithops.storage.Storage` needs the attribute, as a real
    # package would have it; names the compat module already has (wait) keep their meaning.
    for sub in ("config", "storage", "utils", "retries", "executors"):
        if not hasattr(_compat, sub):
            setattr(_compat, sub, sys.modules[f"{name}.{sub}"])
    setattr(sys.modules[f"{name}.storage"], "utils", sys.modules[f"{name}.storage.utils"])
    setattr(sys.modules[f"{name}.util"], "joblib", sys.modules[f"{name}.util.joblib"])
    setattr(sys.modules[f"{name}.storage"], "cloud_proxy", sys.modules[f"{name}.storage.cloud_proxy"])
    # Lithops' multiprocessing API is the stdlib's, as is cloudpool's.
    import cloudpool.multiprocessing as cp_multiprocessing

    sys.modules[f"{name}.multiprocessing"] = cp_multiprocessing
    for sub in ("connection", "context", "managers", "pool", "process", "queues", "sharedctypes",
                "synchronize"):
        # The same module objects, not second copies loaded under lithops.* names.
        try:
            sys.modules[f"{name}.multiprocessing.{sub}"] = importlib.import_module(f"cloudpool.multiprocessing.{sub}")
        except ImportError as exc:  # an optional dependency: the submodule fails when used, not here
            LOGGER.debug("lithops.multiprocessing.%s not aliased: %s", sub, exc)
    if not hasattr(_compat, "multiprocessing"):
        setattr(_compat, "multiprocessing", cp_multiprocessing)


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m cloudpool.compat.lithops_alias SCRIPT [ARGS...]``: run a Lithops program."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m cloudpool.compat.lithops_alias SCRIPT.py [ARGS...]\n"
              "Runs a Lithops program unchanged, with `import lithops` served by cloudpool.compat.lithops.",
              file=sys.stderr)
        raise SystemExit(0 if args else 2)
    script = args[0]
    if not os.path.isfile(script):
        raise SystemExit(f"{script}: no such file (give the path of a Lithops program)")
    install()
    sys.argv = args
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
