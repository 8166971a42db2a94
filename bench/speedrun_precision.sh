#!/usr/bin/env bash
# The speedrun in fp32 against bf16 autocast, interleaved run by run, seeds 1337 and 1338, on Tiny Shakespeare
# and the King James text. bf16 pays only on a CPU that multiplies it in hardware (tinylm.train.perf.
# cpu_has_native_bf16). Results: bench/results/speedrun/precision/. Nothing else should run: the budget is
# wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/speedrun/precision
mkdir -p "$out"
kjv=$(PYTHONPATH=. .venv/bin/python bench/kjv_text.py)
for text in ../shared/data/tinyshakespeare.txt $kjv; do
  name=$(basename "${text%.*}")
  for seed in 1337 1338; do
    for prec in fp32 bf16; do
      .venv/bin/tinylm speedrun --text "$(realpath $text)" --seconds 180 --json "$out/$name-$prec-$seed.json" \
        "train.seed=$seed" "train.precision=$prec" > /dev/null
      .venv/bin/python -c "import json; r = json.load(open('$out/$name-$prec-$seed.json')); \
print('$name $prec $seed', round(r['val_nats_per_byte'], 4), r['train_tokens'], r['tokens_per_s'])"
    done
  done
done
