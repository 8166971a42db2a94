"""Which layers, heads, FFN channels and hidden dimensions of a parent matter most.

Depth strategies rank layers: `first-last` and `uniform` by position;
`block-influence` by 1 - cos(layer input, layer output) on calibration tokens
(ShortGPT); `loss` by how much the calibration loss rises when the layer is
skipped. Width metrics score structures: `l1` and `l2` norms of the weights
that read from or write to a structure, `taylor` as sum |w * dL/dw| over those
weights on calibration batches (LLM-Pruner), `activation` as mean |activation|
on calibration data (Minitron). Learned masks live in tinylm.inherit.masks.
Knows nothing of files or the command line.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tinylm.inherit.select import WidthScores
from tinylm.model import Transformer
from tinylm.model.llama import head_dim

DEPTH_STRATEGIES = ("first-last", "uniform", "block-influence", "loss")
WIDTH_METRICS = ("l1", "l2", "taylor", "activation", "learned")
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def choose_layers(model: Transformer, n: int, strategy: str, calib: Batches | None = None) -> list[int]:
    """The n layers to keep, in order."""
    total = model.cfg.n_layer
    if n >= total:
        return list(range(total))
    if strategy == "first-last":  # the first ceil(n/2) and the last floor(n/2)
        first = math.ceil(n / 2)
        return list(range(first)) + list(range(total - (n - first), total))
    if strategy == "uniform":
        return [0] if n == 1 else [round(i * (total - 1) / (n - 1)) for i in range(n)]
    scores = block_influence(model, calib) if strategy == "block-influence" else skip_loss_increase(model, calib)
    return sorted(torch.argsort(scores, descending=True, stable=True)[:n].tolist())


@contextmanager
def removing_hooks(handles: list):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def block_influence(model: Transformer, calib: Batches) -> torch.Tensor:
    """Per layer: 1 - mean cosine similarity of its input and output hidden states."""
    totals = torch.zeros(model.cfg.n_layer, dtype=torch.float64)

    def hook(i):
        def record(module, inputs, output):
            totals[i] += (1 - F.cosine_similarity(inputs[0].float(), output.float(), dim=-1)).mean().item()
        return record

    with removing_hooks([layer.register_forward_hook(hook(i)) for i, layer in enumerate(model.layers)]):
        for x, _ in calib:
            model(x)
    return totals / len(calib)


@torch.no_grad()
def calib_loss(model: Transformer, calib: Batches) -> float:
    return sum(model(x, y).item() for x, y in calib) / len(calib)


@torch.no_grad()
def skip_loss_increase(model: Transformer, calib: Batches) -> torch.Tensor:
    """Per layer: calibration loss with the layer skipped (its output replaced by its input) minus the full loss.

    Each layer's input is kept from one full pass, so skipping layer i only reruns the layers after it."""
    n = model.cfg.n_layer
    totals = torch.zeros(n + 1, dtype=torch.float64)  # [i]: loss without layer i; [n]: full loss
    for x, y in calib:
        cos, sin = model.rope_cos[:x.size(1)], model.rope_sin[:x.size(1)]
        inputs = [model.embed(x)]
        for layer in model.layers:
            inputs.append(layer(inputs[-1], cos, sin))
        for i in range(n + 1):  # inputs[i]: layer i's input, or (i = n) the final hidden state
            totals[i] += model.forward_from(inputs[i], i + 1, y).item()
    return (totals[:n] - totals[n]) / len(calib)


def width_scores(model: Transformer, metric: str, calib: Batches | None = None) -> WidthScores:
    if metric == "activation":
        return activation_scores(model, calib)
    if metric == "taylor":
        return weight_scores(model, _taylor_saliency(model, calib))
    params = dict(model.named_parameters())
    if metric == "l1":
        return weight_scores(model, {k: p.detach().abs() for k, p in params.items()})
    if metric == "l2":
        squares = weight_scores(model, {k: p.detach().square() for k, p in params.items()})
        return WidthScores(squares.hidden.sqrt(), [s.sqrt() for s in squares.heads], [s.sqrt() for s in squares.ffn])
    raise ValueError(f"unknown width metric {metric!r}")


def _taylor_saliency(model: Transformer, calib: Batches) -> dict[str, torch.Tensor]:
    """|w * dL/dw| per weight, the gradient summed over the calibration batches."""
    model.zero_grad(set_to_none=True)
    for x, y in calib:
        model(x, y).backward()
    saliency = {k: (p.detach() * p.grad).abs() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return saliency


def weight_scores(model: Transformer, e: dict[str, torch.Tensor]) -> WidthScores:
    """Sum a per-weight quantity `e` (named like model.named_parameters()) over the weights of each structure.

    A query head owns its rows of wq (and bias) and its columns of wo; a key/value head's rows of wk and wv
    are shared out evenly among its query heads. An FFN channel owns a row of w1 and w3 and a column of w2.
    A hidden dimension owns its column of every matrix that reads the residual stream, its row of every
    matrix that writes it, and its entry of every norm."""
    cfg = model.cfg
    hd, n_heads, n_kv = head_dim(cfg), cfg.n_heads, cfg.n_kv_heads
    hidden = e["embed.weight"].sum(0) + e["norm.weight"]
    if "lm_head.weight" in e:  # untied (named_parameters names a tied head once, as embed.weight)
        hidden = hidden + e["lm_head.weight"].sum(0)
    heads, ffn = [], []
    for i in range(cfg.n_layer):
        w = {k.split(".", 2)[2]: v for k, v in e.items() if k.startswith(f"layers.{i}.")}
        hidden = hidden + w["attn_norm.weight"] + w["ffn_norm.weight"] + w["attn.wo.weight"].sum(1) \
            + w["ffn.w2.weight"].sum(1) + sum(w[f"{m}.weight"].sum(0) for m in ("attn.wq", "attn.wk", "attn.wv",
                                                                                  "ffn.w1", "ffn.w3"))
        q = w["attn.wq.weight"].view(n_heads, -1).sum(1) + w["attn.wo.weight"].view(-1, n_heads, hd).sum((0, 2))
        kv = w["attn.wk.weight"].view(n_kv, -1).sum(1) + w["attn.wv.weight"].view(n_kv, -1).sum(1)
        if cfg.qkv_bias:
            q = q + w["attn.wq.bias"].view(n_heads, hd).sum(1)
            kv = kv + w["attn.wk.bias"].view(n_kv, hd).sum(1) + w["attn.wv.bias"].view(n_kv, hd).sum(1)
        group = n_heads // n_kv
        heads.append(q + kv.repeat_interleave(group) / group)
        ffn.append(w["ffn.w1.weight"].sum(1) + w["ffn.w3.weight"].sum(1) + w["ffn.w2.weight"].sum(0))
    return WidthScores(hidden, heads, ffn)


@torch.no_grad()
def activation_scores(model: Transformer, calib: Batches) -> WidthScores:
    """Mean |activation| on calibration data: each head's attention output (the input of wo), each FFN
    channel's gated value (the input of w2), and each hidden dimension's normalised input of every sublayer
    and of the head."""
    cfg = model.cfg
    hd = head_dim(cfg)
    heads = [torch.zeros(cfg.n_heads, dtype=torch.float64) for _ in range(cfg.n_layer)]
    ffn = [torch.zeros(layer.ffn.w2.in_features, dtype=torch.float64) for layer in model.layers]
    hidden = torch.zeros(cfg.d_model, dtype=torch.float64)

    def mean_abs(t: torch.Tensor) -> torch.Tensor:
        return t.detach().abs().double().flatten(0, -2).mean(0)

    def on_heads(i):
        def record(module, inputs):
            heads[i].add_(inputs[0].detach().abs().double().unflatten(-1, (cfg.n_heads, hd)).mean((0, 1, 3)))
        return record

    def on_ffn(i):
        def record(module, inputs):
            ffn[i].add_(mean_abs(inputs[0]))
        return record

    def on_norm(module, inputs, output):
        hidden.add_(mean_abs(output))

    handles = [model.norm.register_forward_hook(on_norm)]
    for i, layer in enumerate(model.layers):
        handles += [layer.attn.wo.register_forward_pre_hook(on_heads(i)),
                    layer.ffn.w2.register_forward_pre_hook(on_ffn(i)),
                    layer.attn_norm.register_forward_hook(on_norm), layer.ffn_norm.register_forward_hook(on_norm)]
    with removing_hooks(handles):
        for x, _ in calib:
            model(x)
    return WidthScores(hidden, heads, ffn)
