"""Write the King James text of the built-in corpus to bench/results/kjv.txt (once) and print its path: the
second text of the speedrun benchmarks, which checks their settings are not tuned to Tiny Shakespeare."""

from pathlib import Path

from tinylm.data.corpus import builtin_documents

path = Path(__file__).resolve().parent / "results" / "kjv.txt"
if not path.is_file():
    *_, bible = builtin_documents()
    path.write_text(bible)
print(path)
