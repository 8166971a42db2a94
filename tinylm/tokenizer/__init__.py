"""Tokenizers: byte-level, BPE trained on the user's corpus, any `tokenizer.json`, or byte patches.

The first three are Hugging Face `tokenizers` objects saved as a standard
`tokenizer.json`, so any runtime that reads that format can use them. The
byte-level one is a BPE with the 256 byte symbols and no merges, so id == byte
value. Every tokenizer has an end-of-sequence token that separates documents.

Byte patches (kind "patches", PatchTokenizer) are bytes that also say where a
BPE tokenizer's tokens end, for a byte model that predicts its own patch
boundaries (model.patching=predicted): id = symbol + 257 * flag, symbol a byte
or EOS (256), flag 1 on the last byte of each BPE token and on EOS. A run saves
the BPE's tokenizer.json with kind "patches" in tokenizer_meta.json, which
Tokenizer.load reads back as a PatchTokenizer.
Saving records the files in the folder's manifest (tinylm.manifest); loading
checks them against it, when there is one.
Knows nothing of models or training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinylm.errors import TinyLMError
from tinylm.manifest import seal, verify

EOS = "<|endoftext|>"
# end-of-sequence names used by common tokenizers, tried in order when loading an existing one
KNOWN_EOS = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>")
FILENAME = "tokenizer.json"
META_FILENAME = "tokenizer_meta.json"
PATCHES = "patches"  # the kind of PatchTokenizer; data.tokenizer=patches:SPEC selects it
N_SYMBOLS = 257  # a patch tokenizer's symbols: 256 bytes and EOS
PATCH_VOCAB = 2 * N_SYMBOLS


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2's printable stand-ins for the 256 byte values (what ByteLevel pre-tokenization emits)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


class Tokenizer:
    """A `tokenizers.Tokenizer` with a known EOS id, plus save/load of a run's tokenizer."""

    def __init__(self, hf: HFTokenizer, kind: str):
        self.hf, self.kind = hf, kind
        eos = next((t for t in KNOWN_EOS if hf.token_to_id(t) is not None), None)
        if eos is None:
            hf.add_special_tokens([EOS])
            eos = EOS
        self.eos_token, self.eos_id = eos, hf.token_to_id(eos)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / FILENAME))
        (directory / META_FILENAME).write_text(json.dumps({"kind": self.kind, "eos_token": self.eos_token}))
        seal(directory, [FILENAME, META_FILENAME])

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a `tokenizer.json`, or the one inside a folder (a run, a checkpoint, prepared data)."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise TinyLMError(f"no tokenizer at '{path}'; give a tokenizer.json or a folder that holds one")
        verify(file.parent, "tokenizer file", "restore it or make the tokenizer again",
               names=[file.name, META_FILENAME])
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TinyLMError(f"'{file}' is not a valid tokenizer.json ({str(e).splitlines()[0][:120]})")
        meta = file.parent / META_FILENAME
        kind = json.loads(meta.read_text()).get("kind", "file") if meta.is_file() else "file"
        return tokenizer_of(hf, kind)

    def split_pair(self, context: list[int], whole: list[int]) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of a text pair from encode(context) and encode(context + continuation),
        as lm-evaluation-harness splits them."""
        return context, whole[len(context):]


class PatchTokenizer(Tokenizer):
    """Bytes with patch ends: id = symbol + 257 * flag (vocabulary 514). The symbol is a UTF-8 byte of the text or
    EOS (256); the flag is 1 on the last byte of each token the BPE tokenizer `hf` cuts the text into, and on EOS.

    BPE boundaries depend on later bytes, so a model must not compute them from its input: it reads the flags
    of earlier bytes and predicts the next byte jointly with its flag (tinylm.model.bytes, patching=predicted).
    Every id is one byte, so meta.json's byte counts and bits per byte are unchanged. Token ends are the
    tokenizer's character offsets turned into UTF-8 byte offsets; a BPE token that ends inside a character (byte
    fallback, byte-level merges) has the offset of that whole character, so such a boundary moves to the
    character's end. The text's last byte always ends a token."""

    def __init__(self, hf: HFTokenizer):
        self.hf, self.kind = hf, PATCHES
        self.eos_token, self.eos_id = EOS, N_SYMBOLS + 256  # an EOS always ends a patch
        # a copy without post-processing, whose offsets are the model's cut (ByteLevel's trim_offsets moves them)
        self._cutter = HFTokenizer.from_str(hf.to_str())
        self._cutter.post_processor = None

    @property
    def vocab_size(self) -> int:
        return PATCH_VOCAB

    def encode(self, text: str) -> list[int]:
        return self._ids(text, self._cutter.encode(text, add_special_tokens=False).offsets)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encodings = self._cutter.encode_batch(texts, add_special_tokens=False)
        return [self._ids(text, e.offsets) for text, e in zip(texts, encodings)]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(s for s in (i % N_SYMBOLS for i in ids) if s < 256)
        return data.decode("utf-8", errors="replace")

    def split_pair(self, context: list[int], whole: list[int]) -> tuple[list[int], list[int]]:
        """The flags of both parts come from the encoding of context + continuation: the context's last byte
        ends a token there only if the BPE cuts context + continuation there."""
        return whole[:len(context)], whole[len(context):]

    @staticmethod
    def _ids(text: str, offsets: list[tuple[int, int]]) -> list[int]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        if not len(data):
            return []
        ends = np.array([end for _, end in offsets if end > 0], dtype=np.int64)
        if not text.isascii():  # character offsets -> UTF-8 byte offsets
            codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            widths = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
            ends = np.concatenate([[0], np.cumsum(widths)])[ends]
        flags = np.zeros(len(data), dtype=np.int64)
        flags[ends - 1] = 1
        flags[-1] = 1
        return (data + N_SYMBOLS * flags).tolist()


def tokenizer_of(hf: HFTokenizer, kind: str) -> Tokenizer:
    """The tokenizer of a `kind` (as tokenizer_meta.json records it) around a loaded tokenizer.json."""
    return PatchTokenizer(hf) if kind == PATCHES else Tokenizer(hf, kind)


def patch_tokenizer(bpe: Tokenizer) -> PatchTokenizer:
    """Byte patches cut where `bpe` cuts tokens (a patch tokenizer gives its own BPE)."""
    return PatchTokenizer(bpe.hf)


def byte_tokenizer() -> Tokenizer:
    """256 byte ids (id == byte value) then EOS at 256."""
    symbols = bytes_to_unicode()
    vocab = {symbols[b]: b for b in range(256)}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOS])
    return Tokenizer(hf, "byte")


def train_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE trained on `texts`; every byte stays encodable."""
    if vocab_size < 257:
        raise TinyLMError(f"data.vocab_size={vocab_size} is too small for BPE: it needs at least 257 (256 bytes + EOS)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, "bpe")
