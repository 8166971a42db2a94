"""Does PanGu-π Pro's learning-rate rule lr = lr0 · (B / B0)^0.5 hold for tiny models on CPU?

The quickstart model (4 x 128, BPE 4,096 on the built-in corpus) with AdamW everywhere (the rule is
derived for Adam), context 128, warmup-stable-decay, trains for the same number of tokens at batches of
4, 16 and 64 sequences (B = 512, 2,048 and 8,192 tokens). At B0 = 2,048 tokens lr0 = 2e-3; at the other
batches three learning rates: unchanged (lr0), the square-root rule (lr0 · (B/B0)^0.5, what
train.lr_scaling=sqrt sets) and the linear rule (lr0 · B/B0). Several seeds; validation bits per byte on
the whole validation split. The rule holds where its row beats both neighbours by more than the seeds
disagree.

Usage: .venv/bin/python bench/lr_batch.py [--tokens 400000] [--seeds 1 2] [--out DIR]
Results: DIR/results.json and a markdown table on stdout (default DIR: bench/results/lr_batch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import run_grid, table

LR0, B0_SEQUENCES, SEQ_LEN = 2e-3, 16, 128
COMMON = ["train.optimizer=adamw", f"model.max_seq_len={SEQ_LEN}", "train.warmup_steps=10"]


def settings() -> dict[str, list[str]]:
    grid = {f"batch {B0_SEQUENCES}, lr {LR0:g}": [f"train.batch_size={B0_SEQUENCES}", f"train.lr={LR0}"]}
    for sequences in (4, 64):
        f = sequences / B0_SEQUENCES
        for rule, lr in (("unchanged", LR0), ("sqrt rule", LR0 * f**0.5), ("linear rule", LR0 * f)):
            grid[f"batch {sequences}, lr {lr:g} ({rule})"] = [f"train.batch_size={sequences}", f"train.lr={lr}"]
    return {name: [*COMMON, *overrides] for name, overrides in grid.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=400_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench/results/lr_batch"))
    a = ap.parse_args()
    grid = settings()
    rows = run_grid(grid, a.seeds, a.tokens, a.out)
    print(table(rows, list(grid), a.seeds))


if __name__ == "__main__":
    main()
