"""Multiple-round training against one round, at an equal training-token budget (PanGu-π Pro, §A.4).

The quickstart model (4 x 128, BPE 4,096 trained on the built-in corpus, context 256, batch 16, Muon +
AdamW, warmup-stable-decay) trains for the same number of tokens in 1, 2 or 3 rounds (refine ratio 0.5,
temperature 1: later rounds re-train on loss-weighted draws of the first round's batches), with several
seeds; a control draws round 2's batches uniformly (temperature 1e6), to separate choosing hard batches
from merely repeating some. Reported: validation bits per byte on the whole validation split.

Usage: .venv/bin/python bench/rounds.py [--tokens 600000] [--seeds 1 2] [--out DIR]
Results: DIR/results.json and a markdown table on stdout (default DIR: bench/results/rounds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import run_grid, table

SETTINGS = {
    "1 round": ["train.rounds=1"],
    "2 rounds": ["train.rounds=2", "train.refine_ratio=0.5"],
    "3 rounds": ["train.rounds=3", "train.refine_ratio=0.5"],
    "2 rounds, uniform draw": ["train.rounds=2", "train.refine_ratio=0.5", "train.refine_temperature=1e6"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--out", type=Path, default=Path("bench/results/rounds"))
    a = ap.parse_args()
    settings = {name: [*SETTINGS[name], "train.warmup_steps=20"] for name in a.only}
    rows = run_grid(settings, a.seeds, a.tokens, a.out)
    print(table(rows, a.only, a.seeds))


if __name__ == "__main__":
    main()
