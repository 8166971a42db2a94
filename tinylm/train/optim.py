"""Optimizers: AdamW, and Muon for the hidden matrices with AdamW for the rest.

Muon (Jordan et al., 2024, as used in the modded-nanogpt speedruns) replaces a
2-D weight's momentum update by its nearest semi-orthogonal matrix, computed
with a few Newton-Schulz iterations. It applies only to the matrices inside
the transformer blocks; embeddings, the output head and norm gains keep AdamW,
as its authors prescribe. Both live in one optimizer so a checkpoint holds a
single state dict. Every param group keeps its peak learning rate in
"base_lr"; the training loop scales all groups by the schedule's factor.
"""

from __future__ import annotations

import torch

from tinylm.config import Config
from tinylm.errors import TinyLMError

# quintic Newton-Schulz coefficients chosen to converge fast from a unit-norm start (Jordan et al.)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T, without an SVD; g may be a stack (..., m, n) of same-shape matrices,
    each orthogonalized on its own (one batched matmul per iteration instead of one small one per matrix)."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon on groups with use_muon=True, AdamW on the others.

    The step works on lists (torch._foreach_* ops) and stacks of same-shape matrices rather than one parameter at a
    time: at tinylm's sizes the per-parameter Python loop and its small kernels were most of the step's cost. Each
    AdamW parameter's step count is a Python int, so the bias corrections need no tensor read per parameter."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 ns_steps: int = 5):
        super().__init__(groups, dict(betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps,
                                      weight_decay=0.0, use_muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["use_muon"] else self._adamw)(group, params)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        grads = [p.grad for p in params]
        bufs = [self.state[p].setdefault("momentum", torch.zeros_like(p)) for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        nesterov = torch._foreach_lerp(grads, bufs, momentum)
        by_shape: dict[torch.Size, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(p.shape, []).append(i)
        for shape, indices in by_shape.items():
            updates = orthogonalize(torch.stack([nesterov[i] for i in indices]), group["ns_steps"])
            # keep the update's RMS independent of the matrix's aspect ratio
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            same = [params[i] for i in indices]
            torch._foreach_mul_(same, 1 - lr * wd)
            torch._foreach_add_(same, updates.unbind(0), alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for state, p in zip(states, params):
            if not state:
                state["step"] = 0
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            # int(): a checkpoint written before the count was a Python number holds a tensor
            state["step"] = int(state["step"]) + 1
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denoms = torch._foreach_div(exp_avg_sqs, [1 - beta2 ** s["step"] for s in states])
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, eps)
        torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, [-lr / (1 - beta1 ** s["step"]) for s in states])


def peak_lrs(cfg: Config) -> tuple[float, float]:
    """(AdamW lr, Muon lr) after train.lr_scaling.

    "sqrt" is PanGu-π Pro's rule lr = lr0 · (B / B0)^0.5 (§A.5), B the tokens per optimizer step and B0 =
    train.lr_batch_tokens the batch lr0 was tuned at. For Adam it follows from keeping the update's noise
    scale fixed (Malladi et al., 2022, the square-root scaling rule). Muon's update has a fixed spectral
    norm, so no such derivation covers it; the same factor is applied to muon_lr as an assumption that
    the batch-size sweep in BENCHMARKS.md tests."""
    tc = cfg.train
    if tc.lr_scaling == "none":
        return tc.lr, tc.muon_lr
    if tc.lr_scaling != "sqrt":
        raise TinyLMError(f"train.lr_scaling='{tc.lr_scaling}' is not one of none, sqrt")
    if tc.lr_batch_tokens <= 0:
        raise TinyLMError(f"train.lr_batch_tokens={tc.lr_batch_tokens} must be positive with train.lr_scaling=sqrt")
    factor = (tc.batch_size * tc.grad_accum * cfg.model.max_seq_len / tc.lr_batch_tokens) ** 0.5
    return tc.lr * factor, tc.muon_lr * factor


def build_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    tc = cfg.train
    lr, muon_lr = peak_lrs(cfg)
    # norm gains never decay: pulling a gain toward 0 only fights the normalisation
    gains = [p for p in model.parameters() if p.dim() < 2]
    if tc.optimizer == "adamw":
        matrices = [p for p in model.parameters() if p.dim() >= 2]
        groups = [{"params": matrices, "weight_decay": tc.weight_decay, "base_lr": lr},
                  {"params": gains, "weight_decay": 0.0, "base_lr": lr}]
        fused = device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=lr, betas=(tc.beta1, tc.beta2), fused=fused)
    if tc.optimizer == "muon":
        hidden = [p for name, p in model.named_parameters() if p.dim() >= 2 and name.startswith("layers.")]
        edges = [p for name, p in model.named_parameters() if p.dim() >= 2 and not name.startswith("layers.")]
        # Muon's matrices decay only when asked (train.muon_weight_decay): its updates have a fixed size, so
        # weights grow only slowly
        groups = [{"params": hidden, "use_muon": True, "lr": muon_lr, "base_lr": muon_lr,
                   "weight_decay": tc.muon_weight_decay},
                  {"params": edges, "lr": lr, "base_lr": lr, "weight_decay": tc.weight_decay},
                  {"params": gains, "lr": lr, "base_lr": lr, "weight_decay": 0.0}]
        return MuonAdamW(groups, betas=(tc.beta1, tc.beta2), momentum=tc.muon_momentum)
    raise TinyLMError(f"train.optimizer='{tc.optimizer}' is not one of adamw, muon")
