"""What a model shape costs at inference on a device: decode latency per token at batch 1 with the KV
cache (what a chat user waits for), prefill throughput over a full context, and memory.

Decode runs layer after layer, one token at a time, so its latency grows with depth even at a fixed
parameter count: the price of PanGu-π Pro's deeper shapes, measured here rather than assumed.
"""

from __future__ import annotations

import statistics
import time

import torch

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.model.llama import KVCache, Transformer

MIB = 2**20


def device_for(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists twenty device types; these are the ones tinylm runs on
        raise TinyLMError(f"unknown device '{name}'; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyLMError(f"device '{name}' was asked for but no CUDA GPU is visible; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TinyLMError(f"device '{name}' was asked for but MPS is not available; use --device cpu")
    return device


def measure_latency(model: Transformer | ModelConfig, device: str | torch.device = "cpu", *,
                    dtype: torch.dtype | None = None, prompt_tokens: int = 16, decode_tokens: int = 32,
                    warmup_tokens: int = 4, prefill_repeats: int = 5, min_seconds: float = 1.0,
                    seed: int = 0) -> dict:
    """Inference cost of a model, or of a shape built with random weights on `device` (fp32 on CPU, bf16 on
    CUDA unless `dtype` says otherwise; a built model is measured where it lives, in its own dtype).

    Returns decode_ms (median time per token of `decode_tokens` single-token steps after a `prompt_tokens`
    prefill and `warmup_tokens` untimed steps), prefill_tok_s (batch 1 over max_seq_len tokens, the median of
    up to `prefill_repeats` timed passes stopping once `min_seconds` is spent), weights_kv_mb (the bytes of the
    weights plus a full-context KV cache at batch 1, computed exactly) and, on CUDA, cuda_peak_mb (the most
    memory allocated while decoding).
    """
    if isinstance(model, ModelConfig):
        device = device_for(device)
        torch.manual_seed(seed)
        with torch.device(device):
            model = Transformer(model)
        model = model.to(dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return _measure(model, prompt_tokens, decode_tokens, warmup_tokens, prefill_repeats, min_seconds, seed)
    finally:
        model.train(was_training)


def _measure(model: Transformer, prompt_tokens: int, decode_tokens: int, warmup_tokens: int, prefill_repeats: int,
             min_seconds: float, seed: int) -> dict:
    cfg = model.cfg
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    context = cfg.max_seq_len
    prompt = max(1, min(prompt_tokens, context // 2))
    steps = max(1, min(decode_tokens, context - prompt))
    tokens = torch.randint(cfg.vocab_size, (1, context), generator=torch.Generator().manual_seed(seed)).to(device)
    cache = KVCache(cfg, 1, context, device, dtype)

    def sync() -> None:  # GPU kernels run asynchronously: a clock read means nothing until they finish
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    def decode(n: int) -> list[float]:
        """Prefill the prompt, then time n greedy single-token steps through the cache."""
        nxt = model(tokens[:, :prompt], cache=cache, start=0)[:, -1:].argmax(-1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for position in range(prompt, prompt + n):
            sync()
            started = time.perf_counter()
            nxt = model(nxt, cache=cache, start=position)[:, -1:].argmax(-1)
            sync()
            times.append(time.perf_counter() - started)
        return times

    decode(min(warmup_tokens, steps))
    decode_times = decode(steps)
    report = {"decode_ms": 1000 * statistics.median(decode_times)}
    if device.type == "cuda":
        report["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / MIB

    model(tokens, cache=cache, start=0)  # warmup
    prefill_times: list[float] = []
    while len(prefill_times) < prefill_repeats and sum(prefill_times) < min_seconds:
        sync()
        started = time.perf_counter()
        model(tokens, cache=cache, start=0)
        sync()
        prefill_times.append(time.perf_counter() - started)
    report["prefill_tok_s"] = context / statistics.median(prefill_times)

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    report["weights_kv_mb"] = (weights + kv) / MIB
    return report
