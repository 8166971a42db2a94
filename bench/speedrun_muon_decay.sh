#!/usr/bin/env bash
# The speedrun's settings with and without decoupled weight decay on Muon's matrices (train.muon_weight_decay=0.5),
# two texts, two seeds, each run its own `tinylm speedrun` process, the arms alternating run by run; scored in nats
# per byte of the whole validation split. Results: bench/results/speedrun/muon-decay/. Run it alone (wall-clock).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=. .venv/bin/python bench/speedrun_compare.py --arm base="train.muon_weight_decay=0 train.average_from=0" \
  --arm muonwd0.5="train.muon_weight_decay=0.5 train.average_from=0" --texts shakespeare kjv --seeds 1339 1340 \
  --seconds 180 \
  --out bench/results/speedrun/muon-decay
