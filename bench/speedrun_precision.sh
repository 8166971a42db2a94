#!/usr/bin/env bash
# The speedrun in fp32 against bf16 autocast, interleaved run by run, seeds 1337 and 1338, on Tiny Shakespeare
# and the King James text (bench/speedrun_compare.py). bf16 pays only on a CPU that multiplies it in hardware
# (tinylm.train.perf.cpu_has_native_bf16). Results: bench/results/speedrun/precision/. Nothing else should run:
# the budget is wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."
# The recorded table predates the BPE, Muon's decay and weight averaging in the speedrun's settings: all are pinned
# to what it ran.
then="data.tokenizer=byte train.muon_weight_decay=0 train.average_from=0"
PYTHONPATH=. .venv/bin/python bench/speedrun_compare.py --arm fp32="$then train.precision=fp32" \
  --arm bf16="$then train.precision=bf16" --texts shakespeare kjv --seeds 1337 1338 --seconds 180 \
  --out bench/results/speedrun/precision
