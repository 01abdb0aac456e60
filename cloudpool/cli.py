"""The ``cloudpool`` command line: ``hello``, ``storage``, ``runtime``, ``clean``, ``config``.

This module owns argument parsing, the commands' output and exit codes, and nothing
else: every command is a thin layer over the library (``CloudPoolExecutor``, the storage
and compute registries, ``cloudpool.config``), so what the CLI does is what the library
does with the same configuration.

Exit codes: 0 on success, 2 on a usage error (argparse's convention), 1 when the command
fails; a failure prints ``cloudpool: error: <what went wrong and the fix>`` on stderr,
without a traceback (``cloudpool --traceback ...`` shows one).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import re
import select
import secrets
import shutil
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._version import __version__

__all__ = ["main"]

PROG = "cloudpool"

#: Errors the commands raise on purpose, each with a message naming the problem and the
#: fix; anything else is a bug and keeps its traceback.
_EXPECTED_ERRORS = (OSError, ValueError, ImportError, NotImplementedError, RuntimeError,
                    TimeoutError, concurrent.futures.TimeoutError)


class CommandError(Exception):
    """A failure of a command, reported as ``cloudpool: error: ...`` with exit code 1."""


# ---------------------------------------------------------------------------- helpers
def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"1w"`` or plain seconds -> seconds."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: write a number with an optional unit s, m, h, d or w "
            f"(e.g. 90s, 30m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _load_config(overrides: Optional[Dict[str, Any]] = None):
    from .config import load_config

    return load_config({k: v for k, v in (overrides or {}).items() if v is not None},
                       origin="command-line option")


def _storage_for(url: str):
    """``(backend, key)`` for ``url``, with the scheme's options from the configuration."""
    from .config import open_storage
    from .storage import split_url

    scheme, bucket, key = split_url(url)
    return open_storage(scheme, bucket, config=_load_config())[0], key


def _stdout_bytes():
    return getattr(sys.stdout, "buffer", sys.stdout)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------------- hello
def _where_am_i() -> Dict[str, Any]:
    """Runs on a worker: says where it is (module-level, so every runtime can import it)."""
    import platform

    import cloudpickle

    from . import __version__ as worker_version

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "python": platform.python_version(), "executable": sys.executable,
            "cloudpool": worker_version, "cloudpickle": cloudpickle.__version__}


def cmd_hello(args: argparse.Namespace) -> int:
    from .executor import CloudPoolExecutor

    created = time.perf_counter()
    executor = CloudPoolExecutor(max_workers=1, backend=args.backend, storage=args.storage)
    finished = False
    try:
        backend_name = executor.config["backend"]
        try:
            start = time.perf_counter()
            where = executor.submit(_where_am_i).result(timeout=args.timeout)
            first = time.perf_counter() - start
            start = time.perf_counter()
            executor.submit(_where_am_i).result(timeout=args.timeout)
            second = time.perf_counter() - start
        except (concurrent.futures.TimeoutError, TimeoutError):
            raise CommandError(
                f"no answer from the {backend_name!r} backend within {args.timeout:g} s: check that "
                f"its workers start and can reach the storage {executor.config['storage']} "
                f"(or allow longer with --timeout)") from None
        description = executor._backend.describe()
        finished = True
    finally:
        executor.shutdown(wait=finished, cancel_futures=True)
    result = {
        "backend": backend_name, "storage": executor.config["storage"], "worker": where,
        "description": description, "client": {"host": socket.gethostname(), "pid": os.getpid()},
        "round_trip_seconds": {"first": first, "second": second},
        "total_seconds": time.perf_counter() - created,
    }
    if args.json:
        _print_json(result)
        return 0
    print(f"Hello from cloudpool: a call ran on the {backend_name!r} backend.")
    rows = [
        ("host", where["host"]),
        ("pid", str(where["pid"])),
        ("python", f"{where['python']} ({where['executable']})"),
        ("cloudpool", f"{where['cloudpool']} (cloudpickle {where['cloudpickle']})"),
        ("backend", json.dumps(description, sort_keys=True, default=str)),
        ("storage", executor.config["storage"]),
        ("round trip", f"{first * 1000:.1f} ms for the first call (starts a worker), "
                       f"{second * 1000:.1f} ms for the second"),
        ("client", f"host {socket.gethostname()}, pid {os.getpid()}"),
    ]
    for label, value in rows:
        print(f"  {label:<11} {value}")
    return 0


# ---------------------------------------------------------------------------- storage
def _is_bucket_root(scheme: str, key: str) -> bool:
    return scheme != "file" and not key.strip("/")


def _names_folder(url: str, scheme: str, key: str) -> bool:
    """True when ``url`` is a bucket, a prefix ending in '/' or a local directory."""
    # split_url drops the trailing '/' of local paths, so the URL itself is checked too.
    return (not key or key.endswith("/") or url.endswith("/") or _is_bucket_root(scheme, key)
            or (scheme == "file" and os.path.isdir("/" + key)))


def cmd_storage_ls(args: argparse.Namespace) -> int:
    from .storage import split_url

    scheme = split_url(args.url)[0]
    backend, key = _storage_for(args.url)
    if scheme == "file" and key and not key.endswith("/") and os.path.isdir("/" + key):
        key += "/"  # a local directory: list it, not every sibling that shares its name
    if not args.recursive:
        return _storage_ls_level(args, backend, key)
    entries = list(backend.list(key))
    if key and not key.endswith("/"):
        exact = [e for e in entries if e.key == key]
        # `ls s3://b/logs` lists the folder logs/, as `ls` does with a directory.
        key = key if exact else key + "/"
        entries = exact or [e for e in entries if e.key.startswith(key)]
    if not entries:
        _no_such_listing(args.url, scheme, key)
        return 0
    count = total = 0
    for info in entries:
        if info.key.endswith("/"):
            continue  # folder marker objects
        print(f"{_human(info.size) if args.human_readable else info.size:>12}  {backend.url(info.key)}")
        count += 1
        total += info.size
    if args.summarize:
        print(f"total: {count} objects, {_human(total)} ({total} bytes)")
    return 0


def _no_such_listing(url: str, scheme: str, key: str) -> None:
    """An empty listing: fine for an empty bucket or directory, an error otherwise."""
    if not key.strip("/") or (scheme == "file" and os.path.isdir("/" + key)):
        return
    raise FileNotFoundError(f"{url}: no such object or folder "
                            f"(`cloudpool storage ls` on its parent shows what exists)")


def _storage_ls_level(args: argparse.Namespace, backend: Any, key: str) -> int:
    """`ls` without -r: one level, from the store's delimiter listing (like `aws s3 ls`),
    so a folder holding a million objects costs one line and one request, not a million."""
    from .storage import split_url
    from .storage.base import CommonPrefix

    level = list(backend.list_level(key))
    if key and not key.endswith("/"):
        exact = [e for e in level if not isinstance(e, CommonPrefix) and e.key == key]
        if exact:
            level = exact
        elif any(isinstance(e, CommonPrefix) and e.prefix == key + "/" for e in level):
            # `ls s3://b/logs` lists the folder logs/, as `ls` does with a directory.
            key += "/"
            level = list(backend.list_level(key))
        else:
            level = []
    objects = [e for e in level if not isinstance(e, CommonPrefix) and not e.key.endswith("/")]
    folders = [e.prefix for e in level if isinstance(e, CommonPrefix)]
    if not level:
        _no_such_listing(args.url, split_url(args.url)[0], key)
        return 0
    total = 0
    for info in objects:
        print(f"{_human(info.size) if args.human_readable else info.size:>12}  {backend.url(info.key)}")
        total += info.size
    for folder in folders:
        print(f"{'DIR':>12}  {backend.url(folder)}")
    if args.summarize:
        # Like `aws s3 ls --summarize`: the objects of this level; -r counts everything.
        print(f"total: {len(objects)} objects, {_human(total)} ({total} bytes), {len(folders)} folders")
    return 0


def cmd_storage_put(args: argparse.Namespace) -> int:
    from .storage import split_url

    scheme, _bucket, key = split_url(args.url)
    backend, key = _storage_for(args.url)
    if not backend.writable:
        raise PermissionError(f"{args.url}: {scheme}:// storage is read-only; put to s3://, gs://, "
                              f"az://, cos:// or a local path")
    if args.local != "-" and os.path.isdir(args.local):
        if not args.recursive:
            raise IsADirectoryError(f"{args.local} is a directory; pass -r to upload everything in it")
        base = key if key.endswith("/") or not key else key + "/"
        count = total = 0
        for dirpath, dirnames, filenames in os.walk(args.local):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, args.local).replace(os.sep, "/")
                with open(path, "rb") as f:
                    backend.put_file(base + rel, f)
                count += 1
                total += os.path.getsize(path)
        print(f"uploaded {count} files ({_human(total)}) to {backend.url(base)}")
        return 0
    if _names_folder(args.url, scheme, key):
        if args.local == "-":
            raise ValueError(f"{args.url} names a folder; reading stdin ('-') needs a full object URL")
        key = (key.rstrip("/") + "/" if key.strip("/") else "") + os.path.basename(args.local)
    if args.local == "-":
        source = sys.stdin.buffer
        backend.put_file(key, source)
        print(f"uploaded stdin to {backend.url(key)}")
        return 0
    try:
        f = open(args.local, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{args.local}: no such local file") from None
    with f:
        backend.put_file(key, f)
    print(f"uploaded {args.local} to {backend.url(key)} ({_human(os.path.getsize(args.local))})")
    return 0


def cmd_storage_get(args: argparse.Namespace) -> int:
    from .storage import split_url

    scheme = split_url(args.url)[0]
    backend, key = _storage_for(args.url)
    if _names_folder(args.url, scheme, key):
        raise IsADirectoryError(f"{args.url} names a folder, not an object; "
                                f"`cloudpool storage ls {args.url}` lists its objects")
    size = backend.head(key).size  # FileNotFoundError names the URL
    if args.local == "-":
        out = _stdout_bytes()
        with backend.open(key) as src:
            shutil.copyfileobj(src, out, 8 * 1024 * 1024)
        out.flush()
        return 0
    target = args.local or os.path.basename(key)
    if os.path.isdir(target):
        target = os.path.join(target, os.path.basename(key))
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such local directory to download into")
    # Downloaded beside the target and renamed, so a failure leaves no half-written file.
    # Created with 0666 for the kernel to apply the umask, as open() does: mkstemp's 0600
    # would make every download private whatever the user's umask says.
    tmp = os.path.join(directory, f".cloudpool-get-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as out, backend.open(key) as src:
            shutil.copyfileobj(src, out, 8 * 1024 * 1024)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"downloaded {backend.url(key)} to {target} ({_human(size)})")
    return 0


def cmd_storage_rm(args: argparse.Namespace) -> int:
    from .storage import split_url

    scheme = split_url(args.url)[0]
    backend, key = _storage_for(args.url)
    if not backend.writable:
        raise PermissionError(f"{args.url}: {scheme}:// storage is read-only")
    if scheme == "file" and not key.strip("/"):
        raise ValueError("refusing to remove the root of the local filesystem")
    if not args.recursive:
        if _is_bucket_root(scheme, key):
            raise ValueError(f"{args.url} names a whole bucket; pass -r to remove every object in it")
        if key.endswith("/"):
            raise ValueError(f"{args.url} names a folder; pass -r to remove everything under it")
        try:
            info = backend.head(key)
        except FileNotFoundError as exc:
            hint = ("; it is a folder: pass -r to remove everything under it"
                    if next(iter(backend.list(key + "/")), None) is not None else "")
            raise FileNotFoundError(f"{exc}{hint}") from None
        backend.delete([key])
        print(f"removed {backend.url(key)} ({_human(info.size)})")
        return 0
    prefix = key if not key or key.endswith("/") else key + "/"
    infos = list(backend.list(prefix))
    if not infos:
        raise FileNotFoundError(f"{backend.url(prefix)}: nothing to remove (no objects under it)")
    total = sum(i.size for i in infos)
    keys = [i.key for i in infos]
    for i in range(0, len(keys), 1000):
        backend.delete(keys[i:i + 1000])
    print(f"removed {len(keys)} objects ({_human(total)}) under {backend.url(prefix)}")
    return 0


# ---------------------------------------------------------------------------- runtime
def _runtime_backend(args: argparse.Namespace, verb: str):
    """The configured backend, built; refuses early (without building) if it has no runtimes."""
    from .compute import ComputeBackend, backends
    from .storage import split_url

    config = _load_config({"backend": args.backend})
    name = config["backend"]
    cls = backends.get(name)
    if not cls.manages_runtimes:
        # The base class words the refusal; its text needs only the class's name, so the
        # backend is not built (building one may need settings irrelevant here).
        raise ComputeBackend._no_runtimes(cls, verb)  # type: ignore[arg-type]
    scheme = split_url(config["storage"])[0]
    return cls(config.section(name), max_workers=config["max_workers"],
               storage_url=config["storage"], storage_options=config.section(scheme))


def _print_mapping(mapping: Dict[str, Any]) -> None:
    width = max((len(str(k)) for k in mapping), default=0)
    for key, value in mapping.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        print(f"  {key:<{width}}  {text}")


def _run_on_backend(args: argparse.Namespace, verb: str, action: Callable[[Any], Any]) -> Any:
    backend = _runtime_backend(args, verb)
    try:
        return action(backend)
    finally:
        backend.shutdown(wait=True)


def _read_requirements(args: argparse.Namespace) -> List[str]:
    reqs = list(args.requirement or [])
    for path in args.requirements_file or []:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such requirements file") from None
        reqs += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    return reqs


def cmd_runtime_build(args: argparse.Namespace) -> int:
    reqs = _read_requirements(args)
    info = _run_on_backend(args, "build",
                           lambda b: b.build_runtime(args.name, requirements=reqs, output=args.output))
    if args.json:
        _print_json(info)
    else:
        print(f"built runtime {args.name!r}:")
        _print_mapping(info or {})
    return 0


def cmd_runtime_deploy(args: argparse.Namespace) -> int:
    info = _run_on_backend(args, "deploy",
                           lambda b: b.deploy_runtime(args.name, memory_mb=args.memory, timeout=args.timeout))
    if args.json:
        _print_json(info)
    else:
        print(f"deployed runtime {args.name!r}:")
        _print_mapping(info or {})
    return 0


def cmd_runtime_list(args: argparse.Namespace) -> int:
    runtimes = _run_on_backend(args, "list", lambda b: b.list_runtimes())
    if args.json:
        _print_json(runtimes)
        return 0
    if not runtimes:
        print("no runtimes deployed")
        return 0
    columns: List[str] = ["name"]
    for rt in runtimes:
        columns += [k for k in rt if k not in columns]
    cells = [[("" if rt.get(c) is None else str(rt.get(c))) for c in columns] for rt in runtimes]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def cmd_runtime_delete(args: argparse.Namespace) -> int:
    _run_on_backend(args, "delete", lambda b: b.delete_runtime(args.name))
    print(f"deleted runtime {args.name!r}")
    return 0


# ---------------------------------------------------------------------------- clean
_EXECUTOR_ID = re.compile(r"cp-[0-9a-f]{16,64}")


def _process_start_time(pid: int) -> Optional[Tuple[str, float]]:
    """``(state, start time as epoch seconds)`` from Linux's /proc, or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f.read().decode().splitlines()
                        if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)), fields[19] the start time in clock ticks.
    return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _pid_alive(pid: int, started: Optional[float]) -> bool:
    """Does the process that wrote a marker at ``started`` still run on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    proc = _process_start_time(pid)
    if proc is None:
        return True
    state, process_started = proc
    if state == "Z":
        return False  # killed, not yet reaped by its parent
    # A process started after the marker was written is another one that got the same pid.
    return not (started is not None and process_started > started + 2.0)


def _judge(backend: Any, marker_key: str, infos: List[Any], now: float,
           older_than: float, host: str) -> Tuple[bool, str]:
    """``(remove?, why)`` for one executor prefix."""
    newest = max((i.mtime for i in infos if i.mtime is not None), default=None)
    idle = None if newest is None else now - newest
    marker = None
    if any(i.key == marker_key for i in infos):
        try:
            marker = backend.get_json(marker_key)
        except (OSError, ValueError):
            marker = None  # vanished since the listing or unreadable: judged by age alone
    if isinstance(marker, dict) and marker.get("host") == host and isinstance(marker.get("pid"), int):
        pid = marker["pid"]
        if _pid_alive(pid, marker.get("started")):
            return False, f"live: its client, pid {pid}, runs on this host"
        return True, f"its client, pid {pid} on this host, is gone"
    if isinstance(marker, dict):
        started = marker.get("started")
        started_age = now - started if isinstance(started, (int, float)) else None
        ages = [a for a in (started_age, idle) if a is not None]
        age = min(ages) if ages else 0.0
        owner = f"pid {marker.get('pid')} on host {marker.get('host')!r}"
        if age >= older_than:
            return True, f"its client, {owner}, started {_age(started_age or 0)} ago, last write {_age(idle or 0)} ago"
        return False, (f"its client, {owner}, may still run (last activity {_age(age)} ago; "
                       f"--older-than is {_age(older_than)})")
    if idle is not None and idle >= older_than:
        return True, f"no owner marker; newest object is {_age(idle)} old"
    return False, (f"no owner marker; newest object is {_age(idle or 0)} old "
                   f"(--older-than is {_age(older_than)})")


def cmd_clean(args: argparse.Namespace) -> int:
    from . import protocol
    from .config import open_storage
    from .storage import split_url

    config = _load_config({"storage": args.storage})
    url = config["storage"]
    scheme, bucket, root = split_url(url)
    backend = open_storage(scheme, bucket, config=config)[0]
    if not backend.writable:
        raise PermissionError(f"{url}: {scheme}:// storage is read-only; nothing can be cleaned there")
    root = root.strip("/")
    base = root + "/" if root else ""
    groups: Dict[str, List[Any]] = {}
    for info in backend.list(base):
        executor_id, sep, _rest = info.key[len(base):].partition("/")
        # Only executor prefixes are touched: whatever else shares the root is not ours.
        if sep and _EXECUTOR_ID.fullmatch(executor_id):
            groups.setdefault(executor_id, []).append(info)
    older_than = 0.0 if args.all else args.older_than
    now = time.time()
    host = socket.gethostname()
    removed = removed_objects = removed_bytes = kept = 0
    verb = "would remove" if args.dry_run else "removed"
    for executor_id, infos in sorted(groups.items()):
        keys = protocol.Keys(root, executor_id)
        remove, why = _judge(backend, keys.client, infos, now, older_than, host)
        size = sum(i.size for i in infos)
        prefix_url = backend.url(keys.executor_prefix)
        if not remove:
            kept += 1
            print(f"kept {prefix_url} ({why})")
            continue
        if not args.dry_run:
            backend.delete_prefix(keys.executor_prefix)
        removed += 1
        removed_objects += len(infos)
        removed_bytes += size
        print(f"{verb} {prefix_url}: {len(infos)} objects, {_human(size)} ({why})")
    print(f"{verb} {removed} executor prefixes ({removed_objects} objects, {_human(removed_bytes)}, "
          f"{removed_bytes} bytes) under {backend.url(base)}; kept {kept}")
    return 0


# ---------------------------------------------------------------------------- config
_SECRET_WORDS = ("secret", "password", "token", "key", "credential", "connection_string", "sas")


def _is_secret(section: str, option: str) -> bool:
    from .storage import storages

    if any(word in option.lower() for word in _SECRET_WORDS):
        return True
    if section in storages.names():
        declared = storages.declared(section)  # without importing the SDK where possible
        return declared is not None and option in declared.secrets
    return False


def cmd_config(args: argparse.Namespace) -> int:
    from .config import SETTINGS, config_file_path

    config = _load_config()
    path = config_file_path()
    rows: List[Tuple[str, Any, str]] = []
    for key in SETTINGS:
        rows.append((key, config[key], config.sources.get(key, "default")))
    for section, options in sorted(config.sections().items()):
        for option, value in sorted(options.items()):
            shown = "****" if _is_secret(section, option) else value
            rows.append((f"{section}.{option}", shown, config.sources.get(f"{section}.{option}", "?")))
    if args.json:
        _print_json({"file": path, "file_exists": os.path.exists(path),
                     "settings": {k: {"value": v, "source": s} for k, v, s in rows}})
        return 0
    print(f"configuration file: {path}{'' if os.path.exists(path) else ' (not found)'}")
    width = max(len(k) for k, _v, _s in rows)
    texts = [json.dumps(v) if not isinstance(v, str) else v for _k, v, _s in rows]
    vwidth = max(len(t) for t in texts)
    for (key, _value, source), text in zip(rows, texts):
        print(f"  {key:<{width}}  {text:<{vwidth}}  ({source})")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run concurrent.futures/multiprocessing code on serverless platforms: "
                    "check a backend, manage storage and runtimes, clean up after crashed clients.",
        epilog="Settings come from keyword arguments > CLOUDPOOL_* variables > "
               "~/.cloudpool/config.yaml > defaults; `cloudpool config` shows them.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on failure, show the full Python traceback")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=argparse.ArgumentParser)
    commands.required = True

    # hello
    p = commands.add_parser("hello", help="run one call on the configured backend and say where it ran",
                            description="Run one call through CloudPoolExecutor on the configured "
                                        "backend and print where it ran and the round-trip time.")
    p.add_argument("--backend", help="compute backend (default: from the configuration)")
    p.add_argument("--storage", metavar="URL", help="storage URL (default: from the configuration)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up after this long without an answer (default: 120)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_hello)

    # storage
    p = commands.add_parser("storage", help="list, upload, download and remove objects",
                            description="Objects in any storage cloudpool supports: s3://, gs://, "
                                        "az://, cos://, http(s):// (read-only) and local paths. "
                                        "Options such as endpoints come from the configuration.")
    storage = p.add_subparsers(dest="storage_command", metavar="SUBCOMMAND", parser_class=argparse.ArgumentParser)
    storage.required = True
    s = storage.add_parser("ls", help="list objects and folders with their sizes",
                           description="List the objects and folders under URL (one level; -r for all).")
    s.add_argument("url", metavar="URL")
    s.add_argument("-r", "--recursive", action="store_true", help="list every object under URL")
    s.add_argument("-H", "--human-readable", action="store_true", help="sizes in KiB, MiB, ...")
    s.add_argument("-s", "--summarize", action="store_true", help="print the object count and total size")
    s.set_defaults(handler=cmd_storage_ls)
    s = storage.add_parser("put", help="upload a local file (or '-' for stdin)",
                           description="Upload LOCAL to URL; a URL ending in '/' keeps the file's name.")
    s.add_argument("local", metavar="LOCAL")
    s.add_argument("url", metavar="URL")
    s.add_argument("-r", "--recursive", action="store_true", help="upload a directory tree")
    s.set_defaults(handler=cmd_storage_put)
    s = storage.add_parser("get", help="download an object to a file (or '-' for stdout)",
                           description="Download URL to LOCAL (default: its name in the current "
                                       "directory; '-' writes to stdout).")
    s.add_argument("url", metavar="URL")
    s.add_argument("local", metavar="LOCAL", nargs="?")
    s.set_defaults(handler=cmd_storage_get)
    s = storage.add_parser("rm", help="remove an object (or everything under a prefix with -r)",
                           description="Remove the object URL; with -r, every object under URL/ "
                                       "(a bare bucket is only removed with -r).")
    s.add_argument("url", metavar="URL")
    s.add_argument("-r", "--recursive", action="store_true", help="remove everything under URL/")
    s.set_defaults(handler=cmd_storage_rm)

    # runtime
    p = commands.add_parser("runtime", help="build, deploy, list and delete runtimes",
                            description="Manage the runtimes (container images, functions) of "
                                        "backends that deploy them, such as aws_lambda and kubernetes.")
    runtime = p.add_subparsers(dest="runtime_command", metavar="SUBCOMMAND", parser_class=argparse.ArgumentParser)
    runtime.required = True

    def runtime_parser(name: str, help_text: str, with_name: bool = True) -> argparse.ArgumentParser:
        r = runtime.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        r.add_argument("--backend", help="compute backend (default: from the configuration)")
        if with_name:
            r.add_argument("name", metavar="NAME", help="runtime name")
        return r

    r = runtime_parser("build", "build a runtime with extra pip requirements")
    r.add_argument("--requirement", "-r", action="append", metavar="REQ",
                   help="a pip requirement to add (repeatable)")
    r.add_argument("--requirements-file", action="append", metavar="FILE",
                   help="a requirements.txt to add (repeatable)")
    r.add_argument("--output", metavar="PATH", help="where to write the build (backend-specific)")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(handler=cmd_runtime_build)
    r = runtime_parser("deploy", "create or update a runtime on the platform")
    r.add_argument("--memory", type=int, metavar="MB", help="memory per worker in MiB")
    r.add_argument("--timeout", type=float, metavar="SECONDS", help="longest run of one invocation")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(handler=cmd_runtime_deploy)
    r = runtime_parser("list", "list the runtimes the backend deployed", with_name=False)
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(handler=cmd_runtime_list)
    r = runtime_parser("delete", "delete a runtime from the platform")
    r.set_defaults(handler=cmd_runtime_delete)

    # clean
    p = commands.add_parser(
        "clean", help="remove the data crashed clients left in storage",
        description="Remove executor data left under the storage root by clients that died: "
                    "prefixes whose client ran on this host and is gone, or (other hosts, or no "
                    "owner marker) whose last activity is older than --older-than. A live "
                    "client's data on this host is never removed.")
    p.add_argument("--storage", metavar="URL", help="storage root (default: from the configuration)")
    p.add_argument("--older-than", type=parse_duration, default=24 * 3600.0, metavar="DURATION",
                   help="age after which other hosts' and unowned data counts as abandoned "
                        "(e.g. 30m, 24h, 7d; default 24h)")
    p.add_argument("--all", action="store_true",
                   help="remove every executor prefix except those of live clients on this host "
                        "(other hosts' clients may still be running!)")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.set_defaults(handler=cmd_clean)

    # config
    p = commands.add_parser("config", help="show the effective configuration and where each value came from",
                            description="Show every setting's effective value and its source "
                                        "(keyword arguments, environment, file or default); "
                                        "credentials are masked.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_config)
    return parser


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end was closed (POLLERR on our end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False  # not a real file descriptor (captured in tests) or no poll()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            print(f"{PROG}: error: {exc}", file=sys.stderr)  # a broken connection, not our reader
            return 1
        # `cloudpool storage get URL - | head`: the reader left. Point stdout at /dev/null
        # so the interpreter's final flush does not fail again (as the Python docs advise).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CommandError, *_EXPECTED_ERRORS) as exc:
        if args.traceback:
            raise
        message = str(exc) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m cloudpool.cli
    sys.exit(main())
