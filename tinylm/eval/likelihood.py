"""Log-likelihoods of continuations and of whole texts, scored the way lm-evaluation-harness scores them.

A request is a context and a continuation. Its tokens follow the harness
(`TemplateLM._encode_pair`): whitespace at the end of the context moves to the
front of the continuation, the continuation's tokens are
encode(context + continuation)[len(encode(context)):], and an empty context
becomes the EOS token (tinylm separates documents with it). Byte patches
(model.patching=predicted) take context and continuation from
encode(context + continuation), so the flags where BPE tokens end, which the
score includes, are those of the text a choice completes. A request longer
than max_seq_len + 1 tokens loses tokens from the left of its context. The
score is the summed log-probability of the continuation's tokens and whether
greedy decoding would produce every one of them.

Sharing: the continuations of one context (the choices of a multiple-choice
item) read one forward pass over the context. All of the context but its last
token (the "head") goes through the model once per batch into a KV cache whose
rows are then copied to every continuation; each continuation row (the
"tail": the context's last token, then the continuation but its last token)
runs on top of it. A context is shared when it has several continuations and
is at least half as long as the longest of them (sharing pads every
continuation to that one); other rows run whole. Rows are sorted by head
length, then by the length of their context's longest row, and batched with
right padding, which causal attention never sees.

Used by the benchmark harness and the lm-evaluation-harness adapter. Knows
nothing of tasks or where their data comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from tinylm.errors import TinyLMError
from tinylm.model import KVCache, Transformer
from tinylm.progress import progress_bar
from tinylm.tokenizer import Tokenizer

Request = tuple[list[int], list[int]]  # (context tokens, continuation tokens)
# A batch's logits are rows x positions x vocab floats; batches stay under this many logit values (1 GiB).
MAX_BATCH_LOGITS = 1 << 28


def encode_requests(tokenizer: Tokenizer, pairs: Iterable[tuple[str, str]]) -> list[Request]:
    """Token requests for (context, continuation) texts, split as lm-evaluation-harness splits them."""
    moved = []
    for context, continuation in pairs:
        stripped = context.rstrip()
        moved.append((stripped, context[len(stripped):] + continuation))
    contexts = tokenizer.encode_batch([context for context, _ in moved])
    wholes = tokenizer.encode_batch([context + continuation for context, continuation in moved])
    return [tokenizer.split_pair(ctx, whole) if context else ([tokenizer.eos_id], whole)
            for (context, _), ctx, whole in zip(moved, contexts, wholes)]


def rolling_requests(ids: list[int], prefix: int, max_len: int, stride: int | None = None) -> list[Request]:
    """Token requests that together score every token of `ids` exactly once.

    The first window predicts the first max_len tokens from `prefix` (EOS) on; each later window predicts the
    next `stride` tokens (default max_len: windows that do not overlap) with the max_len - stride tokens before
    them as context. The last window, usually short, takes as much context as fits (lm-evaluation-harness's
    rolling log-likelihood)."""
    stride = stride or max_len
    if not 1 <= stride <= max_len:
        raise TinyLMError(f"stride {stride} must be between 1 and the model's max_seq_len ({max_len})")
    seq = [prefix, *ids]  # seq[j] predicts ids[j]
    requests, scored = [], 0
    while scored < len(ids):
        end = min(len(ids), scored + (max_len if scored == 0 else stride))
        start = max(0, end - max_len)
        requests.append((seq[start:scored + 1], ids[scored:end]))
        scored = end
    return requests


@dataclass
class _Row:
    index: int  # position in the caller's request list
    head: tuple[int, ...]  # the shared part of the context, forwarded once into the KV cache
    tail: list[int]  # the rest of the context and the continuation but its last token
    continuation: list[int]
    width: int  # the longest tail of its context's rows: sorting by it keeps padding within a batch small


def _in_pieces(model: Transformer, requests: list[Request], batch_size: int, progress: bool,
               desc: str) -> list[tuple[float, bool]]:
    """Continuations longer than max_seq_len, scored in consecutive pieces of max_seq_len tokens, each with
    everything before it as context (left-truncated like any other request); pieces' scores add up."""
    max_len = model.cfg.max_seq_len
    pieces, owners = [], []
    for i, (context, continuation) in enumerate(requests):
        for start in range(0, max(len(continuation), 1), max_len):
            pieces.append((context + continuation[:start], continuation[start:start + max_len]))
            owners.append(i)
    results = [(0.0, True)] * len(requests)
    for owner, (logprob, greedy) in zip(owners, loglikelihoods(model, pieces, batch_size, progress, desc)):
        results[owner] = (results[owner][0] + logprob, results[owner][1] and greedy)
    return results


@torch.no_grad()
def loglikelihoods(model: Transformer, requests: list[Request], batch_size: int = 32, progress: bool = False,
                   desc: str = "scoring") -> list[tuple[float, bool]]:
    """(summed log-probability of the continuation, whether greedy decoding produces it) per request."""
    model.eval()
    max_len = model.cfg.max_seq_len
    if any(len(continuation) > max_len for _, continuation in requests):
        return _in_pieces(model, requests, batch_size, progress, desc)
    results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)  # an empty continuation is certain
    by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (context, continuation) in enumerate(requests):
        if not continuation:
            continue
        tokens = (context + continuation)[-(max_len + 1):]  # left-truncate, as the harness does
        by_context.setdefault(tuple(tokens[:-len(continuation)]), []).append((i, continuation))
    rows = []
    for context, continuations in by_context.items():
        longest = max(len(cont) for _, cont in continuations)
        # sharing pads every continuation to the longest; it does not pay when the context is much shorter
        # than that (PIQA's long solutions after a short goal)
        # (a byte model's cache holds one sequence, so its rows are scored whole)
        head = (context[:-1] if isinstance(model, Transformer) and len(continuations) > 1
                and 2 * (len(context) - 1) >= longest else ())
        width = len(context) - len(head) + longest - 1
        rows += [_Row(i, head, list(context[len(head):]) + cont[:-1], cont, width) for i, cont in continuations]
    rows.sort(key=lambda r: (len(r.head), r.width, r.head, -len(r.tail)))
    with progress_bar(total=len(rows), disable=not progress, desc=desc, unit="req") as bar:
        for batch in _batches(rows, batch_size, model.cfg.vocab_size):
            for row, score in zip(batch, _score_batch(model, batch)):
                results[row.index] = score
            bar.update(len(batch))
    return results


def _batches(rows: list[_Row], batch_size: int, vocab_size: int) -> Iterable[list[_Row]]:
    """Consecutive rows with one head length, at most batch_size of them and MAX_BATCH_LOGITS logits."""
    batch: list[_Row] = []
    for row in rows:
        if batch:
            longest = max(len(row.tail), max(len(r.tail) for r in batch)) + len(row.head)
            if (len(row.head) != len(batch[0].head) or len(batch) == batch_size
                    or (len(batch) + 1) * longest * vocab_size > MAX_BATCH_LOGITS):
                yield batch
                batch = []
        batch.append(row)
    if batch:
        yield batch


def _score_batch(model: Transformer, batch: list[_Row]) -> list[tuple[float, bool]]:
    device, dtype = model.embed.weight.device, model.embed.weight.dtype
    width = max(len(r.tail) for r in batch)
    tails = torch.tensor([r.tail + [0] * (width - len(r.tail)) for r in batch], device=device)
    head_len = len(batch[0].head)
    if head_len:
        heads = list(dict.fromkeys(r.head for r in batch))
        cache = KVCache(model.cfg, len(heads), head_len + width, device, dtype)
        model(torch.tensor(heads, device=device), cache=cache, start=0)
        # every row reads its own copy of its head's keys and values
        which = torch.tensor([heads.index(r.head) for r in batch], device=device)
        cache.k, cache.v = [k[which] for k in cache.k], [v[which] for v in cache.v]
        logits = model(tails, cache=cache, start=head_len)
    else:
        logits = model(tails)
    scores = []
    for row, row_logits in zip(batch, logits):
        n = len(row.continuation)
        logprobs = row_logits[len(row.tail) - n:len(row.tail)].float().log_softmax(-1)  # (n, V)
        target = torch.tensor(row.continuation, device=device)
        scores.append((logprobs.gather(-1, target[:, None]).sum().item(),
                       bool((logprobs.argmax(-1) == target).all())))
    return scores
