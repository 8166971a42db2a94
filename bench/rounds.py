"""Multiple-round training against one round, at an equal training-token budget (PanGu-π Pro, §A.4).

The quickstart model (4 x 128, BPE 4,096 trained on the built-in corpus, context 256, batch 16, Muon +
AdamW, warmup-stable-decay) trains for the same number of tokens in 1, 2 or 3 rounds (refine ratio 0.5,
temperature 1: later rounds re-train on loss-weighted draws of the first round's batches), with several
seeds. Reported: validation bits per byte on the whole validation split, mean and spread over seeds.

Usage: .venv/bin/python bench/rounds.py [--tokens 600000] [--seeds 1 2] [--rounds 1 2 3] [--out DIR]
Results: DIR/results.json and a markdown table on stdout (default DIR: bench/results/rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tinylm.config import load_config
from tinylm.data import TokenData, prepare_cached
from tinylm.tokenizer import Tokenizer
from tinylm.train import train

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


def run(rounds: int, seed: int, tokens: int, out: Path) -> dict:
    cfg = load_config(RECIPE, [f"train.rounds={rounds}", "train.refine_ratio=0.5", f"train.seed={seed}",
                               f"train.max_tokens={tokens}", "train.max_seconds=0", "train.max_steps=0",
                               "train.warmup_steps=20", "train.eval_every=0", "train.ckpt_every=0",
                               "eval.max_tokens=0"])
    data_dir = prepare_cached(cfg.data)
    started = time.perf_counter()
    result = train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), out / f"rounds{rounds}-seed{seed}",
                   overwrite=True)
    return {"rounds": rounds, "seed": seed, "steps": result.steps, "tokens": result.tokens,
            "val_bpb": result.val_bits_per_byte, "val_loss": result.val_loss,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", type=Path, default=Path("bench/results/rounds"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results_file = a.out / "results.json"
    rows = json.loads(results_file.read_text()) if results_file.is_file() else []
    for rounds in a.rounds:
        for seed in a.seeds:
            if any(r["rounds"] == rounds and r["seed"] == seed and r["tokens"] >= a.tokens for r in rows):
                continue  # resumable: finished runs are kept
            rows.append(run(rounds, seed, a.tokens, a.out / "runs"))
            results_file.write_text(json.dumps(rows, indent=1) + "\n")
    print("| rounds | seeds | val bits/byte per seed | mean | spread (max - min) |")
    print("|---|---|---|---:|---:|")
    for rounds in a.rounds:
        bpb = [r["val_bpb"] for r in rows if r["rounds"] == rounds and r["seed"] in a.seeds]
        print(f"| {rounds} | {len(bpb)} | {', '.join(f'{b:.4f}' for b in bpb)} | {statistics.mean(bpb):.4f} | "
              f"{max(bpb) - min(bpb):.4f} |")


if __name__ == "__main__":
    main()
