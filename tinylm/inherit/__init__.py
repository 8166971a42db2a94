"""Parameter inheritance: initialise a small model from a larger trained one (PanGu-π Pro, §A.3).

Steps, each a plain function of the step before:
  1. load the parent (a tinylm run, a Hugging Face Llama/Mistral/Qwen2/SmolLM folder or a GGUF file);
  2. vocabulary: gather the embedding and head rows of a compact tokenizer's tokens through its id_map.json
     (or keep the parent's tokenizer);
  3. depth: keep `n_layer` layers chosen by a strategy (tinylm.inherit.importance);
  4. width: score heads, FFN channels and hidden dimensions on the depth-cut model by a metric and keep the
     best of each in the child's shape (tinylm.inherit.select, tinylm.inherit.masks);
  5. write a normal run directory that `tinylm train --init`, `tinylm eval` and `tinylm sample` read, plus
     inherit.json recording what was kept and why (and, with a compact tokenizer, its id_map.json, which
     distillation from the parent reads).
Data-driven strategies and metrics use calibration windows from the training split of `calib` (default:
the built-in corpus), tokenized with the child's tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinylm.checkpoint import save_checkpoint
from tinylm.config import Config, DataConfig, ModelConfig
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.files import replace_folder
from tinylm.formats import load_model
from tinylm.inherit.importance import DEPTH_STRATEGIES, WIDTH_METRICS, Batches, choose_layers, width_scores
from tinylm.inherit.masks import learned_scores
from tinylm.inherit.select import Selection, choose_width, slice_model
from tinylm.model import Transformer, resolved_ffn_hidden
from tinylm.model.llama import head_dim, is_shared
from tinylm.tokenizer import FILENAME, Tokenizer

REPORT = "inherit.json"


@dataclass
class ChildShape:
    """The child's size; None keeps the parent's."""
    n_layer: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_hidden: int | None = None
    max_seq_len: int = 512


def child_config(parent: ModelConfig, shape: ChildShape, vocab_size: int) -> ModelConfig:
    """The child's ModelConfig; TinyLMError if it is not a sub-shape of the parent."""
    if is_shared(parent):
        raise TinyLMError("tinylm inherit needs a parent without weight sharing (model.ffn_sharing, block_repeat, "
                          "stack_repeat): its layers are not separate blocks to select and slice")
    if shape.max_seq_len < 1:
        raise TinyLMError(f"the child's context length ({shape.max_seq_len}) must be at least 1")
    n_heads = shape.n_heads or parent.n_heads
    n_kv = shape.n_kv_heads or min(parent.n_kv_heads, n_heads)
    child = dataclasses.replace(
        parent, vocab_size=vocab_size, n_layer=shape.n_layer or parent.n_layer, d_model=shape.d_model or parent.d_model,
        n_heads=n_heads, n_kv_heads=n_kv, ffn_hidden=shape.ffn_hidden or resolved_ffn_hidden(parent),
        head_dim=head_dim(parent), max_seq_len=min(shape.max_seq_len, parent.max_seq_len), dropout=0.0)
    for key, value, limit in (("layers", child.n_layer, parent.n_layer), ("width", child.d_model, parent.d_model),
                              ("heads", n_heads, parent.n_heads), ("kv heads", n_kv, parent.n_kv_heads),
                              ("FFN hidden", child.ffn_hidden, resolved_ffn_hidden(parent))):
        if not 1 <= value <= limit:
            raise TinyLMError(f"the child's {key} ({value}) must be between 1 and the parent's ({limit}); "
                              "a child cannot be larger than its parent")
    if n_heads % n_kv or n_heads // n_kv > parent.n_heads // parent.n_kv_heads:
        raise TinyLMError(f"{n_heads} heads over {n_kv} kv heads do not keep the parent's GQA groups whole "
                          f"(parent: {parent.n_heads} over {parent.n_kv_heads}); use n_heads = n_kv_heads x k with "
                          f"k <= {parent.n_heads // parent.n_kv_heads}")
    return child


def child_tokenizer(parent_tokenizer: Tokenizer | None, parent_rows: int, compact_dir: str | Path | None,
                    parent_path: Path) -> tuple[Tokenizer, torch.Tensor]:
    """(the child's tokenizer, child id -> parent id)."""
    if compact_dir is None:
        if parent_tokenizer is None:
            raise TinyLMError(f"'{parent_path}' has no tokenizer.json; give the child's tokenizer with --tokenizer "
                              "(a folder made by `tinylm tokenizer compact`)")
        return parent_tokenizer, torch.arange(parent_tokenizer.vocab_size)
    compact_dir = Path(compact_dir)
    id_map_file = compact_dir / "id_map.json"
    if not id_map_file.is_file():
        raise TinyLMError(f"'{compact_dir}' has no id_map.json; give a folder made by `tinylm tokenizer compact`")
    tokenizer = Tokenizer.load(compact_dir)
    try:
        id_map = [int(i) for i in json.loads(id_map_file.read_text())]
    except (ValueError, TypeError) as e:
        raise TinyLMError(f"'{id_map_file}' is corrupt ({type(e).__name__}); compact the tokenizer again")
    if len(id_map) != tokenizer.vocab_size or (id_map and not 0 <= min(id_map) <= max(id_map) < parent_rows):
        raise TinyLMError(f"the tokenizer in '{compact_dir}' does not match the parent's vocabulary "
                          f"({len(id_map)} ids mapped into a {parent_rows}-row parent); compact the parent's own "
                          "tokenizer with `tinylm tokenizer compact --parent PARENT`")
    if parent_tokenizer is not None:
        wrong = sum(tokenizer.hf.id_to_token(new) != parent_tokenizer.hf.id_to_token(old)
                    for new, old in enumerate(id_map))
        if wrong:
            raise TinyLMError(f"the tokenizer in '{compact_dir}' does not match the parent's vocabulary ({wrong} of "
                              f"{len(id_map)} tokens differ); compact the parent's own tokenizer with "
                              "`tinylm tokenizer compact --parent PARENT`")
    return tokenizer, torch.tensor(id_map)


def calibration_batches(tokenizer_file: Path, calib: str, n_tokens: int, seq_len: int, seed: int,
                        batch_size: int = 4, progress: bool = True) -> Batches:
    """Random training-split windows of `calib` ("" = built-in corpus), about n_tokens in all."""
    data = TokenData.load(prepare_cached(DataConfig(path=calib, tokenizer=str(tokenizer_file)), progress=progress))
    data.check_trainable(seq_len)
    n_batches = max(1, round(n_tokens / (batch_size * seq_len)))
    return [data.batch(batch_size, seq_len, seed, step) for step in range(n_batches)]


def inherit(parent: str | Path, out: str | Path, shape: ChildShape | None = None, tokenizer: str | Path | None = None,
            depth: str = "first-last", width: str = "learned", calib: str = "", calib_tokens: int = 16384,
            calib_seq_len: int = 256, mask_steps: int = 100, seed: int = 0, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Write a child of `parent` into the run directory `out` and return what inherit.json records."""
    if depth not in DEPTH_STRATEGIES:
        raise TinyLMError(f"unknown depth strategy '{depth}'; choose one of {', '.join(DEPTH_STRATEGIES)}")
    if width not in WIDTH_METRICS:
        raise TinyLMError(f"unknown width metric '{width}'; choose one of {', '.join(WIDTH_METRICS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TinyLMError(f"'{out}' already exists and is not empty; pass --overwrite to replace it")
    started = time.perf_counter()
    shape = shape or ChildShape()
    loaded = load_model(parent)
    if not isinstance(loaded.model, Transformer):
        raise TinyLMError(f"'{parent}' is a model.kind={loaded.model.cfg.kind} model; inheritance cuts token "
                          "Transformers only")
    parent_cfg = loaded.model.cfg
    tok, id_map = child_tokenizer(loaded.tokenizer, parent_cfg.vocab_size, tokenizer, loaded.path)
    child_cfg = child_config(parent_cfg, shape, len(id_map))
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tok.save(staging)
        if tokenizer is not None:  # distilling from the parent maps the child's ids through it (train/distill.py)
            (staging / "id_map.json").write_text(json.dumps(id_map.tolist()) + "\n")
        torch.manual_seed(seed)

        # vocabulary (and the child's context length)
        model = slice_model(loaded.model, Selection.everything(parent_cfg, tokens=id_map), child_cfg.max_seq_len)
        del loaded
        needs_calib = (child_cfg.n_layer < parent_cfg.n_layer and depth in ("block-influence", "loss")) or (
            _narrower(child_cfg, parent_cfg) and width in ("taylor", "activation", "learned"))
        seq_len = min(calib_seq_len, child_cfg.max_seq_len)
        batches = calibration_batches(staging / FILENAME, calib, calib_tokens, seq_len, seed,
                                      progress=progress) if needs_calib else None
        layers = choose_layers(model, child_cfg.n_layer, depth, batches)
        model = slice_model(model, Selection.everything(model.cfg, layers=layers))  # depth
        if _narrower(child_cfg, parent_cfg):
            if width == "learned":
                masks = MaskProgress(out, {"parent": str(Path(parent).resolve()), "child": child_cfg.__dict__,
                                           "layers": layers, "calib": calib, "calib_tokens": calib_tokens,
                                           "calib_seq_len": calib_seq_len, "mask_steps": mask_steps, "seed": seed})
                scores = learned_scores(model, child_cfg, batches, mask_steps, seed=seed, progress=progress,
                                        resume_from=masks.load(), save=masks.save)
            else:
                scores = width_scores(model, width, batches)
            selection = choose_width(scores, model.cfg, child_cfg, torch.arange(child_cfg.vocab_size))
            model = slice_model(model, selection)  # width
            kept = {"hidden": selection.hidden.tolist(), "q_heads": [h.tolist() for h in selection.q_heads],
                    "kv_heads": [h.tolist() for h in selection.kv_heads]}
        else:
            kept = {}
        assert model.cfg == child_cfg, (model.cfg, child_cfg)

        cfg = Config(model=child_cfg, data=DataConfig(path=calib, tokenizer=str((out / FILENAME).resolve())))
        cfg.save(staging / "config.yaml")
        save_checkpoint(staging, model, cfg, tok)
        counts = model.param_counts()
        report = {"parent": str(Path(parent).resolve()), "parent_config": parent_cfg.__dict__,
                  "child_config": child_cfg.__dict__, "tokenizer": str(tokenizer) if tokenizer else "parent's",
                  "depth": depth, "width": width if _narrower(child_cfg, parent_cfg) else "none (full width)",
                  "layers": layers, "calibration": {"data": calib or "builtin", "windows": len(batches or []),
                                                   "seq_len": calib_seq_len, "mask_steps": mask_steps},
                  "params": counts, "seconds": round(time.perf_counter() - started, 1), **kept}
        (staging / REPORT).write_text(json.dumps(report, indent=1) + "\n")
        replace_folder(out, staging)
        MaskProgress(out).clear()
    except BaseException:  # nothing half-made stays behind; an old run in `out` is untouched
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


class MaskProgress:
    """Learned-mask training's state, kept beside `out` (OUT.masks.pt) after every step so that a killed or
    stopped `inherit` re-run with the same arguments continues the masks where they were; removed once the child
    is in place. A state written for other settings (parent path, child shape, layers, calibration, steps, seed)
    is not used: the masks start over."""

    def __init__(self, out: Path, settings: dict | None = None):
        self.path = out.with_name(out.name + ".masks.pt")
        self.settings = json.loads(json.dumps(settings, default=str)) if settings is not None else None

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception:  # a state torn some other way than by our atomic write: start over rather than fail
            return None
        if state.get("settings") != self.settings:
            return None
        print(f"continuing the learned masks from step {state['step']} ({self.path})", file=sys.stderr)
        return state

    def save(self, state: dict) -> None:
        written = self.path.with_name(self.path.name + ".tmp")
        torch.save({"settings": self.settings, **state}, written)
        os.replace(written, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _narrower(child: ModelConfig, parent: ModelConfig) -> bool:
    return (child.d_model, child.n_heads, child.n_kv_heads, resolved_ffn_hidden(child)) != (
        parent.d_model, parent.n_heads, parent.n_kv_heads, resolved_ffn_hidden(parent))

