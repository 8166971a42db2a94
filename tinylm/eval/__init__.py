"""Evaluation and sampling of saved models.

Reads run directories (tinylm.checkpoint) and prepared data; reports loss per
token, perplexity and bits per byte, and samples text. Must not import
training or export.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tinylm.checkpoint import load_checkpoint
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.model import generate, sum_nats


def evaluate(run: str | Path, data_path: str | Path | None = None, max_tokens: int | None = None,
             batch_size: int | None = None, device: str = "cpu", progress: bool = True) -> dict:
    """Validation loss (nats/token), perplexity and bits per byte of a checkpoint.

    Without `data_path`, the validation split of the data the run was trained on is used."""
    ckpt = load_checkpoint(run, device=device)
    cfg = ckpt.cfg
    # other text is tokenized with the checkpoint's own tokenizer, never a freshly trained one
    data_cfg = cfg.data if data_path is None else dataclasses.replace(
        cfg.data, path=str(data_path), tokenizer=str(ckpt.path / "tokenizer.json"))
    data_dir = prepare_cached(data_cfg, progress=progress)
    data = TokenData.load(data_dir)
    if data.vocab_size > cfg.model.vocab_size:
        raise TinyLMError(f"data in '{data_dir}' was tokenized with a {data.vocab_size}-token vocabulary but the "
                          f"model has {cfg.model.vocab_size}; prepare it with the run's tokenizer")
    max_tokens = cfg.eval.max_tokens if max_tokens is None else max_tokens
    batch_size = batch_size or cfg.eval.batch_size
    n = min(max_tokens or len(data.val), len(data.val))
    batches = tqdm(data.val_batches(batch_size, cfg.model.max_seq_len, max_tokens), disable=not progress,
                   total=math.ceil(n / cfg.model.max_seq_len / batch_size) + 1, desc="eval", unit="batch")
    nats, count = sum_nats(ckpt.model, batches)
    loss = nats / count
    return {"checkpoint": str(ckpt.path), "val_loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": data.bits_per_byte(nats, count), "tokens": count}


def sample(run: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int = 0, top_p: float = 0.95, seed: int = 0, device: str = "cpu") -> str:
    ckpt = load_checkpoint(run, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = generate(ckpt.model, ckpt.tokenizer.encode(prompt), max_new_tokens, temperature, top_k, top_p,
                   eos_id=ckpt.tokenizer.eos_id, generator=generator)
    return prompt + ckpt.tokenizer.decode(ids)
