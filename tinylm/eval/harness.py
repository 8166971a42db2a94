"""Zero-shot benchmarks of any model `load_model` reads, scored as lm-evaluation-harness scores them.

Every choice of an item is scored by the summed log-likelihood of its
continuation given its context (tinylm.eval.likelihood). acc: the choice with
the highest sum is the gold one. acc_norm: the same after dividing each sum
by the choice's length in characters (lm-evaluation-harness's acc_norm; the
space joining context and choice is not counted). LAMBADA: acc is the share
of passages whose last word greedy decoding reproduces; perplexity is
exp(-mean summed log-likelihood of the last word). MMLU: acc over all its
questions (the micro average: lm-evaluation-harness's mmlu group weights
subjects by size); the macro average over subjects and each subject's acc are
in the report too. Standard errors are those of a mean: sample standard
deviation / sqrt(n); perplexity's comes from the delta method.

Reads tasks (tinylm.eval.tasks) and models (tinylm.formats); knows nothing of
training.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tinylm import distributed
from tinylm.errors import TinyLMError
from tinylm.eval.likelihood import encode_requests, loglikelihoods
from tinylm.eval.tasks import Item, load_task, task_source
from tinylm.formats import LoadedModel, load_model


def run_benchmarks(model: str | Path, tasks: list[str], limit: int | None = None, batch_size: int = 32,
                   device: str = "cpu", progress: bool = True, source: str = "olmo") -> dict:
    """Scores of `model` on each task; `limit` keeps the first N items of each (of each subject for MMLU);
    `source` says where built-in tasks' items come from (tinylm.eval.tasks: "olmo", "hf" or "auto")."""
    for name in tasks:  # a misspelt task fails before anything loads
        task_source(name, source)
    loaded_tasks = [load_task(name, limit, source) for name in tasks]
    loaded = load_model(model, device)
    if loaded.tokenizer is None:
        raise TinyLMError(f"'{model}' has no tokenizer.json; benchmarks need the model's tokenizer")
    report = {"model": str(model), "kind": loaded.kind, "limit": limit, "tasks": {}}
    for task in loaded_tasks:
        start = time.perf_counter()
        scores = score_items(loaded, task.items, batch_size, progress, desc=task.name)
        seconds = time.perf_counter() - start
        metrics = last_word_metrics(scores) if task.kind == "last_word" else choice_metrics(task.items, scores)
        report["tasks"][task.name] = {"items": len(task.items), **metrics, "seconds": seconds,
                                      "items_per_second": len(task.items) / seconds, "source": task.source}
    return report


def score_items(loaded: LoadedModel, items: list[Item], batch_size: int = 32, progress: bool = False,
                desc: str = "scoring") -> list[list[tuple[float, bool]]]:
    """(log-likelihood, greedy) of every choice of every item. Under torchrun each rank scores every N-th item
    (an item's choices stay together: they share their context's forward pass) and all get every score."""
    items = list(distributed.share(items))
    pairs = [pair for item in items for pair in item.requests()]
    flat = loglikelihoods(loaded.model, encode_requests(loaded.tokenizer, pairs), batch_size, progress, desc)
    scores, start = [], 0
    for item in items:
        scores.append(flat[start:start + len(item.choices)])
        start += len(item.choices)
    return distributed.gather_shares(scores)


def choice_metrics(items: list[Item], scores: list[list[tuple[float, bool]]]) -> dict:
    acc, acc_norm = [], []
    for item, item_scores in zip(items, scores):
        sums = [s for s, _ in item_scores]
        normed = [s / max(len(choice), 1) for s, choice in zip(sums, item.choices)]
        acc.append(float(_argmax(sums) == item.gold))
        acc_norm.append(float(_argmax(normed) == item.gold))
    metrics = {"acc": _mean(acc), "acc_stderr": _stderr(acc), "acc_norm": _mean(acc_norm),
               "acc_norm_stderr": _stderr(acc_norm)}
    subjects: dict[str, list[float]] = {}
    for item, correct in zip(items, acc):
        if item.subject:
            subjects.setdefault(item.subject, []).append(correct)
    if subjects:
        metrics["acc_macro"] = _mean([_mean(v) for v in subjects.values()])
        metrics["subjects"] = {name: {"items": len(v), "acc": _mean(v)} for name, v in subjects.items()}
    return metrics


def last_word_metrics(scores: list[list[tuple[float, bool]]]) -> dict:
    loglik = [item_scores[0][0] for item_scores in scores]
    greedy = [float(item_scores[0][1]) for item_scores in scores]
    perplexity = math.exp(-_mean(loglik))
    stderr = _stderr(loglik)
    return {"acc": _mean(greedy), "acc_stderr": _stderr(greedy), "perplexity": perplexity,
            "perplexity_stderr": None if stderr is None else perplexity * stderr}


def format_table(report: dict) -> str:
    """The report as a markdown table, one row per metric, then the throughput."""
    lines = ["| task | items | metric | value | ± stderr |", "|---|---:|---|---:|---:|"]
    total_items, total_seconds = 0, 0.0
    for name, r in report["tasks"].items():
        metrics = [("acc", "acc")]
        if "perplexity" in r:
            metrics.append(("perplexity", "perplexity"))
        elif "acc_macro" in r:
            metrics = [("acc", "acc (micro avg)"), ("acc_macro", f"acc (macro avg, {len(r['subjects'])} subjects)")]
        else:
            metrics.append(("acc_norm", "acc_norm"))
        for i, (key, label) in enumerate(metrics):
            stderr = r.get(f"{key}_stderr")
            lines.append(f"| {name if i == 0 else ''} | {r['items'] if i == 0 else ''} | {label} | {r[key]:.4f} | "
                         f"{'—' if stderr is None else f'{stderr:.4f}'} |")
        total_items += r["items"]
        total_seconds += r["seconds"]
    rate = total_items / max(total_seconds, 1e-9)
    lines += ["", f"{total_items:,} items in {total_seconds:.1f} s ({rate:.1f} items/s)"]
    return "\n".join(lines)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as numpy's


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _stderr(values: list[float]) -> float | None:
    """Standard error of the mean: sample standard deviation (n - 1) / sqrt(n); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
