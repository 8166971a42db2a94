#!/usr/bin/env bash
# Byte-level against a BPE of 1,024 tokens trained on each text's training split (inside the 180 s budget), two
# texts, two seeds, each run its own `tinylm speedrun` process, the arms alternating run by run; scored in nats
# per byte of the whole validation split. Results: bench/results/speedrun/tokenizer/. Run it alone (wall-clock).
set -euo pipefail
cd "$(dirname "$0")/.."
# The recorded table predates Muon's decay in the speedrun's settings: it is pinned to what the table ran.
PYTHONPATH=. .venv/bin/python bench/speedrun_compare.py --arm byte="data.tokenizer=byte train.muon_weight_decay=0" \
  --arm bpe1024="data.tokenizer=bpe data.vocab_size=1024 train.muon_weight_decay=0" --texts shakespeare kjv \
  --seeds 1337 1338 --seconds 180 --out bench/results/speedrun/tokenizer
