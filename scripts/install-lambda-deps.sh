#!/usr/bin/env bash
# Install what the aws_lambda backend's container test tier needs (as root, Debian bookworm):
#
#   podman + runc            a container engine moto can drive through its Docker-compatible API
#   containers.conf          host networking, runc, cgroupfs and ulimits that work inside this
#                            sandbox (.cache/lambda/containers.conf, used via CONTAINERS_CONF)
#   busybox image            moto copies each function's zip into a volume with a "busybox" container
#   python image             the image moto runs zip functions in: Debian's python3 (debootstrap)
#                            plus boto3 at the client's version from PyPI (real Lambda Python
#                            images ship boto3 too; Debian's 1.26 lacks options cloudpool's S3
#                            storage sets), imported with `podman import`, with
#                            runtime/aws_lambda/moto_bootstrap.py as its entry point (moto's
#                            container calling convention)
#
# No registry image can be pulled here, so both images are built from Debian packages. The
# debootstrap root file system is cached as .cache/lambda/python-rootfs.tar (git-ignored):
# a rerun only re-imports the image when the bootstrap script changed or the image is gone.
# Idempotent and quiet; prints "ok (already there)" for each satisfied step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/lambda"
ROOTFS_TAR="$CACHE/python-rootfs.tar"
CONF="$CACHE/containers.conf"
BOOTSTRAP="$ROOT/runtime/aws_lambda/moto_bootstrap.py"
# Must match tests/lambda_stack.py.
PY_IMAGE="localhost/cloudpool-lambda-python:3.11"
BUSYBOX_IMAGE="docker.io/library/busybox:latest"
SUITE="bookworm"
PY="${PYTHON:-python3}"

step() { printf '%-28s %s\n' "$1" "$2"; }
mkdir -p "$CACHE"

# -- 1. Debian packages ----------------------------------------------------------------
if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
        && command -v debootstrap >/dev/null 2>&1 && [ -x /bin/busybox ]; then
    step "podman, runc, debootstrap" "ok (already there)"
else
    step "podman, runc, debootstrap" "installing from Debian ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman runc debootstrap busybox-static >/dev/null
fi

# -- 2. containers.conf ----------------------------------------------------------------
# Why each line: this sandbox has no systemd and a cgroup v1 tree podman cannot delegate
# (cgroupfs), crun is not packaged for it but runc works, the containers must reach moto on
# 127.0.0.1 (host network namespace), and the default nofile/nproc limits exceed what the
# sandbox allows a container to set.
want_conf='[containers]
netns="host"
default_ulimits=["nofile=1024:1024","nproc=1024:1024"]
log_driver="k8s-file"

[engine]
runtime="runc"
cgroup_manager="cgroupfs"
events_logger="file"
'
if [ -f "$CONF" ] && [ "$(cat "$CONF")" == "$(printf '%s' "$want_conf")" ]; then
    step "containers.conf" "ok (already there)"
else
    printf '%s' "$want_conf" > "$CONF"
    step "containers.conf" "written to $CONF"
fi
export CONTAINERS_CONF="$CONF"

# -- 3. busybox image ------------------------------------------------------------------
if podman image exists "$BUSYBOX_IMAGE" 2>/dev/null; then
    step "busybox image" "ok (already there)"
else
    step "busybox image" "importing from Debian's busybox-static ..."
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/bin" "$tmp/tmp"
    cp /bin/busybox "$tmp/bin/busybox"
    for applet in sh sleep ls cat mkdir tar true; do ln -s busybox "$tmp/bin/$applet"; done
    tar -C "$tmp" -c . | podman import --quiet --change 'CMD ["/bin/sh"]' - "$BUSYBOX_IMAGE" >/dev/null
    rm -rf "$tmp"
fi

# -- 4. the python root file system (debootstrap, cached) ------------------------------
if [ -s "$ROOTFS_TAR" ]; then
    step "python rootfs" "ok (already there)"
else
    step "python rootfs" "debootstrap $SUITE (python3) + boto3 from PyPI, ~1 min ..."
    tmp="$(mktemp -d)"
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    debootstrap --variant=minbase --include=python3 "$SUITE" "$tmp/rootfs" \
        "${mirror:-http://deb.debian.org/debian}" > "$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$tmp"; exit 1; }
    # boto3 and its dependencies are pure Python: the host's pip installs them for the
    # image's python3.11 (which searches /usr/local/lib/python3.11/dist-packages first).
    boto3_version="$("$PY" -c 'import boto3; print(boto3.__version__)' 2>/dev/null || echo "")"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-input --no-compile \
        --target "$tmp/rootfs/usr/local/lib/python3.11/dist-packages" "boto3${boto3_version:+==$boto3_version}" \
        2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" -e "Running pip as the 'root' user" \
                        -e "dependency resolver does not currently" -e "which is incompatible" || true; }
    "$tmp/rootfs/usr/bin/python3" -c 'import sys; sys.path.insert(0, sys.argv[1]); import boto3' \
        "$tmp/rootfs/usr/local/lib/python3.11/dist-packages" \
        || { echo "boto3 did not install into the image's root file system" >&2; rm -rf "$tmp"; exit 1; }
    # Smaller image, faster container starts: no apt lists, docs or caches.
    rm -rf "$tmp/rootfs/var/lib/apt/lists/"* "$tmp/rootfs/var/cache/apt/"* \
        "$tmp/rootfs/usr/share/doc" "$tmp/rootfs/usr/share/man" "$tmp/rootfs/usr/share/locale"
    tar -C "$tmp/rootfs" -cf "$ROOTFS_TAR.part" .
    sha256sum "$ROOTFS_TAR.part" | cut -c1-16 > "$ROOTFS_TAR.sha256"
    mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$tmp"
fi

# -- 5. the python image: rootfs + bootstrap -------------------------------------------
# The image is labelled with both inputs' hashes: it is re-imported when either changed.
[ -s "$ROOTFS_TAR.sha256" ] || sha256sum "$ROOTFS_TAR" | cut -c1-16 > "$ROOTFS_TAR.sha256"
want_label="$(cat "$ROOTFS_TAR.sha256")-$(sha256sum "$BOOTSTRAP" | cut -c1-16)"
have_label="$(podman image inspect --format '{{index .Config.Labels "cloudpool.build"}}' "$PY_IMAGE" 2>/dev/null || true)"
if [ "$have_label" == "$want_label" ]; then
    step "python lambda image" "ok (already there)"
else
    step "python lambda image" "importing $PY_IMAGE ..."
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/usr/local/bin"
    cp "$BOOTSTRAP" "$tmp/usr/local/bin/cloudpool-lambda-bootstrap.py"
    cp "$ROOTFS_TAR" "$tmp/image.tar"
    # Append the bootstrap to a copy of the cached root file system: one tar, one import.
    tar -C "$tmp" -rf "$tmp/image.tar" ./usr/local/bin/cloudpool-lambda-bootstrap.py
    podman import --quiet \
        --change 'ENTRYPOINT ["/usr/bin/python3", "/usr/local/bin/cloudpool-lambda-bootstrap.py"]' \
        --change 'WORKDIR /var/task' \
        --change "LABEL cloudpool.build=$want_label" \
        "$tmp/image.tar" "$PY_IMAGE" >/dev/null
    rm -rf "$tmp"
fi

step "done" "aws_lambda container test dependencies are installed"
