"""A byte-level decoder with patch pooling ("SpaceByte-lite", docs/next-techniques.md section 3.2).

Bytes are embedded and run through a small causal encoder; a causal rule cuts them into patches
(space: SpaceByte's word-like patches; stride: MEGABYTE's fixed ones; predicted: the tokens of a BPE
tokenizer, as in Super Tiny Language Models, whose ends the model predicts); each patch is pooled to one
vector over its real bytes only (mean, attention with a learned query, or its last byte); the global
blocks (llama.py's Block) run over patches; a small byte decoder, causal within the patch it predicts,
turns the global output back into next-byte logits one byte at a time.

Causality: the logits at byte t predict byte t+1 and read bytes <= t only. Whether a patch starts at
t+1 depends on bytes <= t, so when one does, the patch ending at t is complete and t's prediction
already reads its global output; otherwise t reads the previous patch's (a learned vector before the
first). Every prediction is ordinary next-byte cross-entropy: nats per byte, bits per byte / ln 2.
There is no pad id: a patch's unused slots are zeros that pooling masks out and no loss reads, which
avoids the STLM code's two faults (mean over padding, an ignored id that differs from the pad id).

Predicted patches. Where a BPE token ends depends on the bytes after it, so the input cannot say where
patches end. Instead the ids are bytes with a flag, "this byte ends a patch" (tinylm.tokenizer.PatchTokenizer:
id = byte + 257 * flag, 514 ids, EOS flagged), and the model predicts the next byte and its flag jointly:
the head has 514 classes. A patch starts at byte j when byte j - 1 carries the flag, or patch_size bytes
after the last start, so the rule reads ids < j only, as the others do. The loss is then -log p(bytes,
flags) per byte. The flags are a function of the bytes (the BPE's cut), so p(bytes) >= p(bytes, flags):
the loss is an upper bound on the bytes' own code length, and bits per byte stays honest and comparable
with the other byte models and with token models.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylm.config import ModelConfig
from tinylm.model.llama import Block, KVCache, RMSNorm, check_shape, head_dim, rope_tables, set_dropout

PATCHINGS = ("space", "stride", "predicted")
POOLINGS = ("mean", "attention", "last")
# SpaceByte's default_patch_size: the mean length of a space patch in English, used for FLOP estimates
EXPECTED_SPACE_PATCH = 6.0
EXPECTED_BPE_PATCH = 4.0  # the usual ~4 bytes of English per GPT-2-style BPE token, for the same estimates
N_SYMBOLS = 257  # predicted patching: id = symbol + N_SYMBOLS * ends_patch (tinylm.tokenizer.PatchTokenizer)


def local_config(cfg: ModelConfig, n_layer: int) -> ModelConfig:
    """The shape of the byte encoder or decoder: Llama blocks at width d_local."""
    return dataclasses.replace(cfg, n_layer=n_layer, d_model=cfg.d_local, n_heads=cfg.n_local_heads,
                               n_kv_heads=cfg.n_local_heads, head_dim=0, ffn_hidden=0)


def check_byte_shape(cfg: ModelConfig) -> None:
    """Raise ValueError on a byte-model config that cannot be built."""
    if cfg.patching == "predicted" and cfg.vocab_size != 2 * N_SYMBOLS:
        raise ValueError(f"model.patching=predicted needs the patch tokenizer's {2 * N_SYMBOLS} ids "
                         f"(data.tokenizer=patches:PATH); model.vocab_size is {cfg.vocab_size}")
    if cfg.vocab_size < 257:
        raise ValueError(f"model.kind=byte needs the byte tokenizer's 257 ids (data.tokenizer=byte); "
                         f"model.vocab_size is {cfg.vocab_size}")
    if cfg.patching not in PATCHINGS:
        raise ValueError(f"model.patching='{cfg.patching}' is not one of {', '.join(PATCHINGS)}")
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"model.pooling='{cfg.pooling}' is not one of {', '.join(POOLINGS)}")
    if cfg.patch_size < 1:
        raise ValueError(f"model.patch_size={cfg.patch_size} must be at least 1")
    check_shape(cfg)
    for n in (cfg.n_encoder_layers, cfg.n_decoder_layers):
        local = local_config(cfg, n)
        if local.d_model % local.n_heads:
            raise ValueError(f"model.d_local={cfg.d_local} is not divisible by model.n_local_heads={cfg.n_local_heads}")
        check_shape(local)


def spacelike(idx: torch.Tensor) -> torch.Tensor:
    """An ASCII byte that is no letter or digit, or EOS. SpaceByte also counts UTF-8 lead bytes, but here a
    patch starts *after* a spacelike byte (it must be known before the next byte is), and after a lead byte
    that would split the character: so non-ASCII characters count as letters."""
    alnum = ((idx >= 48) & (idx <= 57)) | ((idx >= 65) & (idx <= 90)) | ((idx >= 97) & (idx <= 122))
    return ~alnum & ((idx < 0x80) | (idx >= 256))


def patch_starts(idx: torch.Tensor, patching: str, patch_size: int) -> torch.Tensor:
    """(B, T + 1) bools: a patch starts at byte j (j = T is the byte after the input); reads bytes < j only.

    space: a patch starts after the first spacelike byte of a run (so "a  b" -> "a ", " b"), and after
    patch_size bytes without one. stride: every patch_size bytes. predicted: after a byte whose id carries the
    ends-a-patch flag, and after patch_size bytes without one."""
    B, T = idx.shape
    pos = torch.arange(T + 1, device=idx.device)
    if patching == "stride":
        return (pos % patch_size == 0).expand(B, T + 1)
    if patching == "predicted":
        natural = F.pad(idx >= N_SYMBOLS, (1, 0), value=False)  # [:, j]: byte j - 1 ends a patch
    else:
        space = spacelike(idx)
        after_space = F.pad(space, (1, 0), value=False)  # [:, j]: byte j - 1 is spacelike
        after_two = F.pad(space, (2, 0), value=False)[:, :T + 1]  # [:, j]: byte j - 2 is spacelike
        natural = after_space & ~after_two
    natural[:, 0] = True
    last_natural = torch.where(natural, pos, 0).cummax(1).values
    return (pos - last_natural) % patch_size == 0


def patch_layout(starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch index and offset within the patch of each of the T + 1 positions `starts` covers."""
    pos = torch.arange(starts.size(1), device=starts.device)
    patch = starts.long().cumsum(1) - 1
    offset = pos - torch.where(starts, pos, 0).cummax(1).values
    return patch, offset


def to_slots(x: torch.Tensor, row: torch.Tensor, col: torch.Tensor, n_rows: int, size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter x (B, T, d) into zero-padded slots (B, n_rows, size, d) at [row, col]; also the mask of real slots."""
    B, T, d = x.shape
    b = torch.arange(B, device=x.device)[:, None].expand(B, T)
    slots = x.new_zeros(B, n_rows, size, d)
    slots[b, row, col] = x
    mask = torch.zeros(B, n_rows, size, dtype=torch.bool, device=x.device)
    mask[b, row, col] = True
    return slots, mask


def from_slots(slots: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    B, T = row.shape
    b = torch.arange(B, device=slots.device)[:, None].expand(B, T)
    return slots[b, row, col]  # (B, T, d)


class PatchPool(nn.Module):
    """One vector per patch from its byte states (..., P, d), reading only the slots `mask` marks real."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.query = nn.Parameter(torch.zeros(dim))  # zeros: attention starts as the mean

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "last":  # real slots come first, so the last real one is at count - 1
            weights = F.one_hot(mask.sum(-1).clamp(min=1) - 1, mask.size(-1)).to(h.dtype)
        elif self.kind == "mean":
            weights = mask.to(h.dtype) / mask.sum(-1, keepdim=True).clamp(min=1)
        else:
            scores = (h @ self.query) / math.sqrt(h.size(-1))
            # the dtype's minimum, not -inf: an empty patch (batch padding) gets finite weights, zeroed below
            weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)
        weights = weights * mask  # a padded slot adds exactly 0 times its value
        return (weights.unsqueeze(-2) @ h).squeeze(-2)


class ByteCache:
    """State for byte-by-byte decoding (batch 1): keys/values of the encoder (one per byte), the global
    blocks (one per complete patch) and the decoder (one per byte of the patch being predicted)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        if batch != 1:
            raise ValueError("a byte model decodes one sequence at a time (its patches differ between rows)")
        self.encoder = KVCache(local_config(cfg, cfg.n_encoder_layers), batch, max_len, device, dtype)
        self.globals = KVCache(cfg, batch, max_len, device, dtype)
        self.decoder = KVCache(local_config(cfg, cfg.n_decoder_layers), batch, cfg.patch_size, device, dtype)
        self.bytes = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.open_patch: list[torch.Tensor] = []  # encoder states of the patch not yet complete
        self.n_patches = 0
        self.context: torch.Tensor | None = None  # the global output the current byte reads
        self.offset = 0  # position in the decoder's current patch


class ByteTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_byte_shape(cfg)
        self.cfg = cfg
        enc, dec = local_config(cfg, cfg.n_encoder_layers), local_config(cfg, cfg.n_decoder_layers)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_local)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(Block(enc) for _ in range(cfg.n_encoder_layers))
        self.pool = PatchPool(cfg.pooling, cfg.d_local)
        self.up = nn.Linear(cfg.d_local, cfg.d_model, bias=False)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.first_context = nn.Parameter(torch.zeros(cfg.d_model))  # what bytes read before any patch is complete
        self.down = nn.Linear(cfg.d_model, cfg.d_local, bias=False)
        self.decoder = nn.ModuleList(Block(dec) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = RMSNorm(cfg.d_local, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_local, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        for name, c in (("local", enc), ("global", cfg)):
            cos, sin = rope_tables(head_dim(c), cfg.max_seq_len, cfg.rope_theta)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As Transformer's; the projections writing into a residual stream are scaled by the total depth."""
        std, depth = self.cfg.init_std, self.cfg.n_encoder_layers + self.cfg.n_layer + self.cfg.n_decoder_layers
        for name, p in self.named_parameters():
            if name in ("first_context", "pool.query") or name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight", "down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * depth))
            else:
                nn.init.normal_(p, 0.0, std)

    def set_dropout(self, p: float) -> None:
        set_dropout(self, p)

    def forward(self, idx, targets=None, cache: ByteCache | None = None, start: int = 0):
        """idx: (B, T) byte ids (byte patches for patching=predicted). Returns logits (B, T, V), or the mean
        cross-entropy when targets are given. With a cache, idx continues the bytes already decoded at position
        `start`."""
        B, T = idx.shape
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} bytes exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if cache is not None:
            return torch.cat([self._step(idx[:, i:i + 1], cache, start + i) for i in range(T)], dim=1)
        P = self.cfg.patch_size
        patch, offset = patch_layout(patch_starts(idx, self.cfg.patching, P))  # (B, T + 1) each
        x = self.drop(self.embed(idx))
        for block in self.encoder:
            x = block(x, self.local_cos[:T], self.local_sin[:T])
        # global blocks over the patches of the input (the last may be partial; no byte reads its output then)
        n_patches = int(patch[:, T - 1].max()) + 1
        g = self.up(self.pool(*to_slots(x, patch[:, :T], offset[:, :T], n_patches, P)))
        for block in self.layers:
            g = block(g, self.global_cos[:n_patches], self.global_sin[:n_patches])
        context = torch.cat([self.first_context.expand(B, 1, -1).to(g.dtype), self.norm(g)], dim=1)
        # byte t predicts byte t + 1, of patch m = target[t]; it reads context[m], the output of patch m - 1
        target = patch[:, 1:]
        x = x + self.down(context.gather(1, target[..., None].expand(-1, -1, context.size(-1))))
        # the decoder runs once per target patch, over the bytes that predict its bytes (patch 0 has one fewer)
        row_offset = offset[:, 1:] - (target == 0).long()
        rows, _ = to_slots(x, target, row_offset, int(target.max()) + 1, P)
        y = rows.flatten(0, 1)  # (B * patches, P, d_local); padding comes last, so causal attention skips it
        for block in self.decoder:
            y = block(y, self.local_cos[:P], self.local_sin[:P])
        logits = self.lm_head(self.decoder_norm(from_slots(y.view(rows.shape), target, row_offset)))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    def _step(self, byte: torch.Tensor, cache: ByteCache, t: int) -> torch.Tensor:
        """Logits (1, 1, V) after byte `byte` at position t; the same arithmetic as forward, one byte at a time."""
        cache.bytes = torch.cat([cache.bytes[:, :t], byte], dim=1)
        starts = patch_starts(cache.bytes, self.cfg.patching, self.cfg.patch_size)[0]  # (t + 2,)
        if t == 0:
            cache.open_patch, cache.n_patches = [], 0
            cache.context = self.first_context.view(1, 1, -1)
        elif starts[t]:
            cache.open_patch = []
        x = self.drop(self.embed(byte))
        for i, block in enumerate(self.encoder):
            x = block(x, self.local_cos[t:t + 1], self.local_sin[t:t + 1], cache.encoder, i, t)
        cache.open_patch.append(x)
        if starts[t + 1]:  # the patch ending at t is complete: one global step
            k = cache.n_patches
            h = torch.cat(cache.open_patch, dim=1)[:, None]  # (1, 1, length, d_local)
            g = self.up(self.pool(h, torch.ones(h.shape[:-1], dtype=torch.bool, device=h.device)))
            for i, block in enumerate(self.layers):
                g = block(g, self.global_cos[k:k + 1], self.global_sin[k:k + 1], cache.globals, i, k)
            cache.context, cache.n_patches = self.norm(g), k + 1
        cache.offset = 0 if t == 0 or starts[t + 1] else cache.offset + 1
        y = x + self.down(cache.context)
        o = cache.offset
        for i, block in enumerate(self.decoder):
            y = block(y, self.local_cos[o:o + 1], self.local_sin[o:o + 1], cache.decoder, i, o)
        return self.lm_head(self.decoder_norm(y))

    def param_counts(self) -> dict[str, int]:
        """As Transformer's: the byte embedding (plus the head when untied) is the embedding."""
        embedding = self.embed.weight.numel()
        if not self.cfg.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}

    def expected_patch_length(self) -> float:
        if self.cfg.patching == "stride":
            return float(self.cfg.patch_size)
        expected = EXPECTED_BPE_PATCH if self.cfg.patching == "predicted" else EXPECTED_SPACE_PATCH
        return min(float(self.cfg.patch_size), expected)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per byte: 6 * matmul params per byte (the global blocks run once per patch) plus
        attention scores (PaLM appendix B); the decoder attends within a patch only."""
        def matmul(*modules):
            return sum(p.numel() for m in modules for p in m.parameters() if p.dim() == 2)

        c, p = self.cfg, self.expected_patch_length()
        local = matmul(self.encoder, self.decoder, self.down) + self.lm_head.weight.numel()
        global_ = matmul(self.layers, self.up)
        attn = 6 * c.d_local * (c.n_encoder_layers * seq_len + c.n_decoder_layers * p) + 6 * c.n_layer * c.d_model * seq_len / p ** 2
        return 6 * local + 6 * global_ / p + attn


def embedding_report(cfg: ModelConfig, bpe_vocab_size: int = 50257) -> dict[str, int | float]:
    """What replaces a BPE embedding: the byte model's embedder (byte embedding, encoder, pooling,
    up-projection) and head (down-projection, decoder, norm, byte head), against a BPE embedding of
    bpe_vocab_size rows at width d_model (tied, counted once, as the STLM baseline's GPT-2 vocabulary).

    Against STLM's GPT-2 embedding at width 512 (25,731,584): the byte embedding (d_local 128) is 32,896
    (-99.9%); embedder + head are 566,528 (-97.8%) with one encoder and one decoder block, 2,017,664
    (-92.2%, the study's 90-95%) with d_local 192 and two of each."""
    with torch.device("meta"):
        vocab_size = 2 * N_SYMBOLS if cfg.patching == "predicted" else max(cfg.vocab_size, 257)
        model = ByteTransformer(dataclasses.replace(cfg, kind="byte", vocab_size=vocab_size))
    counts = {name: sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in parts)
              for name, parts in (("embedder", ("embed", "encoder", "pool", "up")),
                                  ("head", ("down", "decoder", "decoder_norm", "lm_head", "first_context")))}
    bpe = bpe_vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    byte_embedding = model.param_counts()["embedding"]
    both = counts["embedder"] + counts["head"]
    return {"byte_embedding": byte_embedding, "embedder": counts["embedder"], "head": counts["head"],
            "bpe_embedding": bpe, "embedding_saving": 1 - byte_embedding / bpe, "embedder_head_saving": 1 - both / bpe}
