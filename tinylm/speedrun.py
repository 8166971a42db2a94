"""CPU speedrun: the best byte-level model a fixed wall-clock budget can train on a text file.

The file's first 90% of bytes train and the last 10% validate (the split of
nanoGPT's `shakespeare_char`, the reference). The budget covers everything
from the command's start (imports, reading, model setup) to the end of
training; the model is then scored on every byte of the validation split.
The settings are general, not tuned to one file.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tinylm.config import Config, load_config
from tinylm.data.corpus import iter_documents
from tinylm.data.tokens import TokenData
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer
from tinylm.train.loop import train
from tinylm.train.perf import cpu_has_native_bf16

SPEEDRUN_SETTINGS = [
    "data.tokenizer=byte",
    "model.n_layer=4", "model.d_model=128", "model.n_heads=2", "model.n_kv_heads=2",
    "model.max_seq_len=128", "model.tie_embeddings=false",
    "train.batch_size=32", "train.optimizer=muon", "train.muon_lr=0.02", "train.lr=3e-3",
    "train.schedule=wsd", "train.decay_fraction=0.5",
    "train.warmup_steps=20", "train.weight_decay=0.1", "train.beta2=0.95",
    "train.max_steps=0", "train.eval_every=0", "train.ckpt_every=0", "train.log_every=25",
    "train.device=cpu", "train.eval_tokens=0",
]


def speedrun_precision() -> str:
    """bf16 autocast where the CPU multiplies bf16 in hardware (1.16-1.36x the tokens in the same time, and lower
    validation loss on both texts and both seeds measured: BENCHMARKS.md), fp32 elsewhere."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


def speedrun_config(seconds: float, overrides: list[str] | None = None) -> Config:
    return load_config(overrides=[*SPEEDRUN_SETTINGS, f"train.precision={speedrun_precision()}",
                                  f"train.max_seconds={seconds}", *(overrides or [])])


def byte_splits(path: str | Path, train_fraction: float = 0.9) -> TokenData:
    if not Path(path).is_file():
        raise TinyLMError(f"--text '{path}' is not a file; give one UTF-8 text file")
    raw = "".join(iter_documents(str(path))).encode("utf-8")  # checks for binary and non-UTF-8 input
    tokens = np.frombuffer(raw, dtype=np.uint8).astype(np.uint16)
    cut = int(len(tokens) * train_fraction)
    tokenizer = byte_tokenizer()
    return TokenData(tokens[:cut], tokens[cut:], {"train": cut, "val": len(tokens) - cut},
                     tokenizer.vocab_size, tokenizer.eos_id)


def speedrun(text: str | Path, seconds: float, overrides: list[str] | None = None, out: str | Path | None = None,
             start_time: float | None = None, progress: bool = True) -> dict:
    start_time = start_time if start_time is not None else time.perf_counter()
    if seconds <= 0:
        raise TinyLMError(f"--seconds must be positive, got {seconds}")
    cfg = speedrun_config(seconds, overrides)
    data = byte_splits(text)
    result = train(cfg, data, byte_tokenizer(), out, start_time=start_time, progress=progress)
    report = {
        "text": str(text),
        "val_nats_per_byte": result.val_loss,  # one token per byte, so nats/token = nats/byte
        "val_bits_per_byte": result.val_bits_per_byte,
        "val_bytes": int(len(data.val)),
        "train_tokens": result.tokens,
        "steps": result.steps,
        "params": result.params["total"],
        "seconds": round(result.seconds, 2),  # setup + training, the budgeted part
        "total_seconds": round(time.perf_counter() - start_time, 2),  # including the full evaluation
        "tokens_per_s": round(result.tokens_per_second, 1),
        "mfu": result.mfu,
        "threads": torch.get_num_threads(),
        "precision": cfg.train.precision,
    }
    return report
