#!/usr/bin/env bash
# Set up, train a small model on the built-in corpus (about 10 minutes on 2 CPU cores),
# then report validation bits per byte and print a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/tinylm train recipes/quickstart.yaml --out runs/quickstart --overwrite
.venv/bin/tinylm eval runs/quickstart
.venv/bin/tinylm sample runs/quickstart --prompt "ROMEO:" --max-tokens 300
