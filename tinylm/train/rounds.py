"""Multiple-round training (PanGu-π Pro, §A.4): retrain on the batches the model still finds hard.

Round 1 is ordinary training over N steps; step i trains on `data.batch(seed, i)`, the run's fixed
batching. After round k, the frozen model scores every one of those N batches (mean loss l_i), and
round k+1 trains on n_k ≈ refine_ratio · N of them drawn without replacement with
p_i = softmax(l_i / τ) (τ = 1 in the paper), in the order drawn, from round k's weights.

Budget: a step or token limit is the total over all rounds, so N · (1 + (rounds − 1) · ratio) steps
in all (the last round absorbs rounding), and a 1-round and an R-round run compare at equal tokens.

Schedule: each round has its own warmup and decay over its own steps. Round k ends with the learning
rate decayed to its floor, where further steps barely move the weights; re-warming and decaying again
is how continued pre-training recovers the loss a single longer run reaches (Ibrahim et al., 2024,
"Simple and Scalable Strategies to Continually Pre-train LLMs"). The optimizer's moments carry over.

Files, in RUN/rounds/, written atomically so a crash at any point resumes without repeating work:
  round{k}.scores.npy    l_i for every round-1 batch, scored after round k−1 (NaN = not scored yet)
  round{k}.batches.json  the drawn round-1 step indices, in training order

Under torchrun the ranks share the scoring (`score_batches`) and hold the same scores and draw; rank 0 alone
reads and writes these files and hands what it read to the others, so the files are those of one process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tinylm import distributed
from tinylm.errors import TinyLMError
from tinylm.faults import Stopped, kill_point, stop_requested
from tinylm.progress import progress_bar

ROUNDS_DIR = "rounds"


@dataclass(frozen=True)
class Round:
    index: int  # 1-based
    start: int  # first global step
    steps: int


def plan_rounds(total_steps: int, rounds: int, ratio: float) -> list[Round]:
    """Split `total_steps` into a first round of N steps and `rounds - 1` rounds of about ratio · N."""
    if rounds < 1:
        raise TinyLMError(f"train.rounds={rounds} must be at least 1")
    if rounds > 1 and not 0 < ratio <= 1:
        raise TinyLMError(f"train.refine_ratio={ratio} must be in (0, 1]: later rounds draw that share of the "
                          "first round's batches without replacement")
    first = max(1, round(total_steps / (1 + (rounds - 1) * ratio)))
    later = min(first, max(1, round(ratio * first)))
    sizes = [first] + [later] * (rounds - 1)
    sizes[-1] = min(first, max(1, total_steps - sum(sizes[:-1])))  # the last round takes up rounding
    plan, start = [], 0
    for k, steps in enumerate(sizes, 1):
        plan.append(Round(k, start, steps))
        start += steps
    return plan


def draw_batches(losses: np.ndarray, n: int, temperature: float, seed) -> np.ndarray:
    """n distinct indices drawn one after another with p_i ∝ exp(l_i / τ) among those not yet drawn.

    Gumbel-top-k: the n largest of log p_i + Gumbel noise, in descending order, are distributed exactly
    as n successive draws without replacement (Kool et al., 2019)."""
    if not 0 < n <= len(losses):
        raise ValueError(f"cannot draw {n} of {len(losses)} batches without replacement")
    if temperature <= 0:
        raise TinyLMError(f"train.refine_temperature={temperature} must be positive")
    logits = np.asarray(losses, dtype=np.float64) / temperature
    keys = logits + np.random.default_rng(seed).gumbel(size=len(logits))
    order = np.argsort(-keys, kind="stable")
    return order[:n]


def _save_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    kill_point("rounds-file")
    os.replace(tmp, path)


def _save_scores(path: Path, scores: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, scores)
    _save_atomic(path, write)


@torch.no_grad()
def score_batches(model: torch.nn.Module, batch_of: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]],
                  n_batches: int, scores_file: Path | None, autocast=None, progress: bool = True,
                  save_every_s: float = 30.0) -> np.ndarray:
    """Mean loss of the frozen model on each of the first-round batches 0..n_batches-1.

    `batch_of(i)` gives step i's micro-batches. With `scores_file`, scores are saved every
    `save_every_s` seconds and at the end, and a partly scored file is continued, not restarted.

    Under torchrun the ranks score the batches left in turns, one batch each per turn (distributed.share), and
    gather every turn's scores: each rank holds them all and rank 0 saves them, as one process would. A batch's
    score is the same float computation whichever rank does it, so the file is one process's."""
    scores = np.full(n_batches, np.nan)
    if scores_file is not None and distributed.is_main() and scores_file.is_file():
        saved = np.load(scores_file)
        if saved.shape == scores.shape:
            scores = saved
    scores = distributed.from_main(scores)  # every rank continues from what rank 0 saved
    todo = np.flatnonzero(np.isnan(scores))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    last_save = time.perf_counter()
    bar = progress_bar(total=n_batches, initial=n_batches - len(todo), disable=not progress, dynamic_ncols=True,
                       desc="scoring batches")
    ranks = distributed.world_size()
    try:
        for turn in range(0, len(todo), ranks):
            batches = todo[turn:turn + ranks]
            mine = list(distributed.share(batches))
            # a rank left without a batch in the last turn scores a copy of the first: a sharded (FSDP) model
            # needs every rank in every forward pass
            micro = batch_of(int(mine[0] if mine else batches[0]))
            total = 0.0
            for x, y in micro:
                with autocast or contextlib.nullcontext():
                    total += float(model(x.to(device), y.to(device)))
            kill_point("scoring-batch")
            # a stop signal travels with the scores, so that all ranks stop after the same turn
            turn_scores = distributed.gather_shares([(total / len(micro) if mine else None, stop_requested())])
            scores[batches] = [score for score, _ in turn_scores[:len(batches)]]
            bar.update(len(batches))
            if (signum := next((s for _, s in turn_scores if s is not None), None)) is not None:
                raise Stopped(signum)  # the scores so far are saved below; training saved the round's end
            if scores_file is not None and distributed.is_main() and time.perf_counter() - last_save > save_every_s:
                _save_scores(scores_file, scores)
                last_save = time.perf_counter()
    finally:
        bar.close()
        model.train(was_training)
        if scores_file is not None and distributed.is_main():
            _save_scores(scores_file, scores)
    if not np.isfinite(scores).all():
        raise TinyLMError("scoring the first round's batches gave a non-finite loss; the model diverged, lower train.lr")
    return scores


class RoundSchedule:
    """Where each global step sits: its round, its position in that round's schedule, and the first-round
    step whose batch it trains on. One round (the default) is plain training: every step is its own batch."""

    def __init__(self, plan: list[Round] | None, seed: int, temperature: float, run_dir: Path | None):
        self.plan, self.seed, self.temperature = plan, seed, temperature
        self.dir = run_dir / ROUNDS_DIR if run_dir is not None else None
        self.drawn: dict[int, np.ndarray] = {}

    @classmethod
    def from_config(cls, tc, tokens_per_step: int, run_dir: Path | None) -> "RoundSchedule":
        if tc.rounds == 1:
            return cls(None, tc.seed, tc.refine_temperature, run_dir)
        if tc.max_seconds or not (tc.max_steps or tc.max_tokens):
            raise TinyLMError(f"train.rounds={tc.rounds} needs a step or token budget (train.max_steps or "
                              "train.max_tokens, without train.max_seconds): the rounds split it")
        limits = [tc.max_steps] if tc.max_steps else []
        limits += [math.ceil(tc.max_tokens / tokens_per_step)] if tc.max_tokens else []
        plan = plan_rounds(min(limits), tc.rounds, tc.refine_ratio)
        return cls(plan, tc.seed, tc.refine_temperature, run_dir)

    def round_at(self, step: int) -> Round | None:
        if self.plan is None:
            return None
        return next((r for r in reversed(self.plan) if step >= r.start), self.plan[0])

    def position(self, step: int, progress: float) -> tuple[int, float]:
        """(steps since the round began, progress through the round) for the learning-rate schedule."""
        r = self.round_at(step)
        if r is None:
            return step, progress
        return step - r.start, (step - r.start) / r.steps

    def needs_selection(self, step: int) -> bool:
        r = self.round_at(step)
        return r is not None and r.index > 1 and r.index not in self.drawn

    def select(self, step: int, score: Callable[[Path | None], np.ndarray]) -> None:
        """Load the batches of the round starting at `step`, or score (resumably) and draw them."""
        r = self.round_at(step)
        batches_file = self.dir / f"round{r.index}.batches.json" if self.dir is not None else None
        saved = None
        if batches_file is not None and distributed.is_main() and batches_file.is_file():
            saved = json.loads(batches_file.read_text())["batches"]
        saved = distributed.from_main(saved)  # under torchrun rank 0 decides, so that all ranks score or none
        if saved is not None:
            self.drawn[r.index] = np.array(saved)
            return
        scores_file = None
        if self.dir is not None:
            if distributed.is_main():
                self.dir.mkdir(parents=True, exist_ok=True)
            scores_file = self.dir / f"round{r.index}.scores.npy"
        losses = score(scores_file)
        drawn = distributed.from_main(draw_batches(losses, r.steps, self.temperature, [self.seed, r.index]))
        self.drawn[r.index] = drawn
        if batches_file is not None and distributed.is_main():
            record = {"round": r.index, "temperature": self.temperature, "first_round_batches": len(losses),
                      "mean_loss_all": float(losses.mean()), "mean_loss_drawn": float(losses[drawn].mean()),
                      "batches": drawn.tolist()}
            _save_atomic(batches_file, lambda p: p.write_text(json.dumps(record) + "\n"))

    def source_step(self, step: int) -> int:
        """The first-round step whose batch global step `step` trains on."""
        r = self.round_at(step)
        if r is None or r.index == 1:
            return step
        return int(self.drawn[r.index][step - r.start])

    @property
    def first_round_steps(self) -> int:
        return self.plan[0].steps if self.plan else 0
