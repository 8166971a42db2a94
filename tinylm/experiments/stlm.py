"""`tinylm ablate stlm`: the Super Tiny Language Models study's techniques (§B), one row each, at the 10M class.

Every row trains on the same amount of text, once per seed, on the built-in corpus (or --data):
  1 baseline              a Llama-style decoder with untied input and output embeddings, the SmolLM2-135M
                          tokenizer compacted to 8,192 tokens (so row 6's teacher shares its vocabulary);
  2 +tied embeddings      the same shape with the head tied to the embedding;
  3 +FFN sharing, deeper  row 2 with one FFN shared by every layer, the parameters saved spent on depth
                          (as many layers as row 2's parameter count allows);
  4 +byte-level pooling   bytes instead of tokens: a byte encoder pooled into one vector per patch, row 2's
                          decoder over patches, an autoregressive byte decoder;
  5 +dropout schedule     row 2 with early dropout (p falls linearly to 0 over the first part of training);
  6 +distillation         row 2 trained on a mix of the labels' cross-entropy and the KL to SmolLM2-135M.
Rows 3-6 each change one thing on row 2, the tied baseline, and are judged against it: stacking them
would make a row's verdict depend on whether the rows above it helped.

Budget: equal training text in UTF-8 bytes, not equal tokens (a byte model sees ~3.5x more positions
for the same text) and not equal wall-clock (distillation's teacher costs far more than the student
on a CPU; the table reports each row's training time so the price is visible).

Per row: validation bits per byte on the same validation text, zero-shot accuracy (a byte model scores
each choice's bytes), parameters and training seconds, and a verdict against the seed-to-seed spread. Resumable
(tinylm.steps): a finished row and seed is skipped; a killed training resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from tinylm.config import Config, DataConfig, EvalConfig, ModelConfig, TrainConfig
from tinylm.errors import TinyLMError
from tinylm.experiments.ladder import TASKS, default_parent, judge, plot_bars
from tinylm.steps import cached_step, check_job_folder, write_json

ROWS = ("baseline", "+tied embeddings", "+FFN sharing, deeper", "+byte-level pooling", "+dropout schedule",
        "+distillation")
REFERENCE = {"+tied embeddings": "baseline", **{row: "+tied embeddings" for row in ROWS[2:]}}


@dataclass(frozen=True)
class StlmPreset:
    shape: dict  # rows 1, 2, 5, 6: n_layer, d_model, n_heads, n_kv_heads, ffn_hidden
    text_bytes: int  # training text per row and seed
    batch_size: int
    seq_len: int  # tokens per sequence; byte rows use byte_seq_len bytes
    byte_seq_len: int
    limit: int  # zero-shot items per task
    seeds: tuple[int, ...]
    vocab: int = 8192
    byte_model: tuple[tuple[str, object], ...] = (("patching", "space"),)  # model.* overrides for row 4
    dropout: float = 0.1  # row 5's peak p
    dropout_schedule: str = "early"
    dropout_until: float = 0.5  # share of training over which early dropout falls to 0
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0
    distill_loss: str = "forward"
    tasks: tuple[str, ...] = TASKS


PRESETS = {
    # 8 x 256 untied at 8,192 tokens: 10.1M parameters; 400 kB of text (~116k tokens) per row and seed
    "quick": StlmPreset(shape=dict(n_layer=8, d_model=256, n_heads=4, n_kv_heads=2, ffn_hidden=704),
                        text_bytes=400_000, batch_size=8, seq_len=256, byte_seq_len=1024, limit=200, seeds=(1, 2)),
    "default": StlmPreset(shape=dict(n_layer=8, d_model=256, n_heads=4, n_kv_heads=2, ffn_hidden=704),
                          text_bytes=8_000_000, batch_size=16, seq_len=256, byte_seq_len=1024, limit=500,
                          seeds=(1, 2, 3)),
}


@dataclass
class StlmAblation:
    out: Path
    teacher: Path
    preset: StlmPreset
    data: str = ""
    device: str = "cpu"
    progress: bool = True

    def tokenizer(self) -> Path:
        """The teacher's tokenizer compacted to preset.vocab tokens (id_map.json lets the teacher score it)."""
        from tinylm.tokenizer.compact import compact

        folder = self.out / f"tokenizer-{self.preset.vocab}"
        if not (folder / "report.json").is_file():  # compact() writes its report last
            compact(self.teacher, self.data, self.preset.vocab, folder, overwrite=True, progress=self.progress)
        return folder

    def configs(self, tokenizer_dir: Path) -> dict[str, tuple[ModelConfig, dict, str]]:
        """Per row: (model config, train-config changes, tokenizer: a tokenizer.json path or "byte")."""
        p = self.preset
        tokenizer = str((tokenizer_dir / "tokenizer.json").resolve())
        untied = ModelConfig(vocab_size=p.vocab, max_seq_len=p.seq_len, tie_embeddings=False, **p.shape)
        tied = dataclasses.replace(untied, tie_embeddings=True)
        byte = dataclasses.replace(tied, vocab_size=0, max_seq_len=p.byte_seq_len, kind="byte",
                                   **dict(p.byte_model))
        return {
            "baseline": (untied, {}, tokenizer),
            "+tied embeddings": (tied, {}, tokenizer),
            "+FFN sharing, deeper": (shared_deeper(tied), {}, tokenizer),
            "+byte-level pooling": (byte, {}, "byte"),
            "+dropout schedule": (dataclasses.replace(tied, dropout=p.dropout),
                                  {"dropout_schedule": p.dropout_schedule, "dropout_until": p.dropout_until},
                                  tokenizer),
            "+distillation": (tied, {"distill_teacher": str(self.teacher), "distill_alpha": p.distill_alpha,
                                     "distill_temperature": p.distill_temperature,
                                     "distill_loss": p.distill_loss}, tokenizer),
        }

    def train_row(self, name: str, seed: int, model: ModelConfig, train_changes: dict, tokenizer: str) -> dict:
        run = self.out / "runs" / f"{ROWS.index(name) + 1}-{slug(name)}" / f"seed{seed}"

        def run_and_score() -> dict:
            from tinylm.data import TokenData, prepare_cached
            from tinylm.eval import evaluate
            from tinylm.tokenizer import Tokenizer
            from tinylm.train import train
            from tinylm.train.loop import has_checkpoint

            p = self.preset
            data_cfg = DataConfig(path=self.data, tokenizer=tokenizer)
            data_dir = prepare_cached(data_cfg, progress=self.progress)
            data, tok = TokenData.load(data_dir), Tokenizer.load(data_dir)
            tokens = round(p.text_bytes * len(data.train) / data.bytes["train"])  # equal text, in bytes
            batch = p.batch_size
            cfg = Config(model=dataclasses.replace(model), data=data_cfg, eval=EvalConfig(max_tokens=0),
                         train=TrainConfig(seed=seed, device=self.device, batch_size=batch, optimizer="muon",
                                           lr=3e-3, muon_lr=0.02, schedule="wsd", warmup_steps=20, max_steps=0,
                                           max_tokens=tokens, eval_every=0, ckpt_every=50, log_every=10,
                                           **train_changes))
            resume = has_checkpoint(run)  # killed mid-row (even mid-swap): continue from the checkpoint
            started = time.perf_counter()
            result = train(cfg, data, tok, run, resume=resume, overwrite=not resume, progress=self.progress)
            scores = {"val_bpb": evaluate(run, progress=False)["bits_per_byte"], "params": result.params,
                      "tokens": result.tokens, "text_bytes": round(result.tokens * data.bytes["train"] / len(data.train)),
                      "steps": result.steps, "train_seconds": round(time.perf_counter() - started, 1)}
            return scores

        def zero_shot() -> dict:
            from tinylm.eval.harness import run_benchmarks

            report = run_benchmarks(run, list(self.preset.tasks), limit=self.preset.limit, device=self.device,
                                    progress=self.progress)
            tasks = {t: r["acc"] for t, r in report["tasks"].items()}
            return {"tasks": tasks, "zero_shot_avg": statistics.mean(tasks.values())}
        scores = cached_step(run / "result.json", run_and_score)
        if self.preset.tasks and "tasks" not in scores:  # scored as its own step, after the training's result
            scores = {**scores, **cached_step(run / "zero_shot.json", zero_shot)}
        return scores

    def run(self) -> dict:
        p = self.preset
        self.out.mkdir(parents=True, exist_ok=True)
        settings = {"teacher": str(Path(self.teacher).resolve()), "data": self.data or "builtin",
                    "preset": dataclasses.asdict(p)}
        settings_file = self.out / "settings.json"
        if settings_file.is_file() and json.loads(settings_file.read_text()) != json.loads(json.dumps(settings)):
            raise TinyLMError(f"'{self.out}' holds an ablation made with other settings; give another --out or "
                              "pass --overwrite to start it again")
        write_json(settings_file, settings)
        configs = self.configs(self.tokenizer())
        rows = []
        for name in ROWS:
            model, train_changes, tokenizer = configs[name]
            seeds = {seed: self.train_row(name, seed, model, train_changes, tokenizer) for seed in p.seeds}
            rows.append(summarize(name, model, train_changes, seeds))
        report = {"settings": settings, "rows": rows, "verdicts": verdicts(rows)}
        write_json(self.out / "ablation.json", report)
        (self.out / "ablation.md").write_text(markdown(report))
        plot_bars(rows, self.out / "ablation.png", "tinylm ablate stlm (Super Tiny Language Models' techniques)",
                  label="row")
        return report


def shared_deeper(tied: ModelConfig) -> ModelConfig:
    """Row 2's shape with every layer sharing one FFN, as deep as row 2's parameter count allows."""
    import torch

    from tinylm.model import build_model

    def param_count(cfg: ModelConfig) -> int:
        with torch.device("meta"):
            return build_model(cfg).param_counts()["total"]

    budget = param_count(tied)
    n_layer = tied.n_layer
    while param_count(dataclasses.replace(tied, ffn_sharing="all", n_layer=n_layer + 1)) <= budget:
        n_layer += 1
    return dataclasses.replace(tied, ffn_sharing="all", n_layer=n_layer)


def slug(name: str) -> str:
    return name.strip("+").replace(", ", "-").replace(" ", "-")


def summarize(name: str, model: ModelConfig, train_changes: dict, seeds: dict[int, dict]) -> dict:
    bpb = [r["val_bpb"] for r in seeds.values()]
    first = next(iter(seeds.values()))
    changed = {k: v for k, v in dataclasses.asdict(model).items() if v != getattr(ModelConfig(), k)}
    row = {"row": name, "reference": REFERENCE.get(name), "model": changed, "train": train_changes,
           "params": first["params"], "text_bytes": first["text_bytes"], "tokens": first["tokens"],
           "train_seconds": statistics.mean(r["train_seconds"] for r in seeds.values()),
           "seeds": {str(s): r for s, r in seeds.items()},
           "val_bpb": statistics.mean(bpb), "val_bpb_spread": max(bpb) - min(bpb)}
    if "zero_shot_avg" in first:
        avg = [r["zero_shot_avg"] for r in seeds.values()]
        row["zero_shot_avg"], row["zero_shot_spread"] = statistics.mean(avg), max(avg) - min(avg)
        row["tasks"] = {t: statistics.mean(r["tasks"][t] for r in seeds.values()) for t in first["tasks"]}
    return row


def verdicts(rows: list[dict]) -> list[str]:
    """One sentence per row after the first: better or worse than its reference row by more than the seeds
    of either disagree, or within that noise."""
    by_name = {r["row"]: r for r in rows}
    lines = []
    for row in rows[1:]:
        ref = by_name[row["reference"]]
        delta, noise, verdict = judge(ref, row, ("helped", "hurt", "no effect beyond seed noise"))
        times = noise and abs(delta) / noise
        text = (f"{row['row']} (against {ref['row']}): {verdict} on bits per byte, {ref['val_bpb']:.4f} -> "
                f"{row['val_bpb']:.4f} ({delta:+.4f}, {times:.1f}x the larger seed spread {noise:.4f}); "
                f"{row['params']['total'] / 1e6:.2f}M against {ref['params']['total'] / 1e6:.2f}M parameters, "
                f"{row['train_seconds']:.0f} s against {ref['train_seconds']:.0f} s of training")
        if "zero_shot_avg" in row and "zero_shot_avg" in ref:
            text += (f"; zero-shot average {100 * ref['zero_shot_avg']:.1f} -> {100 * row['zero_shot_avg']:.1f}% "
                     f"(seed spread {100 * max(ref['zero_shot_spread'], row['zero_shot_spread']):.1f} points)")
        lines.append(text)
    return lines


def markdown(report: dict) -> str:
    rows = report["rows"]
    tasks = next((list(r["tasks"]) for r in rows if "tasks" in r), [])
    head = ("| row | params | training text | train s | val bits/byte (mean ± half spread) | "
            + "".join(f"{t} | " for t in tasks) + ("zero-shot avg |" if tasks else ""))
    lines = [head, "|" + "---|" * (5 + len(tasks) + (1 if tasks else 0))]
    for r in rows:
        cells = [r["row"], f"{r['params']['total'] / 1e6:.2f}M", f"{r['text_bytes'] / 1e3:,.0f} kB "
                 f"({r['tokens']:,} {'bytes' if r['model'].get('kind') == 'byte' else 'tokens'})",
                 f"{r['train_seconds']:.0f}", f"{r['val_bpb']:.4f} ± {r['val_bpb_spread'] / 2:.4f}"]
        if tasks:
            cells += [f"{100 * r['tasks'][t]:.1f}" if "tasks" in r else "–" for t in tasks]
            cells += [f"{100 * r['zero_shot_avg']:.1f} ± {100 * r['zero_shot_spread'] / 2:.1f}"
                      if "zero_shot_avg" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    p = report["settings"]["preset"]
    lines += ["", f"{p['text_bytes']:,} bytes of training text per row and seed; seeds "
              f"{', '.join(map(str, p['seeds']))}; zero-shot accuracy on the first {p['limit']} items of each task "
              "(– where a row was not scored); bits per byte on the whole validation split.", ""]
    lines += [f"- {v}" for v in report["verdicts"]]
    return "\n".join(lines) + "\n"


def run_ablation(out: str | Path, preset: str | StlmPreset = "quick", teacher: str | Path | None = None,
                 data: str = "", seeds: tuple[int, ...] | None = None, text_bytes: int | None = None,
                 limit: int | None = None, device: str = "cpu", overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Run (or resume) the ablation in `out`; returns what ablation.json records."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise TinyLMError(f"unknown ablation preset '{preset}'; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset] if isinstance(preset, str) else preset
    changes = {k: v for k, v in (("seeds", tuple(seeds) if seeds else None), ("text_bytes", text_bytes),
                                 ("limit", limit)) if v is not None}
    chosen = dataclasses.replace(chosen, **changes)
    if len(chosen.seeds) < 2:
        raise TinyLMError("the ablation needs two seeds or more, to tell an effect from seed-to-seed noise")
    out = Path(out)
    if overwrite and out.exists():
        import shutil
        shutil.rmtree(out)
    check_job_folder(out, "settings.json", "ablation")
    return StlmAblation(out, Path(teacher) if teacher else default_parent(), chosen, data, device, progress).run()
