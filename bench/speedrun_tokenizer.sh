#!/usr/bin/env bash
# Byte-level against a BPE of 1,024 tokens trained on each text's training split (inside the 180 s budget), two
# texts, two seeds, each run its own `tinylm speedrun` process, the arms alternating run by run; scored in nats
# per byte of the whole validation split. Results: bench/results/speedrun/tokenizer/. Run it alone (wall-clock).
set -euo pipefail
cd "$(dirname "$0")/.."
# The recorded table predates Muon's decay and weight averaging in the speedrun's settings: both are pinned to what
# the table ran.
none="train.muon_weight_decay=0 train.average_from=0"
PYTHONPATH=. .venv/bin/python bench/speedrun_compare.py --arm byte="data.tokenizer=byte $none" \
  --arm bpe1024="data.tokenizer=bpe data.vocab_size=1024 $none" --texts shakespeare kjv \
  --seeds 1337 1338 --seconds 180 --out bench/results/speedrun/tokenizer
