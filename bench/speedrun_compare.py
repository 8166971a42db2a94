"""Compare speedrun settings fairly: every arm runs `tinylm speedrun` as its own process (imports and setup inside
the budget, as a user's run), on each text and seed, the arms alternating run by run so that the host's drift hits
every arm alike. The first arm is the reference; each other arm is reported per (text, seed) pair against it.

Arms are NAME=OVERRIDES, the overrides space-separated config keys on top of the speedrun settings
(tinylm/speedrun.py); "base=" is the settings as they are. Texts: a path, or "shakespeare" (../shared/data/
tinyshakespeare.txt) and "kjv" (the King James text of the built-in corpus, to check that settings are not tuned
to one file). Results: DIR/NAME-TEXT-SEED.json, one per run (resumable: runs already there are kept), and a
markdown table on stdout. Run it alone: the budget is wall-clock, and a second torch process slows both.
Every run gets an empty Inductor cache of its own (TORCHINDUCTOR_CACHE_DIR), so an arm with train.compile=true pays
a cold compile inside its budget each time, as on a fresh machine, and not the few seconds a warm cache costs.
With --warm-cache every run shares one cache (DIR/inductor-cache), filled before the comparison by one compiled
10-second speedrun per text (not scored): a user's second and later runs on the same machine.

Usage:
  python bench/speedrun_compare.py --arm base= --arm deeper="model.n_layer=6" --out bench/results/speedrun/x
  python bench/speedrun_compare.py --arm fp32="train.precision=fp32" --arm bf16="train.precision=bf16" \\
      --texts shakespeare kjv --seeds 1337 1338 --seconds 180 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXTS = {"shakespeare": ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
         "kjv": ROOT / "bench" / "results" / "kjv.txt"}


def text_path(name: str) -> Path:
    if name == "kjv" and not TEXTS["kjv"].is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "kjv_text.py")], check=True, capture_output=True,
                       env={"PYTHONPATH": str(ROOT)})
    path = TEXTS.get(name, Path(name))
    if not path.is_file():
        sys.exit(f"speedrun_compare: text '{name}' ({path}) is not a file")
    return path.resolve()


def parse_arm(spec: str) -> tuple[str, list[str]]:
    name, sep, overrides = spec.partition("=")
    if not sep or not name or "/" in name:
        sys.exit(f"speedrun_compare: --arm '{spec}' is not NAME=OVERRIDES (e.g. deeper=\"model.n_layer=6\")")
    return name, overrides.split()


def speedrun(text: Path, seconds: float, result: Path, overrides: list[str], cache: Path | None) -> int:
    """Run `tinylm speedrun` in its own process, with `cache` (or an empty one) as its Inductor cache."""
    cmd = [sys.executable, "-m", "tinylm", "speedrun", "--text", str(text), "--seconds", str(seconds),
           "--json", str(result), *overrides]
    with tempfile.TemporaryDirectory(prefix="inductor-") as empty:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache or empty)}
        return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env=env).returncode


def run(arm: str, overrides: list[str], text: Path, text_name: str, seed: int, seconds: float, out: Path,
        cache: Path | None) -> dict:
    result = out / f"{arm}-{text_name}-{seed}.json"
    if not result.is_file():
        failed = speedrun(text, seconds, result, [f"train.seed={seed}", *overrides], cache)
        if failed:  # its own error is on stderr
            sys.exit(f"speedrun_compare: arm '{arm}' failed on {text_name}, seed {seed}; the runs before it are kept")
    report = json.loads(result.read_text())
    print(f"{arm} {text_name} {seed}: {report['val_nats_per_byte']:.4f} nats/byte, {report['train_tokens']:,} tokens "
          f"({report['tokens_per_s']:,.0f}/s)", flush=True)
    return report


def table(results: dict, arms: list[str], texts: list[str], seeds: list[int]) -> str:
    ref = arms[0]
    lines = ["| text | arm | nats/byte per seed | mean | Δ vs " + ref + " per seed | mean Δ | tokens (mean) |",
             "|---|---|---|---:|---|---:|---:|"]
    for text in texts:
        for arm in arms:
            vals = [results[arm, text, s]["val_nats_per_byte"] for s in seeds]
            deltas = [v - results[ref, text, s]["val_nats_per_byte"] for v, s in zip(vals, seeds)]
            tokens = statistics.mean(results[arm, text, s]["train_tokens"] for s in seeds)
            delta_cells = (", ".join(f"{d:+.4f}" for d in deltas), f"{statistics.mean(deltas):+.4f}") \
                if arm != ref else ("–", "–")
            lines.append(f"| {text} | {arm} | {', '.join(f'{v:.4f}' for v in vals)} | {statistics.mean(vals):.4f} "
                         f"| {delta_cells[0]} | {delta_cells[1]} | {tokens:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", action="append", required=True, help="NAME=OVERRIDES; the first is the reference")
    ap.add_argument("--texts", nargs="+", default=["shakespeare", "kjv"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338])
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--warm-cache", action="store_true",
                    help="every run shares one Inductor cache, compiled into before the first run")
    a = ap.parse_args()
    arms = dict(parse_arm(spec) for spec in a.arm)
    if len(arms) != len(a.arm):
        sys.exit("speedrun_compare: two --arm share a name")
    a.out.mkdir(parents=True, exist_ok=True)
    results = {}
    labels = [text if text in TEXTS else Path(text).stem for text in a.texts]
    cache = a.out / "inductor-cache" if a.warm_cache else None
    for text, label in zip(a.texts, labels):
        path = text_path(text)
        if cache and not (a.out / f"warm-up-{label}.json").is_file():
            print(f"warming the Inductor cache on {label}", flush=True)
            if speedrun(path, 10, a.out / f"warm-up-{label}.json", ["train.compile=true"], cache):
                sys.exit(f"speedrun_compare: the warm-up run on {label} failed")
        for seed in a.seeds:
            for arm, overrides in arms.items():
                results[arm, label, seed] = run(arm, overrides, path, label, seed, a.seconds, a.out, cache)
    print(table(results, list(arms), labels, a.seeds))


if __name__ == "__main__":
    main()
