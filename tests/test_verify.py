"""Verified files: manifests catch damaged checkpoints, prepared data and tokenizers; the data cache follows its
source; preparation is killable, independent of the worker count and bounded in memory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import save_tiny_byte_run
from tinylm.checkpoint import load_checkpoint
from tinylm.config import DataConfig
from tinylm.data import TokenData, prepare, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.manifest import MANIFEST, seal, verify
from tinylm.tokenizer import Tokenizer, byte_tokenizer, train_bpe

REPO = Path(__file__).resolve().parents[1]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def lines_of_text(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "cats", "sleep"]
    return "".join(" ".join(rng.choice(words, size=9)) + f" {i}.\n" for i in range(n))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(lines_of_text(600))
    return path


@pytest.fixture
def prepared(tmp_path, corpus) -> Path:
    return prepare(str(corpus), tmp_path / "prepared", byte_tokenizer(), val_fraction=0.1, workers=1, progress=False)


def error_line(cli, *args) -> str:
    code, _, err = cli(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tinylm: error: "), err
    return lines[0]


def test_a_sealed_folder_verifies_and_names_a_truncated_or_flipped_file(tmp_path):
    for name, size in (("a.bin", 100), ("b.bin", 3000)):
        (tmp_path / name).write_bytes(np.random.default_rng(size).bytes(size))
    seal(tmp_path)
    assert verify(tmp_path, "test file", "redo it")
    truncate(tmp_path / "b.bin")
    with pytest.raises(TinyLMError, match=r"test file '.*b\.bin' is corrupt: truncated to 2993 of 3000 bytes; redo it"):
        verify(tmp_path, "test file", "redo it")
    seal(tmp_path, ["b.bin"])
    flip_a_bit(tmp_path / "a.bin")
    with pytest.raises(TinyLMError, match=r"'.*a\.bin' is corrupt: its bytes do not match the checksum"):
        verify(tmp_path, "test file", "redo it")
    assert verify(tmp_path, "test file", "redo it", skip=("a.bin",))


def test_sizes_only_verification_is_an_opt_out_of_checksums(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"0123456789")
    seal(tmp_path)
    flip_a_bit(tmp_path / "a.bin")
    monkeypatch.setenv("TINYLM_VERIFY", "sizes")
    assert verify(tmp_path, "test file", "redo it")
    monkeypatch.delenv("TINYLM_VERIFY")
    with pytest.raises(TinyLMError, match="checksum"):
        verify(tmp_path, "test file", "redo it")


def test_a_folder_without_a_manifest_is_accepted_and_a_listed_missing_file_is_not(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert verify(tmp_path, "test file", "redo it") is False  # written before manifests existed
    seal(tmp_path)
    (tmp_path / "a.bin").unlink()
    with pytest.raises(TinyLMError, match=r"'.*a\.bin' is missing \(its folder's manifest.json lists it\)"):
        verify(tmp_path, "test file", "redo it")
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(TinyLMError, match="manifest .* is corrupt"):
        verify(tmp_path, "test file", "redo it")


@pytest.mark.parametrize("damage", [truncate, flip_a_bit])
@pytest.mark.parametrize("name", ["model.safetensors", "config.yaml", "tokenizer.json"])
def test_a_damaged_checkpoint_file_is_named_by_load_and_by_the_cli(tmp_path, cli, name, damage):
    run, _, _ = save_tiny_byte_run(tmp_path / "run")
    load_checkpoint(run)
    damage(run / "checkpoint" / name)
    with pytest.raises(TinyLMError, match=f"checkpoint file '.*{name}' is corrupt: .*; restore it or retrain"):
        load_checkpoint(run)
    assert f"checkpoint/{name}' is corrupt" in error_line(cli, "sample", run, "--max-tokens", "2")


def test_a_checkpoint_without_a_manifest_still_loads(tmp_path):
    run, model, _ = save_tiny_byte_run(tmp_path / "run")
    (run / "checkpoint" / MANIFEST).unlink()
    loaded = load_checkpoint(run)
    assert all((a == b).all() for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))


def test_training_state_is_verified_only_when_resuming(tmp_path):
    run, _, _ = save_tiny_byte_run(tmp_path / "run")
    checkpoint = run / "checkpoint"
    (checkpoint / "state.pt").write_bytes(b"optimizer state")
    seal(checkpoint, ["state.pt"])
    flip_a_bit(checkpoint / "state.pt")
    load_checkpoint(run)  # evaluation never reads the state
    with pytest.raises(TinyLMError, match="state.pt' is corrupt"):
        load_checkpoint(run, with_state=True)


@pytest.mark.parametrize("damage", [truncate, flip_a_bit])
@pytest.mark.parametrize("name", ["train.bin", "val.bin", "meta.json", "tokenizer.json"])
def test_a_damaged_prepared_file_is_named_by_load_and_by_the_cli(tmp_path, cli, prepared, name, damage):
    damage(prepared / name)
    with pytest.raises(TinyLMError, match=f"prepared data file '.*{name}' is corrupt: .*; prepare the data again"):
        TokenData.load(prepared)
    assert f"prepared/{name}' is corrupt" in error_line(
        cli, "train", f"data.path={prepared}", "train.max_steps=1", "--out", tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_prepared_data_without_a_manifest_still_loads_with_its_sizes_checked(prepared):
    (prepared / MANIFEST).unlink()
    data = TokenData.load(prepared)
    assert len(data.train) > len(data.val) > 0
    del data  # its memory maps
    truncate(prepared / "train.bin")
    with pytest.raises(TinyLMError, match=r"train\.bin' is missing or truncated"):
        TokenData.load(prepared)


@pytest.mark.parametrize("damage", [truncate, flip_a_bit])
def test_a_damaged_saved_tokenizer_is_named_by_load_and_by_the_cli(tmp_path, cli, corpus, damage):
    train_bpe(iter([corpus.read_text()]), 300).save(tmp_path / "tok")
    damage(tmp_path / "tok" / "tokenizer.json")
    with pytest.raises(TinyLMError, match=r"tokenizer file '.*tok/tokenizer\.json' is corrupt"):
        Tokenizer.load(tmp_path / "tok")
    assert "tok/tokenizer.json' is corrupt" in error_line(
        cli, "data", "prepare", corpus, "--out", tmp_path / "out", "--tokenizer", tmp_path / "tok")


def cache_config(tmp_path, corpus) -> DataConfig:
    return DataConfig(path=str(corpus), tokenizer="byte", cache_dir=str(tmp_path / "cache"), val_fraction=0.1,
                      workers=1)


def test_the_cache_is_reused_while_the_source_is_unchanged(tmp_path, corpus, capsys):
    cfg = cache_config(tmp_path, corpus)
    entry = prepare_cached(cfg, progress=False)
    stamp = (entry / "train.bin").stat().st_mtime_ns
    assert prepare_cached(cfg, progress=False) == entry
    assert (entry / "train.bin").stat().st_mtime_ns == stamp and "out of date" not in capsys.readouterr().err


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_a_cache_entry_whose_source_changed_is_prepared_again(tmp_path, corpus, capsys, change):
    cfg = cache_config(tmp_path, corpus)
    entry = prepare_cached(cfg, progress=False)
    written = (entry / "train.bin").stat().st_mtime_ns
    if change == "size":
        corpus.write_text(corpus.read_text() + "one more line.\n")
    else:  # the same bytes, touched: only the time says it may differ
        stat = corpus.stat()
        os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert prepare_cached(cfg, progress=False) == entry
    assert "is out of date: the source changed" in capsys.readouterr().err
    assert (entry / "train.bin").stat().st_mtime_ns != written
    assert sum(TokenData.load(entry).bytes.values()) == corpus.stat().st_size


def test_an_edit_hidden_from_sizes_and_times_is_found_by_the_text_hash(tmp_path, corpus, capsys):
    cfg = cache_config(tmp_path, corpus)
    entry = prepare_cached(cfg, progress=False)  # the corpus was just written: its time cannot be trusted
    stat = corpus.stat()
    corpus.write_text(corpus.read_text().replace("fox", "owl"))  # same length
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    prepare_cached(cfg, progress=False)
    assert "text changed without changing its files' sizes" in capsys.readouterr().err
    assert b"owl" in (entry / "train.bin").read_bytes()[::2]  # byte ids: the low bytes are the text


def test_a_text_recheck_passed_once_the_file_is_old_is_not_repeated(tmp_path, corpus):
    cfg = cache_config(tmp_path, corpus)
    modified = time.time_ns() - 500_000_000
    os.utime(corpus, ns=(modified, modified))
    entry = prepare_cached(cfg, progress=False)
    meta = entry / "meta.json"
    assert json.loads(meta.read_text())["source"]["recheck_text"]
    time.sleep(max(0.0, (modified + 2_100_000_000 - time.time_ns()) / 1e9))  # past the 2 s in which edits hide
    shards = (entry / "train.bin").stat().st_mtime_ns
    assert prepare_cached(cfg, progress=False) == entry
    assert not json.loads(meta.read_text())["source"]["recheck_text"]
    assert (entry / "train.bin").stat().st_mtime_ns == shards and verify(entry, "prepared data file", "")


def test_a_damaged_cache_entry_is_prepared_again(tmp_path, corpus, capsys):
    cfg = cache_config(tmp_path, corpus)
    entry = prepare_cached(cfg, progress=False)
    before = (entry / "val.bin").read_bytes()
    truncate(entry / "val.bin")
    assert prepare_cached(cfg, progress=False) == entry
    assert "is damaged" in capsys.readouterr().err and (entry / "val.bin").read_bytes() == before


def test_one_and_three_bpe_workers_write_identical_shards(tmp_path, corpus, monkeypatch):
    import importlib
    monkeypatch.setattr(importlib.import_module("tinylm.data.prepare"), "BATCH_CHARS", 2000)  # many batches
    tokenizer = train_bpe(iter([corpus.read_text()]), 400)
    outs = [prepare(str(corpus), tmp_path / f"w{n}", tokenizer, val_fraction=0.1, workers=n, progress=False)
            for n in (1, 3)]
    for name in ("train.bin", "val.bin", "meta.json", "tokenizer.json", MANIFEST):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    assert TokenData.load(outs[0]).train.max() > 256  # merges were used: this was real tokenization


def with_this_tinylm() -> dict:
    """The environment for a child process that imports the tinylm these tests are testing."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def generated_corpus(path: Path, n_bytes: int) -> Path:
    """Random lowercase words and lines, written fast."""
    rng = np.random.default_rng(0)
    text = rng.integers(ord("a"), ord("z") + 1, size=n_bytes, dtype=np.uint8)
    text[rng.integers(0, n_bytes, size=n_bytes // 6)] = ord(" ")
    text[rng.integers(0, n_bytes, size=n_bytes // 60)] = ord("\n")
    path.write_bytes(text.tobytes())
    return path


MEASURED_PREPARE = """
import importlib, json, sys
prepare = importlib.import_module("tinylm.data.prepare")
from tinylm.tokenizer import byte_tokenizer


def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


source, out, in_memory = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if in_memory:  # the whole text as one part and one batch
    importlib.import_module("tinylm.data.corpus").PART_CHARS = prepare.BATCH_CHARS = 1 << 28
tokenizer = byte_tokenizer()
with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak (VmHWM) to the current RSS: imports do not count
    f.write("5")
baseline = status_kb("VmRSS")
prepare.prepare(source, out, tokenizer, workers=1, progress=False)
print(json.dumps({"growth_kb": status_kb("VmHWM") - baseline}))
"""

@pytest.mark.slow  # it writes 96 MB and prepares it twice
def test_preparing_a_corpus_larger_than_the_memory_budget_stays_within_it(tmp_path):
    budget_kb = 32 * 1024
    source = generated_corpus(tmp_path / "big.txt", 3 * budget_kb * 1024)
    growth = {}
    for in_memory in (0, 1):
        done = subprocess.run([sys.executable, "-c", MEASURED_PREPARE, source, tmp_path / f"out{in_memory}",
                               str(in_memory)], capture_output=True, text=True, env=with_this_tinylm())
        assert done.returncode == 0, done.stderr
        growth[in_memory] = json.loads(done.stdout)["growth_kb"]
    assert growth[0] < budget_kb < growth[1], growth  # the budget is one the in-memory preparation breaks
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes(), name
    metas = [json.loads((tmp_path / f"out{i}" / "meta.json").read_text()) for i in (0, 1)]
    for meta in metas:  # whether the text is hashed again depends on how soon after its writing each ran
        meta["source"].pop("recheck_text", None)
    assert metas[0] == metas[1]


def start_prepare(source: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinylm.cli", "data", "prepare", str(source), "--out", str(out),
                             "--tokenizer", "byte", "--workers", "1", "--val-fraction", "0.1", *extra],
                            env=with_this_tinylm(), stderr=subprocess.PIPE, text=True)


def kill_while_writing(process: subprocess.Popen, out: Path) -> None:
    """SIGKILL `process` once its staging folder beside `out` holds some tokens."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        shards = list(out.parent.glob(f".{out.name}.tmp-*/train.bin"))
        if shards and shards[0].stat().st_size > 1 << 20:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.002)
    pytest.fail(f"prepare ended (code {process.poll()}) before it could be killed mid-way: {process.stderr.read()}")


@pytest.mark.slow  # it starts two tinylm processes and kills one
def test_a_killed_prepare_leaves_nothing_trusted_and_a_rerun_finishes(tmp_path):
    source = generated_corpus(tmp_path / "big.txt", 32 << 20)
    out = tmp_path / "prepared"
    kill_while_writing(start_prepare(source, out), out)
    assert not out.exists()
    rerun = start_prepare(source, out)
    assert rerun.wait() == 0, rerun.stderr.read()
    assert not list(tmp_path.glob(".prepared.tmp-*"))  # the killed run's staging folder is gone
    assert verify(out, "prepared data file", "")
    data = TokenData.load(out)
    assert data.bytes["train"] + data.bytes["val"] == source.stat().st_size


@pytest.mark.slow  # it starts a tinylm process and kills it
def test_a_prepare_killed_while_overwriting_keeps_the_old_data(tmp_path, corpus):
    old = prepare(str(corpus), tmp_path / "prepared", byte_tokenizer(), val_fraction=0.1, workers=1, progress=False)
    files = {p.name: p.read_bytes() for p in old.iterdir()}
    source = generated_corpus(tmp_path / "big.txt", 32 << 20)
    kill_while_writing(start_prepare(source, old, "--overwrite"), old)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == files
    assert verify(old, "prepared data file", "")
