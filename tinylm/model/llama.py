"""A Llama-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Init scheme: every Linear and the embedding ~ N(0, init_std); the two
projections that write into the residual stream (attention `wo`, FFN `w2`)
are scaled by 1/sqrt(2 * depth), depth counting every block application, so the
residual variance does not grow with depth (GPT-2, section 2.3). Norm gains
start at 1. No biases, except optional q/k/v biases (Qwen2) that start at 0.

Weight sharing (Super Tiny Language Models; MobileLLM) is a property of how the
block list is built, so forward never changes: `n_layer` distinct blocks, each
run `block_repeat` times in a row, the whole stack `stack_repeat` times;
`self.layers` lists every application, a repeated block appearing as the same
module again. FFN sharing hands several blocks one SwiGLU (optionally wrapped
with each block's own zero-initialised low-rank path). Shared tensors are
counted once in param_counts (parameters() yields each once) and stored once by
safetensors' save_model, while state_dict names every use, which is what lets
`unshare` copy them into a plain model of the unrolled depth.
"""

from __future__ import annotations

import dataclasses
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


FFN_SHARING = ("none", "all", "interior")
MTP_KINDS = ("none", "sequential", "parallel")  # model.mtp: see model/mtp.py


def depth(cfg: ModelConfig) -> int:
    """Block applications in one forward pass (the unrolled depth)."""
    return cfg.n_layer * cfg.block_repeat * cfg.stack_repeat


def block_order(cfg: ModelConfig) -> list[int]:
    """The distinct block each application runs, e.g. n_layer=2, block_repeat=2, stack_repeat=2: 0 0 1 1 0 0 1 1."""
    return [b for _ in range(cfg.stack_repeat) for b in range(cfg.n_layer) for _ in range(cfg.block_repeat)]


def ffn_owners(cfg: ModelConfig) -> list[int]:
    """For each distinct block, the block whose FFN it uses: its own index unless it shares."""
    n, keep = cfg.n_layer, cfg.ffn_sharing_keep
    if cfg.ffn_sharing == "all":
        return [0] * n
    if cfg.ffn_sharing == "interior":
        return [i if i < keep or i >= n - keep else keep for i in range(n)]
    return list(range(n))


def is_shared(cfg: ModelConfig) -> bool:
    return cfg.ffn_sharing != "none" or cfg.block_repeat > 1 or cfg.stack_repeat > 1


def check_shape(cfg: ModelConfig) -> None:
    """Raise ValueError on a shape the model cannot be built with."""
    if cfg.vocab_size <= 0:
        raise ValueError("model.vocab_size must be set (it is normally taken from the tokenizer)")
    if cfg.mtp not in MTP_KINDS:
        raise ValueError(f"model.mtp='{cfg.mtp}' is not one of {', '.join(MTP_KINDS)}")
    if not cfg.head_dim and cfg.d_model % cfg.n_heads:
        raise ValueError(f"model.d_model={cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}; "
                         "set model.head_dim")
    if cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"model.n_heads={cfg.n_heads} is not divisible by model.n_kv_heads={cfg.n_kv_heads}")
    if head_dim(cfg) % 2:
        raise ValueError(f"the head dimension ({head_dim(cfg)}) must be even for RoPE")
    if cfg.ffn_sharing not in FFN_SHARING:
        raise ValueError(f"model.ffn_sharing='{cfg.ffn_sharing}' is not one of {', '.join(FFN_SHARING)}")
    interior = cfg.n_layer - 2 * cfg.ffn_sharing_keep
    if cfg.ffn_sharing == "interior" and (cfg.ffn_sharing_keep < 1 or interior < 2):
        raise ValueError(f"model.ffn_sharing=interior with model.ffn_sharing_keep={cfg.ffn_sharing_keep} of "
                         f"model.n_layer={cfg.n_layer} blocks leaves {max(interior, 0)} interior blocks to share one "
                         "FFN; keep at least 1 at each end and 2 in between, or use model.ffn_sharing=all")
    if cfg.ffn_adapter_rank < 0 or (cfg.ffn_adapter_rank and cfg.ffn_sharing == "none"):
        raise ValueError(f"model.ffn_adapter_rank={cfg.ffn_adapter_rank}: an adapter is a rank >= 1 path beside a "
                         "shared FFN; set model.ffn_sharing=all or interior, or the rank to 0")
    for key in ("block_repeat", "stack_repeat"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"model.{key}={getattr(cfg, key)} must be at least 1 (1: every block runs once)")


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
    """Preallocated keys/values for incremental decoding, one pair per block application: a repeated block
    sees a different input each time it runs, so each run keeps its own keys and values."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        hd = head_dim(cfg)
        shape = (batch, cfg.n_kv_heads, max_len, hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth(cfg))]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth(cfg))]
        self.max_len = max_len


# The longest causal sequence causal_attention runs as two matmuls; past it SDPA's flash kernel is as fast or faster
MATMUL_ATTENTION_MAX_LEN = 256


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                     enable_gqa: bool) -> torch.Tensor:
    """Causal self-attention of (B, H, T, hd) queries over their own keys. On CPU in bf16 or fp16 (autocast) with
    T <= MATMUL_ATTENTION_MAX_LEN and no dropout, `matmul_attention`: SDPA's CPU flash kernel takes 1.2-2.3x as
    long there, forward and backward (BENCHMARKS.md, "Attention as two matmuls in bf16"). Everywhere else, SDPA."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) \
            or q.size(2) > MATMUL_ATTENTION_MAX_LEN or dropout_p:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=enable_gqa)
    if enable_gqa:  # each key/value head serves n_heads / n_kv_heads query heads, as SDPA's enable_gqa does
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    return matmul_attention(q, k, v)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention as two batched matmuls in the inputs' dtype around a softmax in fp32."""
    T = q.size(2)
    scores = (q @ k.transpose(-1, -2)).float() * q.size(-1) ** -0.5
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return probs.to(q.dtype) @ v


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

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, start: int | torch.Tensor = 0):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if isinstance(start, torch.Tensor):
            # static-shape decoding (model/decode.py): one query at position `start` (a (1,) tensor, so a compiled
            # step serves every position) against the whole cache, whose entries past `start` are stale or empty
            cache.k[layer].index_copy_(2, start, k)
            cache.v[layer].index_copy_(2, start, v)
            k, v = cache.k[layer], cache.v[layer]
            causal = False
            mask = (torch.arange(k.size(2), device=x.device) <= start).view(1, -1)
        elif cache is not None:
            cache.k[layer][:B, :, start:start + T] = k
            cache.v[layer][:B, :, start:start + T] = v
            k, v = cache.k[layer][:B, :, :start + T], cache.v[layer][:B, :, :start + T]
            if start > 0:
                causal = False  # is_causal aligns the mask top-left, wrong for queries that follow cached keys
                if T > 1:  # queries at start..start+T-1 see every key up to their own position; one query sees all
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        dropout_p, gqa = self.dropout if self.training else 0.0, self.n_kv_heads != self.n_heads
        if causal and mask is None:
            y = causal_attention(q, k, v, dropout_p, gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p,
                                               enable_gqa=gqa)
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


class AdaptedFFN(nn.Module):
    """A shared FFN plus one block's own low-rank linear path (Super Tiny Language Models' FFN sharing with
    adapters). The up projection starts at zero, so an untrained model computes exactly plain sharing."""

    def __init__(self, shared: SwiGLU, cfg: ModelConfig):
        super().__init__()
        self.shared = shared
        self.adapter_down = nn.Linear(cfg.d_model, cfg.ffn_adapter_rank, bias=False)
        self.adapter_up = nn.Linear(cfg.ffn_adapter_rank, cfg.d_model, bias=False)

    def forward(self, x):
        return self.shared(x) + self.adapter_up(self.adapter_down(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: nn.Module | None = None):
        """`ffn`: an FFN shared with other blocks; None builds this block's own."""
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = ffn if ffn is not None else SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, start=0):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer, start))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def distinct_blocks(cfg: ModelConfig) -> list[Block]:
    """The n_layer blocks that own weights, FFNs shared as model.ffn_sharing says."""
    owners = ffn_owners(cfg)
    shared = {owner: SwiGLU(cfg) for owner in owners if owners.count(owner) > 1}

    def ffn(i: int) -> nn.Module | None:
        if owners[i] not in shared:
            return None
        return AdaptedFFN(shared[owners[i]], cfg) if cfg.ffn_adapter_rank else shared[owners[i]]

    return [Block(cfg, ffn(i)) for i in range(cfg.n_layer)]


def set_dropout(model: nn.Module, p: float) -> None:
    """Change every dropout probability in `model` in place (for dropout schedules): the nn.Dropout modules
    and the attention probabilities' dropout, which SDPA takes as an argument."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, Attention):
            m.dropout = p


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_shape(cfg)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = distinct_blocks(cfg)
        self.layers = nn.ModuleList(blocks[b] for b in block_order(cfg))  # every application, repeats included
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.mtp = None
        if cfg.mtp != "none":
            from tinylm.model.mtp import MTPHeads  # mtp.py builds on this module's blocks

            # built with the RNG put back afterwards, so the trunk starts from the very weights the same seed gives a
            # model without MTP (reset_parameters draws the trunk first: `mtp` is registered last)
            with torch.random.fork_rng(devices=[]):
                self.mtp = MTPHeads(cfg)
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
            elif name.endswith("adapter_up.weight"):
                nn.init.zeros_(p)
            elif name.endswith(("wo.weight", "w2.weight")):  # each application adds to the residual: unrolled depth
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * depth(self.cfg)))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_dropout(self, p: float) -> None:
        set_dropout(self, p)

    def forward(self, idx, targets=None, cache: KVCache | None = None, start: int = 0):
        """idx: (B, T) token ids. Returns logits (B, T, V), or the mean cross-entropy when targets are given."""
        B, T = idx.shape
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        return self.forward_from(self.drop(self.embed(idx)), 0, targets, cache, start)

    def hidden(self, idx, layers: int | None = None, cache: KVCache | None = None, start: int = 0):
        """The residual stream (B, T, d_model) after the first `layers` block applications (all by default),
        before the final norm: what multi-token prediction builds on."""
        T = idx.size(1)
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.drop(self.embed(idx))
        for i in range(len(self.layers) if layers is None else layers):
            x = self.layers[i](x, cos, sin, cache, i, start)
        return x

    def forward_from(self, x, first_layer: int, targets=None, cache: KVCache | None = None, start: int = 0):
        """The rest of forward from application `first_layer` on, given its input x (B, T, d_model); a
        `first_layer` past the last one leaves only the final norm and head (for surgery that skips layers)."""
        T = x.size(1)
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        for i in range(first_layer, len(self.layers)):
            x = self.layers[i](x, cos, sin, cache, i, start)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    def param_counts(self) -> dict[str, int]:
        """Unique parameters split into embedding (input embedding, plus the head when untied) and the rest;
        "mtp" counts the extra predictions' modules (in total and non_embedding), "inference" what is left
        without them: the model export writes."""
        embedding = self.embed.weight.numel()
        if not self.cfg.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        mtp = sum(p.numel() for p in self.mtp.parameters()) if self.mtp is not None else 0
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding, "mtp": mtp,
                "inference": total - mtp}

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * (matmul params) + attention scores (PaLM appendix B). A shared
        weight costs FLOPs every time it is applied, so matrices are summed over every block application."""
        matmul = sum(p.numel() for layer in self.layers for p in layer.parameters() if p.dim() > 1)
        matmul += self.lm_head.weight.numel()
        blocks = len(self.layers)
        if self.mtp is not None:  # each extra prediction: its module's matrices, one more block, one more head
            matmul += sum(p.numel() for p in self.mtp.parameters() if p.dim() > 1)
            matmul += len(self.mtp.heads) * self.lm_head.weight.numel()
            blocks += len(self.mtp.heads)
        attn = 6 * blocks * self.cfg.d_model * seq_len  # QK^T and AV, forward + backward, causal halves
        return 6 * matmul + attn


def unshared_config(cfg: ModelConfig) -> ModelConfig:
    """The plain config of the unrolled model: one block per application, each with its own copy of the weights
    it shares. ValueError for FFN adapters, which a plain block has no place for."""
    if cfg.ffn_adapter_rank:
        raise ValueError(f"model.ffn_adapter_rank={cfg.ffn_adapter_rank}: a plain Llama block has no low-rank path "
                         "beside its FFN, so the model cannot be unrolled into one")
    return dataclasses.replace(cfg, n_layer=depth(cfg), ffn_sharing="none", ffn_sharing_keep=1, block_repeat=1,
                               stack_repeat=1)


def unshare(model: Transformer) -> Transformer:
    """A plain model computing the same logits, every shared weight copied into each block that applies it
    (for formats that have no notion of sharing). ValueError as unshared_config."""
    plain = Transformer(unshared_config(model.cfg)).to(model.embed.weight.device, model.embed.weight.dtype)
    plain.load_state_dict(model.state_dict())  # state_dict names a shared tensor under every block that uses it
    return plain.train(model.training)
