"""Compact tokenizer: a BPE cut down to the N tokens a corpus uses most (PanGu-π Pro, §A.1).

Parents. A byte-level BPE (a `tokenizer.json` or a folder holding one), a
SentencePiece BPE with byte fallback (a `.model` file, read as the equivalent
tokenizer.json by tinylm.tokenizer.sentencepiece), or a GGUF model file holding
either. Its byte symbols are the 256 byte-level characters or the byte-fallback
pieces <0x00>..<0xFF>.

Selection. The parent encodes the corpus and each token id's occurrences are
counted. BPE reaches a token only through its merge chain (here: the chain
through the first, lowest-rank merge that forms it), so a kept set must be closed
under merges or it holds tokens it can never emit (the pitfall in
docs/techniques.md). Starting from the whole vocabulary, tokens are dropped one
at a time, cheapest first, until N remain. Only a token no kept token is built on
may go, which keeps the set closed; dropping it costs one token per occurrence,
as each occurrence becomes its merge's two parts, whose counts grow by as much. So
a piece the parent rarely emits alone ("Ġthous", inside "Ġthousand") gains the
occurrences of the longer tokens dropped above it and competes with them on
what it saves. Special and added tokens and the byte symbols (all 256 in a
complete parent, so any text still encodes) are never dropped. On the built-in
corpus this takes SmolLM2 49,152 -> 8,192 to +3.25% held-out tokens where keeping
the most frequent tokens with their chains gave +3.42%. Kept ids are renumbered
densely in the parent's order; the merges whose two parts and result are kept
stay, in the parent's order.

Never-emitted tokens. Even a closed set holds pieces that only ever occur inside
longer kept tokens ("Ġthous" for "Ġthousand"): rows of the embedding that no text
trains. When they exceed 1% of N, the never-emitted tokens that cost least per
slot to drop (counting the kept tokens built on them) are banned and the
selection is redone, up to 3 times, as long as the counting text takes at most
0.2% more tokens than with the first selection. SmolLM2 49,152 -> 8,192 on the
built-in corpus: 114 never emitted at first, 81 after two repairs, with the same
tokens per byte. A corpus too small or too narrow for N keeps more; the report
says how many.

Text. The corpus is cut into the pieces `tinylm data prepare` makes, and the
pieces its rule sends to validation (`heldout_fraction`, evenly spread) are held
out from counting: they measure tokens per byte of the parent and of the compact
tokenizer on unseen text. Each selection is checked by a pass that encodes the
counting text with the compact tokenizer, to find kept tokens it never emits.

Output folder: tokenizer.json, id_map.json (new id -> parent id, what carries a
parent model's embedding rows over) and report.json; for a SentencePiece parent
also tokenizer.model, its model with the kept pieces in the new order, which
encodes as tokenizer.json does. Reads corpora through tinylm.data; knows nothing
of models or training.
"""

from __future__ import annotations

import copy
import heapq
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tqdm.auto import tqdm

from tinylm.data.corpus import describe_source, iter_parts
from tinylm.data.prepare import PIECES_PER_BATCH, batches, in_val, piece_chars_for, split_pieces
from tinylm.errors import TinyLMError
from tinylm.progress import progress_bar
from tinylm.tokenizer import FILENAME, bytes_to_unicode
from tinylm.tokenizer.sentencepiece import BYTE_PIECES, MODEL_FILENAME, cut_model, read_model, tokenizer_json

ID_MAP = "id_map.json"
REPORT = "report.json"
DEFAULT_WIDTH = 576  # used for the embedding-size report when the parent does not tell its width
NEVER_EMITTED_LIMIT = 0.01  # share of N that may be kept but never emitted on the counting text
REPAIR_ROUNDS = 3  # selections redone at most, each with the never-emitted tokens cheapest to drop banned
REPAIR_TOLERANCE = 0.002  # how many more tokens (share) a repaired selection may take on the counting text
BYTE_SYMBOLS = tuple(bytes_to_unicode().values())


@dataclass
class ParentTokenizer:
    """A BPE parent: its tokenizer.json content, loaded tokenizer and what compaction needs of it."""

    path: Path
    json: dict
    hf: HFTokenizer
    width: int | None  # the parent model's hidden size, when the parent file tells it
    tied: bool | None  # whether the parent model ties its output head to the embedding, when known
    token_of: dict[int, str]  # every parent id (model vocabulary and added tokens) -> its token
    merges: list[tuple[str, str]]
    special_ids: set[int]  # added tokens, the unknown token and ids the post-processor inserts
    byte_ids: set[int]  # the byte symbols: all 256 in a complete parent
    missing_bytes: list[int]  # byte values without a symbol: the parent drops them, and so will the compact one
    sentencepiece: bytes | None = None  # the serialized SentencePiece model, when the parent is one

    @property
    def vocab_size(self) -> int:
        return len(self.token_of)

    @property
    def id_limit(self) -> int:
        return max(self.token_of) + 1


def load_parent(path: str | Path) -> ParentTokenizer:
    """A byte-level BPE `tokenizer.json`, a folder holding one, a SentencePiece BPE `.model` file with byte
    fallback (a folder holding only a tokenizer.model also does), or a GGUF file with either kind ('gpt2' or
    'llama' tokenizer)."""
    path = Path(path)
    if not path.exists():
        raise TinyLMError(f"no parent tokenizer at '{path}'; give a tokenizer.json, a folder holding one, "
                          "a .gguf model file or a SentencePiece .model file")
    file = _parent_file(path)
    width = tied = sentencepiece = None
    if file.suffix.lower() == ".gguf":
        from tinylm.tokenizer.gguf_vocab import read_gguf_tokenizer

        content, facts = read_gguf_tokenizer(file)
        width, tied, sentencepiece = facts["width"], facts["tied"], facts["sentencepiece"]
    elif _is_sentencepiece(file):
        model_proto = read_model(file)
        content, sentencepiece = tokenizer_json(model_proto), model_proto.SerializeToString()
        width = _hidden_size(file.parent / "config.json")
    else:
        if not file.is_file():
            raise TinyLMError(f"folder '{path}' holds no {FILENAME} or {MODEL_FILENAME}; give a tokenizer.json, "
                              "a .gguf model file or a SentencePiece .model file")
        content = _read_json(file)
        width = _hidden_size(file.parent / "config.json")
    return _parse_parent(path, content, width, tied, sentencepiece)


def corpus_pieces(corpus: str, text_field: str = "text", heldout_fraction: float = 0.05
                  ) -> Iterator[tuple[str, bool]]:
    """(piece, held_out) in corpus order: the pieces and validation rule of tinylm.data.prepare."""
    if not 0 < heldout_fraction < 1:
        raise TinyLMError(f"heldout_fraction={heldout_fraction} must be between 0 and 1, e.g. 0.05")
    piece_chars = piece_chars_for(describe_source(corpus))
    for index, (piece, _) in enumerate(split_pieces(iter_parts(corpus, text_field), piece_chars)):
        if piece:
            yield piece, in_val(index, heldout_fraction)


def count_tokens(hf: HFTokenizer, texts: Iterable[str], id_limit: int, progress: bool = True,
                 desc: str = "counting tokens") -> tuple[np.ndarray, int]:
    """(occurrences of each id below id_limit, bytes read) when `hf` encodes `texts`, in bounded batches."""
    counts = np.zeros(id_limit, np.int64)
    n_bytes = 0
    with _bytes_bar(desc, progress) as bar:
        for batch in batches(texts, PIECES_PER_BATCH):
            counts += _bincount(_encode_batch(hf, batch), id_limit)
            batch_bytes = sum(len(text.encode("utf-8")) for text in batch)
            n_bytes += batch_bytes
            bar.update(batch_bytes)
    return counts, n_bytes


def check_tokenizer(parent_hf: HFTokenizer, hf: HFTokenizer, pieces: Iterable[tuple[str, bool]], id_limit: int,
                    progress: bool = True) -> tuple[np.ndarray, dict]:
    """How `hf` does next to its parent: (occurrences of each of its ids on the counting pieces, held-out
    stats: bytes, tokens per byte of both and the inflation, pieces whose decode(encode(x)) is not x)."""
    emitted = np.zeros(id_limit, np.int64)
    n_bytes = parent_tokens = tokens = failures = 0
    with _bytes_bar("checking compact tokenizer", progress) as bar:
        for batch in batches(pieces, PIECES_PER_BATCH):
            counting = [text for text, held_out in batch if not held_out]
            heldout = [text for text, held_out in batch if held_out]
            emitted += _bincount(_encode_batch(hf, counting), id_limit)
            if heldout:
                parent_tokens += sum(len(ids) for ids in _encode_batch(parent_hf, heldout))
                heldout_ids = _encode_batch(hf, heldout)
                tokens += sum(len(ids) for ids in heldout_ids)
                decoded = hf.decode_batch([ids.tolist() for ids in heldout_ids], skip_special_tokens=False)
                failures += sum(text != back for text, back in zip(heldout, decoded))
                n_bytes += sum(len(text.encode("utf-8")) for text in heldout)
            bar.update(sum(len(text.encode("utf-8")) for text, _ in batch))
    rates = None
    if n_bytes:
        rates = {"parent": parent_tokens / n_bytes, "compact": tokens / n_bytes,
                 "inflation": tokens / parent_tokens - 1}
    return emitted, {"bytes": n_bytes, "tokens_per_byte": rates, "round_trip_failures": failures}


def check_vocab_size(parent: ParentTokenizer, vocab_size: int) -> None:
    """A compact size must hold the specials and byte symbols and be smaller than the parent."""
    if vocab_size >= parent.vocab_size:
        raise TinyLMError(f"--vocab {vocab_size} must be smaller than the parent's {parent.vocab_size:,} tokens")
    minimum = len(parent.special_ids | parent.byte_ids)
    if vocab_size < minimum:
        raise TinyLMError(f"--vocab {vocab_size} is too small: it must be at least {minimum} "
                          f"({len(parent.special_ids)} special tokens + {len(parent.byte_ids)} byte symbols)")


def select_tokens(parent: ParentTokenizer, counts: np.ndarray, vocab_size: int,
                  banned: Iterable[int] = ()) -> list[int]:
    """The kept parent ids, sorted: exactly `vocab_size`, closed under merges, with every special token and byte
    symbol. Tokens are dropped cheapest first, their occurrences passed to their merge's parts (module docstring).
    `banned` ids and the tokens built on them are dropped before any other, as long as enough tokens remain."""
    check_vocab_size(parent, vocab_size)
    ancestors = merge_parents(parent.json)
    protected = parent.special_ids | parent.byte_ids
    occurrences = {i: int(counts[i]) for i in parent.token_of}  # counts covers every id (count_tokens)
    built_on = Counter(part for parts in ancestors.values() for part in parts)  # kept tokens made from each id
    kept = set(parent.token_of)

    def drop(token_id: int) -> None:
        kept.discard(token_id)
        for part in ancestors.get(token_id, ()):
            occurrences[part] += occurrences[token_id]
            built_on[part] -= 1

    # longest first: a token goes before the parts it is built from, so the set stays closed at every step
    doomed = _built_on(set(banned) - protected, _made_from(ancestors, parent.token_of))
    for token_id in sorted(doomed, key=lambda i: -len(parent.token_of[i])):
        if len(kept) == vocab_size:
            break
        drop(token_id)
    leaves = [(occurrences[i], i) for i in kept if not built_on[i] and i not in protected]
    heapq.heapify(leaves)
    while len(kept) > vocab_size and leaves:
        _, token_id = heapq.heappop(leaves)
        if token_id not in kept:
            continue
        drop(token_id)
        for part in set(ancestors.get(token_id, ())):
            if not built_on[part] and part not in protected:
                heapq.heappush(leaves, (occurrences[part], part))
    if len(kept) > vocab_size:  # only when special tokens or byte symbols are built from other tokens
        raise TinyLMError(f"--vocab {vocab_size} is too small for '{parent.path}': its special tokens and byte "
                          f"symbols need {len(kept)} tokens with the merges that build them")
    return sorted(kept)

def build_compact(parent: ParentTokenizer, kept: list[int]) -> tuple[dict, list[int]]:
    """(compact tokenizer.json content, id map new id -> parent id) for the sorted parent ids `kept`."""
    new_id = {parent_id: i for i, parent_id in enumerate(kept)}
    kept_tokens = {parent.token_of[i] for i in kept}
    content = copy.deepcopy(parent.json)
    model = content["model"]
    model["vocab"] = {token: new_id[i] for token, i in model["vocab"].items() if i in new_id}
    string_merges = bool(model["merges"]) and isinstance(model["merges"][0], str)
    model["merges"] = [f"{a} {b}" if string_merges else [a, b] for a, b in parent.merges
                       if a in kept_tokens and b in kept_tokens and a + b in kept_tokens]
    content["added_tokens"] = [{**token, "id": new_id[token["id"]]} for token in content.get("added_tokens") or []]
    if content.get("post_processor"):
        content["post_processor"] = _renumber_post_processor(content["post_processor"], new_id)
    return content, list(kept)


def compact(parent: str | Path, corpus: str, vocab_size: int, out_dir: str | Path, width: int | None = None,
            text_field: str = "text", heldout_fraction: float = 0.05, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Compact `parent` to `vocab_size` tokens for `corpus` ("" = the built-in corpus); write tokenizer.json,
    id_map.json and report.json into `out_dir` and return the report."""
    out_dir = Path(out_dir)
    parent_tok = load_parent(parent)
    _check_out_dir(out_dir, parent_tok.path, overwrite)
    check_vocab_size(parent_tok, vocab_size)
    counting = (text for text, held_out in corpus_pieces(corpus, text_field, heldout_fraction) if not held_out)
    counts, count_bytes = count_tokens(parent_tok.hf, counting, parent_tok.id_limit, progress)
    limit = int(NEVER_EMITTED_LIMIT * vocab_size)
    banned: set[int] = set()
    best = None
    for selection in range(1, REPAIR_ROUNDS + 2):
        kept = select_tokens(parent_tok, counts, vocab_size, banned)
        result = _build_and_check(parent_tok, kept, corpus_pieces(corpus, text_field, heldout_fraction), progress)
        if best is None:
            best, best_selection, plain_tokens = result, selection, result.emitted.sum()
        elif result.emitted.sum() > plain_tokens * (1 + REPAIR_TOLERANCE):
            break  # the corpus needs those chains: dropping them costs compression
        elif len(result.never_emitted) < len(best.never_emitted):
            best, best_selection = result, selection
        if len(best.never_emitted) <= limit:
            break
        banned |= _cheapest_to_drop(parent_tok, result, len(result.never_emitted) - limit)
    width = width or parent_tok.width or DEFAULT_WIDTH
    heldout = best.heldout
    report = {
        "parent": str(parent_tok.path), "parent_vocab_size": parent_tok.vocab_size, "vocab_size": vocab_size,
        "special_tokens": len(parent_tok.special_ids), "byte_symbols": len(parent_tok.byte_ids),
        "parent_missing_bytes": parent_tok.missing_bytes, "merges": len(best.json["model"]["merges"]),
        "corpus": corpus or "builtin", "counting_bytes": count_bytes, "heldout_bytes": heldout["bytes"],
        "coverage": float(counts[best.id_map].sum() / max(counts.sum(), 1)),
        "tokens_per_byte": heldout["tokens_per_byte"], "heldout_round_trip_failures": heldout["round_trip_failures"],
        "never_emitted": len(best.never_emitted), "never_emitted_share": len(best.never_emitted) / vocab_size,
        "never_emitted_examples": [best.hf.id_to_token(i) for i in best.never_emitted[:20]],
        "selection_round": best_selection,
        "embedding": {"width": width, "tied_head": parent_tok.tied,
                      "parent_params": parent_tok.vocab_size * width, "compact_params": vocab_size * width,
                      "saved_params": (parent_tok.vocab_size - vocab_size) * width},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    best.hf.save(str(out_dir / FILENAME))
    if parent_tok.sentencepiece is not None:
        (out_dir / MODEL_FILENAME).write_bytes(cut_model(parent_tok.sentencepiece, best.id_map))
    else:  # a model left by an earlier compaction into this folder would no longer match tokenizer.json
        (out_dir / MODEL_FILENAME).unlink(missing_ok=True)
    (out_dir / ID_MAP).write_text(json.dumps(best.id_map) + "\n")
    (out_dir / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


@dataclass
class _Checked:
    """A compact tokenizer built from a kept set, and how it does on the corpus."""

    json: dict
    id_map: list[int]
    hf: HFTokenizer
    emitted: np.ndarray  # occurrences of each new id on the counting text
    heldout: dict
    never_emitted: list[int]  # new ids that never occur on the counting text, specials and byte symbols aside


def _build_and_check(parent: ParentTokenizer, kept: list[int], pieces: Iterable[tuple[str, bool]],
                     progress: bool) -> _Checked:
    content, id_map = build_compact(parent, kept)
    hf = HFTokenizer.from_str(json.dumps(content))
    emitted, heldout = check_tokenizer(parent.hf, hf, pieces, len(id_map), progress)
    protected = parent.special_ids | parent.byte_ids
    never = [i for i, parent_id in enumerate(id_map) if emitted[i] == 0 and parent_id not in protected]
    return _Checked(content, id_map, hf, emitted, heldout, never)


def _parse_parent(path: Path, content: dict, width: int | None, tied: bool | None,
                  sentencepiece: bytes | None = None) -> ParentTokenizer:
    model = content.get("model") if isinstance(content, dict) else None
    if not isinstance(model, dict):
        raise TinyLMError(f"'{path}' is not a tokenizer.json (it has no model); give a byte-level BPE tokenizer.json")
    kind = model.get("type") or ("BPE" if "merges" in model else "unknown")
    if kind != "BPE":
        raise TinyLMError(f"'{path}' is a {kind} tokenizer; compaction needs a byte-level BPE "
                          "(GPT-2, SmolLM, Llama-3 or Qwen style)")
    if sentencepiece is None and not _has_byte_level(content.get("pre_tokenizer")):
        raise TinyLMError(f"'{path}' is a BPE without a ByteLevel pre-tokenizer (SentencePiece-style?); "
                          "compaction needs a byte-level BPE (GPT-2, SmolLM, Llama-3 or Qwen style) or a "
                          "SentencePiece .model file")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TinyLMError(f"'{path}' marks subwords with a prefix or suffix, which byte-level BPEs do not; "
                          "compaction needs a byte-level BPE (GPT-2, SmolLM, Llama-3 or Qwen style)")
    try:
        hf = HFTokenizer.from_str(json.dumps(content))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed tokenizer
        raise TinyLMError(f"'{path}' is not a valid tokenizer ({str(e).splitlines()[0][:120]})") from None
    token_of = {i: token for token, i in model["vocab"].items()}
    added = content.get("added_tokens") or []
    token_of.update({token["id"]: token["content"] for token in added})
    special_ids = {token["id"] for token in added} | _post_processor_ids(content.get("post_processor"))
    if model.get("unk_token") in model["vocab"]:
        special_ids.add(model["vocab"][model["unk_token"]])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    byte_symbols = BYTE_SYMBOLS if sentencepiece is None else BYTE_PIECES
    return ParentTokenizer(path=path, json=content, hf=hf, width=width, tied=tied, token_of=token_of,
                           merges=merges, special_ids=special_ids & token_of.keys(),
                           byte_ids={model["vocab"][s] for s in byte_symbols if s in model["vocab"]},
                           missing_bytes=[b for b, s in enumerate(byte_symbols) if s not in model["vocab"]],
                           sentencepiece=sentencepiece)


def _parent_file(path: Path) -> Path:
    """The tokenizer file `path` names: itself, or in a folder its tokenizer.json, else its tokenizer.model."""
    if not path.is_dir():
        return path
    if (path / MODEL_FILENAME).is_file() and not (path / FILENAME).exists():
        return path / MODEL_FILENAME
    return path / FILENAME


def _is_sentencepiece(file: Path) -> bool:
    # Mistral names its models tokenizer.model.v1, .model.v3...
    return file.suffix.lower() != ".json" and ".model" in (suffix.lower() for suffix in file.suffixes)


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyLMError(f"'{file}' is not a valid tokenizer.json ({str(e)[:100]})") from None


def _hidden_size(config_file: Path) -> int | None:
    """The width in a Hugging Face model folder's config.json, when the tokenizer sits in one."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    width = next((config.get(key) for key in ("hidden_size", "n_embd", "d_model") if key in config), None)
    return width if isinstance(width, int) else None


def _has_byte_level(pre_tokenizer) -> bool:
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_has_byte_level(p) for p in pre_tokenizer.get("pretokenizers") or [])


def _post_processor_ids(processor) -> set[int]:
    """Token ids a post-processor inserts (BOS/EOS/CLS/SEP): they are special tokens too."""
    if not isinstance(processor, dict):
        return set()
    ids = set()
    for nested in processor.get("processors") or []:
        ids |= _post_processor_ids(nested)
    for entry in (processor.get("special_tokens") or {}).values():
        ids.update(entry.get("ids", []))
    for key in ("sep", "cls"):
        if isinstance(processor.get(key), list):
            ids.add(processor[key][1])
    return ids


def _renumber_post_processor(processor: dict, new_id: dict[int, int]) -> dict:
    processor = dict(processor)
    if processor.get("processors"):
        processor["processors"] = [_renumber_post_processor(p, new_id) for p in processor["processors"]]
    if processor.get("special_tokens"):
        processor["special_tokens"] = {name: {**entry, "ids": [new_id[i] for i in entry.get("ids", [])]}
                                       for name, entry in processor["special_tokens"].items()}
    for key in ("sep", "cls"):
        if isinstance(processor.get(key), list):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
    return processor


def merge_parents(content: dict) -> dict[int, tuple[int, int]]:
    """Token id -> the ids of the two parts of the first (lowest-rank) merge that forms it, for a BPE
    tokenizer.json's content."""
    vocab = content["model"]["vocab"]
    parents = {}
    for merge in content["model"].get("merges") or []:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        if a in vocab and b in vocab and a + b in vocab:
            parents.setdefault(vocab[a + b], (vocab[a], vocab[b]))
    return parents


def _cheapest_to_drop(parent: ParentTokenizer, checked: _Checked, n: int) -> set[int]:
    """Parent ids of the `n` never-emitted tokens that cost least per slot to drop. Dropping one drops the kept
    tokens built on it, and each of their emitted occurrences then takes as many tokens as its merge tree
    falls into among the tokens still kept: that many minus one is the cost."""
    ancestors = merge_parents(parent.json)
    kept = set(checked.id_map)
    made_from = _made_from(ancestors, kept)
    emitted = dict(zip(checked.id_map, checked.emitted.tolist()))

    def cost_per_slot(token_id: int) -> float:
        group = _built_on({token_id}, made_from)
        return sum(emitted[i] * (_split_count(i, ancestors, kept - group) - 1) for i in group) / len(group)

    return set(sorted((checked.id_map[i] for i in checked.never_emitted), key=cost_per_slot)[:n])


def _split_count(token_id: int, ancestors: dict[int, tuple[int, int]], present: set[int]) -> int:
    """How many tokens of `present` the token falls into when it is itself missing: its merge tree cut there."""
    parts = ancestors.get(token_id)
    if parts is None:
        return 1
    return sum(1 if part in present else _split_count(part, ancestors, present) for part in parts)


def _made_from(ancestors: dict[int, tuple[int, int]], among: Iterable[int]) -> dict[int, list[int]]:
    """Token id -> the tokens of `among` built from it (it is one of the two parts of their merge)."""
    made_from: dict[int, list[int]] = {}
    for token_id in among:
        for part in set(ancestors.get(token_id, ())):
            made_from.setdefault(part, []).append(token_id)
    return made_from


def _built_on(roots: set[int], made_from: dict[int, list[int]]) -> set[int]:
    """The `roots` and every token whose merge chain holds one of them."""
    found, stack = set(), list(roots)
    while stack:
        current = stack.pop()
        if current not in found:
            found.add(current)
            stack.extend(made_from.get(current, ()))
    return found


def _bincount(id_arrays: list[np.ndarray], id_limit: int) -> np.ndarray:
    if not id_arrays:
        return np.zeros(id_limit, np.int64)
    return np.bincount(np.concatenate(id_arrays), minlength=id_limit)[:id_limit]


def _bytes_bar(desc: str, progress: bool) -> tqdm:
    return progress_bar(unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress, leave=False)


def _encode_batch(hf: HFTokenizer, texts: list[str]) -> list[np.ndarray]:
    # encode_batch_fast (tokenizers >= 0.21) skips the character offsets nobody reads here
    encode = getattr(hf, "encode_batch_fast", hf.encode_batch)
    return [np.asarray(e.ids, np.int64) for e in encode(texts, add_special_tokens=False)]


def _check_out_dir(out_dir: Path, parent_path: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise TinyLMError(f"'{out_dir}' is a file; give a folder for the compact tokenizer")
    parent_file = _parent_file(parent_path).resolve()
    if any((out_dir / name).resolve() == parent_file for name in (FILENAME, MODEL_FILENAME)):
        raise TinyLMError(f"'{out_dir}' holds the parent tokenizer; write the compact one to another folder")
    existing = [name for name in (FILENAME, MODEL_FILENAME, ID_MAP, REPORT) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise TinyLMError(f"'{out_dir}' already holds a compact tokenizer ({', '.join(existing)}); "
                          "pass --overwrite to replace it or choose another --out")
