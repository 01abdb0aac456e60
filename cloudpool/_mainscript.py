"""The user's main script on workers: one module namespace per worker, as with spawn.

A spawn-started ``ProcessPoolExecutor`` imports the user's script once in every worker
as ``__mp_main__`` (aliased as ``__main__``, with the ``if __name__ == "__main__":``
guard false), and pickles the script's functions and classes *by reference*. So in a
worker the initializer, every mapped function and every class share one module
namespace: a ``global`` written by the initializer or by one call is seen by later
calls, ``isinstance`` works against the script's classes, and a module-level cache is
built once per worker.

cloudpickle instead pickles everything of ``__main__`` *by value*, each pickle with its
own copy of the globals it uses -- an initializer's ``global G`` write then lands in a
dict the mapped function never reads. This module owns the fix, in three parts:

* ``Pickler`` (used for every function, argument, initializer and result cloudpool
  pickles): a function or class of the main script that the script defines at module
  level, outside its ``__main__`` guard, and that is reachable there by its qualified
  name, is pickled as a reference ``main_object(qualname)``. Everything else of
  ``__main__`` (lambdas, closures, functions defined inside the guard, interactive
  sessions, ``python -c``, notebooks -- no script file) stays by value, as before.
* ``main_object`` resolves such a reference in the process's current ``__main__``: on a
  local worker started by fork that is the client's script as it was at the fork; with
  spawn/forkserver, multiprocessing itself imported it as ``__mp_main__``; on a remote
  worker it is the shipped copy (below). On the client it resolves results.
* Remote workers do not have the script: ``script_ref`` gives its source, which the
  client stores next to the module bundle (``cloudpool._shipping``), and ``install``
  imports it once per worker process and executor as ``__mp_main__`` and aliases it as
  ``__main__``, exactly as the stdlib's spawn does (guard false; the script's
  ``sys.argv`` and working directory are not reproduced on another machine). Once per
  *executor*: a remote worker process outlives the executor that used it (a warm
  container, an HTTP runtime), but a new ``ProcessPoolExecutor`` starts from freshly
  imported workers, so a new executor gets a fresh namespace rather than the globals an
  earlier executor's initializer left behind.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
import types
from collections import OrderedDict
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

import cloudpickle

#: The names a script's module has: ``__main__`` on the client and in forked workers,
#: ``__mp_main__`` where multiprocessing's spawn (or ``install``) imported it.
MAIN_NAMES = ("__main__", "__mp_main__")

_names_cache: Dict[str, FrozenSet[str]] = {}
_installed_cache: Dict[str, bool] = {}
#: On the worker: (executor id, script digest) -> its module, the most recent last.
_loaded: "OrderedDict[Tuple[str, str], types.ModuleType]" = OrderedDict()
#: Modules kept per process: enough for a runtime serving a few executors in turn.
_KEEP = 4
_lock = threading.Lock()


# ---------------------------------------------------------------------------- which objects
def _script_file(module: Optional[types.ModuleType]) -> Optional[str]:
    """The user's ``.py`` file ``module`` was run from.

    None for a REPL, ``-c``, a notebook, and for an installed program run as ``__main__``
    (``python -m pytest``, a tool in site-packages): that is not the user's script, and
    the runtime has (or lacks) it like any installed package.
    """
    path = getattr(module, "__file__", None) if module is not None else None
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    installed = _installed_cache.get(path)
    if installed is None:
        from ._shipping import _installed_locations

        real = os.path.realpath(path)
        installed = _installed_cache[path] = any(real.startswith(d) for d in _installed_locations())
    return None if installed else path


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    return has_name and has_main


def _bound_names(stmts: list, names: set) -> None:
    for node in stmts:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If):
            if _is_main_guard(node.test):
                _bound_names(node.orelse, names)  # the body does not run on a worker
            else:
                _bound_names(node.body, names)
                _bound_names(node.orelse, names)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            _bound_names(node.body, names)
            _bound_names(getattr(node, "orelse", []), names)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            _bound_names(node.body, names)
            for handler in node.handlers:
                _bound_names(handler.body, names)
            _bound_names(node.orelse, names)
            _bound_names(node.finalbody, names)


def worker_names(path: str) -> FrozenSet[str]:
    """Names the script at ``path`` binds when imported as ``__mp_main__`` (guard false).

    Read from its source, not by running it: a function defined inside the
    ``if __name__ == "__main__":`` block exists on the client but not on a worker, so it
    must travel by value (the stdlib's spawn cannot send it at all). Parsed once per
    process: the running module does not change when its file is edited.
    """
    names = _names_cache.get(path)
    if names is None:
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), filename=path)
        except (OSError, SyntaxError, ValueError):
            names = frozenset()  # nothing goes by name: by value, as before
        else:
            found: set = set()
            _bound_names(tree.body, found)
            names = frozenset(found)
        _names_cache[path] = names
    return names


def _lookup(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _by_reference(obj: Any) -> bool:
    """Whether ``obj`` (a function or class of ``__main__``) can travel as its name."""
    module = sys.modules.get(obj.__module__)
    path = _script_file(module)
    if path is None:
        return False
    qualname = getattr(obj, "__qualname__", "")
    if "<" in qualname:  # <lambda>, <locals>: not reachable by name
        return False
    if qualname.split(".", 1)[0] not in worker_names(path):
        return False
    try:
        return _lookup(module, qualname) is obj
    except AttributeError:
        return False


def main_object(qualname: str) -> Any:
    """The object named ``qualname`` in this process's main script (the unpickling side)."""
    module = sys.modules.get("__main__")
    try:
        return _lookup(module, qualname)
    except AttributeError:
        raise AttributeError(
            f"{qualname!r} is not defined in this process's copy of the main script "
            f"({getattr(module, '__file__', None) or getattr(module, '__name__', '?')}): a worker "
            f"imports the script with __name__ != '__main__', or (fork) copies it when it starts. "
            f"Define it at module level, above the code that creates the executor"
        ) from None


_cloudpickle_reducer = cloudpickle.Pickler.reducer_override
_FunctionType = types.FunctionType


class Pickler(cloudpickle.Pickler):
    """cloudpickle, except that the main script's module-level functions and classes go by name."""

    def reducer_override(self, obj: Any) -> Any:
        # Called for nearly every object pickled, so the common case (an instance) is
        # answered here: cloudpickle's own override only handles functions and classes.
        kind = type(obj)
        try:
            special = kind is _FunctionType or issubclass(kind, type)
        except TypeError:  # a "type" that is not a class (as cloudpickle guards against)
            special = False
        if not special:
            return NotImplemented
        if getattr(obj, "__module__", None) in MAIN_NAMES and _by_reference(obj):
            return main_object, (obj.__qualname__,)
        return _cloudpickle_reducer(self, obj)


# ---------------------------------------------------------------------------- shipping
class Script:
    """The client's main script as shipped: its source and how to import it."""

    def __init__(self, source: bytes, name: str, package: Optional[str]) -> None:
        self.source = source
        self.name = name
        self.package = package
        self.digest = hashlib.sha256(source).hexdigest()[:32]


def client_script() -> Optional[Script]:
    """The running script (``python script.py`` or ``python -m pkg.mod``), or None."""
    module = sys.modules.get("__main__")
    path = _script_file(module)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError:
        return None  # deleted since it started: its objects go by value (none resolve by name)
    spec = getattr(module, "__spec__", None)
    # ``python -m pkg.mod``: relative imports need the package, which is shipped with the
    # user's modules (it is loaded, so it is in sys.modules).
    package = spec.parent if spec is not None and spec.parent else None
    return Script(source, os.path.basename(path), package)


def install(get_blob: Callable[[str], Any], ref: Dict[str, Any], executor: str) -> types.ModuleType:
    """Import the shipped script ``ref`` as ``__mp_main__`` = ``__main__``, once per process
    and ``executor``, and make it the current ``__main__``.

    A process that serves several executors in turn (an HTTP runtime, a warm container)
    keeps one module per executor and makes the invocation's one current.
    """
    from . import protocol

    digest = ref["digest"]
    with _lock:
        module = _loaded.get((executor, digest))
        if module is None:
            blob = get_blob(ref["key"])
            protocol.verify(blob, ref.get("sum"), f"the main script {ref['key']}")
            folder = os.path.join(tempfile.gettempdir(), "cloudpool-main", digest)
            os.makedirs(folder, exist_ok=True)
            # Under its own file name, so tracebacks on the worker name the user's file.
            path = os.path.join(folder, os.path.basename(ref["name"]))
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location("__mp_main__", path)
            module = importlib.util.module_from_spec(spec)
            if ref.get("package"):
                module.__package__ = ref["package"]
            previous = sys.modules.get("__main__"), sys.modules.get("__mp_main__")
            # Aliased before it runs, as spawn does: the script's own pickling during import
            # (and anything importing __main__) must see the module being built.
            sys.modules["__main__"] = sys.modules["__mp_main__"] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                for name, old in zip(MAIN_NAMES, previous):
                    if old is None:
                        sys.modules.pop(name, None)
                    else:
                        sys.modules[name] = old
                raise
            _loaded[(executor, digest)] = module
            while len(_loaded) > _KEEP:
                _loaded.popitem(last=False)
        _loaded.move_to_end((executor, digest))
        sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    return module
