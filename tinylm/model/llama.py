"""A Llama-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Init scheme: every Linear and the embedding ~ N(0, init_std); the two
projections that write into the residual stream (attention `wo`, FFN `w2`)
are scaled by 1/sqrt(2 * n_layer) so the residual variance does not grow with
depth (GPT-2, section 2.3). Norm gains start at 1. No biases, except optional
q/k/v biases (Qwen2) that start at 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylm.config import ModelConfig


def resolved_ffn_hidden(cfg: ModelConfig) -> int:
    if cfg.ffn_hidden:
        return cfg.ffn_hidden
    return 32 * math.ceil(8 * cfg.d_model / 3 / 32)


def head_dim(cfg: ModelConfig) -> int:
    return cfg.head_dim or cfg.d_model // cfg.n_heads


def check_shape(cfg: ModelConfig) -> None:
    """Raise ValueError on a shape the model cannot be built with."""
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size must be set (it is normally taken from the tokenizer)")
    if not cfg.head_dim and cfg.d_model % cfg.n_heads:
        raise ValueError(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}; "
                         "set model.head_dim")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"model.n_heads={cfg.n_heads} is not divisible by model.n_kv_heads={cfg.n_kv_heads}")
    if head_dim(cfg) % 2:
        raise ValueError(f"the head dimension ({head_dim(cfg)}) must be even for RoPE")


def parameter_names(cfg: ModelConfig) -> list[str]:
    """The state-dict names of a model's distinct parameters (a tied head is named once, as embed.weight)."""
    with torch.device("meta"):
        return [name for name, _ in Transformer(cfg).named_parameters()]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    # x: (B, H, T, hd); rotate-half layout, as in Hugging Face Llama, so weights convert directly.
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class KVCache:
    """Preallocated keys/values for incremental decoding, one pair per layer."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        hd = head_dim(cfg)
        shape = (batch, cfg.n_kv_heads, max_len, hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = head_dim(cfg)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, start: int = 0):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            cache.k[layer][:B, :, start:start + T] = k
            cache.v[layer][:B, :, start:start + T] = v
            k, v = cache.k[layer][:B, :, :start + T], cache.v[layer][:B, :, :start + T]
            if start > 0:  # queries at start..start+T-1 see every key up to their own position
                causal = False
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = resolved_ffn_hidden(cfg)
        self.w1 = nn.Linear(cfg.d_model, hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, cfg.d_model, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, start=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, start))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_shape(cfg)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(head_dim(cfg), cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_dropout(self, p: float) -> None:
        """Change every dropout probability in place (for dropout schedules)."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
            elif isinstance(m, Attention):
                m.dropout = p

    def forward(self, idx, targets=None, cache: KVCache | None = None, start: int = 0):
        """idx: (B, T) token ids. Returns logits (B, T, V), or the mean cross-entropy when targets are given."""
        B, T = idx.shape
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        return self.forward_from(self.drop(self.embed(idx)), 0, targets, cache, start)

    def forward_from(self, x, first_layer: int, targets=None, cache: KVCache | None = None, start: int = 0):
        """The rest of forward from layer `first_layer` on, given that layer's input x (B, T, d_model); a
        `first_layer` past the last layer leaves only the final norm and head (for surgery that skips layers)."""
        T = x.size(1)
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        for i in range(first_layer, len(self.layers)):
            x = self.layers[i](x, cos, sin, cache, i, start)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    def param_counts(self) -> dict[str, int]:
        """Unique parameters split into embedding (input embedding, plus the head when untied) and the rest."""
        embedding = self.embed.weight.numel()
        if not self.cfg.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * (matmul params) + attention scores (PaLM appendix B)."""
        matmul = self.param_counts()["non_embedding"] - sum(
            p.numel() for p in self.parameters() if p.dim() == 1) + self.lm_head.weight.numel()
        attn = 6 * self.cfg.n_layer * self.cfg.d_model * seq_len  # QK^T and AV, forward + backward, causal halves
        return 6 * matmul + attn
