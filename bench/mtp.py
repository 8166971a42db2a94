r"""Does multi-token prediction help a tiny model's next-token head? (docs next-techniques.md §2.3's protocol)

Arms: a baseline without MTP, and for each variant (model.mtp=sequential: one DeepSeek-V3 module; parallel: one
Gloeckle head) each weight λ under each schedule (constant, or the forward curriculum that ramps λ in over the
first quarter). Every arm trains the same data order from the same trunk weights per seed (the MTP modules are
built without touching the RNG the trunk draws from), under one budget: equal tokens (--budget tokens) or equal
wall-clock seconds (--budget seconds), where MTP's extra block and head cost it tokens. Only the next-token head
is scored: validation bits per byte (the first eval.max_tokens of the split), and the induction probe of
Gloeckle et al.: a made-up name is mentioned, two sentences follow, and it is mentioned again; the probe is the
accuracy of the greedy prediction of the name's second token at its second mention (its first mention is the
control: the name is random there). With --tasks, each run is also scored zero-shot on those tasks (the first
--limit items of each, tinylm's own harness: `tinylm eval RUN --tasks ...`), next-token head only; runs already in
results.json that lack a task's score get it from their kept checkpoint in DIR/runs, without retraining.

Sizes (built-in corpus, BPE 4,096, context 128, batch 8, the quickstart recipe's optimizer):
  1m   4 x 128 (~1.3M parameters)      10m  6 x 320 (~8.7M)      30m  8 x 512 (~27M)

Usage:
  python bench/mtp.py --size 1m --budget tokens --amount 150000 --seeds 0 1 2
  python bench/mtp.py --size 10m --budget seconds --amount 900 --seeds 0 1 2      # equal wall-clock, idle machine
  python bench/mtp.py --size 10m ... --tasks arc_easy,piqa,hellaswag --limit 500   # and zero-shot accuracy
  python bench/mtp.py --size 30m ... --only baseline   # one side only (--only arms: the other)
  python bench/mtp.py --size 30m --budget seconds --amount 900 --variants parallel --weights 0.3 \
      --schedules constant --paired   # one arm: each seed's baseline and arm at the same moment, one per core
  python bench/mtp.py --speculative DIR/runs/<run> [--tokens 200 --prompts 5 --temperature 0.8]  # drafting
  python bench/mtp.py --size 10m --budget tokens --table   # the table of every arm in results.json, no training
  python bench/mtp.py --size 30m --budget seconds --table --paired   # every --paired arm, one row each
  python bench/mtp.py --size 1m --cost   # what MTP costs in training tokens/s, measured side by side
Results: DIR/results.json (resumable: finished runs are kept) and a markdown table on stdout
(default DIR: bench/results/mtp/<size>-<budget>).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tinylm.checkpoint import find_checkpoint, load_checkpoint
from tinylm.config import load_config
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.eval.harness import run_benchmarks
from tinylm.faults import stop_on_sigterm
from tinylm.model import generate
from tinylm.model.generate import generate_speculative
from tinylm.tokenizer import Tokenizer
from tinylm.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import alternate, median  # noqa: E402  the throughput bench's burst helpers

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
SIZES = {
    "1m": ["model.n_layer=4", "model.d_model=128", "model.n_heads=4", "model.n_kv_heads=2"],
    "10m": ["model.n_layer=6", "model.d_model=320", "model.n_heads=5", "model.n_kv_heads=5"],
    "30m": ["model.n_layer=8", "model.d_model=512", "model.n_heads=8", "model.n_kv_heads=4"],
}
COMMON = ["model.max_seq_len=128", "train.batch_size=8", "train.warmup_steps=20", "train.max_steps=0",
          "train.max_seconds=0", "train.eval_every=0", "train.ckpt_every=0", "train.log_every=10",
          "eval.max_tokens=65536", "train.device=cpu"]


def arms(variants: list[str], weights: list[float], schedules: list[str]) -> dict[str, list[str]]:
    grid = {"baseline": []}
    for variant in variants:
        for schedule in schedules:
            for weight in weights:
                grid[f"{variant} λ={weight:g} {schedule}"] = [
                    f"model.mtp={variant}", "model.mtp_heads=1", f"train.mtp_weight={weight}",
                    f"train.mtp_schedule={schedule}"]
    return grid


def arm_order(name: str) -> tuple:
    """Table order: the baseline, then by variant, schedule and weight ("sequential λ=0.1 constant")."""
    if name == "baseline":
        return ()
    variant, weight, schedule = name.split()
    return variant != "sequential", schedule != "constant", float(weight.split("=")[1])


SYLLABLES = ["ka", "lo", "mi", "ren", "dor", "ta", "vel", "sha", "bri", "zu", "gan", "pol", "ter", "nix", "qua", "fe",
             "mor", "sil", "ur", "ved"]
SENTENCES = [" The road was long and the night was cold.", " Bread and wine were set upon the table.",
             " The king sent word to all his men.", " A wind came over the hills at evening.",
             " They spoke of the harvest and of the rain.", " The children ran down to the river.",
             " No one knew what the morning would bring.", " The old house stood at the end of the lane."]


@torch.no_grad()
def induction_probe(model, tokenizer: Tokenizer, n: int = 300, seed: int = 0) -> dict[str, float]:
    """Accuracy of the greedy guess of a made-up name's second token: at its second mention (induction) and at
    its first (the control)."""
    rng = random.Random(seed)
    model.eval()
    hits = {"second_mention": 0, "first_mention": 0}
    count = 0
    while count < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        name_ids = tokenizer.encode(" " + name)
        if len(name_ids) < 2:
            continue
        before = tokenizer.encode("There was once a traveller named")
        middle = tokenizer.encode("".join(rng.sample(SENTENCES, 2)) + " At last")
        ids = before + name_ids + middle + name_ids
        logits = model(torch.tensor([ids]))[0]
        first, second = len(before), len(before) + len(name_ids) + len(middle)
        hits["first_mention"] += int(logits[first].argmax()) == name_ids[1]
        hits["second_mention"] += int(logits[second].argmax()) == name_ids[1]
        count += 1
    return {k: v / n for k, v in hits.items()}


def zero_shot(run: Path, tasks: list[str], limit: int) -> dict[str, dict]:
    """Accuracy (and length-normalised accuracy, for choice tasks) of the run's next-token head per task."""
    report = run_benchmarks(run, tasks, limit=limit, progress=False)
    return {name: {"items": r["items"], "acc": r["acc"], **({"acc_norm": r["acc_norm"]} if "acc_norm" in r else {})}
            for name, r in report["tasks"].items()}


def add_zero_shot(row: dict, run_dir: Path, tasks: list[str], limit: int) -> bool:
    """Score the tasks `row` lacks at this limit; False when its checkpoint is gone."""
    scored = row.setdefault("zero_shot", {})
    missing = [t for t in tasks if scored.get(t, {}).get("limit") != limit]
    if not missing:
        return True
    try:
        find_checkpoint(run_dir)
    except TinyLMError:
        return False
    for name, result in zero_shot(run_dir, missing, limit).items():
        scored[name] = {**result, "limit": limit}
    return True


def run_arms(grid: dict[str, list[str]], seeds: list[int], size: str, budget: str, amount: float, out: Path,
             cache_dir: str, tasks: list[str] | None = None, limit: int = 500) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    rows = json.loads(results_file.read_text()) if results_file.is_file() else []
    stop = f"train.max_tokens={int(amount)}" if budget == "tokens" else f"train.max_seconds={amount}"

    def run_dir_of(name: str, seed: int) -> Path:
        return out / "runs" / f"{name.replace(' ', '_')}-seed{seed}"

    for row in rows if tasks else []:  # finished runs: score the tasks they lack from their kept checkpoints
        if row["name"] in grid and row["seed"] in seeds:
            if add_zero_shot(row, run_dir_of(row["name"], row["seed"]), tasks, limit):
                results_file.write_text(json.dumps(rows, indent=1) + "\n")
            else:
                print(f"{row['name']} seed {row['seed']}: its checkpoint is gone, so no zero-shot score", flush=True)
    for seed in seeds:  # seed-major, so an interrupted sweep has every arm at the first seeds
        for name, overrides in grid.items():
            if any(r["name"] == name and r["seed"] == seed for r in rows):
                continue
            cfg = load_config(RECIPE, [*COMMON, *SIZES[size], *overrides, f"train.seed={seed}", stop,
                                       f"data.cache_dir={cache_dir}"])
            data_dir = prepare_cached(cfg.data)
            run_dir = run_dir_of(name, seed)
            result = train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), run_dir, overwrite=True,
                           progress=False)
            ckpt = load_checkpoint(run_dir)
            rows.append({"name": name, "seed": seed, "overrides": overrides, "size": size, "budget": budget,
                         "amount": amount, "steps": result.steps, "tokens": result.tokens,
                         "seconds": round(result.seconds, 1), "params": result.params,
                         "val_bpb": result.val_bits_per_byte, "val_loss": result.val_loss,
                         "induction": induction_probe(ckpt.model, ckpt.tokenizer)})
            if tasks:
                add_zero_shot(rows[-1], run_dir, tasks, limit)
            results_file.write_text(json.dumps(rows, indent=1) + "\n")
            print(f"{name} seed {seed}: {result.val_bits_per_byte:.4f} bpb, induction "
                  f"{rows[-1]['induction']['second_mention']:.3f}, {result.tokens:,} tokens, {result.seconds:.0f} s",
                  flush=True)
    return rows


def run_paired(a: argparse.Namespace, grid: dict[str, list[str]], out: Path) -> list[dict]:
    """Each seed's baseline and its one MTP arm trained at the same moment, one per core (one thread each, the
    baseline's core alternating by seed), so a change in the host's speed hits both alike: two child runs of this
    script (--only baseline, --only arms) into OUT/sides/, whose rows join OUT/results.json only when both sides
    of the seed have finished. A seed with one side missing is trained again from scratch on both sides."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit(f"mtp.py: --paired needs two cores to run on; this process may use {len(cores)}")
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    rows = json.loads(results_file.read_text()) if results_file.is_file() else []
    arm = next(name for name in grid if name != "baseline")
    child = [sys.executable, str(Path(__file__).resolve()), "--size", a.size, "--budget", a.budget, "--amount",
             f"{a.amount:g}", "--variants", *a.variants, "--weights", *(f"{w:g}" for w in a.weights), "--schedules",
             *a.schedules, "--cache-dir", a.cache_dir, "--limit", str(a.limit),
             *(["--tasks", a.tasks] if a.tasks else [])]
    def side_dir(side: str, seed: int) -> Path:
        return out / "sides" / f"{side}-seed{seed}"

    for seed in a.seeds:
        if {r["name"] for r in rows if r["seed"] == seed} >= {"baseline", arm}:
            continue
        rows = [r for r in rows if r["seed"] != seed]
        sides = {"baseline": cores[seed % 2], "arms": cores[1 - seed % 2]}
        procs = {}
        for side, core in sides.items():
            side_out = side_dir(side, seed)
            (side_out / "results.json").unlink(missing_ok=True)  # both sides train now, or neither row counts
            side_out.mkdir(parents=True, exist_ok=True)
            with (side_out / "log.txt").open("w") as log:
                procs[side] = subprocess.Popen(
                    [*child, "--seeds", str(seed), "--only", side, "--out", str(side_out)], stdout=log,
                    stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                    preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
            print(f"seed {seed}: {side} on core {core} (log: {side_out / 'log.txt'})", flush=True)
        try:
            with stop_on_sigterm():
                while any(p.poll() is None for p in procs.values()) and not any(p.returncode for p in procs.values()):
                    time.sleep(1)  # a side that fails stops the other at once (below), not after its whole budget
                failed = [side for side, proc in procs.items() if proc.returncode]
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Stopped)
            raise SystemExit(f"mtp.py: stopped; seed {seed}'s pair is not kept (run the same command again to "
                             "train it)")
        finally:  # the sides stop too (at their next step: they save first), so nothing trains on unpaired
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
        if failed:
            logs = ", ".join(str(side_dir(side, seed) / "log.txt") for side in failed)
            raise SystemExit(f"mtp.py: seed {seed}: the {' and '.join(failed)} side{'s' * (len(failed) > 1)} failed; "
                             f"see {logs}")
        for side in sides:
            rows += json.loads((side_dir(side, seed) / "results.json").read_text())
        results_file.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def cost(size: str, steps: int, bursts: int, cache_dir: str, out: Path) -> dict:
    """Training tokens/s of the baseline and of each variant (λ does not change the work), in one process,
    the three taking turns burst by burst (each burst a short run of `steps` steps from a fresh model), so
    a change in the host's speed hits all of them alike; the median burst of each, and its ratio to the
    baseline's. This is what an equal-wall-clock run costs MTP in tokens, without the host's drift between
    runs that are minutes apart."""
    sides = {name.split()[0]: overrides
             for name, overrides in arms(["sequential", "parallel"], [0.1], ["constant"]).items()}
    work = out / "runs" / "cost"
    configs = {name: load_config(RECIPE, [*COMMON, *SIZES[size], *overrides, f"train.max_steps={steps}",
                                          "eval.max_tokens=1024", f"data.cache_dir={cache_dir}"])
               for name, overrides in sides.items()}
    data_dir = prepare_cached(configs["baseline"].data, progress=False)  # one corpus for every side
    data, tokenizer = TokenData.load(data_dir), Tokenizer.load(data_dir)

    def burst(name: str):
        def run() -> dict:
            result = train(configs[name], data, tokenizer, work / name, overwrite=True, progress=False)
            return {"tokens_per_second": result.tokens_per_second}
        return run

    runs = alternate({name: burst(name) for name in sides}, bursts)
    rates = {name: median(rs, "tokens_per_second") for name, rs in runs.items()}
    return {"size": size, "steps": steps, "bursts": bursts, "threads": torch.get_num_threads(),
            "tokens_per_second": rates, "bursts_tokens_per_second": {n: [r["tokens_per_second"] for r in rs]
                                                                     for n, rs in runs.items()},
            "ratio_to_baseline": {n: rates[n] / rates["baseline"] for n in sides}}


def seed_deltas(rows: list[dict], name: str) -> dict[int, float]:
    """Arm NAME's validation bits per byte minus the baseline's, per seed both have in ROWS."""
    base = {r["seed"]: r["val_bpb"] for r in rows if r["name"] == "baseline"}
    return {r["seed"]: r["val_bpb"] - base[r["seed"]] for r in rows if r["name"] == name and r["seed"] in base}


def table(rows: list[dict], names: list[str]) -> str:
    def spread(values: list[float]) -> str:
        return f"{max(values) - min(values):.4f}" if len(values) > 1 else "–"

    # zero-shot columns: the tasks every row of the table has, at one limit
    shown = [r for r in rows if r["name"] in names]
    tasks = sorted(set.intersection(*[set(r.get("zero_shot", {})) for r in shown])) if shown else []
    tasks = [t for t in tasks if len({r["zero_shot"][t]["limit"] for r in shown}) == 1]
    lines = ["| arm | val bpb per seed | mean | spread | Δ vs baseline: mean (per seed) | "
             "induction 2nd / 1st mention | "
             + "".join(f"{t} acc (first {shown[0]['zero_shot'][t]['limit']}) | " for t in tasks) + "tokens | s |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---:|---:|"]
    for name in names:
        rs = [r for r in rows if r["name"] == name]
        if not rs:
            continue
        bpb = [r["val_bpb"] for r in rs]
        paired = list(seed_deltas(rows, name).values())
        delta = (f"{statistics.mean(paired):+.4f} ({', '.join(f'{d:+.4f}' for d in paired)})"
                 if paired and name != "baseline" else "–")
        ind2 = statistics.mean(r["induction"]["second_mention"] for r in rs)
        ind1 = statistics.mean(r["induction"]["first_mention"] for r in rs)
        tokens, seconds = statistics.mean(r["tokens"] for r in rs), statistics.mean(r["seconds"] for r in rs)
        accs = "".join(f"{statistics.mean(r['zero_shot'][t]['acc'] for r in rs):.3f} | " for t in tasks)
        lines.append(f"| {name} | {', '.join(f'{b:.4f}' for b in bpb)} | {statistics.mean(bpb):.4f} | "
                     f"{spread(bpb)} | {delta} | {ind2:.3f} / {ind1:.3f} | {accs}{tokens:,.0f} | {seconds:.0f} |")
    return "\n".join(lines)


def speculative(run: Path, n_tokens: int, n_prompts: int, temperature: float) -> None:
    """Decoding from the run's validation text, plain and self-speculative: acceptance and tokens/s (and at
    temperature 0 whether the outputs are identical)."""
    ckpt = load_checkpoint(run)
    model = ckpt.model.eval()
    data = TokenData.load(prepare_cached(ckpt.cfg.data, progress=False))
    prompts = [data.val[i * 5000:i * 5000 + 32].astype("int64").tolist() for i in range(n_prompts)]
    torch.set_num_threads(1)
    plain_s = fast_s = 0.0
    drafted = accepted = same = 0
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        plain = generate(model, prompt, n_tokens, temperature, generator=torch.Generator().manual_seed(i))
        plain_s += time.perf_counter() - start
        start = time.perf_counter()
        fast, stats = generate_speculative(model, prompt, n_tokens, temperature,
                                           generator=torch.Generator().manual_seed(i))
        fast_s += time.perf_counter() - start
        drafted, accepted, same = drafted + stats.drafted, accepted + stats.accepted, same + (fast == plain)
    total = n_tokens * n_prompts
    identical = f"identical outputs {same}/{n_prompts}; " if temperature == 0 else ""
    print(f"{run}: {ckpt.cfg.model.mtp} x{ckpt.cfg.model.mtp_heads}; temperature {temperature:g}, "
          f"{n_prompts} prompts x {n_tokens} tokens, 1 thread: {identical}acceptance {accepted / max(drafted, 1):.1%} "
          f"({accepted}/{drafted}); plain {total / plain_s:,.0f} tokens/s, speculative {total / fast_s:,.0f} tokens/s "
          f"({plain_s / fast_s:.2f}x)")


def paired_summary(root: Path, tokens_rows: list[dict]) -> str:
    """One row per arm run with --paired (each a folder under ROOT): its difference in validation bits per byte
    from the baseline trained at the same moment, per seed, their mean and how many are below zero, the arm's
    tokens as a share of that baseline's, and beside it the same arm's mean difference at equal tokens
    (TOKENS_ROWS, the matching equal-tokens sweep; "–" where it lacks the arm)."""
    def signed(value: float) -> str:
        return f"{value:+.4f}".replace("-", "−")

    found = {}
    for results_file in sorted(root.glob("*/results.json")):
        rows = json.loads(results_file.read_text())
        for name in {r["name"] for r in rows} - {"baseline"}:
            found[name] = rows
    if not found:
        raise SystemExit(f"mtp.py: no arm trained with --paired under {root}; run one first (see --help)")
    lines = ["| arm | Δ bpb per seed (paired) | mean | seeds below 0 | arm's tokens ÷ baseline's | Δ at equal tokens |",
             "|---|---|---:|---:|---:|---:|"]
    for name in sorted(found, key=arm_order):
        rows = found[name]
        paired = seed_deltas(rows, name)
        if not paired:
            continue
        tokens = {r["seed"]: r["tokens"] for r in rows if r["name"] == "baseline"}
        ratios = [r["tokens"] / tokens[r["seed"]] for r in rows if r["name"] == name and r["seed"] in tokens]
        at_tokens = seed_deltas(tokens_rows, name)
        values = [paired[seed] for seed in sorted(paired)]
        lines.append(f"| {name} | {', '.join(map(signed, values))} | {signed(statistics.mean(values))} | "
                     f"{sum(d < 0 for d in values)} of {len(values)} | {min(ratios):.3f}–{max(ratios):.3f} | "
                     + (f"{signed(statistics.mean(at_tokens.values()))} |" if at_tokens else "– |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="1m")
    ap.add_argument("--budget", choices=["tokens", "seconds"], default="tokens")
    ap.add_argument("--amount", type=float, default=150_000, help="tokens or seconds per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["sequential", "parallel"])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    ap.add_argument("--schedules", nargs="+", default=["constant", "curriculum"])
    ap.add_argument("--only", choices=["baseline", "arms"],
                    help="run only the baseline, or only the MTP arms (--paired runs a seed's two sides this way, "
                         "one per core)")
    ap.add_argument("--paired", action="store_true",
                    help="train each seed's baseline and the one MTP arm given at the same moment, one per core, "
                         "so the host's drift hits both alike (default DIR: bench/results/mtp/"
                         "<size>-<budget>-paired/<variant>-<weight>-<schedule>)")
    ap.add_argument("--cache-dir", default="data_cache", help="data.cache_dir: where the prepared corpus is kept")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tasks", help="zero-shot tasks to score every run on, comma-separated (see tinylm eval --help)")
    ap.add_argument("--limit", type=int, default=500, help="--tasks: the first N items of each task")
    ap.add_argument("--table", action="store_true",
                    help="print the table of every arm already in DIR/results.json, training nothing (with "
                         "--paired: one row per arm trained with --paired under DIR, default bench/results/mtp/"
                         "<size>-<budget>-paired, beside its Δ at equal tokens)")
    ap.add_argument("--cost", action="store_true",
                    help="measure MTP's training tokens/s against the baseline's side by side, training nothing to "
                         "score (results: DIR/cost.json)")
    ap.add_argument("--steps", type=int, default=30, help="--cost: training steps per burst")
    ap.add_argument("--bursts", type=int, default=5, help="--cost: bursts of each side (after one warm-up each)")
    ap.add_argument("--speculative", type=Path, metavar="RUN", help="measure speculative decoding on a trained run")
    ap.add_argument("--tokens", type=int, default=200, help="--speculative: new tokens per prompt")
    ap.add_argument("--prompts", type=int, default=5, help="--speculative: prompts from the validation split")
    ap.add_argument("--temperature", type=float, default=0.0, help="--speculative: 0 = greedy")
    a = ap.parse_args()
    if (a.only and (a.speculative or a.table or a.cost)) or (a.paired and (a.speculative or a.cost)):
        ap.error("--only and --paired choose how a sweep trains; --cost and --speculative train no sweep "
                 "(--table --paired: the summary of every arm trained with --paired)")
    if a.speculative:
        return speculative(a.speculative, a.tokens, a.prompts, a.temperature)
    results = Path("bench/results/mtp")
    out = a.out or results / f"{a.size}-{a.budget}"
    paired_root = results / f"{a.size}-{a.budget}-paired"  # --paired: one folder per arm under it
    if a.table and a.paired:
        root = a.out or paired_root
        tokens_file = results / f"{a.size}-tokens" / "results.json"
        tokens_rows = json.loads(tokens_file.read_text()) if tokens_file.is_file() else []
        return print(paired_summary(root, tokens_rows))
    if a.table:
        results_file = out / "results.json"
        if not results_file.is_file():
            raise SystemExit(f"mtp.py: {results_file} does not exist; run the sweep first")
        rows = json.loads(results_file.read_text())
        return print(table(rows, sorted({r["name"] for r in rows}, key=arm_order)))
    torch.set_num_threads(1)
    if a.cost:
        if a.steps < 1 or a.bursts < 1:
            ap.error("--cost needs --steps and --bursts of at least 1")
        result = cost(a.size, a.steps, a.bursts, a.cache_dir, out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(json.dumps(result, indent=1) + "\n")
        rates, ratio = result["tokens_per_second"], result["ratio_to_baseline"]
        return print("\n".join(f"{n}: {rates[n]:,.0f} tokens/s ({ratio[n]:.3f}x the baseline)" for n in rates))
    grid = arms(a.variants, a.weights, a.schedules)
    if a.paired:
        if a.only or len(grid) != 2:
            ap.error("--paired takes one MTP arm (one variant, one weight, one schedule) and no --only")
        out = a.out or paired_root / f"{a.variants[0]}-{a.weights[0]:g}-{a.schedules[0]}"
        return print(table(run_paired(a, grid, out), list(grid)))
    if a.only == "baseline":
        grid = {"baseline": grid["baseline"]}
    elif a.only == "arms":
        del grid["baseline"]
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()] if a.tasks else None
    rows = run_arms(grid, a.seeds, a.size, a.budget, a.amount, out, a.cache_dir, tasks, a.limit)
    print(table(rows, list(grid)))


if __name__ == "__main__":
    main()
