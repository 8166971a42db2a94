"""Token splits on disk and the batches drawn from them.

A prepared data folder holds:
  train.bin, val.bin   flat token ids (uint16 if the vocabulary fits, else uint32),
                       documents separated by the tokenizer's EOS id
  meta.json            {"dtype", "vocab_size", "eos_id", "splits": {"train": {"tokens", "bytes",
                        "documents"}, "val": {...}}, ...}; "bytes" counts the UTF-8 bytes of the
                        text behind each split, so loss can be reported in bits per byte
  tokenizer.json       the tokenizer that produced the ids
  manifest.json        every file's size and SHA-256, written last (tinylm.manifest); checked on load
Splits are memory-mapped, so a corpus larger than RAM trains without loading it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tinylm.errors import TinyLMError
from tinylm.manifest import verify


@dataclass
class TokenData:
    train: np.ndarray
    val: np.ndarray
    bytes: dict[str, int]  # UTF-8 bytes of text behind each split
    vocab_size: int
    eos_id: int

    @classmethod
    def load(cls, directory: str | Path) -> "TokenData":
        directory = Path(directory)
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            raise TinyLMError(f"'{directory}' is not prepared data (no meta.json); run `tinylm data prepare` on it")
        verify(directory, "prepared data file", "prepare the data again")
        try:
            meta = json.loads(meta_file.read_text())
            dtype = np.dtype(meta["dtype"])
            splits = {s: meta["splits"][s] for s in ("train", "val")}
        except (ValueError, KeyError, TypeError) as e:
            raise TinyLMError(f"'{meta_file}' is corrupt ({e}); prepare the data again")
        arrays = {}
        for split, info in splits.items():
            path = directory / f"{split}.bin"
            expected = info["tokens"] * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise TinyLMError(f"'{path}' is missing or truncated (expected {expected} bytes); prepare the data again")
            arrays[split] = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        return cls(arrays["train"], arrays["val"], {s: int(i["bytes"]) for s, i in splits.items()},
                   int(meta["vocab_size"]), int(meta["eos_id"]))

    def check_trainable(self, seq_len: int) -> None:
        for split in ("train", "val"):
            if len(getattr(self, split)) < seq_len + 1:
                raise TinyLMError(f"the {split} split has {len(getattr(self, split))} tokens, fewer than one "
                                  f"sequence of {seq_len + 1}; use more text or a smaller model.max_seq_len")

    def bits_per_byte(self, total_nats: float, n_predicted: int) -> float:
        """Validation loss in bits per UTF-8 byte of the text behind the scored tokens.

        The bytes behind the predicted tokens are taken in proportion to tokens (exact for bytes)."""
        covered = self.bytes["val"] * n_predicted / len(self.val)
        return total_nats / math.log(2) / covered

    def batch(self, batch_size: int, seq_len: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random training windows for `step`. The draw depends only on (seed, step), so a resumed
        run sees exactly the batches an uninterrupted one would."""
        rng = np.random.default_rng([seed, step])
        starts = rng.integers(0, len(self.train) - seq_len, size=batch_size)
        windows = np.stack([self.train[s:s + seq_len + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]

    def val_batches(self, batch_size: int, seq_len: int, max_tokens: int = 0
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive non-overlapping windows covering the validation split (or its first max_tokens).

        Every token except the first is predicted exactly once; the tail shorter than a window
        is scored as a shorter window, so nothing is left out."""
        n = len(self.val) - 1 if not max_tokens else min(max_tokens, len(self.val) - 1)
        starts = list(range(0, n, seq_len))
        for i in range(0, len(starts), batch_size):
            group = starts[i:i + batch_size]
            length = min(seq_len, n - group[-1])
            if length < seq_len:  # the ragged tail goes in a batch of its own
                if len(group) > 1:
                    yield self._windows(group[:-1], seq_len)
                yield self._windows(group[-1:], length)
            else:
                yield self._windows(group, seq_len)

    def _windows(self, starts: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(np.stack([self.val[s:s + length + 1] for s in starts]).astype(np.int64))
        return w[:, :-1], w[:, 1:]
