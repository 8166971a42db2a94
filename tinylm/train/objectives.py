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
multi_token: next-token CE + λ · (mean CE of the K extra predictions of model.mtp, see model/mtp.py), λ =
train.mtp_weight shaped over training by train.mtp_schedule (train/schedule.py mtp_weight_at); this mean over
the extra predictions is DeepSeek-V3's (λ/D)·Σ_k L^k, and Gloeckle et al.'s unweighted sum over n heads is
λ = n−1.
Targets: the prediction k tokens ahead at position t learns x_{t+k}. A target beyond the window (the last k−1
positions) is ignored rather than read from extra tokens, and so is one past a document's end: when any of
x_{t+1}..x_{t+k−1} is EOS, x_{t+k} belongs to the next document, which nothing before the EOS can tell (the EOS
itself stays a target, as it is for the next-token head). Every extra prediction follows the same rule. With
model.mtp=parallel the objective back-propagates itself, in Gloeckle et al.'s memory-saving order: the trunk's
output z is cut from its graph, each head's loss is back-propagated into z in turn (only one head's logits alive
at a time), then the trunk once with z's accumulated gradient.

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
from tinylm.model.mtp import parallel_logits, sequential_logits
from tinylm.tokenizer import Tokenizer
from tinylm.train.distill import SampledTargets, Teacher, find_id_map, tokenizer_fingerprint
from tinylm.train.schedule import MTP_SCHEDULES, mtp_weight_at

KL_KINDS = ("forward", "reverse", "skew")
TINY = torch.finfo(torch.float32).tiny


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) input ids
    y: torch.Tensor  # (B, T) next-token targets; -1 = ignored
    index: int  # the data batch it is (first-round step x grad_accum + micro-batch): names cached targets
    progress: float = 0.0  # training progress in [0, 1], for loss-weight schedules
    loss_scale: float = 1.0  # what the loop scales the loss by before back-propagating it (1 / grad_accum)


class Targets(Protocol):
    def targets(self, x: torch.Tensor, index: int) -> torch.Tensor: ...


Objective = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def backpropagates(objective: Objective) -> bool:
    """Whether `objective` back-propagates its loss itself (scaled by batch.loss_scale) and returns it detached,
    so the loop must not; an objective marks this by a `backpropagates = True` attribute."""
    return getattr(objective, "backpropagates", False)


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


def future_targets(y: torch.Tensor, k: int, eos_id: int | None) -> torch.Tensor:
    """The targets (B, T) of the prediction k tokens ahead from next-token targets y (B, T): x_{t+k} = y[t+k−1] at
    position t, or −1 where it lies past the window or past an EOS among y[t..t+k−2] (see the module docstring)."""
    B, T = y.shape
    out = torch.full_like(y, -1)
    if k > T:
        return out
    out[:, :T - k + 1] = y[:, k - 1:]
    if eos_id is not None and k > 1:
        ends = (y == eos_id).int().cumsum(1)  # documents ended up to and including position j
        crossed = ends[:, k - 2:T - 1] - torch.cat((torch.zeros_like(ends[:, :1]), ends[:, :T - k]), 1)
        out[:, :T - k + 1] = out[:, :T - k + 1].masked_fill(crossed > 0, -1)
    return out


def mean_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real targets; 0 (still differentiable) when there are none."""
    if not (targets != -1).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)


def multi_token_losses(model: torch.nn.Module, batch: Batch, eos_id: int | None, backward_scale: list[float] | None
                       = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(next-token CE, [CE of the prediction k+1 ahead for each extra k]).

    With `backward_scale` (parallel heads only) each head's loss times its scale is back-propagated as soon as it
    is computed (the memory-saving order) and the trunk once at the end; the losses come back detached."""
    x, y = batch.x, batch.y
    if model.mtp.kind == "sequential":
        h0 = model.hidden(x)
        main = mean_ce(model.lm_head(model.norm(h0)), y)
        extra = [mean_ce(logits, future_targets(y, k + 1, eos_id)[:, :logits.size(1)])
                 for k, logits in enumerate(sequential_logits(model, h0, x), start=1)]
        return main, extra
    z = model.hidden(x, len(model.layers) - 1)
    z_in = z.detach().requires_grad_() if backward_scale is not None else z
    losses = []
    for k in range(1, len(model.mtp.heads) + 2):
        loss = mean_ce(parallel_logits(model, z_in, k), future_targets(y, k, eos_id))
        if backward_scale is not None:
            (loss * backward_scale[k - 1]).backward()
            loss = loss.detach()
        losses.append(loss)
    if backward_scale is not None:
        z.backward(z_in.grad)
    return losses[0], losses[1:]


def multi_token(model: torch.nn.Module, batch: Batch, eos_id: int | None, weight: float, memory_saving: bool
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token CE + weight · mean extra CE; with `memory_saving` (parallel heads) already back-propagated."""
    n_extra = len(model.mtp.heads)
    scales = [batch.loss_scale] + [batch.loss_scale * weight / n_extra] * n_extra if memory_saving else None
    main, extra = multi_token_losses(model, batch, eos_id, scales)
    mtp = torch.stack(extra).mean() if extra else main.new_zeros(())
    numbers = {"next_token_loss": main.detach(), "mtp_loss": mtp.detach(), "mtp_weight": main.new_tensor(weight)}
    return main + weight * mtp, numbers


def build_multi_token(cfg: Config, tokenizer: Tokenizer) -> Objective:
    """The multi-token objective of model.mtp, its weight following train.mtp_schedule."""
    tc = cfg.train
    if tc.mtp_schedule not in MTP_SCHEDULES:
        raise TinyLMError(f"train.mtp_schedule='{tc.mtp_schedule}' is not one of {', '.join(MTP_SCHEDULES)}")
    memory_saving = cfg.model.mtp == "parallel"

    def objective(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weight = mtp_weight_at(batch.progress, weight=tc.mtp_weight, schedule=tc.mtp_schedule,
                               final=tc.mtp_weight_final, ramp=tc.mtp_ramp)
        return multi_token(model, batch, tokenizer.eos_id, weight, memory_saving)

    objective.backpropagates = memory_saving
    return objective


def build_objective(cfg: Config, tokenizer: Tokenizer, device: torch.device) -> Objective:
    """The configured objective, its teacher loaded once; TinyLMError names a bad distill_* or mtp setting."""
    tc = cfg.train
    if cfg.model.mtp != "none":
        if tc.distill_teacher:
            raise TinyLMError("model.mtp and train.distill_teacher cannot be combined yet; train with one of them")
        return build_multi_token(cfg, tokenizer)
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
