"""cloudpool: run ``concurrent.futures`` and ``multiprocessing`` code on serverless platforms.

``from cloudpool import CloudPoolExecutor`` is a drop-in for ``ProcessPoolExecutor``;
``from cloudpool.multiprocessing import Pool`` for ``multiprocessing.Pool``. The public
names are imported lazily so that ``import cloudpool`` stays cheap in workers.
"""
from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["CloudPoolExecutor", "CloudFuture", "objects", "ObjectPart", "Storage", "RetryPolicy",
           "retry", "register_joblib", "__version__"]

_LAZY = {
    "CloudPoolExecutor": ("cloudpool.executor", "CloudPoolExecutor"),
    "CloudFuture": ("cloudpool.executor", "CloudFuture"),
    "objects": ("cloudpool.objects", "objects"),
    "ObjectPart": ("cloudpool.objects", "ObjectPart"),
    "Storage": ("cloudpool.userstorage", "Storage"),
    "RetryPolicy": ("cloudpool.retries", "RetryPolicy"),
    "retry": ("cloudpool.retries", "retry"),
    # Registers the "cloudpool" joblib backend (importing cloudpool.joblib does too).
    "register_joblib": ("cloudpool.joblib", "register"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'cloudpool' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
