#!/usr/bin/env bash
# The speedrun's batch and schedule against two changes found by equal-token screening: averaging the weights of the
# last quarter of training (train.average_from=0.75), and half the batch with a longer decay (batch 16, 70% of the
# run decaying). Two texts, two seeds, each run its own `tinylm speedrun` process, the arms alternating run by run;
# scored in nats per byte of the whole validation split. Every arm names its settings, so the table repeats whatever
# the defaults become. Results: bench/results/speedrun/schedule/. Run it alone (wall-clock).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH=. .venv/bin/python bench/speedrun_compare.py \
  --arm base="train.batch_size=32 train.decay_fraction=0.5 train.average_from=0" \
  --arm average="train.batch_size=32 train.decay_fraction=0.5 train.average_from=0.75" \
  --arm batch16-decay0.7="train.batch_size=16 train.decay_fraction=0.7 train.average_from=0" \
  --texts shakespeare kjv --seeds 1341 1342 --seconds 180 --out bench/results/speedrun/schedule
