"""The run directory format: how training saves a model and everything else reads it back.

  RUN/config.yaml          the resolved config of the run
  RUN/metrics.jsonl        one JSON object per log line (train) or evaluation (val)
  RUN/loss.png             the loss curves, drawn at the end of training
  RUN/checkpoint/          the latest checkpoint, replaced atomically:
      model.safetensors    weights (tied tensors stored once)
      state.pt             optimizer, step, tokens seen, RNG states, steps skipped (training only)
      config.yaml          the config the weights belong to
      tokenizer.json       the tokenizer the weights belong to
      manifest.json        every file's size and SHA-256 (tinylm.manifest), written last

A checkpoint is written to `checkpoint.tmp/` and swapped in by renames, so a
crash at any moment leaves either the old or the new checkpoint complete.
Finding a checkpoint checks its files' sizes; loading one also checks their
checksums, so a damaged file is an error that names it, never loaded as garbage.
Training writes run directories; evaluation, sampling and export read them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from tinylm.config import Config, load_config
from tinylm.errors import TinyLMError
from tinylm.faults import kill_point
from tinylm.manifest import seal, verify
from tinylm.model import Transformer, build_model
from tinylm.tokenizer import Tokenizer

CHECKPOINT = "checkpoint"
DAMAGED = "restore it or retrain"


def save_checkpoint(run_dir: Path, model: Transformer, cfg: Config, tokenizer: Tokenizer,
                    state: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    cfg.save(tmp / "config.yaml")
    tokenizer.save(tmp)
    if state is not None:
        torch.save(state, tmp / "state.pt")
    seal(tmp)
    kill_point("checkpoint-write")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        kill_point("checkpoint-swap")
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run directory or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise TinyLMError(f"'{path}' does not exist; give a run directory made by `tinylm train`")
    for candidate in (path, path / CHECKPOINT, path / f"{CHECKPOINT}.old"):  # .old: a crash mid-swap
        if (candidate / "model.safetensors").is_file():
            verify(candidate, "checkpoint file", DAMAGED, checksums=False)
            return candidate
    raise TinyLMError(f"'{path}' holds no checkpoint (no model.safetensors); train it first with `tinylm train`")


@dataclass
class LoadedCheckpoint:
    model: Transformer
    cfg: Config
    tokenizer: Tokenizer
    path: Path
    state: dict | None


def read_config(ckpt: Path) -> Config:
    """The config a checkpoint folder's weights belong to."""
    try:
        base = yaml.safe_load((ckpt / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TinyLMError(f"checkpoint '{ckpt}' has a missing or corrupt config.yaml ({type(e).__name__})")
    return load_config(base=base)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", with_state: bool = False) -> LoadedCheckpoint:
    ckpt = find_checkpoint(path)
    # state.pt (optimizer moments: twice the weights) is only read, so only hashed, to resume
    verify(ckpt, "checkpoint file", DAMAGED, skip=() if with_state else ("state.pt",))
    cfg = read_config(ckpt)
    tokenizer = Tokenizer.load(ckpt)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise TinyLMError(f"checkpoint '{ckpt}' does not match its tokenizer: the model has {cfg.model.vocab_size} "
                          f"token rows, tokenizer.json has {tokenizer.vocab_size}; use the tokenizer it was trained with")
    try:
        model = build_model(cfg.model)
    except ValueError as e:
        raise TinyLMError(f"checkpoint '{ckpt}': {e}")
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise TinyLMError(f"'{ckpt / 'model.safetensors'}' is corrupt or does not fit config.yaml "
                          f"({str(e).splitlines()[0][:160]}); restore it or retrain")
    if missing or unexpected:
        raise TinyLMError(f"'{ckpt / 'model.safetensors'}' does not fit config.yaml "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    state = None
    if with_state:
        try:
            state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise TinyLMError(f"checkpoint '{ckpt}' has no training state (state.pt); it can be evaluated, not resumed")
        except Exception as e:  # torch.load raises many types on damaged pickles/zips
            raise TinyLMError(f"'{ckpt / 'state.pt'}' is corrupt ({type(e).__name__}); restore it or train again with --overwrite")
    return LoadedCheckpoint(model.to(device), cfg, tokenizer, ckpt, state)
