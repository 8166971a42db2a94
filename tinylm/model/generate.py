"""Sampling with a KV cache: temperature, top-k, top-p (nucleus), EOS stop; `generate_batch` decodes many
equal-length prompts at once (SPIN's synthetic continuations); and self-speculative decoding, in which a model's
multi-token predictions (model/mtp.py) draft and its next-token head verifies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tinylm.model.bytes import ByteCache, ByteTransformer
from tinylm.model.llama import KVCache, Transformer
from tinylm.model.mtp import Drafter


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
             stop: Callable[[list[int]], bool] | None = None, compile: bool = False) -> list[int]:
    """Continue `prompt` (token ids); returns only the new ids, stopping after EOS, after max_new_tokens or
    as soon as `stop(new ids)` is true (a stop string appeared, say).

    temperature 0 is greedy decoding. The prompt is truncated from the left to fit the context. When the
    context is full, generation slides: the cache is re-filled from the last max_seq_len // 2 tokens (prompt
    and output alike) and decoding continues from there, so exactly max_new_tokens come out unless EOS or
    `stop` ends them sooner.

    compile=True runs each one-token step as a compiled static-shape graph (model/decode.py; token Transformer
    only): the same tokens, several times faster per token after a one-time compile of the model's shape.
    """
    model.eval()
    device = model.embed.weight.device
    max_len = model.cfg.max_seq_len
    # nanoGPT, without a cache, re-reads the last max_seq_len tokens for every new one. Keeping half the window
    # re-prefills once per max_len // 2 new tokens instead, at the cost of shorter context just after a slide.
    keep = max(1, max_len // 2)

    if compile:
        from tinylm.model.decode import CompiledDecoder  # loads torch's compiler (~2 s): not for eager decoding

        decoder = CompiledDecoder(model)

    def prefill(context: list[int]) -> tuple[ByteCache | KVCache, torch.Tensor]:
        if compile:
            return decoder.cache, decoder.prefill(context)
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
            logits = decoder.step(nxt, pos) if compile else model(nxt.view(1, 1), cache=cache, start=pos)[:, -1]
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


@dataclass
class SpeculativeStats:
    drafted: int = 0  # draft tokens the next-token head checked
    accepted: int = 0  # of them, those it kept
    passes: int = 0  # forward passes of the trunk, prefills included

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def acceptance_probability(p: torch.Tensor, q: torch.Tensor, draft: int) -> float:
    """min(1, p(d) / q(d)): the chance of keeping draft d drawn from q when the target distribution is p."""
    return min(1.0, float(p[draft] / q[draft]))


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """max(p − q, 0) renormalised: what a rejected draft is replaced from, so that the token kept follows p."""
    r = (p - q).clamp_min(0)
    total = r.sum()
    # zero only when p == q, where no draft is ever rejected; rounding could still land here, and then p is right
    return r / total if total > 0 else p


@torch.no_grad()
def generate_speculative(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
                         top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                         generator: torch.Generator | None = None,
                         stop: Callable[[list[int]], bool] | None = None) -> tuple[list[int], SpeculativeStats]:
    """`generate` for a model with multi-token predictions, which draft up to model.mtp_heads tokens after each
    certain one; one trunk pass then checks them all with the next-token head and keeps the longest agreeing
    run, plus the head's own token where it disagrees (or after the run). Returns the new ids and the counts.

    Greedy output is exactly `generate`'s (prompt truncation and sliding included). At temperature > 0 every
    token follows `generate`'s distribution by the speculative sampling rule (Leviathan et al. 2023; Chen et al.
    2023): draft d, drawn from the draft distribution q, is kept with probability min(1, p(d)/q(d)), p the
    next-token head's distribution (same temperature, top-k, top-p); a rejected one is replaced by a draw from
    max(p − q, 0) renormalised, and nothing after it is kept.
    """
    if model.mtp is None:
        raise ValueError("speculative decoding drafts with the model's multi-token predictions; this model has "
                         "none (model.mtp=none)")
    model.eval()
    device = model.embed.weight.device
    max_len = model.cfg.max_seq_len
    keep = max(1, max_len // 2)  # as generate slides
    greedy = temperature == 0
    stats = SpeculativeStats()

    def distribution(logits: torch.Tensor) -> torch.Tensor:
        return filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)

    def pick(logits: torch.Tensor) -> int:
        if greedy:
            return int(logits.argmax())
        return int(torch.multinomial(distribution(logits), 1, generator=generator))

    def prefill(context: list[int]) -> tuple[Drafter, torch.Tensor]:
        drafter = Drafter(model, max_len)
        stats.passes += 1
        return drafter, drafter.forward(torch.tensor([context], device=device), 0)[-1]

    out: list[int] = []

    def emit(token: int) -> bool:
        """Append a token; True when generation is over."""
        out.append(token)
        return token == eos_id or len(out) == max_new_tokens or (stop is not None and stop(out))

    prompt = prompt[-(max_len - 1):] if prompt else [eos_id if eos_id is not None else 0]
    drafter, logits = prefill(prompt)
    certain = len(prompt)  # positions whose keys and values in the trunk's cache are final
    token = pick(logits)  # the token at position `certain`, already decided
    if emit(token):
        return out, stats
    while True:
        if certain == max_len:
            context = (prompt + out)[-keep:]
            drafter, logits = prefill(context)
            certain = len(context)
            token = pick(logits)
            if emit(token):
                return out, stats
            continue
        draft_probs: list[torch.Tensor] = []

        def choose(draft_logits: torch.Tensor) -> int:
            if greedy:
                return int(draft_logits.argmax())
            draft_probs.append(distribution(draft_logits))
            return int(torch.multinomial(draft_probs[-1], 1, generator=generator))

        # the checked positions must stay inside the context, where generate would slide
        drafts = drafter.draft(certain, token, choose)[:max_len - 1 - certain]
        rows = drafter.forward(torch.tensor([[token] + drafts], device=device), certain)  # (1 + n, V)
        stats.passes += 1
        stats.drafted += len(drafts)
        certain += 1
        next_token = None
        for j, d in enumerate(drafts):
            if greedy:
                kept = int(rows[j].argmax()) == d
            else:
                p = distribution(rows[j])
                kept = float(torch.rand((), generator=generator, device=device)) < acceptance_probability(
                    p, draft_probs[j], d)
            if not kept:
                next_token = int(rows[j].argmax()) if greedy else int(
                    torch.multinomial(residual(p, draft_probs[j]), 1, generator=generator))
                break
            stats.accepted += 1
            certain += 1
            if emit(d):
                return out, stats
        token = next_token if next_token is not None else pick(rows[len(drafts)])
        if emit(token):
            return out, stats
