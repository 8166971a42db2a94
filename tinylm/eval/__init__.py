"""Evaluation and sampling of saved models.

Reads run directories (tinylm.checkpoint), prepared data and any model
`load_model` reads; reports loss per token, perplexity and bits per byte of a
run's validation split or of any text, and samples text. Zero-shot benchmarks
live in tinylm.eval.harness, their data in tinylm.eval.tasks, the scoring they
share with the lm-evaluation-harness adapter in tinylm.eval.likelihood. Must
not import training or export.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch

from tinylm import distributed
from tinylm.checkpoint import load_checkpoint
from tinylm.data import TokenData, prepare_cached
from tinylm.data.corpus import iter_parts
from tinylm.errors import TinyLMError
from tinylm.eval.likelihood import loglikelihoods, rolling_requests
from tinylm.formats import load_model
from tinylm.model import generate, sum_nats
from tinylm.progress import progress_bar
from tinylm.tokenizer import N_SYMBOLS, PATCHES


def evaluate(run: str | Path, max_tokens: int | None = None, batch_size: int | None = None, device: str = "cpu",
             progress: bool = True) -> dict:
    """Validation loss (nats/token), perplexity and bits per byte of a checkpoint on the validation split of
    the data it was trained on. Under torchrun every rank scores its share of the batches and all get the total."""
    ckpt = load_checkpoint(run, device=device)
    cfg = ckpt.cfg
    with distributed.main_first():  # ranks share the data cache: one prepares it
        data_dir = prepare_cached(cfg.data, progress=progress)
    data = TokenData.load(data_dir)
    if data.vocab_size > cfg.model.vocab_size:
        raise TinyLMError(f"data in '{data_dir}' was tokenized with a {data.vocab_size}-token vocabulary but the "
                          f"model has {cfg.model.vocab_size}; prepare it with the run's tokenizer")
    max_tokens = cfg.eval.max_tokens if max_tokens is None else max_tokens
    batch_size = batch_size or cfg.eval.batch_size
    n = min(max_tokens or len(data.val), len(data.val))
    batches = progress_bar(data.val_batches(batch_size, cfg.model.max_seq_len, max_tokens),
                           disable=not progress or not distributed.is_main(),
                           total=math.ceil(n / cfg.model.max_seq_len / batch_size) + 1, desc="eval", unit="batch")
    nats, count = distributed.sum_over_ranks(*sum_nats(ckpt.model, distributed.share_batches(batches)))
    loss = nats / count
    return {"checkpoint": str(ckpt.path), "val_loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": data.bits_per_byte(nats, count), "tokens": count}


def text_bits_per_byte(model: str | Path, source: str | Path, stride: int | None = None, batch_size: int = 8,
                       device: str = "cpu", progress: bool = True) -> dict:
    """Loss (nats/token), perplexity and bits per byte of a text file, folder, .jsonl or .parquet under any model
    `load_model` reads (a tinylm run, a Hugging Face folder, a GGUF file), with the model's own tokenizer.

    Each document is scored on its own, from EOS on, in windows of the model's max_seq_len tokens that do not
    overlap; the last, short window takes preceding tokens as context. With `stride` < max_seq_len, each window
    after the first scores the next `stride` tokens with the max_seq_len - stride before them as context
    (slower, lower loss). Every token is predicted once (likelihood.rolling_requests). Bits per byte = summed
    nats / ln 2 / UTF-8 bytes of the text, so models with different tokenizers compare."""
    loaded = load_model(model, device)
    if loaded.tokenizer is None:
        raise TinyLMError(f"'{model}' has no tokenizer.json; scoring text needs the model's tokenizer")
    tokenizer, max_len = loaded.tokenizer, loaded.model.cfg.max_seq_len
    requests, n_bytes, documents = [], 0, 0
    for text in _documents(str(source)):
        n_bytes += len(text.encode("utf-8"))
        documents += 1
        requests += rolling_requests(tokenizer.encode(text), tokenizer.eos_id, max_len, stride)
    tokens = sum(len(continuation) for _, continuation in requests)
    if not tokens:
        raise TinyLMError(f"'{source}' holds no text to score")
    # under torchrun each rank scores every N-th window and the sums are added up
    mine = list(distributed.share(requests))
    nats = -sum(logprob for logprob, _ in loglikelihoods(loaded.model, mine, batch_size, progress))
    nats = distributed.sum_over_ranks(nats, 0)[0]
    return {"model": str(model), "text": str(source), "documents": documents, "bytes": n_bytes, "tokens": tokens,
            "window": max_len, "stride": stride or max_len, "loss": nats / tokens,
            "perplexity": math.exp(nats / tokens), "bits_per_byte": nats / math.log(2) / n_bytes}


def _documents(source: str) -> Iterator[str]:
    """Whole documents: the parts a large text file arrives in are joined again."""
    parts: list[str] = []
    for text, ends_document in iter_parts(source):
        parts.append(text)
        if ends_document:
            yield "".join(parts)
            parts = []
    if parts:
        yield "".join(parts)


def sample(run: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
           top_k: int = 0, top_p: float = 0.95, seed: int = 0, device: str = "cpu", compile: bool = False) -> str:
    ckpt = load_checkpoint(run, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt_ids = ckpt.tokenizer.encode(prompt)
    if ckpt.tokenizer.kind == PATCHES:
        prompt_ids = flag_prompt_end(ckpt.model, prompt_ids)
    ids = generate(ckpt.model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                   eos_id=ckpt.tokenizer.eos_id, generator=generator, compile=compile)
    if ckpt.cfg.model.kind == "byte":  # byte patches: the byte is the id mod 257, the flag is dropped
        return prompt + utf8_text(bytes(s for s in (i % N_SYMBOLS for i in ids) if s < 256))
    return prompt + ckpt.tokenizer.decode(ids)


@torch.no_grad()
def flag_prompt_end(model, ids: list[int]) -> list[int]:
    """Byte patches of a prompt with its last byte's flag set as the model predicts it. Whether that byte ends
    a patch depends on the text that follows, which the prompt's BPE cannot know (the end of a text always ends
    a token, so a prompt in mid-word would force a new word); the model decides, as if it had written it."""
    if len(ids) < 2:
        return ids
    model.eval()
    context = torch.tensor([ids[:-1][-(model.cfg.max_seq_len - 1):]], device=model.embed.weight.device)
    logits = model(context)[0, -1]
    byte = ids[-1] % N_SYMBOLS
    return ids[:-1] + [byte + N_SYMBOLS if logits[byte + N_SYMBOLS] > logits[byte] else byte]


def utf8_text(data: bytes) -> str:
    """`data` as text. A byte model can emit any byte: invalid UTF-8 shows as U+FFFD and is listed at the end."""
    text, invalid, at = "", [], 0
    while True:
        try:
            return text + data[at:].decode("utf-8") + (f"\n[invalid UTF-8: {', '.join(invalid)}]" if invalid else "")
        except UnicodeDecodeError as e:
            start, end = at + e.start, at + e.end
            text += data[at:start].decode("utf-8") + "\ufffd"
            invalid.append(f"{data[start:end].hex(' ')} at byte {start}")
            at = end
