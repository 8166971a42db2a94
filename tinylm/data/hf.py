"""Hugging Face datasets as corpora: a Hub dataset, a `save_to_disk` folder or a folder of parquet shards.

A source is one of
  hf:NAME[:CONFIG][:SPLIT]  a dataset on the Hub (split "train" unless given; hf:NAME::SPLIT skips the
                            config), downloaded once by `datasets` into its cache and read from there, so
                            it works offline afterwards; NAME may also be one of the folders below, to pick
                            a split other than "train"
  a save_to_disk folder     one split (state.json) or several (dataset_dict.json: "train" is read)
  a folder of parquet shards  only .parquet files (and README.md dataset cards), split by the Hub's file
                            naming (train-00000-of-00004.parquet, data/test-*.parquet, validation/...):
                            the "train" files are read; files that name no split are "train"

Each row is one document, the text in column `text_field`. Rows are read in Arrow batches from the
memory-mapped files, so memory stays bounded whatever the dataset's size. A source is identified, for
cache keys, by its files' paths, sizes and modification times, as other sources are in corpus.py.
`datasets` is imported only for Hub and save_to_disk sources; parquet shards need only pyarrow.
Knows nothing of tokenizers or models.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tinylm.data.corpus import file_stamp, parquet_texts
from tinylm.errors import TinyLMError

PREFIX = "hf:"
DEFAULT_SPLIT = "train"
DATASETS_INSTALL = "pip install datasets"
ROWS_PER_BATCH = 512
# the Hub's split keywords in file and folder names (huggingface.co/docs/hub/datasets-file-names-and-splits)
SPLIT_KEYWORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                  "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
                  "evaluation": "test"}
DATASET_CARD = "readme.md"
OTHER_TEXT_SUFFIXES = (".txt", ".md", ".text", ".jsonl")  # any of these (but a dataset card) makes a plain folder


@dataclass(frozen=True)
class HFSource:
    """A parsed source: `kind` is hub, saved (a save_to_disk folder) or parquet (a folder of shards)."""
    kind: str
    name: str  # the Hub id or the folder
    config: str | None
    split: str
    split_given: bool  # whether the source named its split, rather than taking the default


def is_hf_source(path: str) -> bool:
    """Whether `path` is read here rather than as plain text files by corpus.py."""
    return path.startswith(PREFIX) or (os.path.isdir(path) and _folder_kind(Path(path)) is not None)


def hf_parts(path: str, text_field: str) -> Iterator[tuple[str, bool]]:
    """(row text, True) for every non-empty row: each row is a whole document."""
    source = parse(path)
    texts = _parquet_rows(source, text_field) if source.kind == "parquet" else _dataset_rows(source, text_field)
    empty = True
    for text in texts:
        empty = False
        yield text, True
    if empty:
        raise TinyLMError(f"'{path}' has no text in column '{text_field}'; give a dataset with text")


def describe_hf(path: str) -> dict:
    """What identifies the source's current content (see corpus.describe_source)."""
    source = parse(path)
    if source.kind == "parquet":
        files = _parquet_files(source)
    else:
        files = [Path(cache["filename"]) for cache in _load(source).cache_files]
    return {"kind": f"hf-{source.kind}", "path": path if source.kind == "hub" else str(Path(source.name).resolve()),
            "config": source.config, "split": source.split, "files": [file_stamp(file) for file in files]}


def parse(path: str) -> HFSource:
    if not path.startswith(PREFIX):
        return HFSource(_folder_kind(Path(path)), path, None, DEFAULT_SPLIT, False)
    fields = path[len(PREFIX):].split(":")
    if len(fields) > 3 or not fields[0]:
        raise TinyLMError(f"data.path='{path}' is not of the form hf:NAME[:CONFIG][:SPLIT], e.g. "
                          "hf:roneneldan/TinyStories or hf:wikitext:wikitext-2-raw-v1:train")
    name, config, split = (fields + ["", ""])[:3]
    kind = "hub"
    if os.path.isdir(name):
        kind = _folder_kind(Path(name))
        if kind is None:
            raise TinyLMError(f"folder '{name}' is neither a save_to_disk folder nor a folder of parquet shards; "
                              f"give data.path={name} to read its text files")
        if config:
            raise TinyLMError(f"'{path}' names config '{config}', but a local folder has none; "
                              f"write hf:{name}::{split or DEFAULT_SPLIT}")
    return HFSource(kind, name, config or None, split or DEFAULT_SPLIT, bool(split))


def _folder_kind(root: Path) -> str | None:
    """saved, parquet or None (a folder of text files, or not a dataset at all)."""
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "saved"
    has_parquet = False
    for name in _visible_files(root):  # stops at the first text file: a folder of text may be huge
        suffix = Path(name).suffix.lower()
        if suffix in OTHER_TEXT_SUFFIXES and Path(name).name.lower() != DATASET_CARD:
            return None
        has_parquet = has_parquet or suffix == ".parquet"
    return "parquet" if has_parquet else None


def _visible_files(root: Path) -> Iterator[str]:
    """Relative paths of the files under `root`, hidden files and folders skipped, as the walk finds them."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                yield os.path.relpath(os.path.join(folder, name), root)


def split_of(relative_path: str) -> str:
    """The split a shard belongs to by the Hub's naming: the first folder or file-name word that is a split
    keyword ("data/train-00000-of-00002.parquet" -> train, "valid/part0.parquet" -> validation), else train."""
    words = re.split(r"[-._ /\\0-9]+", str(Path(relative_path).with_suffix("")).lower())
    return next((SPLIT_KEYWORDS[word] for word in words if word in SPLIT_KEYWORDS), DEFAULT_SPLIT)


def _parquet_files(source: HFSource) -> list[Path]:
    root = Path(source.name)
    # the order corpus.py reads a folder in, so a folder of parquet files reads as it did before shards were split
    shards = sorted((name for name in _visible_files(root) if name.lower().endswith(".parquet")),
                    key=lambda name: Path(name).parts)
    chosen = [root / name for name in shards if split_of(name) == source.split]
    if not chosen:
        splits = sorted({split_of(name) for name in shards})
        raise TinyLMError(f"folder '{root}' has no parquet shards of split '{source.split}' (it has: "
                          f"{', '.join(splits)}); pick one with data.path=hf:{root}::SPLIT")
    return chosen


def _parquet_rows(source: HFSource, text_field: str) -> Iterator[str]:
    for file in _parquet_files(source):
        yield from parquet_texts(file, text_field)


def _dataset_rows(source: HFSource, text_field: str) -> Iterator[str]:
    dataset = _load(source)
    where = f"{PREFIX}{source.name}" if source.kind == "hub" else f"'{source.name}'"
    if text_field not in dataset.column_names:
        raise TinyLMError(f"{where} has no column '{text_field}' (it has: {', '.join(dataset.column_names[:10])}); "
                          "set data.text_field (--text-field) to the column that holds the text")
    feature = dataset.features[text_field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise TinyLMError(f"column '{text_field}' of {where} holds {feature}, not text; "
                          "set data.text_field (--text-field) to the column that holds the text")
    for batch in dataset.select_columns([text_field]).iter(batch_size=ROWS_PER_BATCH):
        for text in batch[text_field]:
            if text:
                yield text


def _load(source: HFSource):
    """The split as a `datasets.Dataset`, memory-mapped from its Arrow files."""
    datasets = _import_datasets()
    if source.kind == "saved":
        return _load_saved(datasets, source)
    try:
        return datasets.load_dataset(source.name, source.config, split=source.split)
    except datasets.exceptions.DatasetNotFoundError:
        raise TinyLMError(f"no dataset '{source.name}' on the Hugging Face Hub (or it is gated: log in with "
                          "`hf auth login`); check the name") from None
    except ConnectionError:  # datasets raises it offline (HF_HUB_OFFLINE) and when the Hub is unreachable
        raise TinyLMError(f"cannot reach the Hugging Face Hub for '{source.name}'; download it where there is a "
                          "network and pass the folder (save_to_disk) instead") from None
    except ValueError as e:  # an unknown config or split: the message lists the valid ones
        raise TinyLMError(f"cannot read {PREFIX}{source.name}: {_first_line(e)}") from None


def _load_saved(datasets, source: HFSource):
    root = Path(source.name)
    try:
        dataset = datasets.load_from_disk(str(root))
    except (OSError, ValueError) as e:
        raise TinyLMError(f"'{root}' is not a readable save_to_disk folder ({_first_line(e)}); save it again") from None
    if isinstance(dataset, datasets.DatasetDict):
        if source.split not in dataset:
            raise TinyLMError(f"'{root}' has no split '{source.split}' (it has: {', '.join(dataset)}); "
                              f"pick one with data.path=hf:{root}::SPLIT")
        return dataset[source.split]
    if source.split_given:
        raise TinyLMError(f"'{root}' holds a single split, so it takes no :SPLIT; give data.path={root}")
    return dataset


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise TinyLMError(f"reading Hugging Face datasets needs the datasets package; install it with: "
                          f"{DATASETS_INSTALL}") from None
    return datasets


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
