#!/usr/bin/env bash
# Install every test dependency (the package's extras and the real servers the tests
# start on 127.0.0.1), then run the whole test suite, slow tiers included.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
bash scripts/install-test-deps.sh
skip=()
if [ "${CLOUDPOOL_SKIP_LAMBDA_TIER:-0}" = 1 ]; then
    # Its podman images were not installed; every other test still runs.
    skip=(--deselect tests/test_aws_lambda.py::LambdaContainerTest
          --deselect tests/test_aws_batch.py::BatchContainerTest)
fi
exec "$PY" -m pytest -q -p no:cacheprovider -o faulthandler_timeout=600 "${skip[@]}" "$@"
