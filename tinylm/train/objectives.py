"""Training objectives: what the loop minimises. Each takes (model, batch[, teacher]) and returns the loss and the
numbers worth logging (0-dim tensors, read only on logging steps); `build_objective` picks the configured one
once, so the loop calls it without knowing what it computes.

next_token_ce: the mean cross-entropy over the real targets (a target of -1 is ignored).

distillation: α·CE + (1−α)·τ²·KL between the teacher's distribution p and the student's q, both at temperature
τ (Hinton KD as in docs techniques.md §B.4: α weighs the CE; α = 0 is Minitron's KL-only retraining). τ² keeps
the KL's gradients on the CE's scale as τ grows. `train.distill_loss` picks the KL:
  forward  KL(p‖q) = Σ_v p·(log p − log q)               mass-covering (Hinton, Minitron)
  reverse  KL(q‖p) = Σ_v q·(log q − log p)               mode-seeking; the token-level, teacher-forced stand-in
                                                          for MiniLLM's sequence-level objective
  skew     KL(p‖m), m = α_s·p + (1−α_s)·q                 DistiLLM's skew forward KL (SKL), α_s =
                                                          train.distill_skew; α_s = 0 is forward KL, and the
                                                          mixture bounds p/m ≤ 1/α_s where q ≈ 0
Everything is in fp32. The KL is summed over the vocabulary, then averaged over the positions whose target is not
-1 (those the CE ignores) by dividing by their count, never by the batch size: KLDivLoss(reduction="batchmean")
on (B, T, V) divides by B alone, which in public KD code made the KL T times the CE it was mixed with.
Logs of a probability that is 0 (teacher mass that underflowed, or a cached target's unsampled tokens) are
taken at the smallest normal fp32 instead, so reverse KL stays finite; 0·log 0 counts as 0.

spin: self-play fine-tuning (SPIN, arXiv 2401.01335; docs next-techniques.md §1). A batch holds B real sequences
(prompt + true continuation) then the B synthetic ones (the same prompts + the frozen reference's own samples);
targets are -1 on the prompt, so s(y) below sums log-probs over the continuation only. With π the model trained
and π_t the reference (the previous iteration):
  reward(y) = β·(s_π(y) − s_πt(y)),  loss = −log σ(reward(real) − reward(synthetic)) + α·NLL_π(real) / L_c
The first term is DPO's logistic loss with the real text as "chosen" (uclaml/SPIN `spin_loss`); α weighs an
NLL anchor on the real continuation (per token), which keeps both log-probs from falling together
(uclaml/SPIN#13). Log-probs are sums, not means, as in the paper; real and synthetic continuations have the same
length, so the sum carries no length bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from tinylm.config import Config
from tinylm.errors import TinyLMError
from tinylm.tokenizer import Tokenizer
from tinylm.train.distill import SampledTargets, Teacher, find_id_map, tokenizer_fingerprint

KL_KINDS = ("forward", "reverse", "skew")
TINY = torch.finfo(torch.float32).tiny


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) input ids
    y: torch.Tensor  # (B, T) next-token targets; -1 = ignored
    index: int  # the data batch it is (first-round step x grad_accum + micro-batch): names cached targets


class Targets(Protocol):
    def targets(self, x: torch.Tensor, index: int) -> torch.Tensor: ...


Objective = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def next_token_ce(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return model(batch.x, batch.y), {}


def kl_divergence(teacher_probs: torch.Tensor, student_logits: torch.Tensor, kind: str, skew: float = 0.1
                  ) -> torch.Tensor:
    """Per-position KL of the configured kind, (...,) from (..., V) teacher probabilities and student logits."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    p = teacher_probs.float()
    if kind == "forward":
        return (torch.xlogy(p, p) - p * log_q).sum(-1)
    if kind == "reverse":
        return (log_q.exp() * (log_q - p.clamp_min(TINY).log())).sum(-1)
    if kind == "skew":
        mixture = skew * p + (1 - skew) * log_q.exp()
        return (torch.xlogy(p, p) - p * mixture.clamp_min(TINY).log()).sum(-1)
    raise TinyLMError(f"train.distill_loss='{kind}' is not one of {', '.join(KL_KINDS)}")


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher_probs: torch.Tensor, kind: str,
                      alpha: float, temperature: float, skew: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """α·CE + (1−α)·τ²·KL over the real positions; teacher_probs are already at temperature τ.

    The student's logits may have more rows than the teacher's target (a vocabulary padded past the tokenizer's);
    the KL compares the distributions over the tokenizer's tokens."""
    ce = F.cross_entropy(student_logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
    kl = kl_divergence(teacher_probs, student_logits[..., :teacher_probs.size(-1)].float() / temperature, kind, skew)
    real = targets != -1
    kd = temperature ** 2 * (kl * real).sum() / real.sum().clamp_min(1)
    return alpha * ce + (1 - alpha) * kd, {"ce_loss": ce.detach(), "kd_loss": kd.detach()}


def distillation(model: torch.nn.Module, batch: Batch, teacher: Targets, kind: str, alpha: float,
                 temperature: float, skew: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return distillation_loss(model(batch.x), batch.y, teacher.targets(batch.x, batch.index), kind, alpha,
                             temperature, skew)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's targets, (B,) from (B, T, V) logits; a target of -1 counts 0."""
    logp = F.log_softmax(logits.float(), dim=-1)
    real = targets != -1
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * real).sum(-1)


def spin_loss(policy_real: torch.Tensor, policy_synthetic: torch.Tensor, reference_real: torch.Tensor,
              reference_synthetic: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SPIN/DPO logistic loss from summed continuation log-probs (each (B,)), and its rewards: accuracy is the
    share of pairs whose real reward beats the synthetic one, margin their mean difference."""
    reward_real = beta * (policy_real - reference_real)
    reward_synthetic = beta * (policy_synthetic - reference_synthetic)
    margin = reward_real - reward_synthetic
    numbers = {"reward_real": reward_real.mean().detach(), "reward_synthetic": reward_synthetic.mean().detach(),
               "reward_accuracy": (margin > 0).float().mean().detach(), "reward_margin": margin.mean().detach()}
    return -F.logsigmoid(margin).mean(), numbers


def spin(model: torch.nn.Module, batch: Batch, reference: torch.nn.Module, beta: float, nll_weight: float
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPIN on a batch of B real rows then B synthetic rows (see the module docstring); `reference` is frozen."""
    logps = sequence_logprobs(model(batch.x), batch.y)
    with torch.no_grad():
        reference_logps = sequence_logprobs(reference(batch.x), batch.y)
    pairs = len(logps) // 2
    loss, numbers = spin_loss(logps[:pairs], logps[pairs:], reference_logps[:pairs], reference_logps[pairs:], beta)
    nll = -logps[:pairs].sum() / (batch.y[:pairs] != -1).sum().clamp_min(1)
    numbers |= {"logp_real": logps[:pairs].mean().detach(), "nll_real": nll.detach()}
    return (loss + nll_weight * nll if nll_weight else loss), numbers


def build_objective(cfg: Config, tokenizer: Tokenizer, device: torch.device) -> Objective:
    """The configured objective, its teacher loaded once; TinyLMError names a bad distill_* setting."""
    tc = cfg.train
    if tc.distill_loss not in KL_KINDS:
        raise TinyLMError(f"train.distill_loss='{tc.distill_loss}' is not one of {', '.join(KL_KINDS)}")
    if not 0 <= tc.distill_alpha <= 1:
        raise TinyLMError(f"train.distill_alpha={tc.distill_alpha} must be in [0, 1] (the weight of the CE)")
    if tc.distill_temperature <= 0:
        raise TinyLMError(f"train.distill_temperature={tc.distill_temperature} must be positive")
    if not 0 <= tc.distill_skew < 1:
        raise TinyLMError(f"train.distill_skew={tc.distill_skew} must be in [0, 1) (at 1 the skew KL is always 0)")
    if tc.distill_samples < 1:
        raise TinyLMError(f"train.distill_samples={tc.distill_samples} must be at least 1")
    if not tc.distill_teacher:
        if tc.distill_cache:
            raise TinyLMError("train.distill_cache is set but train.distill_teacher is not; set the teacher to distill")
        return next_token_ce
    if tc.distill_cache and tc.distill_loss == "reverse":
        raise TinyLMError("train.distill_loss=reverse needs the teacher's whole distribution, which "
                          "train.distill_cache does not keep; use forward or skew, or drop the cache")

    def make_teacher() -> Teacher:
        return Teacher(tc.distill_teacher, tokenizer, find_id_map(cfg.data.tokenizer), tc.distill_temperature,
                       cfg.model.max_seq_len, device)

    if tc.distill_cache:
        settings = {"teacher": str(Path(tc.distill_teacher).resolve()), "student_tokenizer": tokenizer_fingerprint(
            tokenizer), "batch_size": tc.batch_size, "seq_len": cfg.model.max_seq_len}
        teacher = SampledTargets(tc.distill_cache, make_teacher, settings, tc.distill_samples,
                                 tc.distill_temperature, tc.seed, tokenizer.vocab_size)
    else:
        teacher = make_teacher()

    def objective(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return distillation(model, batch, teacher, tc.distill_loss, tc.distill_alpha, tc.distill_temperature,
                            tc.distill_skew)

    return objective
