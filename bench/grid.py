"""Train one recipe under several settings and seeds at an equal token budget, resumably (shared by the
bench scripts that compare training settings). Each finished run is a row in DIR/results.json."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from tinylm.config import load_config
from tinylm.data import TokenData, prepare_cached
from tinylm.tokenizer import Tokenizer
from tinylm.train import train

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
BUDGET = ["train.max_seconds=0", "train.max_steps=0", "train.eval_every=0", "train.ckpt_every=0", "eval.max_tokens=0"]


def run_grid(settings: dict[str, list[str]], seeds: list[int], tokens: int, out: Path) -> list[dict]:
    """settings: name -> overrides of the quickstart recipe. Trains every (name, seed) not yet in
    out/results.json for `tokens` tokens; returns all rows (validation bits per byte on the whole split)."""
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    rows = json.loads(results_file.read_text()) if results_file.is_file() else []
    for name, overrides in settings.items():
        for seed in seeds:
            if any(r["name"] == name and r["seed"] == seed and r["tokens"] >= tokens for r in rows):
                continue
            cfg = load_config(RECIPE, [*BUDGET, *overrides, f"train.seed={seed}", f"train.max_tokens={tokens}"])
            data_dir = prepare_cached(cfg.data)
            started = time.perf_counter()
            result = train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), out / "runs" / f"{name}-seed{seed}",
                           overwrite=True)
            rows.append({"name": name, "seed": seed, "overrides": overrides, "steps": result.steps,
                         "tokens": result.tokens, "val_bpb": result.val_bits_per_byte, "val_loss": result.val_loss,
                         "seconds": round(time.perf_counter() - started, 1)})
            results_file.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def table(rows: list[dict], names: list[str], seeds: list[int]) -> str:
    lines = ["| setting | val bits/byte per seed | mean | spread (max - min) |", "|---|---|---:|---:|"]
    for name in names:
        bpb = [r["val_bpb"] for r in rows if r["name"] == name and r["seed"] in seeds]
        lines.append(f"| {name} | {', '.join(f'{b:.4f}' for b in bpb)} | {statistics.mean(bpb):.4f} | "
                     f"{max(bpb) - min(bpb):.4f} |")
    return "\n".join(lines)
