#!/usr/bin/env bash
# Install every test dependency (the package's extras and the real servers the tests
# start on 127.0.0.1), then run the whole test suite, slow tiers included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
bash scripts/install-test-deps.sh
exec "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=600 "$@"
