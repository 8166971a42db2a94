"""SentencePiece BPE models with byte fallback (Llama-2, Mistral) as Hugging Face `tokenizer.json` content.

A SentencePiece `.model` file is a serialized ModelProto: the pieces with their
scores and types, and the normalisation applied before encoding. SentencePiece
BPE encodes the normalised text by starting from its characters and merging, as
long as one is possible, the adjacent pair whose concatenation is the piece of
highest score; a character without a piece falls back to the pieces of its
UTF-8 bytes, <0x00>..<0xFF>. A Hugging Face BPE does the same when its merges
are every split of a piece into two pieces, ranked by the score of the piece
they form, and it has byte_fallback on. Only models that give text back exactly
are read: BPE with byte fallback and no normalisation besides the dummy prefix
and spaces written as "▁".

`cut_model` writes the same model with fewer pieces, so a compact tokenizer
also exists as a `tokenizer.model` for runtimes that read that format. Needs the
`sentencepiece` package, for its protobuf schema only. Knows nothing of models
or training.
"""

from __future__ import annotations

from pathlib import Path

from tinylm.errors import TinyLMError

MODEL_FILENAME = "tokenizer.model"
SPACE = "\u2581"  # "▁", what SentencePiece writes for a space
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))
# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
BPE = 2  # in TrainerSpec.ModelType
MODEL_TYPES = {1: "Unigram", 2: "BPE", 3: "Word", 4: "Char"}
SUPPORTED = "SentencePiece BPE with byte fallback (Llama-2, Mistral style)"


def read_model(path: str | Path):
    """The ModelProto in a SentencePiece `.model` file; TinyLMError unless it is a BPE with byte fallback
    whose normalisation is reversible."""
    path = Path(path)
    model_proto = _empty_model(path)
    try:
        model_proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError, or RuntimeError from its C++ backend
        raise TinyLMError(f"'{path}' is not a SentencePiece .model file ({str(e)[:100]})") from None
    if not model_proto.pieces:
        raise TinyLMError(f"'{path}' is not a SentencePiece .model file (it holds no pieces)")
    _check_model(model_proto, path)
    return model_proto


def model_from_pieces(pieces: list[tuple[str, float, int]], bos_id: int | None, eos_id: int | None,
                      add_dummy_prefix: bool, path):
    """The SentencePiece BPE model of `pieces` ((piece, score, type) in id order) without normalisation, as
    llama.cpp's "llama" tokenizer describes one; TinyLMError as `read_model` gives."""
    model_proto = _empty_model(path)
    model_proto.pieces.extend(type(model_proto).SentencePiece(piece=piece, score=score, type=kind)
                              for piece, score, kind in pieces)
    spec = model_proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = BPE, len(pieces), True
    unk_id = next((i for i, (_, _, kind) in enumerate(pieces) if kind == UNKNOWN), None)
    for name, token_id in (("unk", unk_id), ("bos", bos_id), ("eos", eos_id)):
        known = token_id is not None and 0 <= token_id < len(pieces)
        setattr(spec, f"{name}_id", token_id if known else -1)
        if known:
            setattr(spec, f"{name}_piece", pieces[token_id][0])
    normalizer = model_proto.normalizer_spec
    normalizer.name, normalizer.add_dummy_prefix = "identity", add_dummy_prefix
    normalizer.remove_extra_whitespaces, normalizer.escape_whitespaces = False, True
    _check_model(model_proto, path)
    return model_proto


def tokenizer_json(model_proto) -> dict:
    """The Hugging Face tokenizer.json content that gives the same ids as SentencePiece for `model_proto`."""
    pieces = model_proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    spec = model_proto.normalizer_spec
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}]
    if spec.add_dummy_prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": SPACE})
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    # Hugging Face finds added tokens in the raw text and then normalises the text between them on its own;
    # SentencePiece never finds control pieces in text, and normalises first. So a text that holds one of
    # these pieces literally ("</s>", "[INST]") is the one place where the two encode differently.
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": p.type != USER_DEFINED}
             for i, p in enumerate(pieces) if p.type in (UNKNOWN, CONTROL, USER_DEFINED)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": next(p.piece for p in pieces if p.type == UNKNOWN),
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab, "merges": _merges(model_proto)},
    }


def cut_model(model_bytes: bytes, kept: list[int]) -> bytes:
    """The serialized model `model_bytes` with only the pieces `kept` (parent ids), piece i being kept[i]."""
    parent = _empty_model(MODEL_FILENAME)
    parent.ParseFromString(model_bytes)
    cut = _empty_model(MODEL_FILENAME)
    cut.pieces.extend(parent.pieces[i] for i in kept)
    cut.trainer_spec.CopyFrom(parent.trainer_spec)
    cut.normalizer_spec.CopyFrom(parent.normalizer_spec)
    if parent.HasField("denormalizer_spec"):
        cut.denormalizer_spec.CopyFrom(parent.denormalizer_spec)
    new_id = {parent_id: i for i, parent_id in enumerate(kept)}
    spec = cut.trainer_spec
    spec.vocab_size = len(kept)
    # SentencePiece finds its special pieces by type and name, but converters (transformers) read these ids;
    # -1 marks one the model does not have
    for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
        setattr(spec, field, new_id.get(getattr(spec, field), -1))
    return cut.SerializeToString()


def _check_model(model_proto, path) -> None:
    """TinyLMError unless `model_proto` is a model `tokenizer_json` can rebuild exactly."""
    model_type = model_proto.trainer_spec.model_type
    if model_type != BPE:
        name = MODEL_TYPES.get(model_type, f"type-{model_type}")
        raise TinyLMError(f"'{path}' is a SentencePiece {name} model; only {SUPPORTED} is supported")
    pieces = {p.piece: p.type for p in model_proto.pieces}
    if not model_proto.trainer_spec.byte_fallback or any(pieces.get(piece) != BYTE for piece in BYTE_PIECES):
        raise TinyLMError(f"'{path}' is a SentencePiece BPE without byte fallback, so text outside its pieces "
                          f"cannot be encoded; only {SUPPORTED} is supported")
    if sum(kind == UNKNOWN for kind in pieces.values()) != 1 or len(pieces) != len(model_proto.pieces):
        raise TinyLMError(f"'{path}' has duplicate pieces or not exactly one unknown piece; the file is damaged")
    spaced = [p.piece for p in model_proto.pieces if p.type == USER_DEFINED and SPACE in p.piece]
    if spaced:
        raise TinyLMError(f"'{path}' has user-defined pieces that hold spaces ({', '.join(spaced[:3])}), which "
                          f"SentencePiece finds in text where tokenizer.json cannot; only {SUPPORTED} is supported")
    spec = model_proto.normalizer_spec
    if (spec.precompiled_charsmap or spec.remove_extra_whitespaces or not spec.escape_whitespaces
            or model_proto.trainer_spec.treat_whitespace_as_suffix):
        raise TinyLMError(f"'{path}' normalises text ('{spec.name}' rules, extra whitespace removed or spaces "
                          f"written after words), so decode(encode(text)) is not the text; only {SUPPORTED} "
                          "and no normalisation ('identity') is supported")


def _merges(model_proto) -> list[list[str]]:
    """Every split of a normal piece into two normal pieces, highest-scoring result first. Of the splits of
    one piece, the one that encoding the piece's own text ends with comes first: it is the merge chain that
    compaction keeps whole. SentencePiece breaks ties between equal scores by position, merging the leftmost
    pair; ranking the longer left part first does the same in runs of one repeated piece, such as the spaces
    Mistral added with one shared score."""
    score = {p.piece: p.score for p in model_proto.pieces if p.type == NORMAL}
    found = []
    for piece_id, piece in enumerate(p.piece for p in model_proto.pieces):
        if piece not in score or len(piece) < 2:
            continue
        last = _last_merge(piece, score)
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in score and right in score:
                found.append(((-score[piece], (left, right) != last, -cut, piece_id), [left, right]))
    return [pair for _, pair in sorted(found)]


def _last_merge(piece: str, score: dict[str, float]) -> tuple[str, ...]:
    """The two parts SentencePiece BPE holds just before it merges them into `piece`, when it encodes the
    piece's own characters: the pieces it reaches with every merge but the one into `piece` itself."""
    symbols = list(piece)
    while True:
        best = None
        for i in range(len(symbols) - 1):
            merged = symbols[i] + symbols[i + 1]
            if merged != piece and merged in score and (best is None or score[merged] > best[1]):
                best = i, score[merged]
        if best is None:
            return tuple(symbols)
        i = best[0]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]


def _empty_model(path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise TinyLMError(f"reading '{path}' needs the sentencepiece package; install it with: "
                          "pip install sentencepiece") from None
    return sentencepiece_model_pb2.ModelProto()
