"""Summed next-token loss over batches, the quantity behind loss, perplexity and bits per byte."""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F

from tinylm.model.llama import Transformer


@torch.no_grad()
def sum_nats(model: Transformer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             autocast: contextlib.AbstractContextManager | None = None) -> tuple[float, int]:
    """Total cross-entropy in nats and the number of predicted tokens (targets of -1 are skipped)."""
    was_training = model.training
    model.eval()
    device = model.embed.weight.device
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum").item()
        count += int((y != -1).sum())
    model.train(was_training)
    return total, count
