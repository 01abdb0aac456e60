"""An OpenStack Swift all-in-one on loopback, for the tests: ``python swift_aio.py DIR PORT``.

Writes a one-replica configuration under DIR (swift.conf, account/container/object
rings with one device each, the four servers' configs, a tempauth proxy with the SLO
and DLO middlewares), starts memcached (tempauth keeps its tokens there) and the
account, container, object and proxy servers from the ``swift`` PyPI package, each with
``workers = 0`` (one process, no forking), and stops them all when it is terminated.
The proxy answers on 127.0.0.1:PORT; auth URL ``http://127.0.0.1:PORT/auth/v1.0``,
user ``test:tester``, key ``testing``. Storage lives under DIR/srv (xattrs needed: ext4
and tmpfs have them). tests/servers.py ``swift_server()`` runs this as its subprocess.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import List

USER, KEY = "test:tester", "testing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed (pip install swift; apt-get install memcached)")
    return found


_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_us() -> None:  # in each child between fork and exec
    # If this supervisor is killed (SIGKILL after a stop timed out), the servers go too.
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def configure(root: str, proxy_port: int) -> dict:
    etc, srv = os.path.join(root, "etc"), os.path.join(root, "srv")
    os.makedirs(os.path.join(srv, "d1"), exist_ok=True)
    os.makedirs(etc, exist_ok=True)
    ports = {"object": _free_port(), "container": _free_port(), "account": _free_port(),
             "memcached": _free_port(), "proxy": proxy_port}
    _write(os.path.join(etc, "swift.conf"),
           "[swift-hash]\nswift_hash_path_suffix = cloudpool-tests\nswift_hash_path_prefix = cloudpool-tests\n"
           "[storage-policy:0]\nname = default\ndefault = yes\n")
    builder = _tool("swift-ring-builder")
    for kind in ("account", "container", "object"):
        path = os.path.join(etc, f"{kind}.builder")
        if os.path.exists(path):
            os.remove(path)
        subprocess.run([builder, path, "create", "4", "1", "1"], check=True, capture_output=True)
        subprocess.run([builder, path, "add", f"r1z1-127.0.0.1:{ports[kind]}/d1", "1"], check=True,
                       capture_output=True)
        # rebalance exits 1 with a warning on a one-device ring, yet writes the ring.
        subprocess.run([builder, path, "rebalance"], capture_output=True)
        _write(os.path.join(etc, f"{kind}-server.conf"),
               f"[DEFAULT]\ndevices = {srv}\nmount_check = false\nbind_ip = 127.0.0.1\n"
               f"bind_port = {ports[kind]}\nworkers = 0\nswift_dir = {etc}\n"
               f"[pipeline:main]\npipeline = {kind}-server\n[app:{kind}-server]\nuse = egg:swift#{kind}\n")
    filters = ["catch_errors", "gatekeeper", "healthcheck", "proxy_logging", "listing_formats",
               "bulk", "slo", "dlo", "copy"]
    _write(os.path.join(etc, "proxy-server.conf"),
           f"[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {proxy_port}\nworkers = 0\nswift_dir = {etc}\n"
           "[pipeline:main]\npipeline = catch_errors gatekeeper healthcheck proxy_logging cache "
           "listing_formats bulk slo dlo tempauth copy proxy_logging proxy-server\n"
           "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
           "allow_account_management = true\n"
           f"[filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = {KEY} .admin\n"
           f"[filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{ports['memcached']}\n"
           + "".join(f"[filter:{name}]\nuse = egg:swift#{name}\n" for name in filters))
    return ports


def main(argv: List[str]) -> int:
    root, proxy_port = argv[0], int(argv[1])
    ports = configure(root, proxy_port)
    etc = os.path.join(root, "etc")
    procs: List[subprocess.Popen] = []

    def stop(*_args) -> None:
        # Nothing here needs a clean shutdown (a test store): TERM, then KILL after 3 s.
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    procs.append(subprocess.Popen([_tool("memcached"), "-l", "127.0.0.1", "-p", str(ports["memcached"]),
                                   "-U", "0", "-u", "root" if os.geteuid() == 0 else os.environ.get("USER", "")],
                                  preexec_fn=_die_with_us))
    for kind in ("account", "container", "object", "proxy"):
        procs.append(subprocess.Popen([_tool(f"swift-{kind}-server"), os.path.join(etc, f"{kind}-server.conf")],
                                      preexec_fn=_die_with_us))
    while True:
        for proc in procs:
            if proc.poll() is not None:
                print(f"{proc.args[0]} exited with {proc.returncode}", file=sys.stderr)
                stop()
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
