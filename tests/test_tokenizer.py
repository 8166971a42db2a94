import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from tinylm.errors import TinyLMError
from tinylm.tokenizer import EOS, Tokenizer, byte_tokenizer, train_bpe

UNICODE = "Ünïcödé, 日本語のテキスト, emoji 🙂👍🏽, tabs\tand\r\nnewlines, Ελληνικά, العربية, \x00 null"
CORPUS = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
          "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"] * 20


def test_byte_ids_are_the_utf8_bytes_and_eos_is_256():
    tok = byte_tokenizer()
    assert tok.encode(UNICODE) == list(UNICODE.encode("utf-8"))
    assert tok.eos_id == 256 and tok.vocab_size == 257


@pytest.mark.parametrize("make", [byte_tokenizer, lambda: train_bpe(iter(CORPUS), 320)])
def test_decode_of_encode_is_exact_on_arbitrary_unicode(make):
    tok = make()
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert tok.decode(tok.encode(" leading  and trailing spaces ")) == " leading  and trailing spaces "


def test_trained_bpe_has_the_requested_size_and_compresses_its_corpus():
    tok = train_bpe(iter(CORPUS), 320)
    assert tok.vocab_size == 320
    text = CORPUS[0]
    assert len(tok.encode(text)) < len(text.encode()) / 2


def test_bpe_vocab_smaller_than_the_byte_alphabet_is_rejected():
    with pytest.raises(TinyLMError, match="at least 257"):
        train_bpe(iter(CORPUS), 100)


def test_save_and_load_give_the_same_tokenizer(tmp_path):
    tok = train_bpe(iter(CORPUS), 300)
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.kind == "bpe" and loaded.eos_id == tok.eos_id
    assert loaded.encode(UNICODE) == tok.encode(UNICODE)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"


def test_an_existing_tokenizer_json_without_eos_gets_one(tmp_path):
    hf = HFTokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.kind == "file" and tok.eos_token == EOS and tok.eos_id == 3 and tok.vocab_size == 4
    assert tok.encode("hello world") == [0, 1]


def test_an_existing_eos_token_is_reused(tmp_path):
    hf = HFTokenizer(models.WordLevel({"a": 0, "</s>": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    assert tok.eos_token == "</s>" and tok.eos_id == 1 and tok.vocab_size == 3


def test_missing_or_corrupt_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(TinyLMError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "absent.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TinyLMError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)
