"""`tinylm arch sweep`: PanGu-π Pro's architecture tweak, measured on the user's device.

At a fixed parameter budget, depth matters most for quality (PanGu-π Pro), but a deeper model decodes
slower, since its layers run one after another for every token. The sweep shows that trade on the
device the model will run on, in steps whose results land in DIR as soon as they are known:

  1. enumerate the shapes within ±5% of the budget (tinylm.arch.shapes) and pick a spread over depth;
  2. measure each one's decode latency, prefill throughput and memory (tinylm.arch.latency): one row of
     sweep.csv per shape, on disk as soon as it is measured;
  3. with proxy_seconds: split the measured depths into shallow, middle and deep thirds and train, in each,
     the `proxy_top` shapes nearest the parameter budget (among those within the latency budget, when any
     are) for proxy_seconds each; nearest the budget so that the bands compare depth at equal size, which
     is the question asked. Validation bits per byte and tokens trained fill in the shape's row;
  4. recommend a shape (`recommend`) and write sweep.md, pareto.png and recommended.yaml.

Each measurement and each proxy training is a step whose result is a file in DIR/steps (tinylm.steps), so
re-running the same command skips every shape measured and every proxy training done; sweep.csv is
rewritten from them after every step. sweep.json holds the arguments, and a directory holding a sweep
made with other arguments is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from tinylm.arch.latency import device_for, measure_latency
from tinylm.arch.shapes import (MAX_LAYERS, MIN_LAYERS, TOLERANCE, embedding_params, enumerate_shapes, param_count,
                                shape_name)
from tinylm.config import Config, DataConfig, ModelConfig, TrainConfig
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.faults import kill_point
from tinylm.model.llama import head_dim, resolved_ffn_hidden
from tinylm.progress import progress_bar
from tinylm.steps import cached_step, check_job_folder, write_json
from tinylm.tokenizer import Tokenizer, byte_tokenizer
from tinylm.train import train

SETTINGS, TABLE, REPORT, PLOT, RECOMMENDED = "sweep.json", "sweep.csv", "sweep.md", "pareto.png", "recommended.yaml"
STEPS = "steps"  # one result file per measured shape and per proxy training (tinylm.steps)
DEFAULT_VOCAB = 8192  # the compact tokenizer size tinylm's small models use
DEFAULT_MAX_SHAPES = 24
PROXY_EVAL_TOKENS = 16384  # the same validation tokens for every proxy run, few enough to score in seconds
# recipes/quickstart.yaml's optimisation, with a warmup short enough for runs of a few dozen steps
PROXY_TRAIN = dict(optimizer="muon", muon_lr=0.02, lr=3e-3, schedule="wsd", warmup_steps=10, batch_size=16,
                   max_steps=0, eval_every=0, ckpt_every=0)

SHAPE_COLUMNS = {"shape": str, "n_layer": int, "d_model": int, "n_heads": int, "n_kv_heads": int, "head_dim": int,
                 "ffn_hidden": int, "tie_embeddings": bool, "vocab_size": int, "max_seq_len": int, "params": int,
                 "non_embedding_params": int, "decode_ms": float, "prefill_tok_s": float, "weights_kv_mb": float}
CUDA_COLUMNS = {"cuda_peak_mb": float}
PROXY_COLUMNS = {"val_bpb": float, "train_tokens": int}


@dataclass
class SweepResult:
    rows: list[dict]  # one per measured shape, in sweep.csv's order
    recommended: dict
    reason: str
    enumerated: int  # shapes within the tolerance of the budget
    skipped: int  # shapes found already measured
    trained_skipped: int  # proxy trainings found done


def parse_latency(text: str) -> float:
    """'10ms' or '10' -> 10.0 milliseconds; '0.5s' -> 500.0."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise TinyLMError(f"'{text}' is not a latency budget; write it like 10ms, 2.5ms or 0.1s")
    return float(match.group(1)) * (1000 if match.group(2) == "s" else 1)


def sweep(out: str | Path, params: int, vocab: int | None = None, *, latency_budget_ms: float | None = None,
          proxy_seconds: float = 0.0, proxy_top: int = 2, data: str = "", tokenizer: str = "bpe",
          max_seq_len: int = 256, device: str = "cpu", max_shapes: int = DEFAULT_MAX_SHAPES, overwrite: bool = False,
          progress: bool = True) -> SweepResult:
    """Run (or continue) the sweep in `out`; see the module docstring. `tokenizer` is "bpe" (trained on `data`
    with `vocab` tokens), "byte" or a tokenizer.json, whose size is then the vocabulary."""
    say: Callable[[str], None] = tqdm.write if progress else (lambda message: None)
    vocab = _vocabulary(tokenizer, vocab)
    if proxy_seconds < 0 or proxy_top < 1 or max_shapes < 0 or max_seq_len < 2:
        raise TinyLMError("--proxy-seconds must be >= 0, --proxy-top >= 1, --max-shapes >= 0 (0: all) and "
                          "--max-seq-len >= 2")
    cuda = device_for(device).type == "cuda"
    settings = {"params": params, "vocab": vocab, "tokenizer": tokenizer, "data": data, "max_seq_len": max_seq_len,
                "device": device, "max_shapes": max_shapes, "latency_budget_ms": latency_budget_ms,
                "proxy_seconds": proxy_seconds, "proxy_top": proxy_top}
    shapes = enumerate_shapes(params, vocab, max_seq_len)
    if not shapes:
        raise TinyLMError(f"no shape of {MIN_LAYERS} to {MAX_LAYERS} layers comes within ±{100 * TOLERANCE:g}% of "
                          f"{params:,} parameters with a vocabulary of {vocab:,}; the embedding alone may be too "
                          "large: raise --params or lower --vocab")
    out = Path(out)
    if not overwrite:
        check_job_folder(out, SETTINGS, "sweep")
    _claim(out, settings, overwrite)
    chosen = spread_over_depth(shapes, max_shapes, params)
    columns = {**SHAPE_COLUMNS, **(CUDA_COLUMNS if cuda else {}), **(PROXY_COLUMNS if proxy_seconds else {})}
    skipped = sum(step_file(out, "measure", shape_name(cfg)).is_file() for cfg in chosen)
    say(f"{len(shapes):,} shapes within ±{100 * TOLERANCE:g}% of {params:,} parameters; measuring {len(chosen)} "
        f"spread over depth" + (f" (skipped {skipped} already measured in {out})" if skipped else ""))
    rows = []
    for cfg in progress_bar(chosen, desc="measure", disable=not progress, dynamic_ncols=True):
        measured = cached_step(step_file(out, "measure", shape_name(cfg)),
                               lambda: measured_row(cfg, measure_latency(cfg, device)))
        rows.append({**dict.fromkeys(columns), **measured})
        write_table(out / TABLE, rows, columns)
        kill_point("sweep-step")

    trained_skipped = 0
    if proxy_seconds:
        candidates = proxy_candidates(rows, params, proxy_top, latency_budget_ms)
        trained_skipped = sum(step_file(out, "proxy", row["shape"]).is_file() for row in candidates)
        if trained_skipped:
            say(f"skipped {trained_skipped} proxy trainings already done")
        data_cfg = DataConfig(path=data, tokenizer=tokenizer, vocab_size=vocab)
        prepared = functools.cache(lambda: _load_data(data_cfg, progress))  # only once a training is still to do
        for i, row in enumerate(candidates, 1):
            def proxy_train() -> dict:
                say(f"proxy training {i}/{len(candidates)}: {row['shape']} for {proxy_seconds:g} s")
                result = train(proxy_config(shape_of(row), data_cfg, proxy_seconds, device), *prepared(),
                               progress=progress)
                return {"val_bpb": round(result.val_bits_per_byte, 5), "train_tokens": result.tokens}
            row.update(cached_step(step_file(out, "proxy", row["shape"]), proxy_train))
            write_table(out / TABLE, rows, columns)
            kill_point("sweep-step")

    recommended, reason = recommend(rows, latency_budget_ms)
    write_report(out / REPORT, rows, recommended, reason, settings, len(shapes))
    plot_pareto(out / PLOT, rows, recommended, latency_budget_ms, device)
    write_recommended(out / RECOMMENDED, recommended, reason, settings)
    return SweepResult(rows, recommended, reason, len(shapes), skipped, trained_skipped)


def step_file(out: Path, kind: str, shape: str) -> Path:
    return out / STEPS / kind / f"{shape}.json"


def _load_data(data_cfg: DataConfig, progress: bool) -> tuple[TokenData, Tokenizer]:
    data_dir = prepare_cached(data_cfg, progress=progress)
    return TokenData.load(data_dir), Tokenizer.load(data_dir)


def _vocabulary(tokenizer: str, vocab: int | None) -> int:
    if tokenizer == "bpe":
        return vocab or DEFAULT_VOCAB
    size = (byte_tokenizer() if tokenizer == "byte" else Tokenizer.load(tokenizer)).vocab_size
    if vocab and vocab != size:
        raise TinyLMError(f"--vocab {vocab} differs from the {size:,} tokens of tokenizer '{tokenizer}'; drop --vocab "
                          "(the tokenizer sets the vocabulary)")
    return size


def _claim(out: Path, settings: dict, overwrite: bool) -> None:
    """Make `out` this sweep's directory: refuse one holding a sweep with other arguments unless overwriting."""
    settings_file = out / SETTINGS
    if overwrite:
        for name in (SETTINGS, TABLE, REPORT, PLOT, RECOMMENDED):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / STEPS, ignore_errors=True)
    elif settings_file.is_file():
        try:
            old = json.loads(settings_file.read_text())
        except json.JSONDecodeError:
            raise TinyLMError(f"'{settings_file}' is corrupt; pass --overwrite to start the sweep over")
        differ = [f"{key} {old.get(key)!r} there, {value!r} now"
                  for key, value in settings.items() if old.get(key) != value]
        if differ:
            raise TinyLMError(f"'{out}' holds a sweep made with other arguments ({'; '.join(differ)}); pass "
                              "--overwrite to start over or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json(settings_file, settings)


def spread_over_depth(shapes: list[ModelConfig], count: int, budget: int) -> list[ModelConfig]:
    """`count` of `shapes` (0: all) spread over depth: each round takes, at evenly spaced depths from the
    shallowest to the deepest, the next shape nearest the budget; returned in the enumeration's order."""
    if not count or count >= len(shapes):
        return shapes
    by_depth: dict[int, list[ModelConfig]] = {}
    for cfg in shapes:
        by_depth.setdefault(cfg.n_layer, []).append(cfg)
    for group in by_depth.values():
        group.sort(key=lambda cfg: abs(param_count(cfg) - budget))  # stable: the enumeration's order breaks ties
    picked: list[ModelConfig] = []
    rank = 0
    while len(picked) < count:
        depths = [depth for depth in sorted(by_depth) if len(by_depth[depth]) > rank]
        need = count - len(picked)
        if need == 1:
            depths = depths[-1:]  # a single pick goes to the deepest, the one PanGu-π Pro would choose
        elif need < len(depths):
            depths = [depths[round(i * (len(depths) - 1) / (need - 1))] for i in range(need)]
        picked += [by_depth[depth][rank] for depth in depths]
        rank += 1
    order = {shape_name(cfg): i for i, cfg in enumerate(shapes)}
    return sorted(picked, key=lambda cfg: order[shape_name(cfg)])


def measured_row(cfg: ModelConfig, latency: dict) -> dict:
    total = param_count(cfg)
    return {"shape": shape_name(cfg), "n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads, "head_dim": head_dim(cfg), "ffn_hidden": resolved_ffn_hidden(cfg),
            "tie_embeddings": cfg.tie_embeddings, "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
            "params": total, "non_embedding_params": total - embedding_params(cfg),
            "decode_ms": round(latency["decode_ms"], 4), "prefill_tok_s": round(latency["prefill_tok_s"], 1),
            "weights_kv_mb": round(latency["weights_kv_mb"], 3),
            **({"cuda_peak_mb": round(latency["cuda_peak_mb"], 3)} if "cuda_peak_mb" in latency else {})}


def write_table(path: Path, rows: list[dict], columns: dict) -> None:
    """sweep.csv, replaced whole after every step so it always holds every result so far."""
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if row[key] is None else row[key] for key in columns} for row in rows)
    os.replace(staging, path)


def shape_of(row: dict) -> ModelConfig:
    """The ModelConfig of a sweep row (head_dim left to follow from width and heads when it does)."""
    return ModelConfig(vocab_size=row["vocab_size"], n_layer=row["n_layer"], d_model=row["d_model"],
                       n_heads=row["n_heads"], n_kv_heads=row["n_kv_heads"],
                       head_dim=0 if row["n_heads"] * row["head_dim"] == row["d_model"] else row["head_dim"],
                       ffn_hidden=row["ffn_hidden"], tie_embeddings=row["tie_embeddings"],
                       max_seq_len=row["max_seq_len"])


def depth_bands(depths: list[int]) -> list[list[int]]:
    """The distinct depths split into shallow, middle and deep thirds (fewer bands when there are fewer depths)."""
    distinct = sorted(set(depths))
    n = len(distinct)
    bands = [distinct[i * n // 3:(i + 1) * n // 3] for i in range(3)]
    return [band for band in bands if band]


def proxy_candidates(rows: list[dict], budget: int, top: int, latency_budget_ms: float | None) -> list[dict]:
    """The shapes worth a proxy training: in each depth band, the `top` nearest the parameter budget among those
    within the latency budget (all shapes when none is), ties going to the faster."""
    within = [row for row in rows if latency_budget_ms is None or row["decode_ms"] <= latency_budget_ms] or rows
    chosen = []
    for band in depth_bands([row["n_layer"] for row in within]):
        members = [row for row in within if row["n_layer"] in band]
        chosen += sorted(members, key=lambda row: (abs(row["params"] - budget), row["decode_ms"]))[:top]
    return chosen


def proxy_config(shape: ModelConfig, data: DataConfig, seconds: float, device: str) -> Config:
    cfg = Config(model=dataclasses.replace(shape), data=data,
                 train=TrainConfig(device=device, max_seconds=seconds, **PROXY_TRAIN))
    cfg.eval.max_tokens = PROXY_EVAL_TOKENS
    return cfg


def recommend(rows: list[dict], latency_budget_ms: float | None) -> tuple[dict, str]:
    """(the recommended row, why): among shapes within the latency budget, the best validation bits per byte
    when proxy-trained, else the deepest (PanGu-π Pro: at a fixed size depth matters most); ties go to the
    faster. When no shape meets the budget, the fastest."""
    pool, within = rows, ""
    if latency_budget_ms is not None:
        pool = [row for row in rows if row["decode_ms"] <= latency_budget_ms]
        within = f" within {latency_budget_ms:g} ms/token"
        if not pool:
            fastest = min(rows, key=lambda row: row["decode_ms"])
            return fastest, (f"no measured shape decodes within {latency_budget_ms:g} ms/token; this is the fastest "
                             f"({fastest['decode_ms']:.2f} ms/token)")
    trained = [row for row in pool if row.get("val_bpb") is not None]
    if trained:
        best = min(trained, key=lambda row: (row["val_bpb"], row["decode_ms"]))
        return best, (f"best validation bits/byte ({best['val_bpb']:.4f}) of the {len(trained)} proxy-trained "
                      f"shapes{within}")
    deepest = min(pool, key=lambda row: (-row["n_layer"], row["decode_ms"]))
    return deepest, (f"deepest of the {len(pool)} measured shapes{within}, the fastest of its depth (PanGu-π Pro: "
                     "at a fixed size, depth matters most)")


def pareto_front(rows: list[dict], column: str, higher_is_better: bool) -> list[dict]:
    """The rows no other row beats on both decode latency (lower) and `column`, fastest first."""
    sign = 1 if higher_is_better else -1
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda row: (row["decode_ms"], -sign * row[column])):
        if sign * row[column] > best:
            front.append(row)
            best = sign * row[column]
    return front


def quality_axis(rows: list[dict]) -> tuple[list[dict], str, bool]:
    """(the rows to compare, the quality column, whether higher is better): validation bits per byte of the
    proxy-trained shapes when there are any, else depth."""
    trained = [row for row in rows if row.get("val_bpb") is not None]
    return (trained, "val_bpb", False) if trained else (rows, "n_layer", True)


def command_line(settings: dict) -> str:
    s = settings
    parts = [f"tinylm arch sweep --params {s['params']}", f"--max-seq-len {s['max_seq_len']}",
             f"--device {s['device']}", f"--max-shapes {s['max_shapes']}"]
    parts.append(f"--vocab {s['vocab']}" if s["tokenizer"] == "bpe" else f"--tokenizer {s['tokenizer']}")
    if s["latency_budget_ms"] is not None:
        parts.append(f"--latency-budget {s['latency_budget_ms']:g}ms")
    if s["proxy_seconds"]:
        parts.append(f"--proxy-seconds {s['proxy_seconds']:g} --proxy-top {s['proxy_top']}")
    if s["data"]:
        parts.append(f"--data {s['data']}")
    return " ".join(parts)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def write_report(path: Path, rows: list[dict], recommended: dict, reason: str, settings: dict, enumerated: int) -> None:
    cuda = "cuda_peak_mb" in rows[0]
    compared, column, higher = quality_axis(rows)
    front = {row["shape"] for row in pareto_front(compared, column, higher)}
    header = ["shape", "layers", "width", "heads", "KV heads", "FFN", "tied", "params", "non-embedding",
              "decode ms/token", "prefill tokens/s", "weights + KV cache MiB (computed)"]
    header += ["CUDA peak MiB (decode)"] if cuda else []
    header += ["val bits/byte", "train tokens"] if "val_bpb" in rows[0] else []
    header += ["Pareto"]
    lines = [f"# Architecture sweep: {settings['params']:,} parameters, vocabulary {settings['vocab']:,}, "
             f"on {settings['device']}", "",
             f"`{command_line(settings)}`", "",
             f"{len(rows)} of the {enumerated:,} shapes within ±{100 * TOLERANCE:g}% of the budget measured, spread "
             f"over depth. Decode: median time per token at batch 1 with the KV cache. Prefill: batch 1 over "
             f"{settings['max_seq_len']} tokens. Pareto: no other shape is both faster and "
             f"{'deeper' if column == 'n_layer' else 'lower in validation bits/byte'}.",
             "", f"**Recommended: {recommended['shape']}** ({_millions(recommended['params'])} parameters, "
             f"{recommended['decode_ms']:.2f} ms/token): {reason}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda row: (row["n_layer"], row["params"])):
        name = f"**{row['shape']}**" if row is recommended else row["shape"]
        cells = [name, row["n_layer"], row["d_model"], row["n_heads"], row["n_kv_heads"], row["ffn_hidden"],
                 "yes" if row["tie_embeddings"] else "no", _millions(row["params"]),
                 _millions(row["non_embedding_params"]), f"{row['decode_ms']:.2f}", f"{row['prefill_tok_s']:,.0f}",
                 f"{row['weights_kv_mb']:.1f}"]
        cells += [f"{row['cuda_peak_mb']:.1f}"] if cuda else []
        if "val_bpb" in row:
            trained = row["val_bpb"] is not None
            cells += [f"{row['val_bpb']:.4f}" if trained else "", f"{row['train_tokens']:,}" if trained else ""]
        cells += ["yes" if row["shape"] in front else ""]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_pareto(path: Path, rows: list[dict], recommended: dict, latency_budget_ms: float | None, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, column, higher = quality_axis(rows)
    front = pareto_front(points, column, higher)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    ax.scatter([row["decode_ms"] for row in points], [row[column] for row in points], s=18, alpha=0.6,
               label="measured shapes")
    ax.plot([row["decode_ms"] for row in front], [row[column] for row in front], "o-", color="C1", ms=5,
            drawstyle="steps-post", label="Pareto frontier")
    for row in front:
        ax.annotate(f"{row['n_layer']}x{row['d_model']}", (row["decode_ms"], row[column]), fontsize=7,
                    xytext=(4, -9), textcoords="offset points")
    if recommended in points:
        ax.scatter([recommended["decode_ms"]], [recommended[column]], marker="*", s=220, color="C3", zorder=3,
                   label=f"recommended: {recommended['shape']}")
    if latency_budget_ms is not None:
        ax.axvline(latency_budget_ms, color="grey", ls="--", lw=0.8, label="latency budget")
    ax.set_xlabel(f"decode latency (ms/token, batch 1, {device})")
    ax.set_ylabel("depth (n_layer)" if column == "n_layer" else "validation bits/byte (proxy training)")
    ax.set_title(f"recommended: {recommended['shape']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_recommended(path: Path, row: dict, reason: str, settings: dict) -> None:
    """A recipe holding only the model section: `tinylm train` and `tinylm inherit --shape` read it as it is."""
    cfg = shape_of(row)
    model = {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
             **({"head_dim": cfg.head_dim} if cfg.head_dim else {}), "ffn_hidden": cfg.ffn_hidden,
             "tie_embeddings": cfg.tie_embeddings, "max_seq_len": cfg.max_seq_len}
    tokenizer = (f"data.tokenizer=bpe data.vocab_size={settings['vocab']}" if settings["tokenizer"] == "bpe"
                 else f"data.tokenizer={settings['tokenizer']}")
    lines = [f"# Recommended by `{command_line(settings)}` (sweep.md beside this file has the table).",
             f"# {row['params']:,} parameters with a vocabulary of {row['vocab_size']:,} "
             f"({row['non_embedding_params']:,} non-embedding); decode {row['decode_ms']:.2f} ms/token, prefill "
             f"{row['prefill_tok_s']:,.0f} tokens/s on {settings['device']}.",
             f"# Why: {reason}.",
             f"# Train it with the sweep's vocabulary: tinylm train {path} {tokenizer}",
             "model:"]
    lines += [f"  {key}: {str(value).lower() if isinstance(value, bool) else value}" for key, value in model.items()]
    path.write_text("\n".join(lines) + "\n")
