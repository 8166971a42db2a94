"""Learning-rate schedules as a function of training progress.

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
