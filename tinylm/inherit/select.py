"""What a child keeps of its parent, and the surgery that cuts it out.

A Selection names, in parent indices, the layers, residual (hidden) dimensions,
query and key/value heads, FFN channels and vocabulary rows the child keeps.
`slice_model` copies exactly those weights: the hidden dimensions are sliced
identically in the embedding, every norm, every projection and the head, and
query heads stay with their key/value head (GQA groups are kept whole, possibly
with fewer query heads each). `choose_width` turns importance scores into a
Selection of the child's shape. Knows nothing of where scores come from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from tinylm.config import ModelConfig
from tinylm.model import Transformer, resolved_ffn_hidden
from tinylm.model.llama import head_dim


@dataclass
class Selection:
    layers: list[int]  # parent layers, in order
    hidden: torch.Tensor  # kept residual dimensions, ascending
    q_heads: list[torch.Tensor]  # per kept layer: parent query heads, grouped by kept kv head
    kv_heads: list[torch.Tensor]  # per kept layer: parent key/value heads, ascending
    ffn: list[torch.Tensor]  # per kept layer: parent FFN channels, ascending
    tokens: torch.Tensor  # child token id -> parent token id

    @classmethod
    def everything(cls, cfg: ModelConfig, layers: list[int] | None = None,
                   tokens: torch.Tensor | None = None) -> "Selection":
        layers = list(range(cfg.n_layer)) if layers is None else layers
        n = len(layers)
        return cls(layers, torch.arange(cfg.d_model), [torch.arange(cfg.n_heads)] * n,
                   [torch.arange(cfg.n_kv_heads)] * n, [torch.arange(resolved_ffn_hidden(cfg))] * n,
                   torch.arange(cfg.vocab_size) if tokens is None else tokens)

    def child_config(self, cfg: ModelConfig, max_seq_len: int | None = None) -> ModelConfig:
        return dataclasses.replace(
            cfg, max_seq_len=max_seq_len or cfg.max_seq_len, vocab_size=len(self.tokens), n_layer=len(self.layers),
            d_model=len(self.hidden),
            n_heads=len(self.q_heads[0]), n_kv_heads=len(self.kv_heads[0]), head_dim=head_dim(cfg),
            ffn_hidden=len(self.ffn[0]))


@dataclass
class WidthScores:
    """Importance of each residual dimension, and per layer of each query head and FFN channel."""
    hidden: torch.Tensor  # (d_model,)
    heads: list[torch.Tensor]  # per layer (n_heads,)
    ffn: list[torch.Tensor]  # per layer (ffn_hidden,)


def top_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (ties keep the lower index)."""
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return order[:k].sort().values


def choose_width(scores: WidthScores, cfg: ModelConfig, child: ModelConfig, tokens: torch.Tensor) -> Selection:
    """The child-shaped Selection that keeps the highest-scoring structures of a model whose layers are all kept.

    A key/value head's score is the sum of its best `child group size` query heads' scores; the child keeps
    the best key/value heads and, in each, those query heads."""
    group, child_group = cfg.n_heads // cfg.n_kv_heads, child.n_heads // child.n_kv_heads
    q_heads, kv_heads = [], []
    for head_scores in scores.heads:
        per_group = head_scores.view(cfg.n_kv_heads, group)
        best = torch.stack([top_sorted(g, child_group) for g in per_group])  # (n_kv, child_group) within-group
        kv = top_sorted(per_group.gather(1, best).sum(1), child.n_kv_heads)
        kv_heads.append(kv)
        q_heads.append((kv[:, None] * group + best[kv]).flatten())
    ffn = [top_sorted(s, resolved_ffn_hidden(child)) for s in scores.ffn]
    return Selection(list(range(cfg.n_layer)), top_sorted(scores.hidden, child.d_model), q_heads, kv_heads, ffn,
                     tokens)


def _head_rows(heads: torch.Tensor, size: int) -> torch.Tensor:
    return (heads[:, None] * size + torch.arange(size)).flatten()


@torch.no_grad()
def slice_model(parent: Transformer, sel: Selection, max_seq_len: int | None = None) -> Transformer:
    """A new model holding the selected part of `parent`'s weights (float32, on the CPU), with the parent's
    context length unless `max_seq_len` is given."""
    cfg = parent.cfg
    P = {k: v.detach().float().cpu() for k, v in parent.state_dict().items()}
    hd, h, tok = head_dim(cfg), sel.hidden, sel.tokens
    S = {"embed.weight": P["embed.weight"][tok][:, h], "norm.weight": P["norm.weight"][h]}
    if not cfg.tie_embeddings:
        S["lm_head.weight"] = P["lm_head.weight"][tok][:, h]
    for c, p in enumerate(sel.layers):
        src, dst = f"layers.{p}.", f"layers.{c}."
        q, kv, f = _head_rows(sel.q_heads[c], hd), _head_rows(sel.kv_heads[c], hd), sel.ffn[c]
        S[dst + "attn_norm.weight"] = P[src + "attn_norm.weight"][h]
        S[dst + "ffn_norm.weight"] = P[src + "ffn_norm.weight"][h]
        S[dst + "attn.wq.weight"] = P[src + "attn.wq.weight"][q][:, h]
        S[dst + "attn.wk.weight"] = P[src + "attn.wk.weight"][kv][:, h]
        S[dst + "attn.wv.weight"] = P[src + "attn.wv.weight"][kv][:, h]
        S[dst + "attn.wo.weight"] = P[src + "attn.wo.weight"][h][:, q]
        if cfg.qkv_bias:
            S[dst + "attn.wq.bias"] = P[src + "attn.wq.bias"][q]
            S[dst + "attn.wk.bias"] = P[src + "attn.wk.bias"][kv]
            S[dst + "attn.wv.bias"] = P[src + "attn.wv.bias"][kv]
        S[dst + "ffn.w1.weight"] = P[src + "ffn.w1.weight"][f][:, h]
        S[dst + "ffn.w3.weight"] = P[src + "ffn.w3.weight"][f][:, h]
        S[dst + "ffn.w2.weight"] = P[src + "ffn.w2.weight"][h][:, f]
    child = Transformer(sel.child_config(cfg, max_seq_len))
    missing, unexpected = child.load_state_dict(S, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return child.eval()
