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


MTP_SCHEDULES = ("constant", "decay", "curriculum")


def mtp_weight_at(progress: float, *, weight: float, schedule: str, final: float = 0.0, ramp: float = 0.25) -> float:
    """The weight λ of the multi-token loss at `progress`.

    decay: λ falling linearly to `final` over training (DeepSeek-V3 trains at 0.3, then 0.1; marin's replication
    found a linear decay as good as the step); curriculum: 0 rising linearly to λ over the first `ramp` of
    training, then λ (the forward curriculum of arXiv 2505.22757, with which small models keep their next-token
    quality: they learn the next token before the later ones are asked of them).
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return weight
    if schedule == "decay":
        return weight + (final - weight) * progress
    if schedule == "curriculum":
        return weight * min(1.0, progress / ramp) if ramp > 0 else weight
    raise ValueError(f"train.mtp_schedule='{schedule}' is not one of {', '.join(MTP_SCHEDULES)}")
