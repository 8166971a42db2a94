"""Sampling with a KV cache: temperature, top-k, top-p (nucleus), EOS stop; `generate_batch` decodes many
equal-length prompts at once (SPIN's synthetic continuations)."""

from __future__ import annotations

from typing import Callable

import torch

from tinylm.model.bytes import ByteCache, ByteTransformer
from tinylm.model.llama import KVCache, Transformer


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set of mass >= top_p."""
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p; the first token always stays
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate(model: Transformer | ByteTransformer, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None,
             stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Continue `prompt` (token ids); returns only the new ids, stopping after EOS, after max_new_tokens or
    as soon as `stop(new ids)` is true (a stop string appeared, say).

    temperature 0 is greedy decoding. The prompt is truncated from the left to fit the context. When the
    context is full, generation slides: the cache is re-filled from the last max_seq_len // 2 tokens (prompt
    and output alike) and decoding continues from there, so exactly max_new_tokens come out unless EOS or
    `stop` ends them sooner.
    """
    model.eval()
    device = model.embed.weight.device
    max_len = model.cfg.max_seq_len
    # nanoGPT, without a cache, re-reads the last max_seq_len tokens for every new one. Keeping half the window
    # re-prefills once per max_len // 2 new tokens instead, at the cost of shorter context just after a slide.
    keep = max(1, max_len // 2)

    def prefill(context: list[int]) -> tuple[ByteCache | KVCache, torch.Tensor]:
        cache = (ByteCache if isinstance(model, ByteTransformer) else KVCache)(
            model.cfg, 1, max_len, device, model.embed.weight.dtype)
        return cache, model(torch.tensor([context], device=device), cache=cache, start=0)[:, -1]

    prompt = prompt[-(max_len - 1):] if prompt else [eos_id if eos_id is not None else 0]
    cache, logits = prefill(prompt)
    pos, out = len(prompt), []
    while len(out) < max_new_tokens:
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        token = int(nxt)
        out.append(token)
        if token == eos_id or len(out) == max_new_tokens or (stop is not None and stop(out)):
            break
        if pos == max_len:
            context = (prompt + out)[-keep:]
            cache, logits = prefill(context)
            pos = len(context)
        else:
            logits = model(nxt.view(1, 1), cache=cache, start=pos)[:, -1]
            pos += 1
    return out


@torch.no_grad()
def generate_batch(model: Transformer, prompts: torch.Tensor, new_tokens: int, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, suppress: tuple[int, ...] = (),
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Exactly `new_tokens` ids continuing each row of `prompts` (B, P), (B, new_tokens), decoded together with
    one KV cache. Every prompt has the same length, so no row needs padding and a row's continuation does not
    depend on the others' (except through the shared `generator`). The ids in `suppress` are never drawn (an EOS
    suppressed keeps every row exactly new_tokens long). No sliding: P + new_tokens must fit the context.
    """
    batch, length = prompts.shape
    if length < 1 or length + new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"a {length}-token prompt and {new_tokens} new tokens do not fit "
                         f"model.max_seq_len={model.cfg.max_seq_len}")
    model.eval()
    device = model.embed.weight.device
    cache = KVCache(model.cfg, batch, length + new_tokens, device, model.embed.weight.dtype)
    logits = model(prompts.to(device), cache=cache, start=0)[:, -1]
    out = torch.empty(batch, new_tokens, dtype=torch.long, device=device)
    for i in range(new_tokens):
        logits = logits.float()
        if suppress:
            logits[:, list(suppress)] = float("-inf")
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        out[:, i] = nxt[:, 0]
        if i + 1 < new_tokens:
            logits = model(nxt, cache=cache, start=length + i)[:, -1]
    return out
