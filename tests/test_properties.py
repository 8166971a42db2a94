"""Properties over arbitrary input (hypothesis): tokenizers give back any Unicode text they are given, data
preparation keeps every document, and config overrides either make a valid config or a TinyLMError.

The rules where text does not come back unchanged are exact and few:
  - the end-of-sequence token's spelling ("<|endoftext|>") inside a text is read as that token, which
    decoding leaves out, so it disappears from the text;
  - a tokenizer.json with a normalizer gives back the normalized text (here NFC).
"""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from tinylm.config import Config, _all_keys, load_config  # noqa: E402
from tinylm.data.prepare import in_val, prepare  # noqa: E402
from tinylm.errors import TinyLMError  # noqa: E402
from tinylm.tokenizer import EOS, Tokenizer, byte_tokenizer, train_bpe  # noqa: E402
from tinylm.tokenizer.compact import compact  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# any Unicode but lone surrogates (which no UTF-8 text holds), with the characters that break tokenizers
# more often than chance would pick them: NUL, CR LF, combining marks, a ZWJ emoji sequence, BOM, U+2028
AWKWARD = ["\x00", "\r\n", "\r", "e\u0301", "\u0301\u0301", "\U0001F469\u200d\U0001F469\u200d\U0001F467",
           "\ufeff", "\u2028", "\t", "  ", "\U0010FFFF", "\u00e9", "\u4e2d\u6587"]
TEXT = st.lists(st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(AWKWARD)),
                max_size=60).map("".join)
CORPUS = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog; caf\u00e9 \u4e2d\u6587 {i % 9}"
                   for i in range(300)) + "\n"


def round_trip(tokenizer: Tokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer.encode(text))


def without_eos(text: str) -> str:
    return text.replace(EOS, "")


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory):
    """A folder holding the corpus, a trained BPE, its compact cut, and a tokenizer.json with NFC made by the
    `tokenizers` package itself."""
    root = tmp_path_factory.mktemp("tokenizers")
    (root / "corpus.txt").write_text(CORPUS)
    train_bpe(iter([CORPUS]), 420).save(root / "bpe")
    compact(root / "bpe", str(root / "corpus.txt"), 300, root / "compact", progress=False)
    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS], show_progress=False,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.save(str(root / "nfc.json"))
    return root


@pytest.fixture(scope="module")
def loaded(tokenizers_dir):
    return {"byte": byte_tokenizer(), "bpe": Tokenizer.load(tokenizers_dir / "bpe"),
            "compact": Tokenizer.load(tokenizers_dir / "compact"),
            "tokenizer.json (NFC)": Tokenizer.load(tokenizers_dir / "nfc.json")}


@pytest.mark.parametrize("kind", ["byte", "bpe", "compact"])
def test_byte_level_tokenizers_give_back_any_text(kind, loaded):
    tokenizer = loaded[kind]
    assert tokenizer.vocab_size <= 420

    @SETTINGS
    @given(TEXT)
    @example("")
    @example("\x00\r\n\u0301\U0001F469\u200d\U0001F467\ufeff")
    @example(f"before{EOS}after")
    def check(text):
        assert round_trip(tokenizer, text) == without_eos(text)

    check()


def test_a_tokenizer_json_with_a_normalizer_gives_back_the_normalized_text(loaded):
    tokenizer = loaded["tokenizer.json (NFC)"]
    assert round_trip(tokenizer, "e\u0301") == "\u00e9"  # the rule is not vacuous: NFC composes

    @SETTINGS
    @given(TEXT)
    @example("A\u030a\u0301 \uFB01")  # combining marks to compose; a ligature NFC keeps (NFKC would not)
    def check(text):
        assert round_trip(tokenizer, text) == unicodedata.normalize("NFC", without_eos(text))

    check()


def split_at(ids: np.ndarray, eos_id: int) -> list[np.ndarray]:
    ends = np.flatnonzero(ids == eos_id)
    return [part for part in np.split(ids, ends + 1) if len(part)]


DOCUMENTS = st.lists(TEXT.filter(lambda text: len(text) < 250), min_size=1, max_size=8)


@SETTINGS
@given(documents=DOCUMENTS)
@example(documents=["one", "two"])
@example(documents=["   ", "\n"])
def test_data_preparation_keeps_every_document(documents, tmp_path_factory):
    """Each document of a .jsonl (short ones are one piece each) lands whole in its split, in order, each
    followed by EOS; a corpus with no text, or too little for both splits, is a TinyLMError."""
    root = tmp_path_factory.mktemp("prepare")
    source = root / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in documents),
                      encoding="utf-8")
    tokenizer = byte_tokenizer()
    try:
        out = prepare(str(source), root / "prepared", tokenizer, val_fraction=0.5, workers=1, progress=False)
    except TinyLMError as e:
        kept = [doc for doc in documents if doc]  # empty documents are skipped
        no_text = all(doc.isspace() for doc in kept)
        one_split = len(kept) < 2 or all(in_val(i, 0.5) for i in range(len(kept))) or \
            not any(in_val(i, 0.5) for i in range(len(kept)))
        assert no_text or one_split, e
        return
    meta = json.loads((out / "meta.json").read_text())
    kept = [doc for doc in documents if doc]
    for split, held_out in (("train", False), ("val", True)):
        ids = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])
        assert ids[-1] == tokenizer.eos_id
        pieces = [tokenizer.decode(part.tolist()) for part in split_at(ids, tokenizer.eos_id)]
        assert pieces == [without_eos(doc) for i, doc in enumerate(kept) if in_val(i, 0.5) == held_out]


KEYS = st.one_of(st.sampled_from(_all_keys(Config)), st.text(max_size=20),
                 st.sampled_from(["model", "", ".", "model.", "model.n_layer.x", "a..b", "train.lr.", " model.n_layer"]))
VALUES = st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(repr),
                   st.sampled_from(["true", "[1,", "{a: 1}", "!!binary x", "*alias", "~", "1e999", "-0", "0x10",
                                    "2020-01-01", "\t1", "...", "---", "\x00", "9" * 400, "nan", ".inf", "1_000"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
@example([("model.n_layer", "9" * 400)])
@example([("model.rope_theta", "9" * 400)])
@example([("model", "3"), ("model.n_layer", "2")])
def test_config_overrides_make_a_valid_config_or_a_user_error(pairs):
    overrides = [f"{key}={value}" for key, value in pairs]
    try:
        cfg = load_config(None, overrides)
    except TinyLMError as e:
        assert "\n" not in str(e).strip() or "\n" in "".join(overrides)  # one line, unless it quotes one
        return
    for (key, _), override in zip(pairs, overrides):
        section, _, name = key.strip().partition(".")
        value = getattr(getattr(cfg, section), name)
        assert not isinstance(value, float) or not math.isnan(value), override
