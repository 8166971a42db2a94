"""Learning-rate and dropout schedules as functions of training progress.

Progress p in [0, 1] is the largest of step/max_steps, tokens/max_tokens and
seconds/max_seconds among the limits that are set, so a time-limited run
(the speedrun) decays on time just as a step-limited run decays on steps.
Warmup is counted in optimizer steps because it protects the first updates,
whatever the run length.
"""

from __future__ import annotations

import math


def lr_at(step: int, progress: float, *, lr: float, schedule: str, warmup_steps: int,
          min_lr_ratio: float = 0.0, decay_fraction: float = 0.4) -> float:
    progress = min(max(progress, 0.0), 1.0)
    floor = lr * min_lr_ratio
    if schedule == "cosine":
        value = floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "wsd":  # warmup-stable-decay: flat, then linear to the floor over the last decay_fraction
        decay_start = 1.0 - decay_fraction
        value = lr if progress <= decay_start else floor + (lr - floor) * (1 - progress) / decay_fraction
    elif schedule == "constant":
        value = lr
    else:
        raise ValueError(f"train.schedule='{schedule}' is not one of cosine, wsd, constant")
    if warmup_steps and step < warmup_steps:
        value *= (step + 1) / warmup_steps
    return value


DROPOUT_SCHEDULES = ("constant", "early", "late", "triangle")


def dropout_at(progress: float, *, peak: float, schedule: str, until: float = 0.25, start: float = 0.5,
               cycles: int = 1) -> float:
    """The dropout probability at `progress`, peaking at `peak` (Super Tiny Language Models' dropout schedules).

    early: peak falling linearly to 0 at `until`, then 0 (Liu et al. 2023: dropout early on lowers the
    variance of mini-batch gradients, helping a model that underfits); late: 0 before `start`, then peak
    (their "late dropout", regularising only once the model can overfit); triangle: 0 -> peak -> 0,
    `cycles` times over training.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return peak
    if schedule == "early":
        return peak * max(0.0, 1.0 - progress / until) if until > 0 else 0.0
    if schedule == "late":
        return peak if progress >= start else 0.0
    if schedule == "triangle":
        phase = progress * cycles % 1.0
        return peak * (1.0 - abs(2.0 * phase - 1.0))
    raise ValueError(f"train.dropout_schedule='{schedule}' is not one of {', '.join(DROPOUT_SCHEDULES)}")
