"""The tokenizer inside a GGUF file (llama.cpp's format), rebuilt as a Hugging Face `tokenizer.json`.

Two of llama.cpp's tokenizer models are rebuilt. "gpt2", a byte-level BPE (the
family of GPT-2, SmolLM, Llama-3 and Qwen2): the GGUF stores the vocabulary, the
token types and the merges, but not the pre-tokenizer: only its name in
`tokenizer.ggml.pre`, which PRE_TOKENIZERS maps to the splitting rules llama.cpp
applies for that name. "llama", a SentencePiece BPE with byte fallback (Llama-2,
Mistral): the GGUF stores the pieces, their scores and types, which make the
SentencePiece model tinylm.tokenizer.sentencepiece rebuilds. Needs the `gguf`
package (pip install gguf); reads the metadata only, never the tensors' data.
Knows nothing of models or training.
"""

from __future__ import annotations

from pathlib import Path

from tinylm.errors import TinyLMError
from tinylm.tokenizer.sentencepiece import model_from_pieces
from tinylm.tokenizer.sentencepiece import tokenizer_json as sentencepiece_tokenizer_json

# llama.cpp's token types
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4

_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split_then_bytes(regex: str) -> dict:
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, _byte_level(use_regex=False)]}


_GPT2 = _byte_level(use_regex=True)
# llama.cpp splits off every digit first (regex \p{N}) for these, then applies GPT-2's regex
_DIGITS_THEN_GPT2 = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _GPT2]}
# tokenizer.ggml.pre -> (pre-tokenizer, BPE ignore_merges: Llama-3 looks whole words up in the vocabulary first).
# A file without the key predates it and "default" marks an unrecognised one; llama.cpp then splits punctuation
# off first and warns that quality suffers, while the source models were mostly GPT-2-style: GPT-2's rule here.
PRE_TOKENIZERS = {
    "gpt-2": (_GPT2, False), "gpt2": (_GPT2, False), "default": (_GPT2, False), "mpt": (_GPT2, False), "olmo": (_GPT2, False),
    "smollm": (_DIGITS_THEN_GPT2, False), "starcoder": (_DIGITS_THEN_GPT2, False),
    "refact": (_DIGITS_THEN_GPT2, False), "codeshell": (_DIGITS_THEN_GPT2, False),
    "llama-bpe": (_split_then_bytes(_LLAMA3_REGEX), True), "llama3": (_split_then_bytes(_LLAMA3_REGEX), True),
    "qwen2": (_split_then_bytes(_QWEN2_REGEX), False),
}


def read_gguf_tokenizer(path: str | Path) -> tuple[dict, dict]:
    """(tokenizer.json content, model facts: {"width": embedding width or None, "tied": bool or None,
    "sentencepiece": the serialized SentencePiece model of a "llama" tokenizer, else None})."""
    fields, tensor_names = _read_metadata(Path(path))
    model = _string(fields, "tokenizer.ggml.model", path)
    if model not in ("gpt2", "llama"):
        raise TinyLMError(f"'{path}' holds a {model!r} tokenizer; only byte-level BPE ('gpt2') and SentencePiece "
                          "BPE ('llama') GGUF tokenizers are supported, give the model's tokenizer.json instead")
    tokens = _strings(fields, "tokenizer.ggml.tokens", path)
    types = _numbers(fields, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens) or len(set(tokens)) != len(tokens):
        raise TinyLMError(f"'{path}' has an inconsistent token list (duplicates or a token_type count that "
                          "does not match); the file is damaged")
    bos = _number(fields, "tokenizer.ggml.bos_token_id")
    sentencepiece = None
    if model == "llama":
        scores = _numbers(fields, "tokenizer.ggml.scores", float)
        if scores is None or len(scores) != len(tokens):
            raise TinyLMError(f"'{path}' has a SentencePiece ('llama') tokenizer without a score for each token; "
                              "the file is damaged")
        # llama.cpp adds the dummy prefix unless the file says otherwise
        add_prefix = _number(fields, "tokenizer.ggml.add_space_prefix")
        model_proto = model_from_pieces(list(zip(tokens, scores, types)), bos,
                                        _number(fields, "tokenizer.ggml.eos_token_id"),
                                        add_dummy_prefix=add_prefix is None or bool(add_prefix), path=path)
        tokenizer_json, sentencepiece = sentencepiece_tokenizer_json(model_proto), model_proto.SerializeToString()
    else:
        tokenizer_json = _byte_level_tokenizer_json(fields, tokens, types, path)
    if _number(fields, "tokenizer.ggml.add_bos_token") and bos is not None:
        tokenizer_json["post_processor"] = _prepend_bos(tokens[bos], bos)
    arch = _string(fields, "general.architecture", path, default="")
    width = _number(fields, f"{arch}.embedding_length")
    tied = None if not tensor_names else "output.weight" not in tensor_names
    return tokenizer_json, {"width": width, "tied": tied, "sentencepiece": sentencepiece}


def _byte_level_tokenizer_json(fields, tokens: list[str], types: list[int], path) -> dict:
    pre = _string(fields, "tokenizer.ggml.pre", path, default="gpt2")
    if pre not in PRE_TOKENIZERS:
        raise TinyLMError(f"'{path}' uses the pre-tokenizer '{pre}', which tinylm cannot rebuild "
                          f"(known: {', '.join(sorted(PRE_TOKENIZERS))}); give the model's tokenizer.json instead")
    pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
    merges = _strings(fields, "tokenizer.ggml.merges", path)
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": kind != TOKEN_CONTROL, "special": kind == TOKEN_CONTROL}
             for i, (token, kind) in enumerate(zip(tokens, types)) if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": {token: i for i, token in enumerate(tokens)},
                  "merges": merges},
    }


def _prepend_bos(token: str, token_id: int) -> dict:
    bos, sequence = {"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}
    return {"type": "TemplateProcessing", "single": [bos, sequence],
            "pair": [bos, sequence, bos, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {token: {"id": token, "ids": [token_id], "tokens": [token]}}}


def open_gguf(path: str | Path):
    """A gguf.GGUFReader over `path`; TinyLMError when the package is missing or the file unreadable."""
    path = Path(path)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise TinyLMError(f"reading '{path}' needs the gguf package; install it with: pip install gguf") from None
    if not path.is_file():
        raise TinyLMError(f"no GGUF file at '{path}'; give the path of a .gguf model file")
    try:
        return GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError, struct.error, IndexError... on a damaged file
        raise TinyLMError(f"'{path}' is not a readable GGUF file ({type(e).__name__}: {str(e)[:100]})") from None


def _read_metadata(path: Path):
    reader = open_gguf(path)
    return reader.fields, {tensor.name for tensor in reader.tensors}


# A GGUF field keeps its values as numpy views in `parts`; `data` holds the indices of the parts that are values.
def _strings(fields, key: str, path) -> list[str]:
    if key not in fields:
        raise TinyLMError(f"'{path}' has no '{key}' metadata, so it holds no usable tokenizer")
    field = fields[key]
    try:
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    except UnicodeDecodeError:
        raise TinyLMError(f"'{path}' has '{key}' metadata that is not UTF-8 text; the file is damaged") from None


def _string(fields, key: str, path, default: str | None = None) -> str:
    if key not in fields:
        if default is None:
            raise TinyLMError(f"'{path}' has no '{key}' metadata, so it holds no usable tokenizer")
        return default
    return _strings(fields, key, path)[0]


def _numbers(fields, key: str, kind=int) -> list | None:
    if key not in fields:
        return None
    field = fields[key]
    return [kind(field.parts[i][0]) for i in field.data]


def _number(fields, key: str) -> int | None:
    values = _numbers(fields, key)
    return values[0] if values else None
