#!/usr/bin/env bash
# The CPU speedrun against its reference, measured back to back on the same machine:
#   tinylm speedrun --seconds 180   vs   nanoGPT's documented CPU recipe (bench/nanogpt_reference.py)
# on Tiny Shakespeare and, to check the settings are not tuned to one file, on the King James Bible
# from the built-in corpus (4.3 MB), for each seed in SEEDS (default: 1337 1338). With BEFORE=DIR (another
# checkout of tinylm, e.g. an older commit as a git worktree) the same speedrun also runs there, seed for
# seed, interleaved, as the "before" of a change (this checkout's .venv, that checkout's code).
# Results: bench/results/speedrun/*.json (OUT=DIR elsewhere). Nothing else should run meanwhile: the budget is wall-clock.
# Usage: [SEEDS="1 2"] [BEFORE=DIR] [OUT=DIR] bash bench/speedrun.sh [TEXT ...]
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
root=$(pwd)
out=${OUT:-bench/results/speedrun}
mkdir -p "$out"
texts=("$@")
if [ ${#texts[@]} -eq 0 ]; then
  texts=(../shared/data/tinyshakespeare.txt "$(PYTHONPATH=. $py bench/kjv_text.py)")
fi
for text in "${texts[@]}"; do
  name=$(basename "${text%.*}")
  path=$(realpath "$text")
  for seed in ${SEEDS:-1337 1338}; do
    .venv/bin/tinylm speedrun --text "$path" --seconds 180 --json "$out/$name-seed$seed.json" "train.seed=$seed"
    if [ -n "${BEFORE:-}" ]; then
      (cd "$BEFORE" && PYTHONPATH=. "$root/.venv/bin/python" -m tinylm speedrun --text "$path" --seconds 180 "train.seed=$seed") \
        | $py -c "import json, sys; r = json.load(sys.stdin); r['checkout'] = '$BEFORE'; print(json.dumps(r, indent=2))" \
        > "$out/before-$name-seed$seed.json"
    fi
  done
  $py bench/nanogpt_reference.py "$path" --json "$out/nanogpt-$name.json"
done
