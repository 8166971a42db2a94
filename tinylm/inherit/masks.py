"""Learned pruning masks (Sheared-LLaMA): the width metric PanGu-π Pro found best.

Every query head, FFN channel and hidden dimension of the frozen parent gets a
hard-concrete gate (Louizos et al. 2018) whose log-alpha is trained on
calibration data for a short budget. The loss is the language-modelling loss
of the gated model plus a Lagrangian term per structure kind, lambda1 * d +
lambda2 * d^2, where d is the gap between the expected number of open gates and
the child's size (as a fraction of the parent's); the lambdas are raised by
gradient ascent, so the gates are pushed toward the target shape. The trained
log-alphas are the importance scores. Head gates scale each head's attention
output, FFN gates each channel's gated value, and hidden gates every write to
the residual stream (embedding, attention and FFN outputs).
Knows nothing of files or the command line: the caller keeps the state `save` hands it (inherit/__init__.py).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from tinylm.config import ModelConfig
from tinylm.faults import kill_point
from tinylm.inherit.importance import Batches, removing_hooks
from tinylm.inherit.select import WidthScores
from tinylm.model import Transformer, resolved_ffn_hidden
from tinylm.model.llama import head_dim
from tinylm.progress import progress_bar

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # hard-concrete temperature and stretch interval


class HardConcrete(nn.Module):
    def __init__(self, *shape: int, keep: float = 0.9):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(shape, math.log(keep / (1 - keep))))

    def forward(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def expected_open(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA)).sum()


def learned_scores(model: Transformer, child: ModelConfig, calib: Batches, steps: int = 100, lr: float = 0.1,
                   seed: int = 0, progress: bool = True, resume_from: dict | None = None,
                   save: Callable[[dict], None] | None = None) -> WidthScores:
    """Train gates toward the child's shape on `calib` (cycled for `steps` steps); return their log-alphas.

    `save`, when given, receives the training state after every step (gates, lambdas, both optimizers, the RNG
    that samples the gates: a few values per head and channel, cheap beside the parent's forward pass), and
    `resume_from` continues from such a state, so an interrupted run ends with the uninterrupted one's scores."""
    cfg = model.cfg
    torch.manual_seed(seed)
    n_layer, hd = cfg.n_layer, head_dim(cfg)
    gates = nn.ModuleDict({
        "hidden": HardConcrete(cfg.d_model),
        "heads": HardConcrete(n_layer, cfg.n_heads),
        "ffn": HardConcrete(n_layer, resolved_ffn_hidden(cfg)),
    })
    targets = {"hidden": child.d_model / cfg.d_model, "heads": child.n_heads / cfg.n_heads,
               "ffn": resolved_ffn_hidden(child) / resolved_ffn_hidden(cfg)}
    lambdas = nn.Parameter(torch.zeros(len(gates), 2))
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    z = {}

    def gate_heads(i):
        return lambda m, inputs: (inputs[0] * z["heads"][i].repeat_interleave(hd),)

    def gate_ffn(i):
        return lambda m, inputs: (inputs[0] * z["ffn"][i],)

    def gate_hidden(m, inputs, output):
        return output * z["hidden"]

    handles = [model.embed.register_forward_hook(gate_hidden)]
    for i, layer in enumerate(model.layers):
        handles += [layer.attn.wo.register_forward_pre_hook(gate_heads(i)),
                    layer.ffn.w2.register_forward_pre_hook(gate_ffn(i)),
                    layer.attn.wo.register_forward_hook(gate_hidden), layer.ffn.w2.register_forward_hook(gate_hidden)]
    opt_gates = torch.optim.Adam(gates.parameters(), lr=lr)
    opt_lambdas = torch.optim.Adam([lambdas], lr=lr, maximize=True)
    start = 0
    if resume_from is not None:
        gates.load_state_dict(resume_from["gates"])
        with torch.no_grad():
            lambdas.copy_(resume_from["lambdas"])
        opt_gates.load_state_dict(resume_from["opt_gates"])
        opt_lambdas.load_state_dict(resume_from["opt_lambdas"])
        torch.set_rng_state(resume_from["rng"])
        start = resume_from["step"]
    gates.train()
    try:
        with removing_hooks(handles):
            for step in progress_bar(range(start, steps), desc="learning masks", disable=not progress, unit="step",
                                     initial=start, total=steps):
                x, y = calib[step % len(calib)]
                z.update({name: g() for name, g in gates.items()})
                loss = model(x, y)
                for k, (name, g) in enumerate(gates.items()):
                    gap = g.expected_open() / g.log_alpha.numel() - targets[name]
                    loss = loss + lambdas[k, 0] * gap + lambdas[k, 1] * gap.square()
                opt_gates.zero_grad(set_to_none=True)
                opt_lambdas.zero_grad(set_to_none=True)
                loss.backward()
                opt_gates.step()
                opt_lambdas.step()
                if save is not None:
                    save({"step": step + 1, "gates": gates.state_dict(), "lambdas": lambdas.detach().clone(),
                          "opt_gates": opt_gates.state_dict(), "opt_lambdas": opt_lambdas.state_dict(),
                          "rng": torch.get_rng_state()})
                kill_point("mask-step")
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    scores = {name: g.log_alpha.detach().clone() for name, g in gates.items()}
    return WidthScores(scores["hidden"], list(scores["heads"]), list(scores["ffn"]))
