"""Multi-token prediction: extra predictions of later tokens on a Transformer's trunk (docs next-techniques.md §2).

Two designs, picked by model.mtp; model.mtp_heads counts the extra tokens predicted (K):
  sequential  DeepSeek-V3's MTP modules, a chain. Module k (1..K) at position i reads the previous depth's hidden
              state h^{k-1}_i (h^0: the trunk's last residual stream, before its final norm) and the embedding of
              the true token x_{i+k}:  h'_i = W_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(x_{i+k}))]  (W_k: 2d -> d),
              then one block gives h^k_i, and its own final norm and the shared head predict x_{i+k+1}. On a
              window of T tokens depth k covers positions 0..T-1-k (the tokens it reads must exist).
  parallel    Gloeckle et al.'s independent heads. The trunk's last block is head 1, the next-token head; each
              extra head k (2..K+1) is one more block reading the same input z (the residual stream before the
              last block), then its own final norm and the shared head, and predicts x_{t+k}.
Both share the embedding and the output head with the trunk, so the trunk plus its own head is exactly the
model without MTP: `without_mtp` is what export writes.

Where the modules live: `Transformer.mtp`, built from the model config. So the checkpoint stores them with the
model, the optimizer sees them through model.parameters(), and `tinylm sample --speculative` loads them with
the model; `Transformer.forward` never calls them and param_counts counts them apart ("inference" leaves them
out). The targets they learn come from the objective (train/objectives.py), not from here.

`Drafter` runs them at inference as the draft model of self-speculative decoding (model/generate.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn

from tinylm.config import ModelConfig
from tinylm.model.llama import Block, KVCache, RMSNorm, Transformer


class SequentialModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.embed_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False)
        self.block = Block(cfg)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, h, e, cos, sin, cache=None, layer=0, start=0):
        """h: (B, T, d) the previous depth's states; e: (B, T, d) embeddings of the tokens k ahead."""
        x = self.proj(torch.cat((self.hidden_norm(h), self.embed_norm(e)), dim=-1))  # (B, T, 2d) -> (B, T, d)
        return self.block(x, cos, sin, cache, layer, start)


class ParallelHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block = Block(cfg)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, z, cos, sin, cache=None, layer=0, start=0):
        return self.block(z, cos, sin, cache, layer, start)


class MTPHeads(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mtp
        module = SequentialModule if cfg.mtp == "sequential" else ParallelHead
        self.heads = nn.ModuleList(module(cfg) for _ in range(cfg.mtp_heads))


def head_logits(model: Transformer, head: ParallelHead | SequentialModule, h: torch.Tensor) -> torch.Tensor:
    """An extra prediction's logits from its block's output: its own final norm, then the shared head."""
    return model.lm_head(head.norm(h))


def parallel_logits(model: Transformer, z: torch.Tensor, k: int) -> torch.Tensor:
    """Head k's logits (B, T, V) from the trunk's z (B, T, d), the input of the last block: head 1 is that block
    with the final norm and head (the next-token prediction), head k > 1 predicts the token k ahead."""
    last = len(model.layers) - 1
    if k == 1:
        return model.forward_from(z, last)
    T = z.size(1)
    head = model.mtp.heads[k - 2]
    return head_logits(model, head, head(z, model.rope_cos[:T], model.rope_sin[:T]))


def sequential_logits(model: Transformer, h0: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """Depth k's logits (B, T-k, V) for k = 1..K, from the trunk's last states h0 (B, T, d) over idx (B, T);
    depth k at position i predicts x_{i+k+1}. Depths that would cover no position are left out."""
    T = idx.size(1)
    e = model.drop(model.embed(idx))
    h, out = h0, []
    for k, module in enumerate(model.mtp.heads, start=1):
        if T - k < 1:
            break
        h = module(h[:, :T - k], e[:, k:], model.rope_cos[:T - k], model.rope_sin[:T - k])
        out.append(head_logits(model, module, h))
    return out


def without_mtp(model: Transformer) -> Transformer:
    """The same model without its extra predictions: the trunk and its next-token head, weights shared."""
    if model.mtp is None:
        return model
    cfg = dataclasses.replace(model.cfg, mtp="none", mtp_heads=1)
    with torch.random.fork_rng(devices=[]):  # its initial values are overwritten; the caller's RNG stays as it was
        plain = Transformer(cfg).to(model.embed.weight.device, model.embed.weight.dtype)
    plain.load_state_dict({name: t for name, t in model.state_dict().items() if not name.startswith("mtp.")})
    return plain.train(model.training)


class Drafter:
    """One sequence's state for self-speculative decoding: the trunk's KV cache, each extra block's own cache, and
    for the sequential chain each depth's hidden states by position.

    `forward(ids, start)` runs the trunk over tokens at positions start.. and returns the next-token logits at
    each; `draft(certain, token, choose)` then proposes the tokens after `token`, the certain token at position
    `certain` (the positions before it are in the trunk's cache and final), calling `choose(logits)` for each.
    """

    def __init__(self, model: Transformer, max_len: int):
        self.model, self.max_len = model, max_len
        device, dtype = model.embed.weight.device, model.embed.weight.dtype
        cfg = model.cfg
        self.n_extra = cfg.mtp_heads
        self.cache = KVCache(cfg, 1, max_len, device, dtype)
        blocks = dataclasses.replace(cfg, n_layer=self.n_extra, block_repeat=1, stack_repeat=1)
        self.extra_cache = KVCache(blocks, 1, max_len, device, dtype)
        self.sequential = cfg.mtp == "sequential"
        # token ids by position, room for drafts past the context; sequential: h^0..h^{K-1} by position, and for
        # each depth the first position whose cached keys/values rest on a draft (recomputed at the next draft)
        self.ids = torch.zeros(1, max_len + self.n_extra + 1, dtype=torch.long, device=device)
        self.states = torch.zeros(self.n_extra, 1, max_len, cfg.d_model, device=device, dtype=dtype)
        self.fresh_from = [0] * self.n_extra
        self.z_logits: torch.Tensor | None = None  # parallel: (K, n, V) the extra heads' logits of the last chunk
        self.chunk_start = 0

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """ids: (1, n) at positions start..start+n-1. Returns the next-token logits (n, V)."""
        m, n = self.model, ids.size(1)
        self.ids[:, start:start + n] = ids
        if self.sequential:
            h0 = m.hidden(ids, cache=self.cache, start=start)
            self.states[0, :, start:start + n] = h0
            return m.lm_head(m.norm(h0))[0]
        last = len(m.layers) - 1
        z = m.hidden(ids, last, cache=self.cache, start=start)
        cos, sin = m.rope_cos[start:start + n], m.rope_sin[start:start + n]
        self.z_logits = torch.stack([head_logits(m, head, head(z, cos, sin, self.extra_cache, k, start))[0]
                                     for k, head in enumerate(m.mtp.heads)])
        self.chunk_start = start
        return m.forward_from(z, last, cache=self.cache, start=start)[0]

    def draft(self, certain: int, token: int, choose: Callable[[torch.Tensor], int]) -> list[int]:
        """Up to K tokens after `token` (at position `certain`), drafted from position certain - 1."""
        at = certain - 1
        if not self.sequential:
            return [choose(self.z_logits[k, at - self.chunk_start]) for k in range(self.n_extra)]
        m = self.model
        self.ids[0, certain] = token
        drafts = []
        for k, module in enumerate(m.mtp.heads, start=1):
            first = self.fresh_from[k - 1]
            span = slice(first, at + 1)
            e = m.embed(self.ids[:, first + k:at + k + 1])
            h = module(self.states[k - 1, :, span], e, m.rope_cos[span], m.rope_sin[span], self.extra_cache, k - 1,
                       first)
            if k < self.n_extra:
                self.states[k, :, span] = h
            # depth k at position i reads x_{i+k}: final while i + k <= certain
            self.fresh_from[k - 1] = max(certain - k + 1, 0)
            drafts.append(choose(head_logits(m, module, h[0, -1])))
            self.ids[0, certain + k] = drafts[-1]
        return drafts
