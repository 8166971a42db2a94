#!/usr/bin/env bash
# Set up (with test dependencies) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/python -m pytest -q --durations=15 "$@"  # the 15 slowest tests, to keep the suite fast
