"""SPIN against the same compute spent on more ordinary training, from the same checkpoint.

For each seed: `run_spin` from START, then ordinary training (`train --init START` with START's own recipe settings)
for as many training FLOPs as SPIN spent sampling and training (evaluation left out of both). Compute is counted
with the model's flops_per_token (6·matmul params + attention): a sampled or reference-scored token costs a
forward pass, a third of a trained token, and a SPIN step trains its 2·B sequences and scores them under the
reference, 4/3 of a trained token each. Wall-clock seconds are recorded too. Both arms are scored the same way:
validation bits per byte on the same tokens, mean log-prob of the held-out real continuations, and distinct-2/3 and
repetition rate of samples after the same held-out prefixes.

  PYTHONPATH=. python bench/spin.py /tmp/qs --out bench/results/spin --seeds 0 1 --prefixes 256
  PYTHONPATH=. python bench/spin.py --out bench/results/spin --table
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from tinylm.checkpoint import load_checkpoint
from tinylm.data import TokenData, prepare_cached
from tinylm.steps import cached_step, write_json
from tinylm.train import train
from tinylm.train.objectives import sequence_logprobs
from tinylm.train.spin import SpinSettings, draw_windows, run_spin, sample_continuations, sample_metrics


def spin_flops(settings: SpinSettings, flops_per_token: float, iterations: int) -> float:
    P, C = settings.prefix_tokens, settings.continuation_tokens
    steps = -(-settings.epochs * settings.prefixes // settings.batch_size)
    sampled = (settings.prefixes + settings.eval_prefixes) * (P + C)
    trained = steps * settings.batch_size * 2 * (P + C - 1)
    return iterations * flops_per_token * (sampled / 3 + trained * 4 / 3)


def score_baseline(run: Path, settings: SpinSettings, val_bpb: float) -> dict:
    """The SPIN evaluation's metrics for an ordinarily trained run (no rewards: it has no reference)."""
    import torch

    ckpt = load_checkpoint(run)
    data = TokenData.load(prepare_cached(ckpt.cfg.data, progress=False))
    P, C = settings.prefix_tokens, settings.continuation_tokens
    held_out = draw_windows(data.val, settings.eval_prefixes, P + C, data.eos_id, np.random.default_rng([settings.seed]))
    model = ckpt.model.eval()
    with torch.no_grad():
        y = held_out[:, 1:].clone()
        y[:, :P - 1] = -1
        logp = sequence_logprobs(model(held_out[:, :-1]), y).mean().item()
    samples = sample_continuations(model, held_out[:, :P], settings, data.eos_id, [settings.seed, 0, 1])
    return {"val_bpb": val_bpb, "logp_real": logp, **sample_metrics(samples)}


def table(results: Path) -> str:
    """The comparison in markdown: per setting and seed, the kept SPIN iteration against more training."""
    lines = ["| setting | seed | val bits/byte (kept iteration) | more training | log p(real): SPIN, more training "
             "| distinct-2: SPIN, more training | SPIN s (sample + train) | more training s |",
             "|---|---:|---|---:|---|---|---:|---:|"]
    for path in sorted(results.glob("lr*-seed*.json")):
        r = json.loads(path.read_text())
        kept, more, st = r["spin"][r["spin_kept"]], r["more_training"], r["settings"]
        spent = sum(row.get("seconds_generate", 0) + row.get("seconds_train", 0) for row in r["spin"])
        trail = " → ".join(f"{row['val_bpb']:.4f}" for row in r["spin"])
        lines.append(f"| lr {st['lr']:g}, NLL weight {st['nll_weight']:g} | {r['seed']} | {trail} (kept "
                     f"{r['spin_kept']}) | {more['val_bpb']:.4f} | {kept['logp_real']:.1f}, {more['logp_real']:.1f} | "
                     f"{kept['distinct_2']:.3f}, {more['distinct_2']:.3f} | {spent:.0f} | {more['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("start", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table", action="store_true", help="print the comparison table of the results in --out")
    parser.add_argument("--work", type=Path, default=Path("/tmp/spin-bench/work"), help="runs (not committed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--prefixes", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--nll-weight", type=float, default=0.0)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--baseline-lr-scale", type=float, default=0.0,
                        help="0: more training re-warms to the recipe's peak learning rates and decays again; "
                             ">0: it runs at this share of them, constant, without warmup")
    a = parser.parse_args()
    if a.table:
        print(table(a.out))
        return
    start = load_checkpoint(a.start)
    fpt = start.model.flops_per_token(start.cfg.model.max_seq_len)
    for seed in a.seeds:
        settings = SpinSettings(iterations=a.iterations, prefixes=a.prefixes, lr=a.lr, nll_weight=a.nll_weight,
                                eval_tokens=a.eval_tokens, seed=seed)
        name = f"lr{a.lr:g}-nll{a.nll_weight:g}-seed{seed}"
        suffix = f"-baseline-lr{a.baseline_lr_scale:g}x" if a.baseline_lr_scale else ""
        tic = time.perf_counter()
        spin = run_spin(a.start, a.work / f"spin-{name}", settings)
        spin_seconds = time.perf_counter() - tic
        flops = spin_flops(settings, fpt, len(spin.rows) - 1)
        tokens = int(flops / fpt)
        # one baseline serves every SPIN setting of equal compute
        baseline_name = f"seed{seed}-tokens{tokens}" + (f"-lr{a.baseline_lr_scale:g}x" if a.baseline_lr_scale else "")

        def baseline() -> dict:
            cfg = copy.deepcopy(start.cfg)
            t = cfg.train
            t.seed, t.max_steps, t.max_seconds, t.max_tokens = seed, 0, 0.0, tokens
            steps = tokens // (t.batch_size * t.grad_accum * cfg.model.max_seq_len)
            t.warmup_steps = min(t.warmup_steps, max(1, steps // 10))
            if a.baseline_lr_scale:  # the start finished its decay: continue near where it ended
                t.schedule, t.warmup_steps = "constant", 0
                t.lr, t.muon_lr = t.lr * a.baseline_lr_scale, t.muon_lr * a.baseline_lr_scale
            t.eval_every = t.ckpt_every = 0
            cfg.eval.max_tokens = a.eval_tokens
            data = TokenData.load(prepare_cached(cfg.data, progress=False))
            tic = time.perf_counter()
            run = a.work / f"train-{baseline_name}"
            result = train(cfg, data, start.tokenizer, run, init_from=a.start, overwrite=True)
            return {"steps": result.steps, "tokens": result.tokens, "seconds": time.perf_counter() - tic,
                    **score_baseline(run, settings, result.val_bits_per_byte)}

        more = cached_step(a.work / f"train-{baseline_name}.json", baseline)
        result = {"start": str(a.start), "seed": seed, "settings": dataclasses.asdict(settings),
                  "baseline_lr_scale": a.baseline_lr_scale, "flops_per_token": fpt, "flops": flops, "spin_seconds": spin_seconds, "spin": spin.rows,
                  "spin_kept": spin.kept, "spin_stopped": spin.stopped, "more_training": more}
        write_json(a.out / f"{name}{suffix}.json", result)
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
