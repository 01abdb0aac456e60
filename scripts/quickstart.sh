#!/usr/bin/env bash
# Install cloudpool (no cloud SDKs needed) and run the main example on the local default:
# a word count over generated text, partitioned by objects() and mapped on local workers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
"$PY" -m pip install --quiet --disable-pip-version-check --no-input -e . 2>&1 \
    | { grep -v -e "Running pip as the 'root' user" -e "is ignored: it is neither a file nor a directory" || true; }
exec "$PY" examples/wordcount.py "$@"
