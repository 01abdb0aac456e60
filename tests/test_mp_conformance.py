"""CPython's own ``multiprocessing.Pool`` tests, run against ``cloudpool.multiprocessing.Pool``.

The test classes come from ``test._test_multiprocessing``, which ships with this
Python; only the mixin below is ours (``TYPE = 'processes'``, ``Pool`` = our Pool on the
local backend). Nothing is copied: the classes are combined here at import time, as
CPython's ``install_tests_in_module_dict`` does for its own contexts.

Generated classes and what runs:

- ``WithCloudPoolTestPool`` (``_TestPool``): everything except ``test_make_pool``.
- ``WithCloudPoolTestPoolWorkerErrors`` (``_TestPoolWorkerErrors``): these tests call
  ``multiprocessing.Pool(...)`` through their module's global ``multiprocessing``; they
  are rebound (same code object) to globals where ``multiprocessing.Pool`` is ours.
  Everything except ``test_unpickleable_result``.
- ``WithCloudPoolTestPoolWorkerLifetime`` (``_TestPoolWorkerLifetime``): rebound the same
  way; everything except ``test_pool_worker_lifetime`` and
  ``test_worker_finalization_via_atexit_handler_of_multiprocessing``.

Exclusions, and why each cannot apply (each behaviour is covered by ``test_mp_pool``):

- ``_TestPool.test_make_pool``: reads ``len(p._pool)``, the stdlib's private list of
  worker processes (workers here are started on demand by the backend, and may not be
  processes at all). ``PoolValidationTest`` checks the ``ValueError`` part.
- ``_TestPoolWorkerErrors.test_unpickleable_result``: its "unpicklable" result is a
  lambda, which cloudpickle (cloudpool's serializer) pickles by value, so the premise
  does not hold. ``PoolErrorTest.test_unpicklable_result_is_maybe_encoding_error``
  checks ``MaybeEncodingError`` with a truly unpicklable result (a lock).
- ``_TestPoolWorkerLifetime.test_pool_worker_lifetime``: reads ``p._pool`` and calls the
  private ``p._repopulate_pool()``. ``PoolWorkerLifetimeTest`` checks that
  ``maxtasksperchild`` replaces local worker processes.
- ``_TestPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing``:
  runs a child interpreter doing ``from multiprocessing import Pool`` (the stdlib's);
  ``PoolInterpreterExitTest`` runs the same scenario with ``cloudpool.multiprocessing``.

``test_resource_warning`` sets ``pool._state = multiprocessing.pool.RUN``: our Pool
keeps its state in ``_state`` with the stdlib's values, so it runs unchanged.
"""
from __future__ import annotations

import types
import unittest

import multiprocessing
import test._test_multiprocessing as cpython_mp

import cloudpool.multiprocessing as cloud_mp
from cloudpool.multiprocessing import Pool

_EXCLUDED = {
    "test_make_pool": "reads the stdlib's private Pool._pool (see test_mp_pool.PoolValidationTest)",
    "test_unpickleable_result": "its result (a lambda) is picklable by cloudpickle; see "
                                "test_mp_pool.PoolErrorTest.test_unpicklable_result_is_maybe_encoding_error",
    "test_pool_worker_lifetime": "reads Pool._pool and calls Pool._repopulate_pool (private); see "
                                 "test_mp_pool.PoolWorkerLifetimeTest",
    "test_worker_finalization_via_atexit_handler_of_multiprocessing":
        "runs a child importing the stdlib's Pool; see test_mp_pool.PoolInterpreterExitTest",
}


class CloudPoolProcessesMixin(cpython_mp.ProcessesMixin):
    """CPython's 'processes' mixin with our Pool."""

    Pool = staticmethod(Pool)


# ``multiprocessing`` as the rebound tests see it: the stdlib's module, with our Pool.
_shim = types.ModuleType("multiprocessing")
_shim.__dict__.update(vars(multiprocessing))
_shim.Pool = cloud_mp.Pool
_rebound_globals = dict(vars(cpython_mp))
_rebound_globals["multiprocessing"] = _shim


def _rebind(fn: types.FunctionType) -> types.FunctionType:
    """The same test code, reading ``multiprocessing`` from globals where Pool is ours."""
    new = types.FunctionType(fn.__code__, _rebound_globals, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__qualname__ = fn.__qualname__
    new.__doc__ = fn.__doc__
    return new


def _make(name: str, base: type, rebind: bool = False) -> type:
    attrs = {"__module__": __name__, "__qualname__": name}
    for attr, value in vars(base).items():
        if not attr.startswith("test_"):
            continue
        if attr in _EXCLUDED:
            attrs[attr] = unittest.skip(_EXCLUDED[attr])(lambda self: None)
        elif rebind and isinstance(value, types.FunctionType):
            attrs[attr] = _rebind(value)
    return type(name, (base, CloudPoolProcessesMixin, unittest.TestCase), attrs)


WithCloudPoolTestPool = _make("WithCloudPoolTestPool", cpython_mp._TestPool)
WithCloudPoolTestPoolWorkerErrors = _make("WithCloudPoolTestPoolWorkerErrors",
                                          cpython_mp._TestPoolWorkerErrors, rebind=True)
WithCloudPoolTestPoolWorkerLifetime = _make("WithCloudPoolTestPoolWorkerLifetime",
                                            cpython_mp._TestPoolWorkerLifetime, rebind=True)
