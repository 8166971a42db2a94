import importlib.util
import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.compact import compact, load_parent
from tinylm.tokenizer.sentencepiece import BYTE_PIECES, SPACE, read_model, tokenizer_json

spm = pytest.importorskip("sentencepiece")

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such like "
         "our over man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people how too little state good very make world still own see "
         "café naïve façade über straße déjà vu résumé thousand together something wilderness kingdom").split()
CODE = ["def main(argv):", "    for i in range(10):", "        total += values[i] * 2", "    return {'a': 1}",
        "\tif (x != y) { y = x; }", "#include <stdio.h>", "SELECT name FROM users WHERE id = 42;"]
# text of many kinds, most with characters the test models lack; none holds "▁", which SentencePiece writes for a
# space and so decodes as one, or a literal "<s>"/"</s>", which tokenizer.json reads as the special token
VARIED = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x  # comment\n        deeper()\n",
    "emoji 🙂👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 and flags 🇫🇷🇯🇵",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "café naïve Ærøskøbing, e\u0301 a\u0308 n\u0303, Ελληνικά, Русский, العربية",
    " leading space", "trailing space ", "  two  spaces   three    four" + " " * 40 + "forty",
    "runs of spaces" + " " * 14 + "\n" + " " * 17 + "\n" + " " * 33,
    "\n\nnew\nlines\r\n\n", "\ttabs\t\tand\t \tmixed", "", " ", "\n", "    ",
    "control \x00\x01\x07\x1b\x7f\u200b\ufeff and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
    "numbers 3.14159 2024-01-01 1,000,000 0x1F",
]


def _text(seed: int, lines: int) -> str:
    """English-like lines with some code, words drawn by Zipf's law so that rare words form a long tail."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    out = []
    for _ in range(lines):
        if rng.random() < 0.15:
            out.append(rng.choice(CODE))
        else:
            sentence = " ".join(rng.choices(WORDS, weights, k=rng.randint(4, 14)))
            out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ",", "!", "?", "  ", ""]))
    return "\n".join(out) + "\n"


def _train(directory: Path, vocab_size: int = 600, **options) -> Path:
    """A SentencePiece model trained on 70 KB in a blink: by default a BPE with byte fallback and no
    normalisation, as Llama-2's is."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text(_text(0, 1500))
    settings = dict(model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                    remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True)
    spm.SentencePieceTrainer.train(input=str(directory / "train.txt"), model_prefix=str(directory / "sp"),
                                   vocab_size=vocab_size, num_threads=1, minloglevel=2, **{**settings, **options})
    return directory / "sp.model"


def _hf(path: Path) -> HFTokenizer:
    return HFTokenizer.from_str(json.dumps(tokenizer_json(read_model(path))))


def _random_text(seed: int, length: int = 2000) -> str:
    """Random code points, spaces and newlines, "▁" left out."""
    rng = random.Random(seed)
    code_points = [rng.choice([rng.randint(0, 0x7FF), rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0x10FFFF),
                               0x20, 0x20, 0x0A]) for _ in range(length)]
    return "".join(chr(c) for c in code_points if c != 0x2581)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("parent"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(_text(1, 1500))
    return path


@pytest.fixture(scope="module")
def result(parent, corpus, tmp_path_factory) -> Path:
    """The parent compacted from 600 to 400 pieces on the corpus."""
    out = tmp_path_factory.mktemp("compact") / "out"
    compact(parent, str(corpus), 400, out, progress=False)
    return out


@pytest.mark.parametrize("text", VARIED + [_text(7, 5), _random_text(0)])
def test_the_converted_tokenizer_encodes_as_sentencepiece_does(parent, text):
    assert _hf(parent).encode(text, add_special_tokens=False).ids == spm.SentencePieceProcessor(
        model_file=str(parent)).encode(text)


def test_pieces_of_one_score_merge_leftmost_first_as_in_sentencepiece(parent, tmp_path):
    """Mistral gives every run of 1 to 16 spaces one shared score; SentencePiece then merges the leftmost pair."""
    model = read_model(parent)
    present = {p.piece for p in model.pieces}
    model.pieces.extend(type(model.pieces[0])(piece=SPACE * n, score=0, type=1)
                        for n in range(2, 17) if SPACE * n not in present)
    for piece in model.pieces:
        if set(piece.piece) == {SPACE}:
            piece.score = -1e9
    (tmp_path / "ties.model").write_bytes(model.SerializeToString())
    texts = [before + " " * n + after for n in range(1, 40) for before in ("", "x") for after in ("", "x", "\n")]
    hf, sp = _hf(tmp_path / "ties.model"), spm.SentencePieceProcessor(model_file=str(tmp_path / "ties.model"))
    assert [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)] == sp.encode(texts)


@pytest.mark.parametrize("text", VARIED + [_text(8, 5), _random_text(1)])
def test_compact_tokenizer_json_and_tokenizer_model_encode_alike(result, text):
    hf = HFTokenizer.from_file(str(result / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(result / "tokenizer.model"))
    assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text)


@pytest.mark.parametrize("text", VARIED + [_random_text(2)])
def test_decode_of_encode_is_exact_with_either_compact_file(result, text):
    tok = Tokenizer.load(result)
    sp = spm.SentencePieceProcessor(model_file=str(result / "tokenizer.model"))
    assert tok.decode(tok.encode(text)) == text
    assert sp.decode(sp.encode(text)) == text


def test_compact_model_holds_the_parents_pieces_and_scores_in_id_map_order(parent, result):
    id_map = json.loads((result / "id_map.json").read_text())
    parent_model, compact_model = read_model(parent), read_model(result / "tokenizer.model")
    assert len(id_map) == 400 and id_map == sorted(set(id_map))
    assert [(p.piece, p.score, p.type) for p in compact_model.pieces] == [
        (p.piece, p.score, p.type) for p in (parent_model.pieces[i] for i in id_map)]
    hf = HFTokenizer.from_file(str(result / "tokenizer.json"))
    assert [hf.id_to_token(i) for i in range(400)] == [p.piece for p in compact_model.pieces]


def test_every_kept_piece_is_what_its_own_text_encodes_to(result):
    """The kept set is closed under the merges SentencePiece takes: no kept piece is out of reach."""
    model = HFTokenizer.from_file(str(result / "tokenizer.json")).model
    pieces = [p.piece for p in read_model(result / "tokenizer.model").pieces if p.type == 1]
    assert [piece for piece in pieces if [t.value for t in model.tokenize(piece)] != [piece]] == []


def test_unknown_control_and_byte_pieces_are_kept_and_eos_is_found(result):
    sp = spm.SentencePieceProcessor(model_file=str(result / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id())] == ["<unk>", "<s>", "</s>"]
    assert all(sp.piece_to_id(piece) != sp.unk_id() for piece in BYTE_PIECES)
    tok = Tokenizer.load(result)
    assert tok.vocab_size == 400 and tok.eos_token == "</s>" and tok.eos_id == sp.eos_id()
    report = json.loads((result / "report.json").read_text())
    assert report["special_tokens"] == 3 and report["byte_symbols"] == 256
    assert report["heldout_round_trip_failures"] == 0


def test_compact_encodes_like_the_parent_when_it_keeps_every_piece_the_corpus_uses(parent, tmp_path):
    corpus = tmp_path / "few_words.txt"
    corpus.write_text(" ".join(WORDS[:20]) * 50)
    report = compact(parent, str(corpus), 500, tmp_path / "out", progress=False)
    assert report["coverage"] == 1.0
    id_map = json.loads((tmp_path / "out/id_map.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "out/tokenizer.model"))
    text = corpus.read_text()
    assert [id_map[i] for i in sp.encode(text)] == spm.SentencePieceProcessor(model_file=str(parent)).encode(text)


def test_a_folder_holding_only_a_tokenizer_model_is_a_parent(parent, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(parent.read_bytes())
    assert load_parent(tmp_path).sentencepiece == parent.read_bytes()
    with pytest.raises(TinyLMError, match="holds the parent tokenizer"):
        compact(tmp_path, "", 400, tmp_path, overwrite=True, progress=False)


def _corrupt(directory: Path) -> Path:
    (directory / "bad.model").write_bytes(bytes(range(256)) * 4)
    return directory / "bad.model"


@pytest.mark.parametrize("make_parent, expected", [
    (lambda d: _train(d, 400, model_type="unigram"), "is a SentencePiece Unigram model; only SentencePiece BPE"),
    (lambda d: _train(d, 400, byte_fallback=False), "BPE without byte fallback"),
    (lambda d: _train(d, 400, normalization_rule_name="nmt_nfkc"), "normalises text"),
    (lambda d: _train(d, 400, user_defined_symbols=["▁▁▁"]), "user-defined pieces that hold spaces"),
    (_corrupt, "is not a SentencePiece .model file"),
])
def test_an_unsupported_sentencepiece_model_is_a_clear_error(tmp_path, corpus, make_parent, expected):
    with pytest.raises(TinyLMError, match=expected):
        compact(make_parent(tmp_path), str(corpus), 300, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_error_for_a_unigram_model_is_one_line(capsys, tmp_path, corpus):
    unigram = _train(tmp_path, 400, model_type="unigram")
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", "compact", "--parent", str(unigram), "--corpus", str(corpus), "--vocab", "300",
              "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and "Unigram" in err[0]


def _mistral_model() -> Path | None:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


@pytest.mark.skipif(_mistral_model() is None,
                    reason="needs Mistral's tokenizer.model.v1: pip install --no-deps mistral-common==1.13.1")
def test_mistral_tokenizer_converts_exactly_and_compacts_to_1024_pieces(tmp_path, corpus):
    parent = _mistral_model()
    sp = spm.SentencePieceProcessor(model_file=str(parent))
    hf = _hf(parent)
    for text in VARIED + [_random_text(3)]:
        assert hf.encode(text, add_special_tokens=False).ids == sp.encode(text), text
    report = compact(parent, str(corpus), 1024, tmp_path / "out", progress=False)
    assert report["parent_vocab_size"] == 32000 and report["special_tokens"] == 3
    assert report["heldout_round_trip_failures"] == 0
    compact_hf = HFTokenizer.from_file(str(tmp_path / "out/tokenizer.json"))
    compact_sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "out/tokenizer.model"))
    for text in VARIED + [corpus.read_text()[:5000]]:
        ids = compact_sp.encode(text)
        assert compact_hf.encode(text, add_special_tokens=False).ids == ids and compact_sp.decode(ids) == text


def _write_gguf(path: Path, model_file: Path) -> Path:
    """A GGUF holding `model_file` as llama.cpp's "llama" tokenizer: pieces, scores and types."""
    gguf = pytest.importorskip("gguf")
    pieces = read_model(model_file).pieces
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_embedding_length(64)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([p.piece for p in pieces])
    writer.add_token_scores([p.score for p in pieces])
    writer.add_token_types([p.type for p in pieces])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_with_a_llama_tokenizer_is_the_same_parent_as_its_model_file(parent, corpus, tmp_path):
    gguf_file = _write_gguf(tmp_path / "model.gguf", parent)
    from_gguf, from_model = load_parent(gguf_file), load_parent(parent)
    assert from_gguf.width == 64 and from_gguf.json["model"] == from_model.json["model"]
    assert from_gguf.hf.encode("hi").ids == [1] + from_model.hf.encode("hi").ids  # the GGUF asks for a BOS
    compact(gguf_file, str(corpus), 400, tmp_path / "from_gguf", progress=False)
    compact(parent, str(corpus), 400, tmp_path / "from_model", progress=False)
    assert (tmp_path / "from_gguf/id_map.json").read_text() == (tmp_path / "from_model/id_map.json").read_text()
    sp_gguf = spm.SentencePieceProcessor(model_file=str(tmp_path / "from_gguf/tokenizer.model"))
    sp_model = spm.SentencePieceProcessor(model_file=str(tmp_path / "from_model/tokenizer.model"))
    assert sp_gguf.encode(VARIED) == sp_model.encode(VARIED)
