"""Hugging Face datasets as training data: hf:NAME, save_to_disk folders and folders of parquet shards.

Every dataset is built here with datasets.Dataset.from_dict; the Hub is never reached (offline mode is
forced, and the one Hub success case replaces datasets.load_dataset)."""

import numpy as np
import pytest

from tinylm.data import hf
from tinylm.data.corpus import describe_source, iter_documents
from tinylm.data.prepare import prepare, prepared_dir
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer

datasets = pytest.importorskip("datasets", reason="builds Hugging Face datasets: pip install datasets")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # datasets reads these variables once, at import, so its config flag is set as well
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def stories(count: int, start: int = 0) -> list[str]:
    return [f"Story {i}: a fox met a dog by the river.\nThey talked about the weather, number {i % 5}.\n"
            for i in range(start, start + count)]


ROWS = stories(300)


def table(texts: list[str]):
    return datasets.Dataset.from_dict({"id": list(range(len(texts))), "text": texts})


def text_folder(folder, texts: list[str]):
    """The same documents as plain text files, one per row, in row order."""
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:05d}.txt").write_text(text)
    return folder


def prepared_tokens(source, out) -> dict[str, bytes]:
    out = prepare(str(source), out, byte_tokenizer(), workers=1, progress=False)
    return {split: (out / f"{split}.bin").read_bytes() for split in ("train", "val")}


def test_a_save_to_disk_folder_prepares_the_tokens_its_text_does(tmp_path):
    table(ROWS).save_to_disk(str(tmp_path / "saved"))
    from_text = prepared_tokens(text_folder(tmp_path / "text", ROWS), tmp_path / "from_text")
    assert prepared_tokens(tmp_path / "saved", tmp_path / "from_saved") == from_text
    assert len(from_text["val"]) > 0


def parquet_shards(root, splits: dict[str, list[str]], shards: int = 2):
    """A folder laid out as a Hub dataset: README.md and data/SPLIT-0000i-of-0000n.parquet."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: cc0-1.0\n---\n# Stories\nA dataset card, not training text.\n")
    for split, texts in splits.items():
        for shard in range(shards):
            rows = table(texts).shard(shards, shard, contiguous=True)
            rows.to_parquet(str(root / "data" / f"{split}-{shard:05d}-of-{shards:05d}.parquet"))
    return root


def test_parquet_shards_prepare_the_train_split_and_skip_the_card(tmp_path):
    shards = parquet_shards(tmp_path / "shards", {"train": ROWS, "test": stories(20, start=1000)})
    from_text = prepared_tokens(text_folder(tmp_path / "text", ROWS), tmp_path / "from_text")
    assert prepared_tokens(shards, tmp_path / "from_shards") == from_text


def test_hf_prefix_picks_a_split_of_a_local_folder(tmp_path):
    shards = parquet_shards(tmp_path / "shards", {"train": ROWS[:5], "test": ROWS[5:8]})
    assert list(iter_documents(f"hf:{shards}::test")) == ROWS[5:8]
    datasets.DatasetDict({"train": table(ROWS[:5]), "validation": table(ROWS[5:7])}).save_to_disk(str(tmp_path / "dd"))
    assert list(iter_documents(str(tmp_path / "dd"))) == ROWS[:5]
    assert list(iter_documents(f"hf:{tmp_path / 'dd'}::validation")) == ROWS[5:7]
    with pytest.raises(TinyLMError, match=r"has no split 'test' \(it has: train, validation\)"):
        list(iter_documents(f"hf:{tmp_path / 'dd'}::test"))


@pytest.mark.parametrize("split_file, split", [
    ("data/train-00000-of-00003.parquet", "train"), ("test-00001-of-00002.parquet", "test"),
    ("validation/part_0.parquet", "validation"), ("valid.parquet", "validation"), ("dev-0.parquet", "validation"),
    ("shards/part-0.parquet", "train"), ("contest.parquet", "train")])
def test_shards_are_split_by_the_hubs_file_naming(split_file, split):
    assert hf.split_of(split_file) == split


def test_a_folder_with_text_files_is_still_read_as_text(tmp_path):
    folder = text_folder(tmp_path / "mixed", ROWS[:2])
    table(ROWS[2:4]).to_parquet(str(folder / "extra.parquet"))
    assert not hf.is_hf_source(str(folder))
    assert list(iter_documents(str(folder))) == ROWS[:4]


def test_a_missing_text_column_names_the_columns(tmp_path):
    datasets.Dataset.from_dict({"story": ROWS[:3], "id": [1, 2, 3]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(TinyLMError, match=r"has no column 'text' \(it has: story, id\); set data.text_field"):
        list(iter_documents(str(tmp_path / "saved")))
    assert list(iter_documents(str(tmp_path / "saved"), text_field="story")) == ROWS[:3]
    with pytest.raises(TinyLMError, match="column 'id' .* holds .*int64.*, not text"):
        list(iter_documents(str(tmp_path / "saved"), text_field="id"))


def test_the_hub_offline_is_a_one_line_error(cli, tmp_path):
    code, out, err = cli("data", "prepare", "hf:nobody/no-such-stories", "--out", tmp_path / "out",
                         "--tokenizer", "byte")
    assert code != 0
    assert err.strip() == ("tinylm: error: cannot reach the Hugging Face Hub for 'nobody/no-such-stories'; "
                           "download it where there is a network and pass the folder (save_to_disk) instead")
    assert not (tmp_path / "out").exists()


def test_a_dataset_without_text_is_an_error(tmp_path):
    table(["", ""]).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(TinyLMError, match="has no text in column 'text'"):
        list(iter_documents(str(tmp_path / "empty")))


def test_a_malformed_hf_path_says_the_form(tmp_path):
    with pytest.raises(TinyLMError, match=r"not of the form hf:NAME\[:CONFIG\]\[:SPLIT\]"):
        list(iter_documents("hf:a:b:c:d"))


def test_a_hub_dataset_is_loaded_by_name_config_and_split_and_described_by_its_files(tmp_path, monkeypatch):
    table(ROWS[:4]).save_to_disk(str(tmp_path / "cached"))
    calls = []

    def load_dataset(name, config, split):  # what datasets would read from its cache after a download
        calls.append((name, config, split))
        return datasets.load_from_disk(str(tmp_path / "cached"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert list(iter_documents("hf:someone/stories:tiny:validation")) == ROWS[:4]
    list(iter_documents("hf:someone/stories"))
    assert calls[0] == ("someone/stories", "tiny", "validation") and calls[-1] == ("someone/stories", None, "train")
    keys = {path: prepared_dir(tmp_path / "cache", path, "byte", 0, 0.05, "text")
            for path in ("hf:someone/stories", "hf:someone/stories:tiny", "hf:someone/stories::test")}
    assert len(set(keys.values())) == 3
    files = describe_source("hf:someone/stories")["files"]
    (tmp_path / "cached" / "data-00000-of-00001.arrow").touch()  # the cached download changed
    assert describe_source("hf:someone/stories")["files"] != files  # so prepare_cached prepares it again


def test_the_source_description_changes_when_a_saved_dataset_is_saved_again(tmp_path):
    saved = tmp_path / "saved"
    table(ROWS[:10]).save_to_disk(str(saved))
    before = describe_source(str(saved))["files"]
    table(ROWS[:11]).save_to_disk(str(saved))
    assert describe_source(str(saved))["files"] != before  # so prepare_cached prepares it again


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet shards"])
def test_a_dataset_trains_end_to_end(cli, tmp_path, layout):
    if layout == "save_to_disk":
        source = tmp_path / "saved"
        table(ROWS).save_to_disk(str(source))
    else:
        source = parquet_shards(tmp_path / "shards", {"train": ROWS})
    code, out, err = cli("train", f"data.path={source}", "data.tokenizer=byte", f"data.cache_dir={tmp_path / 'cache'}",
                         "data.workers=1", "model.n_layer=1", "model.d_model=32", "model.n_heads=2",
                         "model.n_kv_heads=1", "model.max_seq_len=32", "train.batch_size=4", "train.max_steps=3",
                         "train.eval_every=0", "train.device=cpu", "eval.max_tokens=512", "--out", tmp_path / "run")
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoint").is_dir()
    (prepared,) = (tmp_path / "cache").iterdir()
    train_tokens = np.fromfile(prepared / "train.bin", dtype=np.uint16)
    assert bytes(train_tokens[train_tokens < 256].astype(np.uint8)).decode().startswith(ROWS[0])
