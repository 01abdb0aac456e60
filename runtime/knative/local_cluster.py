#!/usr/bin/env python3
"""Several cloudpool knative runtimes on this machine, each standing in for its own host.

This module owns the local stand-in for a Knative deployment that the tests and the
benchmark use: it starts ``server.py`` processes and, when it can, gives each one its
own network namespace. As root with iproute2 (``ip netns``), every runtime gets its own
IP address on a private bridge and listens on the same port, so client-to-service
traffic crosses a (virtual) network link, and killing a host closes its connections as
a dying machine would. Without root, runtimes listen on 127.0.0.1 on different ports.

Storage emulators the runtimes must reach listen on ``cluster.gateway`` (the bridge's
address, or 127.0.0.1): create the network first, start the emulator there, then start
the runtimes with the environment it needs::

    cluster = LocalCluster(4, token="t")
    cluster.create_network()
    ...start an S3 emulator on cluster.gateway...
    cluster.start(env={"AWS_ACCESS_KEY_ID": ...})
    CloudPoolExecutor(backend="knative", urls=cluster.urls, token="t", storage="s3://...")
    cluster.stop()   # kills every process and removes namespaces and bridge

Every server process runs in its own session, so ``kill(i)`` can SIGKILL a host's whole
process tree (server and worker processes) at once; the kernel also kills the servers if
the process that started them dies (PR_SET_PDEATHSIG), and namespaces left behind by a
process that no longer exists are removed by the next ``create_network``.

Run as a script it starts a cluster and prints the URLs until Ctrl-C::

    CLOUDPOOL_RUNTIME_TOKEN=t python runtime/knative/local_cluster.py --hosts 4
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Mapping, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
#: Every host listens on this port inside its namespace.
NETNS_PORT = 8080
#: Set to the host's index in each server's environment (inherited by its workers).
HOST_INDEX_ENV = "KNATIVE_LOCAL_HOST_INDEX"
_PREFIX = "cpk"
_NS_PATTERN = re.compile(rf"^{_PREFIX}-(\d+)-\d+$")
_PR_SET_PDEATHSIG = 1


def _load_prctl():
    # Resolved in the parent: loading a library between fork and exec can deadlock.
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"'ip {' '.join(args)}' failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def netns_available() -> Optional[str]:
    """None if network namespaces can be made here, else why not."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' command is not installed (apt-get install iproute2)"
    return None


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class Host:
    """One runtime server: its namespace (or none), address, process and log."""

    def __init__(self, index: int, ip: str, port: int, netns: Optional[str], concurrency: int,
                 env: Dict[str, str], log_path: str, extra_args: Sequence[str]) -> None:
        self.index = index
        self.ip = ip
        self.port = port
        self.netns = netns
        self.concurrency = concurrency
        self.env = env
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        where = f"netns {self.netns}" if self.netns else "loopback"
        return f"<Host {self.index} {self.url} ({where}) {'running' if self.running else 'stopped'}>"


class LocalCluster:
    """N runtime servers as separate "hosts" (network namespaces when possible)."""

    def __init__(self, hosts: int, *, token: str, concurrency: int = 2, netns: Optional[bool] = None,
                 heartbeat: float = 5.0, pythonpath: Sequence[str] = (), python: str = sys.executable,
                 log_dir: Optional[str] = None, start_timeout: float = 60.0) -> None:
        if hosts < 1:
            raise ValueError("a cluster needs at least one host")
        why_not = netns_available()
        if netns and why_not:
            raise RuntimeError(f"netns=True but {why_not}")
        self.use_netns = why_not is None if netns is None else netns
        self.why_no_netns = why_not
        self.initial_hosts = hosts
        self.token = token
        self.concurrency = concurrency
        self.heartbeat = heartbeat
        self.pythonpath = list(pythonpath)
        self.python = python
        self.start_timeout = start_timeout
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="cloudpool-knative-cluster-")
        self.hosts: List[Host] = []
        self.env: Dict[str, str] = {}
        self._tag = str(os.getpid())
        self._bridge = f"{_PREFIX}b{self._tag}"
        self._subnet: Optional[str] = None  # "10.213.X"
        self._network_ready = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ network
    @property
    def gateway(self) -> str:
        """This machine's address as every host sees it (bind storage emulators here)."""
        if self.use_netns:
            if self._subnet is None:
                raise RuntimeError("call create_network() first")
            return f"{self._subnet}.1"
        return "127.0.0.1"

    @property
    def urls(self) -> List[str]:
        return [h.url for h in self.hosts]

    @staticmethod
    def remove_stale() -> None:
        """Delete namespaces and bridges left by clusters whose process no longer exists."""
        if netns_available() is not None:
            return
        listing = _ip("netns", "list", check=False).stdout
        stale_tags = set()
        for line in listing.splitlines():
            name = line.split()[0] if line.split() else ""
            m = _NS_PATTERN.match(name)
            if m and not _alive(int(m.group(1))):
                _kill_netns_pids(name)
                _ip("netns", "del", name, check=False)
                stale_tags.add(m.group(1))
        links = _ip("-o", "link", "show", "type", "bridge", check=False).stdout
        for m in re.finditer(rf"\d+: ({_PREFIX}b(\d+))[:@]", links):
            if not _alive(int(m.group(2))):
                _ip("link", "del", m.group(1), check=False)

    def _pick_subnet(self) -> str:
        used = _ip("-4", "-o", "addr", check=False).stdout + _ip("-4", "route", check=False).stdout
        candidates = list(range(1, 255))
        random.shuffle(candidates)
        for x in candidates:
            subnet = f"10.213.{x}"
            if subnet + "." not in used:
                return subnet
        raise RuntimeError("no free 10.213.X.0/24 subnet for the cluster's bridge")

    def create_network(self) -> None:
        """Create the bridge (netns mode); idempotent. Loopback mode needs nothing."""
        if self._network_ready:
            return
        if self.use_netns:
            self.remove_stale()
            self._subnet = self._pick_subnet()
            try:
                _ip("link", "add", self._bridge, "type", "bridge")
                _ip("addr", "add", f"{self._subnet}.1/24", "dev", self._bridge)
                _ip("link", "set", self._bridge, "up")
            except RuntimeError:
                self._delete_network()
                raise
        self._network_ready = True

    def _add_namespace(self, index: int) -> str:
        ns = f"{_PREFIX}-{self._tag}-{index}"
        veth = f"{_PREFIX}v{self._tag}x{index}"
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self._bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{self._subnet}.{index + 2}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def _delete_network(self) -> None:
        for host in self.hosts:
            if host.netns:
                _kill_netns_pids(host.netns)
                _ip("netns", "del", host.netns, check=False)  # also deletes its veth pair
        if self.use_netns:
            _ip("link", "del", self._bridge, check=False)
        self._network_ready = False

    # ------------------------------------------------------------------ hosts
    def start(self, env: Optional[Mapping[str, str]] = None) -> "LocalCluster":
        """Create the network if needed and start the initial hosts; waits until all answer."""
        self.create_network()
        self.env = dict(env or {})
        try:
            for _ in range(self.initial_hosts - len(self.hosts)):
                self.add_host(start=False)
            for host in self.hosts:
                self._spawn(host)
            for host in self.hosts:
                self._wait_ready(host)
        except BaseException:
            self.stop()
            raise
        return self

    def add_host(self, *, concurrency: Optional[int] = None, env: Optional[Mapping[str, str]] = None,
                 extra_args: Sequence[str] = (), start: bool = True) -> Host:
        """One more host (its own namespace in netns mode); started and ready unless start=False."""
        self.create_network()
        with self._lock:
            index = len(self.hosts)
            if self.use_netns:
                if index + 2 > 254:
                    raise RuntimeError("a cluster has at most 252 hosts")
                ns = self._add_namespace(index)
                ip, port = f"{self._subnet}.{index + 2}", NETNS_PORT
            else:
                ns, ip, port = None, "127.0.0.1", _free_ports(1)[0]
            host_env = dict(self.env)
            host_env.update(env or {})
            host = Host(index, ip, port, ns, concurrency or self.concurrency, host_env,
                        os.path.join(self.log_dir, f"host{index}.log"), extra_args)
            self.hosts.append(host)
        if start:
            self._spawn(host)
            self._wait_ready(host)
        return host

    def _spawn(self, host: Host) -> None:
        argv = [self.python, SERVER, "--host", host.ip, "--port", str(host.port),
                "--concurrency", str(host.concurrency), "--heartbeat", str(self.heartbeat),
                "--log-level", "INFO", *host.extra_args]
        if host.netns:
            argv = ["ip", "netns", "exec", host.netns, *argv]
        env = dict(os.environ)
        env.update(host.env)
        paths = self.pythonpath + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env["CLOUDPOOL_RUNTIME_TOKEN"] = self.token
        # Lets code running on a host tell which host it is (tests, benchmarks).
        env[HOST_INDEX_ENV] = str(host.index)
        env["PYTHONUNBUFFERED"] = "1"
        # A host's temporary files (its workers' module bundles...) stay inside the
        # cluster's directory: kill() gives the processes no chance to remove them, stop()
        # removes the directory.
        env["TMPDIR"] = os.path.join(self.log_dir, f"host{host.index}-tmp")
        os.makedirs(env["TMPDIR"], exist_ok=True)
        log = open(host.log_path, "ab")
        try:
            host.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.log_dir, start_new_session=True,
                preexec_fn=(_die_with_parent if threading.current_thread() is threading.main_thread() else None),
            )
        finally:
            log.close()

    def _wait_ready(self, host: Host) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if host.proc is None or host.proc.poll() is not None:
                code = None if host.proc is None else host.proc.returncode
                raise RuntimeError(f"runtime host {host.index} ({host.url}) exited with code {code} while "
                                   f"starting; log {host.log_path}:\n{_tail(host.log_path)}")
            try:
                with urllib.request.urlopen(host.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"runtime host {host.index} did not answer on {host.url} within "
                                   f"{self.start_timeout:g} s; log {host.log_path}:\n{_tail(host.log_path)}")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL host ``index``'s whole process tree: the host dies mid-whatever."""
        host = self.hosts[index]
        proc, host.proc = host.proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: server + worker processes
            except ProcessLookupError:
                pass
            proc.wait()
        if host.netns:
            _kill_netns_pids(host.netns)

    def restart(self, index: int) -> Host:
        """Start host ``index`` again (same namespace, address and port) and wait until ready."""
        host = self.hosts[index]
        if host.running:
            return host
        self._spawn(host)
        self._wait_ready(host)
        return host

    def stop(self) -> None:
        """Kill every process of every host and remove the network (safe to call twice)."""
        for i in range(len(self.hosts)):
            self.kill(i)
        self._delete_network()
        self.hosts = []
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start(self.env)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, index: int, lines: int = 25) -> str:
        return _tail(self.hosts[index].log_path, lines)


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL whatever still runs in namespace ``ns`` (orphaned worker processes)."""
    out = _ip("netns", "pids", ns, check=False).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            continue


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run several cloudpool knative runtimes as local hosts.")
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--loopback", action="store_true", help="no network namespaces, even as root")
    args = parser.parse_args(argv)
    token = os.environ.get("CLOUDPOOL_RUNTIME_TOKEN")
    if not token:
        print("set CLOUDPOOL_RUNTIME_TOKEN to the token clients will send", file=sys.stderr)
        return 2
    cluster = LocalCluster(args.hosts, token=token, concurrency=args.concurrency,
                           netns=False if args.loopback else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        cluster.start()
        print(f"{len(cluster.hosts)} hosts ({'netns' if cluster.use_netns else 'loopback'}); "
              f"gateway {cluster.gateway}:")
        for url in cluster.urls:
            print("  " + url)
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
