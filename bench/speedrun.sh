#!/usr/bin/env bash
# The CPU speedrun against its reference, measured back to back on the same machine:
#   tinylm speedrun --seconds 180   vs   nanoGPT's documented CPU recipe (bench/nanogpt_reference.py)
# on Tiny Shakespeare and, to check the settings are not tuned to one file, on the King James Bible
# from the built-in corpus (4.3 MB). Results: bench/results/*.json. Nothing else should run meanwhile.
# Usage: bash bench/speedrun.sh [TEXT ...]
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
mkdir -p bench/results
texts=("$@")
if [ ${#texts[@]} -eq 0 ]; then
  kjv=bench/results/kjv.txt
  $py -c "from tinylm.data.corpus import builtin_documents; *_, bible = builtin_documents(); open('$kjv', 'w').write(bible)"
  texts=(../shared/data/tinyshakespeare.txt "$kjv")
fi
for text in "${texts[@]}"; do
  name=$(basename "${text%.*}")
  .venv/bin/tinylm speedrun --text "$text" --seconds 180 --json "bench/results/speedrun-$name.json"
  $py bench/nanogpt_reference.py "$text" --json "bench/results/nanogpt-$name.json"
done
