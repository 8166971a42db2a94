"""Tokenizers: byte-level, BPE trained on the user's corpus, or any `tokenizer.json`.

All three are Hugging Face `tokenizers` objects saved as a standard
`tokenizer.json`, so any runtime that reads that format can use them. The
byte-level one is a BPE with the 256 byte symbols and no merges, so id == byte
value. Every tokenizer has an end-of-sequence token that separates documents.
Knows nothing of models or training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tinylm.errors import TinyLMError

EOS = "<|endoftext|>"
# end-of-sequence names used by common tokenizers, tried in order when loading an existing one
KNOWN_EOS = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>")
FILENAME = "tokenizer.json"


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
        (directory / "tokenizer_meta.json").write_text(json.dumps({"kind": self.kind, "eos_token": self.eos_token}))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load a `tokenizer.json`, or the one inside a folder (a run, a checkpoint, prepared data)."""
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise TinyLMError(f"no tokenizer at '{path}'; give a tokenizer.json or a folder that holds one")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TinyLMError(f"'{file}' is not a valid tokenizer.json ({str(e).splitlines()[0][:120]})")
        meta = file.parent / "tokenizer_meta.json"
        kind = json.loads(meta.read_text()).get("kind", "file") if meta.is_file() else "file"
        return cls(hf, kind)


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
