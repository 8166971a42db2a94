"""Self-play fine-tuning (SPIN, arXiv 2401.01335) of a base model on plain text (docs next-techniques.md §1.3).

The prompt is a prefix of P tokens of a training document, "real" its true continuation of C tokens, "synthetic"
the previous iteration's own sample of exactly C tokens after the same prefix (temperature 1, EOS suppressed, so
both sides have one length). Iteration t trains from iteration t−1's weights with iteration t−1 frozen as the
reference (objectives.spin), through the ordinary training loop (`train` with the SPIN objective and a data
source of pairs), so checkpoints, exact resume, the schedule and fault handling are the loop's own. Dropout is
off throughout (dropout_schedule=early, dropout_until=0): the log-prob ratios must compare fixed functions. The
loop counts "tokens" as batch_size × max_seq_len a step, as for any run; a SPIN step reads 2·B·(P + C − 1).

Every iteration is a list of steps whose outputs are files, written atomically; a step that finds its output is
skipped, so re-running the same command after a kill at any point continues, and on CPU ends where an
uninterrupted run would have:
  OUT/spin.json               the settings and the start run; another command on the same OUT is refused
  OUT/iterations/0/eval.json  metrics of the start model
  OUT/iterations/T/pairs/     generated chunks while generating (chunk-00003.pt)
  OUT/iterations/T/pairs.pt   prompts, real and synthetic continuations (training and evaluation pairs) and the
                              sha256 of the model that sampled them; reused only for that model
  OUT/iterations/T/run/       the training run (a tinylm run directory)
  OUT/iterations/T/train.json, eval.json   its training result and metrics
  OUT/metrics.jsonl           one line per iteration; OUT/spin.md (table), OUT/spin.png (plot)
  OUT/checkpoint/             the last iteration the stop rule kept, for `tinylm eval OUT`, `tinylm sample OUT`

Metrics of iteration T's model: validation bits per byte on real text (the stop rule: a rise of more than
max_bpb_rise, relative, over the start model ends the run and keeps the iteration before); on held-out pairs
(prefixes of the validation split, synthetic side sampled by iteration T−1) reward accuracy and margin against
iteration T−1 and the mean summed log-prob of the real continuation (it must not collapse); and on the model's
own samples after those prefixes, distinct-2/3 (unique n-grams / n-grams, over all samples) and the repetition
rate (share of 4-grams that repeat an earlier 4-gram of the same sample).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tinylm.checkpoint import CHECKPOINT, find_checkpoint, load_checkpoint
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.files import replace_folder
from tinylm.model.generate import generate_batch
from tinylm.progress import progress_bar
from tinylm.steps import cached_step, write_json
from tinylm.train.loop import StepInfo, autocast_for, resolve_device, train, validate
from tinylm.train.objectives import Batch, sequence_logprobs, spin

REPEAT_N = 4  # the n-gram length of the repetition rate (seq-rep-4, Welleck et al. 2019)


@dataclass
class SpinSettings:
    iterations: int = 3
    prefixes: int = 2000  # training pairs made per iteration
    prefix_tokens: int = 64
    continuation_tokens: int = 48
    beta: float = 0.1
    nll_weight: float = 0.0  # α of the NLL anchor on the real continuation; 0 = pure SPIN
    lr: float = 1e-4  # AdamW peak, warmup over the first 10% of steps, cosine to 0
    epochs: int = 1
    batch_size: int = 16  # pairs per step
    eval_prefixes: int = 64  # held-out pairs for the reward metrics, and samples for the sample metrics
    eval_tokens: int = 65536  # validation tokens scored for bits per byte (0 = the whole split)
    max_bpb_rise: float = 0.01  # stop rule: relative rise of validation bits per byte over the start model
    generate_batch: int = 64
    seed: int = 0

    def check(self) -> None:
        for name in ("iterations", "prefixes", "prefix_tokens", "continuation_tokens", "epochs", "batch_size",
                     "eval_prefixes", "generate_batch"):
            if getattr(self, name) < 1:
                raise TinyLMError(f"spin: {name.replace('_', '-')}={getattr(self, name)} must be at least 1")
        for name in ("nll_weight", "eval_tokens", "max_bpb_rise"):
            if not getattr(self, name) >= 0:
                raise TinyLMError(f"spin: {name.replace('_', '-')}={getattr(self, name)} must be at least 0")
        for name in ("beta", "lr"):
            if not getattr(self, name) > 0:
                raise TinyLMError(f"spin: {name}={getattr(self, name)} must be positive")


@dataclass
class PairData(TokenData):
    """TokenData whose training batches are SPIN pairs: B real rows then B synthetic rows, targets -1 on the
    prompt. Validation is the real text's, as for any run."""
    real: torch.Tensor  # (N, P + C) prompt + true continuation
    synthetic: torch.Tensor  # (N, P + C) prompt + the reference's continuation
    prefix_tokens: int

    def batch(self, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs for `step`: epochs walk a fresh permutation of the pairs each, seeded by (seed, epoch), so a
        resumed run draws what an uninterrupted one would."""
        n = len(self.real)
        positions = range(step * batch_size, (step + 1) * batch_size)
        index = [np.random.default_rng([seed, p // n]).permutation(n)[p % n] for p in positions]
        return pair_batch(self.real[index], self.synthetic[index], self.prefix_tokens)


def pair_batch(real: torch.Tensor, synthetic: torch.Tensor, prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of B real rows then B synthetic rows; the prompt's targets are -1 (context, not scored)."""
    rows = torch.cat([real, synthetic])
    y = rows[:, 1:].clone()
    y[:, :prefix_tokens - 1] = -1
    return rows[:, :-1], y


@dataclass
class SpinResult:
    rows: list[dict]  # eval.json of each iteration, the start model first
    kept: int  # the iteration in OUT/checkpoint
    stopped: str  # why iterating ended before the last iteration, or ""


def model_hash(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()


def draw_windows(tokens: np.ndarray, count: int, length: int, eos_id: int, rng: np.random.Generator) -> torch.Tensor:
    """`count` windows of `length` tokens that hold no EOS (each lies inside one document), (count, length)."""
    if len(tokens) < length:
        raise TinyLMError(f"a split of {len(tokens)} tokens has no window of {length}; lower --prefix-tokens or "
                          "--continuation-tokens, or use more text")
    eos_before = np.concatenate([[0], np.cumsum(np.asarray(tokens) == eos_id)])
    starts = np.arange(len(tokens) - length + 1)
    clean = starts[eos_before[starts + length] == eos_before[starts]]
    if len(clean) == 0:
        raise TinyLMError(f"no document is {length} tokens long; lower --prefix-tokens or --continuation-tokens")
    chosen = rng.choice(clean, size=count, replace=len(clean) < count)
    return torch.from_numpy(np.stack([tokens[s:s + length] for s in chosen]).astype(np.int64))


def sample_metrics(samples: torch.Tensor) -> dict:
    """distinct-2/3 over all samples (Li et al. 2016) and the share of 4-grams repeating one earlier in the
    same sample."""
    rows = samples.tolist()
    out = {}
    for n in (2, 3):
        grams = [tuple(r[i:i + n]) for r in rows for i in range(len(r) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / max(len(grams), 1)
    repeats = total = 0
    for r in rows:
        seen = set()
        for i in range(len(r) - REPEAT_N + 1):
            gram = tuple(r[i:i + REPEAT_N])
            repeats += gram in seen
            seen.add(gram)
            total += 1
    out["repetition_rate"] = repeats / max(total, 1)
    return out


def _save_atomic(value, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)


def sample_continuations(model, prompts: torch.Tensor, settings: SpinSettings, eos_id: int, seed: list[int],
                         first: int = 0) -> torch.Tensor:
    """The model's continuations of `prompts` (rows first.. of a set) at temperature 1 with EOS suppressed, in
    chunks of generate_batch rows, each seeded by (seed, its first row), so the result does not depend on where
    a run was interrupted."""
    out = []
    for start in range(0, len(prompts), settings.generate_batch):
        generator = torch.Generator(model.embed.weight.device).manual_seed(
            int(np.random.default_rng(seed + [first + start]).integers(2 ** 62)))
        out.append(generate_batch(model, prompts[start:start + settings.generate_batch],
                                  settings.continuation_tokens, suppress=(eos_id,), generator=generator).cpu())
    return torch.cat(out)


def make_pairs(folder: Path, opponent: Path, data: TokenData, held_out: torch.Tensor, settings: SpinSettings,
               iteration: int, device: torch.device, progress: bool) -> dict:
    """pairs.pt of an iteration: its training and evaluation windows with the opponent's continuations. Chunks
    are kept as they finish, so a killed generation resumes at the chunk it was in."""
    pairs_file, chunks = folder / "pairs.pt", folder / "pairs"
    digest = model_hash(opponent)
    if pairs_file.is_file():
        pairs = torch.load(pairs_file, weights_only=True)
        if pairs["model_sha256"] != digest:
            raise TinyLMError(f"'{pairs_file}' was sampled by another model than '{opponent}' (sha256 "
                              f"{pairs['model_sha256'][:12]}, not {digest[:12]}); start again with --overwrite")
        return pairs
    P, C, eos = settings.prefix_tokens, settings.continuation_tokens, data.eos_id
    real = draw_windows(data.train, settings.prefixes, P + C, eos, np.random.default_rng([settings.seed, iteration]))
    tic = time.perf_counter()
    model = load_checkpoint(opponent, device=device).model
    chunks.mkdir(parents=True, exist_ok=True)
    prompts = torch.cat([real[:, :P], held_out[:, :P]])
    step = settings.generate_batch
    bar = progress_bar(total=len(prompts), disable=not progress, desc=f"iteration {iteration}: sampling",
                       unit="pair", dynamic_ncols=True)
    samples = []
    for index, start in enumerate(range(0, len(prompts), step)):
        chunk_file = chunks / f"chunk-{index:05d}.pt"
        chunk = torch.load(chunk_file, weights_only=True) if chunk_file.is_file() else None
        if chunk is None or chunk["model_sha256"] != digest:
            sampled = sample_continuations(model, prompts[start:start + step], settings, eos,
                                           [settings.seed, iteration, 0], start)
            chunk = {"synthetic": sampled, "model_sha256": digest}
            _save_atomic(chunk, chunk_file)
        samples.append(chunk["synthetic"])
        bar.update(len(chunk["synthetic"]))
    bar.close()
    synthetic = torch.cat([prompts, torch.cat(samples)], dim=1)
    n = settings.prefixes
    pairs = {"real": real, "synthetic": synthetic[:n], "eval_real": held_out, "eval_synthetic": synthetic[n:],
             "prefix_tokens": P, "model_sha256": digest, "model": str(opponent),
             "seconds": time.perf_counter() - tic}  # this process's share, if an earlier one began the chunks
    _save_atomic(pairs, pairs_file)
    shutil.rmtree(chunks)
    return pairs


def spin_config(start_cfg, settings: SpinSettings, iteration: int, device: str):
    """The training config of an iteration: the start run's model and data, SPIN's optimisation."""
    cfg = copy.deepcopy(start_cfg)
    steps = math.ceil(settings.epochs * settings.prefixes / settings.batch_size)
    t = cfg.train
    t.device, t.optimizer, t.lr, t.weight_decay = device, "adamw", settings.lr, 0.0  # decay would pull off the reference
    t.batch_size, t.grad_accum, t.seed = settings.batch_size, 1, settings.seed + iteration
    t.max_steps, t.max_tokens, t.max_seconds = steps, 0, 0.0
    t.schedule, t.warmup_steps, t.min_lr_ratio = "cosine", max(1, steps // 10), 0.0
    t.dropout_schedule, t.dropout_until = "early", 0.0
    t.rounds, t.compile, t.distill_teacher, t.distill_cache = 1, False, "", ""
    t.eval_every, t.ckpt_every, t.log_every = 0, 50, 10
    cfg.eval.max_tokens = settings.eval_tokens  # the loop's final validation is the iteration's bits per byte
    return cfg


@torch.no_grad()
def evaluate_iteration(model, reference, data: TokenData, val_bpb: float, pairs: dict | None, held_out: torch.Tensor,
                       settings: SpinSettings, iteration: int) -> dict:
    """The per-iteration metrics (module docstring); without `pairs` (the start model) no rewards."""
    model.eval()
    row: dict = {"iteration": iteration, "val_bpb": val_bpb}
    P, device = settings.prefix_tokens, model.embed.weight.device
    if pairs is None:
        x, y = held_out[:, :-1], held_out[:, 1:].clone()
        y[:, :P - 1] = -1
        row["logp_real"] = sequence_logprobs(model(x.to(device)), y.to(device)).mean().item()
    else:
        x, y = pair_batch(pairs["eval_real"], pairs["eval_synthetic"], P)
        _, numbers = spin(model, Batch(x.to(device), y.to(device), 0), reference, settings.beta, 0.0)
        row |= {k: numbers[k].item() for k in ("logp_real", "reward_accuracy", "reward_margin")}
    samples = sample_continuations(model, held_out[:, :P], settings, data.eos_id, [settings.seed, iteration, 1])
    return row | sample_metrics(samples)


def _settings_record(start: Path, settings: SpinSettings) -> dict:
    return {"start": str(Path(start).resolve()), "start_sha256": model_hash(find_checkpoint(start)),
            **dataclasses.asdict(settings)}


def _prepare_out(out: Path, record: dict, overwrite: bool) -> None:
    spin_file = out / "spin.json"
    if out.exists() and any(out.iterdir()):
        same = spin_file.is_file() and json.loads(spin_file.read_text()) == record
        if overwrite:
            shutil.rmtree(out)
        elif not spin_file.is_file():
            raise TinyLMError(f"'{out}' already holds something that is not a SPIN run; choose another --out or "
                              "pass --overwrite to replace it")
        elif not same:
            raise TinyLMError(f"'{out}' holds a SPIN run with other settings or another start model; run the same "
                              "command to resume it, or pass --overwrite to start again")
    write_json(spin_file, record)


def run_spin(start: str | Path, out: str | Path, settings: SpinSettings, device: str = "cpu",
             overwrite: bool = False, progress: bool = True,
             callbacks: tuple[Callable[[StepInfo], None], ...] = ()) -> SpinResult:
    """SPIN iterations from the run `start` into `out` (module docstring); re-running resumes. `callbacks` go to
    each iteration's training loop."""
    settings.check()
    start, out = Path(start), Path(out)
    if out.resolve() == start.resolve():
        raise TinyLMError("--out must be a new directory, not the start run itself")
    begin = load_checkpoint(start)
    cfg = begin.cfg
    if cfg.model.kind != "token":
        raise TinyLMError(f"spin fine-tunes token models; '{start}' is model.kind={cfg.model.kind}")
    P, C = settings.prefix_tokens, settings.continuation_tokens
    if P + C > cfg.model.max_seq_len:
        raise TinyLMError(f"--prefix-tokens {P} + --continuation-tokens {C} exceed the model's context "
                          f"({cfg.model.max_seq_len}); lower them")
    torch_device = resolve_device(device)
    data = TokenData.load(prepare_cached(cfg.data, progress=progress))
    _prepare_out(out, _settings_record(start, settings), overwrite)
    held_out = draw_windows(data.val, settings.eval_prefixes, P + C, data.eos_id,
                            np.random.default_rng([settings.seed]))
    folder = out / "iterations"

    def start_step() -> dict:
        autocast = autocast_for(torch_device, cfg.train.precision)  # as the loop's own validation
        _, val_bpb = validate(begin.model.to(torch_device), data, cfg, autocast, settings.eval_tokens)
        return evaluate_iteration(begin.model, None, data, val_bpb, None, held_out, settings, 0)

    rows = [cached_step(folder / "0" / "eval.json", start_step)]
    limit = rows[0]["val_bpb"] * (1 + settings.max_bpb_rise)
    opponent, kept, stopped = begin.path, 0, ""
    for t in range(1, settings.iterations + 1):
        here = folder / str(t)
        run_dir = here / "run"
        pairs = make_pairs(here, opponent, data, held_out, settings, t, torch_device, progress)
        iteration_cfg = spin_config(cfg, settings, t, device)

        def train_step() -> dict:
            reference = load_checkpoint(opponent, device=torch_device).model.eval().requires_grad_(False)
            pair_data = PairData(data.train, data.val, data.bytes, data.vocab_size, data.eos_id, pairs["real"],
                                 pairs["synthetic"], P)
            resumable = (run_dir / CHECKPOINT / "state.pt").is_file()
            result = train(iteration_cfg, pair_data, begin.tokenizer, run_dir, resume=resumable,
                           init_from=None if resumable else opponent, overwrite=not resumable, callbacks=callbacks,
                           progress=progress, objective=lambda model, batch: spin(
                               model, batch, reference, settings.beta, settings.nll_weight))
            return {"steps": result.steps, "seconds": result.seconds, "val_bpb": result.val_bits_per_byte}

        trained = cached_step(here / "train.json", train_step)

        def eval_step() -> dict:
            model = load_checkpoint(run_dir, device=torch_device).model
            reference = load_checkpoint(opponent, device=torch_device).model.eval()
            row = evaluate_iteration(model, reference, data, trained["val_bpb"], pairs, held_out, settings, t)
            return row | {"seconds_generate": pairs["seconds"], "seconds_train": trained["seconds"]}

        rows.append(cached_step(here / "eval.json", eval_step))
        opponent = find_checkpoint(run_dir)
        if rows[-1]["val_bpb"] > limit:
            stopped = (f"iteration {t} raised validation bits per byte to {rows[-1]['val_bpb']:.4f}, more than "
                       f"{100 * settings.max_bpb_rise:g}% over the start model's {rows[0]['val_bpb']:.4f}")
            break
        kept = t
    _write_outputs(out, rows, kept, begin.path if kept == 0 else find_checkpoint(folder / str(kept) / "run"))
    return SpinResult(rows, kept, stopped)


def _write_outputs(out: Path, rows: list[dict], kept: int, checkpoint: Path) -> None:
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "spin.md").write_text(format_table(rows, kept) + "\n")
    plot_iterations(rows, out / "spin.png")
    staging = out / f"{CHECKPOINT}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in ("model.safetensors", "config.yaml", "tokenizer.json"):  # not state.pt: OUT is not a training run
        shutil.copy2(checkpoint / name, staging / name)
    replace_folder(out / CHECKPOINT, staging)


COLUMNS = [("val_bpb", "val bits/byte", "{:.4f}"), ("reward_accuracy", "reward acc", "{:.3f}"),
           ("reward_margin", "reward margin", "{:+.3f}"), ("logp_real", "log p(real)", "{:.2f}"),
           ("distinct_2", "distinct-2", "{:.3f}"), ("distinct_3", "distinct-3", "{:.3f}"),
           ("repetition_rate", "rep-4", "{:.3f}"), ("seconds_generate", "sample s", "{:.0f}"),
           ("seconds_train", "train s", "{:.0f}")]


def format_table(rows: list[dict], kept: int) -> str:
    """A markdown table of the per-iteration metrics; the kept iteration is marked."""
    lines = ["| iteration | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "–" for key, _, fmt in COLUMNS]
        name = f"{r['iteration']}{' (kept)' if r['iteration'] == kept else ''}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_iterations(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("val_bpb", "val bits/byte"), ("logp_real", "log p(real continuation)"),
              ("reward_accuracy", "reward accuracy"), ("distinct_2", "distinct-2 / rep-4")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.2), dpi=100)
    for ax, (key, title) in zip(axes, panels):
        points = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot(*zip(*points), "o-", label="distinct-2")
        if key == "distinct_2":
            ax.plot([r["iteration"] for r in rows], [r["repetition_rate"] for r in rows], "s--", label="rep-4")
            ax.legend(fontsize=7)
        ax.set_xticks([r["iteration"] for r in rows])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
