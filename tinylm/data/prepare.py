"""Tokenizing a corpus into the train/val splits on disk described in tinylm.data.tokens.

Pieces. Documents are cut, at line ends, into pieces of at most `piece_chars`
characters: 64 K, or the corpus size in bytes / 256 when that is smaller (but at
least 256), so that even a small single file makes enough pieces to hold some out.
A short document is one piece.

The split. Pieces are numbered i = 0, 1, 2, ... in corpus order, and piece i goes
to validation when floor((i + 1)·f + ½) > floor(i·f + ½), f = val_fraction: of the
first n pieces round(n·f) are validation pieces, evenly spread. The rule depends
on nothing but the text's order, so it is deterministic, and the val share of the
bytes is close to f even for a corpus that is one file. Each split keeps its
pieces in corpus order.

EOS. An EOS id follows every piece that ends a document and every piece whose
successor goes to the other split: text that was not contiguous in the corpus is
never glued together, while adjacent pieces of one document run on.

Memory and order. Text is read in parts and tokenized by a pool of processes
in batches of about BATCH_CHARS characters; the tokens are appended in corpus
order as they come, so memory does not grow with the corpus (about 20 MB above
the interpreter's with one worker, for any size) and the number of workers does
not change a byte of the output.

Verification. The tokens go into a staging folder beside the output; its
manifest (tinylm.manifest) is written last and the folder is renamed into place
only then, so a killed run leaves nothing that looks prepared, and a later
truncated or corrupted file is caught on load. The staging folder's name holds
the writer's process id, so the next run deletes those of dead writers.

The cache. `prepare_cached` keeps one folder per source and settings, so
training re-uses it. It records the size and modification time of every source
file and a SHA-256 of the text; an entry whose files' sizes or times changed is
prepared again. Sizes and times can miss an edit made within the same clock
tick as the preparation read the file (git calls such files "racily clean"), so
for a file modified less than RACY_NS before the preparation started, the text
is hashed again to decide. Knows nothing of models or training.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tqdm.auto import tqdm

from tinylm.config import DataConfig
from tinylm.data.corpus import describe_source, iter_documents, iter_parts
from tinylm.errors import TinyLMError
from tinylm.files import replace_folder
from tinylm.manifest import seal, verify
from tinylm.progress import progress_bar
from tinylm.tokenizer import FILENAME, PATCHES, Tokenizer, byte_tokenizer, patch_tokenizer, tokenizer_of, train_bpe

FORMAT_VERSION = 1  # part of every cache key: bump it when the prepared output changes
DAMAGED = "prepare the data again"
MAX_PIECE_CHARS = 1 << 16
MIN_PIECE_CHARS = 256
MIN_PIECES = 256
PIECES_PER_BATCH = 256  # at most ~16 MB of text in flight per batch
BATCH_CHARS = 1 << 21  # text per tokenization batch, unless workers need more to each get two pieces
DOCUMENT_END = b"\xff"  # marks a document's end in the text hash; no UTF-8 text holds this byte
RACY_NS = 2_000_000_000  # modification times within this of a preparation may hide an edit (FAT: 2 s steps)
BPE_SAMPLE_BYTES = 50_000_000


def prepare(source: str, out_dir: str | Path, tokenizer: Tokenizer, val_fraction: float = 0.05,
            text_field: str = "text", workers: int = 0, progress: bool = True, overwrite: bool = False) -> Path:
    """Tokenize `source` ("" = the built-in corpus) into train.bin, val.bin, meta.json and
    tokenizer.json in `out_dir`, which must be empty or absent unless `overwrite`."""
    if not 0 < val_fraction < 1:
        raise TinyLMError(f"data.val_fraction={val_fraction} must be between 0 and 1, e.g. 0.05")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, source, overwrite)
    started_ns = time.time_ns()
    description = describe_source(source)
    piece_chars = piece_chars_for(description)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
        text_hash = hashlib.sha256()
        pieces = split_pieces(_hashed(iter_parts(source, text_field), text_hash), piece_chars)
        with progress_bar(total=_progress_total(description), unit="B", unit_scale=True, unit_divisor=1024,
                          desc="tokenizing", disable=not progress, leave=False) as bar:
            splits = _write_splits(pieces, staging, tokenizer, dtype, val_fraction, _worker_count(workers), piece_chars,
                                   bar)
        source_summary = {**_source_summary(description), "text_sha256": text_hash.hexdigest(),
                          "recheck_text": _is_racy(description, started_ns)}
        meta = {"dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                "splits": splits, "source": source_summary, "tokenizer": tokenizer.kind,
                "val_fraction": val_fraction, "piece_chars": piece_chars, "format": FORMAT_VERSION}
        tokenizer.save(staging)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        seal(staging)
        replace_folder(out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only still there if something failed
    return out_dir


def corpus_sample(source: str, text_field: str = "text", max_bytes: int = BPE_SAMPLE_BYTES) -> Iterator[str]:
    """The first `max_bytes` of the corpus, for training a BPE tokenizer in bounded time and memory."""
    budget = max_bytes
    for text in iter_documents(source, text_field):
        data = text.encode("utf-8")
        if len(data) >= budget:
            yield data[:budget].decode("utf-8", errors="ignore")  # "ignore" drops a character cut in half
            return
        budget -= len(data)
        yield text


def prepared_dir(cache_dir: str | Path, source: str, tokenizer_spec: str, vocab_size: int,
                 val_fraction: float, text_field: str) -> Path:
    """The cache folder for these settings. It names the source, not its content: when the source's files
    change, prepare_cached prepares the same folder again rather than leaving the old one behind."""
    tokenizer_key = _tokenizer_key(tokenizer_spec, vocab_size)
    source_id = {key: value for key, value in describe_source(source).items() if key != "files"}
    settings = {"format": FORMAT_VERSION, "source": source_id, "tokenizer": tokenizer_key,
                "val_fraction": val_fraction, "text_field": text_field}
    name = Path(source).resolve().stem if source else "builtin"
    label = (tokenizer_key if tokenizer_spec in ("byte", "bpe")
             else PATCHES if _patch_spec(tokenizer_spec) is not None else "tokenizer")
    return Path(cache_dir) / f"{name}-{label}-{_digest(settings)[:12]}"


def build_tokenizer(spec: str, source: str, text_field: str = "text", vocab_size: int = 4096) -> Tokenizer:
    """"byte", "bpe" (trained on a sample of `source`), the path of a tokenizer.json, or "patches:" and one of
    those: bytes flagged where that tokenizer's tokens end (tinylm.tokenizer.PatchTokenizer)."""
    if (inner := _patch_spec(spec)) is not None:
        return patch_tokenizer(build_tokenizer(inner, source, text_field, vocab_size))
    if spec == "byte":
        return byte_tokenizer()
    if spec == "bpe":
        return train_bpe(corpus_sample(source, text_field), vocab_size)
    return Tokenizer.load(spec)


def prepare_cached(data_cfg: DataConfig, progress: bool = True) -> Path:
    """data.path itself if it is a prepared folder, else its cache folder, prepared on first use and
    again when the source changed or the folder is damaged (saying why on stderr)."""
    if data_cfg.path and (Path(data_cfg.path) / "meta.json").is_file():
        return Path(data_cfg.path)
    out_dir = prepared_dir(data_cfg.cache_dir, data_cfg.path, data_cfg.tokenizer, data_cfg.vocab_size,
                           data_cfg.val_fraction, data_cfg.text_field)
    if (out_dir / "meta.json").is_file():
        stale = _stale_reason(out_dir, data_cfg.path, data_cfg.text_field)
        if stale is None:
            return out_dir
        print(f"cached data '{out_dir}' {stale}; preparing it again", file=sys.stderr)
    tokenizer = build_tokenizer(data_cfg.tokenizer, data_cfg.path, data_cfg.text_field, data_cfg.vocab_size)
    # the cache folder is ours, so leftovers in it (not a prepared folder: no meta.json) may go
    return prepare(data_cfg.path, out_dir, tokenizer, data_cfg.val_fraction, data_cfg.text_field,
                   data_cfg.workers, progress, overwrite=True)


def _stale_reason(out_dir: Path, source: str, text_field: str) -> str | None:
    """Why the cache folder `out_dir` no longer holds `source` as it is now, or None when it does."""
    try:
        verify(out_dir, "prepared data file", DAMAGED, checksums=False)  # TokenData.load checks the checksums
        meta = json.loads((out_dir / "meta.json").read_text())
        recorded = meta["source"]
    except (TinyLMError, ValueError, KeyError, TypeError) as e:
        return f"is damaged ({e})"
    started_ns = time.time_ns()
    description = describe_source(source)
    now = _source_summary(description)
    if recorded.get("fingerprint") != now["fingerprint"]:
        return (f"is out of date: the source changed ({recorded.get('files')} file(s) of {recorded.get('size')} "
                f"bytes when prepared, {now['files']} of {now['size']} now, or their modification times differ)")
    if recorded.get("recheck_text"):
        if recorded.get("text_sha256") != text_sha256(source, text_field):
            return "is out of date: the source's text changed without changing its files' sizes or modification times"
        if not _is_racy(description, started_ns):
            # an edit after this check would change a time, so the text need not be hashed again
            meta["source"]["recheck_text"] = False
            written = out_dir / "meta.json.tmp"
            written.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(written, out_dir / "meta.json")
            seal(out_dir, ["meta.json"])
    return None


def text_sha256(source: str, text_field: str = "text") -> str:
    """SHA-256 of the source's text as prepare reads it, document ends marked."""
    digest = hashlib.sha256()
    for _ in _hashed(iter_parts(source, text_field), digest):
        pass
    return digest.hexdigest()


def _hashed(parts: Iterable[tuple[str, bool]], digest) -> Iterator[tuple[str, bool]]:
    for text, ends_document in parts:
        digest.update(text.encode("utf-8"))
        if ends_document:
            digest.update(DOCUMENT_END)
        yield text, ends_document


def _is_racy(description: dict, started_ns: int) -> bool:
    return any(mtime_ns >= started_ns - RACY_NS for _, _, mtime_ns in description["files"])


def piece_chars_for(description: dict) -> int:
    """Piece length for a source (as describe_source gives it): a small corpus gets smaller pieces,
    so that it still makes enough of them to hold some out."""
    size = sum(size for _, size, _ in description["files"])
    return min(MAX_PIECE_CHARS, max(MIN_PIECE_CHARS, size // MIN_PIECES))


def in_val(index: int, val_fraction: float) -> bool:
    return math.floor((index + 1) * val_fraction + 0.5) > math.floor(index * val_fraction + 0.5)


def split_pieces(parts: Iterable[tuple[str, bool]], piece_chars: int) -> Iterator[tuple[str, bool]]:
    """(piece, ends_document): the parts' documents cut into pieces of at most piece_chars."""
    carry = ""  # the unfinished last piece of a document that continues in the next part
    for text, ends_document in parts:
        *full, tail = _cut_at_lines(carry + text, piece_chars)
        for piece in full:
            yield piece, False
        carry = "" if ends_document else tail
        if ends_document:
            yield tail, True


def _cut_at_lines(text: str, limit: int) -> Iterator[str]:
    start = 0
    while len(text) - start > limit:
        stop = start + limit
        # after the last newline in reach; failing that the last space, so no word is split
        end = text.rfind("\n", start, stop) + 1 or text.rfind(" ", start, stop) + 1 or stop
        yield text[start:end]
        start = end
    yield text[start:]


class _SplitWriter:
    """Appends one split's tokens to its .bin file and counts what went in."""

    def __init__(self, file, eos: bytes):
        self.file, self.eos = file, eos
        self.tokens = self.bytes = self.pieces = 0

    def add(self, ids: np.ndarray, n_bytes: int, then_eos: bool) -> None:
        self.file.write(ids.tobytes())
        if then_eos:
            self.file.write(self.eos)
        self.tokens += len(ids) + then_eos
        self.bytes += n_bytes
        self.pieces += 1

    def summary(self) -> dict:
        return {"tokens": self.tokens, "bytes": self.bytes, "documents": self.pieces}


def _write_splits(pieces: Iterator[tuple[str, bool]], directory: Path, tokenizer: Tokenizer, dtype: np.dtype,
                  val_fraction: float, workers: int, piece_chars: int, bar: tqdm) -> dict:
    eos = np.array([tokenizer.eos_id], dtype).tobytes()
    index = 0
    with open(directory / "train.bin", "wb") as train_file, open(directory / "val.bin", "wb") as val_file:
        writers = {False: _SplitWriter(train_file, eos), True: _SplitWriter(val_file, eos)}
        batch_chars = max(BATCH_CHARS, 2 * workers * piece_chars)
        for batch, token_arrays in _tokenized(text_batches(pieces, batch_chars), tokenizer, dtype, workers):
            for (text, ends_document), ids in zip(batch, token_arrays):
                is_val = in_val(index, val_fraction)
                n_bytes = len(text.encode("utf-8"))
                writers[is_val].add(ids, n_bytes, ends_document or in_val(index + 1, val_fraction) != is_val)
                bar.update(n_bytes)
                index += 1
    train, val = writers[False], writers[True]
    if not val.pieces:
        advice = f"set data.val_fraction to at least {1 / index:.2g} or give" if index > 1 else "give"
        raise TinyLMError(f"too little text to hold out val_fraction={val_fraction}: the corpus makes {index} "
                          f"piece(s) and none falls to validation; {advice} more text")
    if not train.pieces:
        raise TinyLMError(f"val_fraction={val_fraction} leaves no text for training; lower data.val_fraction")
    return {"train": train.summary(), "val": val.summary()}


def batches(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


def text_batches(pieces: Iterable[tuple[str, bool]], max_chars: int) -> Iterator[list[tuple[str, bool]]]:
    """Consecutive pieces in lists of at most `max_chars` characters (a longer piece alone)."""
    batch, chars = [], 0
    for piece in pieces:
        if batch and chars + len(piece[0]) > max_chars:
            yield batch
            batch, chars = [], 0
        batch.append(piece)
        chars += len(piece[0])
    if batch:
        yield batch


def _tokenized(piece_batches: Iterator[list[tuple[str, bool]]], tokenizer: Tokenizer, dtype: np.dtype,
               workers: int) -> Iterator[tuple[list, list[np.ndarray]]]:
    """(batch, token ids of each piece), in order. With a pool, the next batch is read while
    the workers encode the current one."""
    if workers == 1:
        for batch in piece_batches:
            yield batch, [_encode(tokenizer, text, dtype) for text, _ in batch]
        return
    # not plain fork: a fork copies whatever lock another thread holds at that moment (torch's, tokenizers',
    # a progress bar's), and a worker could wait on it forever; a forkserver's workers come from a clean process
    context = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    with _forked_tokenizers_quiet():
        pool = context.Pool(workers, _start_worker, (tokenizer.hf.to_str(), tokenizer.kind, dtype.str))
    with pool:
        pending = None
        for batch in piece_batches:
            job = pool.map_async(_encode_in_worker, [text for text, _ in batch])
            if pending:
                yield pending[0], pending[1].get()
            pending = batch, job
        if pending:
            yield pending[0], pending[1].get()


def _encode(tokenizer: Tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    if tokenizer.kind == "byte" and tokenizer.eos_token not in text:
        # the byte tokenizer's ids are the UTF-8 bytes, which numpy reads over 50 times faster than `tokenizers`
        # encodes them; only its EOS string differs (`tokenizers` matches it as the special token)
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(dtype)
    return np.asarray(tokenizer.encode(text), dtype)


_worker_tokenizer: Tokenizer | None = None
_worker_dtype: np.dtype | None = None


def _start_worker(tokenizer_json: str, kind: str, dtype: str) -> None:
    # the tokenizer travels as its JSON string: cheap to send, and rebuilt once per worker
    global _worker_tokenizer, _worker_dtype
    _worker_tokenizer, _worker_dtype = tokenizer_of(HFTokenizer.from_str(tokenizer_json), kind), np.dtype(dtype)


def _encode_in_worker(text: str) -> np.ndarray:
    return _encode(_worker_tokenizer, text, _worker_dtype)


@contextmanager
def _forked_tokenizers_quiet():
    """`tokenizers` warns in every forked child if the parent already used its thread pool (as BPE
    training does). Workers are single-threaded by design, so tell them so before they fork."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _worker_count(workers: int) -> int:
    if workers > 0:
        return workers
    # the cores this process may use, which is fewer than os.cpu_count() under taskset or a batch scheduler
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _remove_abandoned_staging(out_dir: Path) -> None:
    """Delete the staging folders (and their "-old" asides) that killed runs left beside `out_dir`."""
    if not out_dir.parent.is_dir():
        return
    prefix = f".{out_dir.name}.tmp-"
    for folder in out_dir.parent.iterdir():
        writer = folder.name[len(prefix):].split("-", 1)[0]
        if folder.name.startswith(prefix) and writer.isdigit() and not _process_alive(int(writer)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _check_out_dir(out_dir: Path, source: str, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise TinyLMError(f"'{out_dir}' is a file; give a folder for the prepared data")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise TinyLMError(f"'{out_dir}' already exists and is not empty; pass --overwrite to replace it")
    if overwrite and source and Path(source).resolve().is_relative_to(out_dir.resolve()):
        raise TinyLMError(f"'{out_dir}' holds the source '{source}', so replacing it would delete the text; "
                          "write the prepared data to another folder")


def _progress_total(description: dict) -> int | None:
    """Bytes the progress bar will count, when file sizes tell it: plain text files only."""
    if description["kind"] == "builtin":
        return None
    if any(path.lower().endswith((".jsonl", ".parquet", ".arrow")) for path, _, _ in description["files"]):
        return None
    return sum(size for _, size, _ in description["files"])


def _source_summary(description: dict) -> dict:
    """The source as meta.json records it: the file list is summed up, since a folder may hold millions."""
    files = description["files"]
    summary = {key: value for key, value in description.items() if key != "files"}
    return {**summary, "files": len(files), "size": sum(size for _, size, _ in files),
            "fingerprint": _digest(description)}


def _patch_spec(spec: str) -> str | None:
    """The tokenizer spec after "patches:", or None for a spec without it."""
    return spec[len(PATCHES) + 1:] if spec.startswith(f"{PATCHES}:") else None


def _tokenizer_key(spec: str, vocab_size: int) -> str:
    if (inner := _patch_spec(spec)) is not None:
        return f"{PATCHES}:{_tokenizer_key(inner, vocab_size)}"
    if spec == "byte":
        return "byte"
    if spec == "bpe":
        return f"bpe{vocab_size}"
    path = Path(spec)
    file = path / FILENAME if path.is_dir() else path
    if not file.is_file():
        raise TinyLMError(f"no tokenizer at '{spec}'; set data.tokenizer to byte, bpe, a tokenizer.json path or "
                          "patches: and one of those")
    stat = file.stat()
    return f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
