"""Compiled batch-1 decoding for the token Transformer: one static-shape step per new token.

An eager one-token step is hundreds of few-microsecond ops, so on a CPU its time goes to per-op dispatch rather
than arithmetic. Compiled by Inductor into a few fused kernels it runs several times faster, but only if every
step has the same shapes, so nothing is recompiled as the context grows: the KV cache is allocated at the
model's full max_seq_len, the new token's position is a (1,) tensor rather than an int, keys and values are
written with index_copy_ and the attention mask `arange(max_seq_len) <= pos` hides the cache's stale or empty
tail (Attention.forward's tensor-position path). Prefill stays the ordinary eager forward into the same cache.

A batch-1 step multiplies a vector by each weight matrix, and the time goes to reading the weights from memory.
PyTorch's matrix product (BLAS) reads them at about 10 GB/s on a 2-core CPU. Inside the compiled step every
linear layer is instead written as a multiply-and-sum over each weight row (OneRowLinear). Inductor turns that
into its own vectorised reduction kernels, fused with what comes before and after, and these read the weights
about twice as fast: ~50M went from 20.6 to 8.2 ms per token, ~10M from 8.1 to 2.4 (BENCHMARKS.md). The
price is a longer first compile.

Dynamo traces the model as an argument, its weights as graph inputs, so the compiled step is cached per model
shape: another call, or another model with the same config, reuses it without recompiling (weights updated in
place are seen, as nothing is frozen into the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tinylm.errors import TinyLMError
from tinylm.model.llama import KVCache, Transformer


def decode_step(model: Transformer, token: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (1, V) after `token` (1, 1) at position `pos` ((1,) long), its keys and values written into
    `cache` (batch 1, max_seq_len long) that already holds positions 0..pos-1."""
    x = model.embed(token)
    cos, sin = model.rope_cos[pos], model.rope_sin[pos]  # (1, hd/2)
    for i, layer in enumerate(model.layers):
        x = layer(x, cos, sin, cache, i, pos)
    return model.lm_head(model.norm(x))[:, -1]


class OneRowLinear(TorchFunctionMode):
    """F.linear(x, w, b) as (x.unsqueeze(-2) * w).sum(-1) + b: the same function, summed in another order. Only
    for tracing a one-token step: run eagerly, it would build the whole product in memory."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.linear:
            return func(*args, **kwargs)
        x, weight = args[0], args[1]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        y = (x.unsqueeze(-2) * weight).sum(-1)
        return y if bias is None else y + bias


def row_decode_step(model: Transformer, token: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """decode_step with every linear layer as OneRowLinear computes it."""
    with OneRowLinear():
        return decode_step(model, token, pos, cache)


# fullgraph: a graph break would put the dispatch cost back; dynamic=False: every step has one shape anyway.
# cpp_wrapper launches the kernels from C++ rather than Python: ~30% off a ~1M model's step, ~5% at ~10M, for a
# longer first compile. Freezing (weights folded into the graph) was no faster at ~10M and would tie the graph
# to one model's weights.
compiled_step = torch.compile(row_decode_step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})


class CompiledDecoder:
    """Prefill and one-token steps for `generate(..., compile=True)`. The first step of a new model shape
    compiles (seconds: see `tinylm sample --help`); later ones, in any decoder of that shape, do not."""

    def __init__(self, model: Transformer):
        if not isinstance(model, Transformer):
            raise TinyLMError(f"compiled decoding is for the token Transformer, not {type(model).__name__}; "
                              "decode without compile")
        self.model = model
        weight = model.embed.weight
        self.cache = KVCache(model.cfg, 1, model.cfg.max_seq_len, weight.device, weight.dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=weight.device)

    def prefill(self, context: list[int]) -> torch.Tensor:
        """Logits (1, V) after `context`, whose keys and values now fill the cache's first len(context) rows;
        rows after them, left from an earlier context, stay masked until overwritten."""
        ids = torch.tensor([context], device=self.pos.device)
        return self.model(ids, cache=self.cache, start=0)[:, -1]

    def step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        self.pos.fill_(pos)
        return compiled_step(self.model, token.view(1, 1), self.pos, self.cache)
