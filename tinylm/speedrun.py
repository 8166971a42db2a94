"""CPU speedrun: the best model a fixed wall-clock budget can train on a text file, in nats per byte.

The file's first 90% of bytes train and the last 10% validate (the split of
nanoGPT's `shakespeare_char`, the reference). The budget covers everything
from the command's start (imports, reading, training a BPE of 1,024 tokens on
the training split, model setup) to the end of training; the model is then
scored on every byte of the validation split (nats per token of the whole
split divided by its UTF-8 bytes, so a byte model and a BPE model compare).
The settings are general, not tuned to one file: BENCHMARKS.md holds the
two-seed, two-text comparisons that chose them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from tinylm.config import Config, load_config
from tinylm.data.corpus import iter_documents
from tinylm.data.tokens import TokenData
from tinylm.errors import TinyLMError
from tinylm.tokenizer import Tokenizer, byte_tokenizer, train_bpe
from tinylm.train.loop import compile_refusal, train
from tinylm.train.perf import cpu_can_compile, cpu_has_native_bf16

SPEEDRUN_SETTINGS = [
    "data.tokenizer=bpe", "data.vocab_size=1024",  # 2.4 bytes per token: -0.03 nats/byte on Shakespeare, -0.12 on KJV
    "model.n_layer=4", "model.d_model=128", "model.n_heads=2", "model.n_kv_heads=2",
    "model.max_seq_len=128", "model.tie_embeddings=false",
    "train.batch_size=32", "train.optimizer=muon", "train.muon_lr=0.02", "train.lr=3e-3",
    "train.muon_weight_decay=0.5",  # -0.031 nats/byte on Shakespeare, -0.005 on KJV (BENCHMARKS.md)
    "train.schedule=wsd", "train.decay_fraction=0.5",
    "train.average_from=0.75",  # mean of the last quarter's weights: -0.010 on Shakespeare, 0 on KJV (BENCHMARKS.md)
    "train.warmup_steps=20", "train.weight_decay=0.1", "train.beta2=0.95",
    "train.max_steps=0", "train.eval_every=0", "train.ckpt_every=0", "train.log_every=25",
    "train.device=cpu", "train.eval_tokens=0",
]


def speedrun_precision() -> str:
    """bf16 autocast where the CPU multiplies bf16 in hardware (1.16-1.36x the tokens in the same time, and lower
    validation loss on both texts and both seeds measured: BENCHMARKS.md), fp32 elsewhere."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


# The speedrun compiles its model (train.compile) for budgets of at least this many seconds. A cold compile takes
# 37-52 s on 2 cores; a compiled step is 1.5x faster on a slow host, which repays the compile from about three times
# its cost, and 1.2x on a fast one, where 180 s breaks about even (BENCHMARKS.md, four seeds on two texts)
COMPILE_MIN_SECONDS = 150


def speedrun_compile(seconds: float, cfg: Config) -> bool:
    """train.compile for a budget of `seconds`: on where the budget repays the compile, Inductor can build CPU
    kernels here (it needs a C++ compiler) and train.compile takes the settings (a token model; no multi-token
    heads or changing dropout, which it refuses)."""
    compiles = cfg.model.kind == "token" and compile_refusal(cfg) is None
    return seconds >= COMPILE_MIN_SECONDS and compiles and cpu_can_compile()


def speedrun_config(seconds: float, overrides: list[str] | None = None) -> Config:
    """The speedrun's settings for a budget of `seconds`, then `overrides` (a train.compile among them wins)."""
    settings = [*SPEEDRUN_SETTINGS, f"train.precision={speedrun_precision()}", f"train.max_seconds={seconds}"]
    compile = speedrun_compile(seconds, load_config(overrides=[*settings, *(overrides or [])]))
    return load_config(overrides=[*settings, f"train.compile={str(compile).lower()}", *(overrides or [])])


def read_splits(path: str | Path, train_fraction: float = 0.9) -> tuple[bytes, bytes]:
    """The text's first `train_fraction` of UTF-8 bytes and the rest (the cut moved to the next character start)."""
    if not Path(path).is_file():
        raise TinyLMError(f"--text '{path}' is not a file; give one UTF-8 text file")
    raw = "".join(iter_documents(str(path))).encode("utf-8")  # checks for binary and non-UTF-8 input
    cut = int(len(raw) * train_fraction)
    while cut < len(raw) and raw[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        cut += 1
    return raw[:cut], raw[cut:]


def token_splits(path: str | Path, tokenizer: Tokenizer | None, train_fraction: float = 0.9,
                 vocab_size: int = 0) -> tuple[TokenData, Tokenizer]:
    """Train and validation ids of the text under `tokenizer`, or under a BPE of `vocab_size` trained on the
    training split only when `tokenizer` is None. Bits per byte count the UTF-8 bytes of each split's text."""
    splits = read_splits(path, train_fraction)
    if tokenizer is not None and tokenizer.kind == "byte":  # the ids are the bytes: no tokenizer pass (3.5 s on 4 MB)
        ids = [np.frombuffer(b, dtype=np.uint8).astype(np.uint16) for b in splits]
    else:
        texts = [b.decode("utf-8") for b in splits]
        if tokenizer is None:
            tokenizer = train_bpe(iter(texts[0].splitlines(keepends=True)), vocab_size)
        dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
        ids = [np.asarray(tokenizer.encode(t), dtype=dtype) for t in texts]
    return TokenData(ids[0], ids[1], {"train": len(splits[0]), "val": len(splits[1])},
                     tokenizer.vocab_size, tokenizer.eos_id), tokenizer


def speedrun(text: str | Path, seconds: float, overrides: list[str] | None = None, out: str | Path | None = None,
             start_time: float | None = None, progress: bool = True) -> dict:
    start_time = start_time if start_time is not None else time.perf_counter()
    if seconds <= 0:
        raise TinyLMError(f"--seconds must be positive, got {seconds}")
    cfg = speedrun_config(seconds, overrides)
    if cfg.data.tokenizer not in ("byte", "bpe"):
        raise TinyLMError(f"the speedrun trains data.tokenizer=byte or data.tokenizer=bpe (with data.vocab_size, "
                          f"trained on the training split inside the budget), not '{cfg.data.tokenizer}'")
    data, tokenizer = token_splits(text, byte_tokenizer() if cfg.data.tokenizer == "byte" else None,
                                   vocab_size=cfg.data.vocab_size)
    result = train(cfg, data, tokenizer, out, start_time=start_time, progress=progress)
    report = {
        "text": str(text),
        "val_nats_per_byte": result.val_bits_per_byte * math.log(2),
        "val_bits_per_byte": result.val_bits_per_byte,
        "val_bytes": data.bytes["val"],
        "tokenizer": tokenizer.kind if tokenizer.kind == "byte" else f"bpe-{tokenizer.vocab_size}",
        "bytes_per_token": round(data.bytes["train"] / len(data.train), 3),
        "train_tokens": result.tokens,
        "steps": result.steps,
        "params": result.params["total"],
        "seconds": round(result.seconds, 2),  # setup + training, the budgeted part
        "total_seconds": round(time.perf_counter() - start_time, 2),  # including the full evaluation
        "tokens_per_s": round(result.tokens_per_second, 1),
        "mfu": result.mfu,
        "threads": torch.get_num_threads(),
        "precision": cfg.train.precision,
        "compile": cfg.train.compile,
    }
    return report
