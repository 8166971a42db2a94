"""Bad input, everywhere: every mistake a user can make with a command gives one line naming the problem,
exit code 2, no traceback, and leaves an existing run directory exactly as it was.

CASES is the table; a new command adds its own rows. Each row runs the real command line in-process
against a small world made once per module: a tiny trained BPE run (`runs/base`, whose every byte is
checked after each row) and the broken files the rows point at.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from tinylm.cli import main
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
        "train.batch_size=4", "train.max_steps=2", "train.warmup_steps=1", "train.eval_every=0",
        "train.device=cpu", "train.peak_tflops=1", "data.workers=1", "train.log_every=0"]
BASE = "runs/base"  # the pre-existing run; no row may change it


def refuse_writes(monkeypatch, folder: str, code: int) -> None:
    """Every Python-level open for writing under `folder` fails with `code` (ENOSPC: a full disk, EROFS: a
    read-only one). chmod cannot stand in for this: tests may run as root, whom permissions do not stop."""
    real_open = io.open
    root = Path(folder).resolve()

    def open_refusing(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and \
                Path(os.path.abspath(file)).is_relative_to(root):
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_refusing)
    monkeypatch.setattr(io, "open", open_refusing)


def full_disk(monkeypatch):
    refuse_writes(monkeypatch, "full", errno.ENOSPC)


def read_only_disk(monkeypatch):
    refuse_writes(monkeypatch, "ro", errno.EROFS)


@dataclass
class Case:
    name: str
    argv: list[str]
    expected: str  # a regular expression the error line must match
    setup: Callable | None = None  # called with monkeypatch before the command runs
    needs: list[str] = field(default_factory=list)  # optional packages; the row skips without them


CASES = [
    # train
    Case("train: missing corpus", ["train", "data.path=nope.txt", *TINY, "--out", "out/t1"],
         r"'nope.txt' does not exist"),
    Case("train: empty corpus", ["train", "data.path=empty.txt", *TINY, "--out", "out/t2"], r"'empty.txt' has no text"),
    Case("train: binary corpus", ["train", "data.path=binary.txt", *TINY, "--out", "out/t3"],
         r"'binary.txt' is not UTF-8 text \(it has NUL bytes"),
    Case("train: Latin-1 corpus", ["train", "data.path=latin1.txt", *TINY, "--out", "out/t4"],
         r"'latin1.txt' is not UTF-8 text; convert it"),
    Case("train: unknown config key", ["train", "train.lrr=1e-3", "--out", "out/t5"],
         r"unknown config key 'train.lrr'; did you mean 'train.lr'\?"),
    Case("train: wrong type", ["train", "model.n_layer=six", "--out", "out/t6"],
         r"'model.n_layer' needs an integer, got 'six'"),
    Case("train: value that is not YAML", ["train", "model.n_layer=[1,", "--out", "out/t7"],
         r"'model.n_layer' needs an integer, got '\[1,'"),
    Case("train: zero width", ["train", "model.d_model=0", "--out", "out/t8"], r"model.d_model=0 must be at least 1"),
    Case("train: negative steps", ["train", "train.max_steps=-5", "--out", "out/t9"],
         r"train.max_steps=-5 must be at least 0"),
    Case("train: shape the model cannot be built with",
         ["train", "data.path=corpus.txt", *TINY, "data.tokenizer=byte", "model.n_heads=3", "--out", "out/t10"],
         r"model.d_model=32 is not divisible by model.n_heads=3"),
    Case("train: broken recipe", ["train", "broken.yaml", "--out", "out/t11"], r"'broken.yaml' is not valid YAML"),
    Case("train: into an existing run", ["train", "data.path=corpus.txt", *TINY, "--out", BASE],
         r"already holds a run; pass --resume to continue it or --overwrite"),
    Case("train: --init from a checkpoint whose tokenizer does not match",
         ["train", "--init", "mismatched", *TINY, "--out", "out/t13"], r"does not match its tokenizer"),
    Case("train: unknown device", ["train", "data.path=corpus.txt", *TINY, "data.tokenizer=byte",
                                   "train.device=gpu7", "--out", "out/t14"], r"unknown train.device=gpu7"),
    Case("train: --out on a full disk",
         ["train", "data.path=corpus.txt", *TINY, "data.tokenizer=byte", "--out", "full/run"],
         r"'full/run/.*': No space left on device \(ENOSPC\)", setup=full_disk),
    # data prepare
    Case("prepare: missing corpus", ["data", "prepare", "nope.txt", "--out", "out/p1", "--tokenizer", "byte"],
         r"'nope.txt' does not exist"),
    Case("prepare: a folder holding a Latin-1 file", ["data", "prepare", "mixed", "--out", "out/p2",
                                                      "--tokenizer", "byte"], r"'mixed/b.txt' is not UTF-8 text"),
    Case("prepare: zero vocabulary", ["data", "prepare", "corpus.txt", "--out", "out/p3", "--vocab-size", "0"],
         r"--vocab-size 0 must be at least 1"),
    Case("prepare: negative workers", ["data", "prepare", "corpus.txt", "--out", "out/p4", "--workers", "-1"],
         r"--workers -1 must be at least 0"),
    Case("prepare: into an existing run", ["data", "prepare", "corpus.txt", "--out", BASE, "--tokenizer", "byte"],
         r"'runs/base' already exists and is not empty; pass --overwrite"),
    Case("prepare: --out on a read-only disk",
         ["data", "prepare", "corpus.txt", "--out", "ro/prepared", "--tokenizer", "byte"],
         r"'ro/.*': Read-only file system \(EROFS\)", setup=read_only_disk),
    # eval
    Case("eval: missing run", ["eval", "nope"], r"'nope' does not exist"),
    Case("eval: truncated safetensors", ["eval", "truncated"], r"model.safetensors' is corrupt"),
    Case("eval: tokenizer that does not match the checkpoint", ["eval", "mismatched"],
         r"does not match its tokenizer: the model has 300 token rows, tokenizer.json has 257"),
    Case("eval --text: binary file", ["eval", BASE, "--text", "binary.txt"], r"'binary.txt' is not UTF-8"),
    Case("eval --text: zero stride", ["eval", BASE, "--text", "corpus.txt", "--stride", "0"],
         r"--stride 0 must be at least 1"),
    Case("eval: zero batch size", ["eval", BASE, "--batch-size", "0"], r"--batch-size 0 must be at least 1"),
    Case("eval: negative token count", ["eval", BASE, "--max-tokens", "-1"], r"--max-tokens -1 must be at least 1"),
    Case("eval --tasks: a row that is not JSON", ["eval", BASE, "--tasks", "not_json.jsonl"],
         r"not_json.jsonl:2: not valid JSON"),
    Case("eval --tasks: a gold index out of range", ["eval", BASE, "--tasks", "bad_gold.jsonl"],
         r"bad_gold.jsonl:3: gold must be the index of the right choice \(0..1\)"),
    Case("eval --tasks: a row that is not UTF-8", ["eval", BASE, "--tasks", "latin1_task.jsonl"],
         r"latin1_task.jsonl:2: not UTF-8 text"),
    Case("eval --tasks: zero limit", ["eval", BASE, "--tasks", "not_json.jsonl", "--limit", "0"],
         r"--limit 0 must be at least 1"),
    Case("eval: GGUF of an unsupported architecture", ["eval", "gpt2.gguf", "--text", "corpus.txt"],
         r"'gpt2.gguf' is a 'gpt2' model; tinylm reads GGUF files of the llama and qwen2", needs=["gguf"]),
    Case("eval: GGUF of an unsupported quantisation", ["eval", "int8.gguf", "--text", "corpus.txt"],
         r"'int8.gguf': cannot dequantize token_embd.weight", needs=["gguf"]),
    Case("eval: --json into a missing folder", ["eval", BASE, "--json", "nowhere/report.json"],
         r"the folder of 'nowhere/report.json' does not exist"),
    Case("eval: --json on a full disk", ["eval", BASE, "--json", "full/report.json"],
         r"'full/report.json': No space left on device \(ENOSPC\)", setup=full_disk),
    # sample
    Case("sample: truncated safetensors", ["sample", "truncated"], r"model.safetensors' is corrupt"),
    Case("sample: zero tokens", ["sample", BASE, "--max-tokens", "0"], r"--max-tokens 0 must be at least 1"),
    Case("sample: top-p of zero", ["sample", BASE, "--top-p", "0"], r"--top-p 0.0 must be in \(0, 1\]"),
    Case("sample: negative top-k", ["sample", BASE, "--top-k", "-1"], r"--top-k -1 must be at least 0"),
    Case("sample: unknown device", ["sample", BASE, "--device", "gpu7"], r"unknown device 'gpu7'"),
    # export
    Case("export: truncated safetensors", ["export", "truncated", "--format", "hf", "--out", "out/e1"],
         r"model.safetensors' is corrupt"),
    Case("export: over the run itself", ["export", BASE, "--format", "hf", "--out", BASE],
         r"would overwrite the run's checkpoint"),
    Case("export: over an existing file", ["export", BASE, "--format", "gguf", "--out", f"{BASE}/config.yaml"],
         r"already exists; pass --overwrite", needs=["gguf"]),
    Case("export: a quantisation GGUF export does not write",
         ["export", BASE, "--format", "gguf", "--dtype", "q4_0", "--out", "out/e4.gguf"],
         r"argument --dtype: invalid choice: 'q4_0'"),
    Case("export: --out on a full disk", ["export", BASE, "--format", "gguf", "--out", "full/model.gguf"],
         r"'full/.*': No space left on device \(ENOSPC\)", setup=full_disk, needs=["gguf"]),
    # inherit
    Case("inherit: a child deeper than its parent", ["inherit", "--parent", BASE, "--n-layer", "5", "--out", "out/i1"],
         r"the child's layers \(5\) must be between 1 and the parent's \(1\)"),
    Case("inherit: a child of width zero", ["inherit", "--parent", BASE, "--d-model", "0", "--out", "out/i2"],
         r"--d-model 0 must be at least 1"),
    Case("inherit: a child with more kv heads than its parent",
         ["inherit", "--parent", BASE, "--n-kv-heads", "2", "--out", "out/i3"],
         r"the child's kv heads \(2\) must be between 1 and the parent's \(1\)"),
    Case("inherit: a tokenizer that does not match the parent",
         ["inherit", "--parent", BASE, "--tokenizer", "foreign_compact", "--out", "out/i4"],
         r"the tokenizer in 'foreign_compact' does not match the parent's vocabulary"),
    Case("inherit: GGUF parent of an unsupported architecture", ["inherit", "--parent", "gpt2.gguf", "--out", "out/i5"],
         r"'gpt2.gguf' is a 'gpt2' model", needs=["gguf"]),
    Case("inherit: into an existing run", ["inherit", "--parent", BASE, "--out", BASE],
         r"'runs/base' already exists and is not empty; pass --overwrite"),
    Case("inherit: --out on a full disk", ["inherit", "--parent", BASE, "--out", "full/child"],
         r"'full/.*': No space left on device \(ENOSPC\)", setup=full_disk),
    # tokenizer compact
    Case("compact: zero vocabulary", ["tokenizer", "compact", "--parent", BASE, "--vocab", "0", "--out", "out/c1"],
         r"--vocab 0 must be at least 1"),
    Case("compact: binary corpus", ["tokenizer", "compact", "--parent", BASE, "--corpus", "binary.txt", "--vocab",
                                    "280", "--out", "out/c2"], r"'binary.txt' is not UTF-8"),
    Case("compact: a parent without a tokenizer", ["tokenizer", "compact", "--parent", "nope", "--vocab", "280",
                                                   "--out", "out/c3"], r"no parent tokenizer at 'nope'"),
    Case("compact: into the parent's run", ["tokenizer", "compact", "--parent", BASE, "--corpus", "corpus.txt",
                                            "--vocab", "280", "--out", BASE], r"'runs/base' holds the parent tokenizer"),
    # arch sweep
    Case("sweep: zero parameters", ["arch", "sweep", "--params", "0", "--out", "out/s1"],
         r"the parameter count must be positive"),
    Case("sweep: zero vocabulary", ["arch", "sweep", "--params", "1M", "--vocab", "0", "--out", "out/s2"],
         r"--vocab 0 must be at least 1"),
    Case("sweep: a latency that is not one", ["arch", "sweep", "--params", "1M", "--latency-budget", "fast",
                                              "--out", "out/s3"], r"'fast' is not a latency budget"),
    Case("sweep: into an existing run", ["arch", "sweep", "--params", "0.2M", "--vocab", "256", "--out", BASE],
         r"'runs/base' already holds other files and no sweep"),
    # ladder and ablate
    Case("ladder: zero tokens", ["ladder", "--quick", "--tokens", "0", "--out", "out/l1"],
         r"--tokens 0 must be at least 1"),
    Case("ladder: one seed", ["ladder", "--quick", "--parent", BASE, "--seeds", "1", "--out", "out/l2"],
         r"the ladder needs two seeds or more"),
    Case("ladder: into an existing run", ["ladder", "--quick", "--parent", BASE, "--out", BASE],
         r"'runs/base' already holds other files and no ladder"),
    Case("ablate: zero bytes of text", ["ablate", "stlm", "--quick", "--text-bytes", "0", "--out", "out/a1"],
         r"--text-bytes 0 must be at least 1"),
    Case("ablate: into an existing run", ["ablate", "stlm", "--quick", "--teacher", BASE, "--out", BASE],
         r"'runs/base' already holds other files and no ablation"),
    # speedrun and the command line itself
    Case("speedrun: binary text", ["speedrun", "--text", "binary.txt", "--seconds", "1"], r"'binary.txt' is not UTF-8"),
    Case("speedrun: zero seconds", ["speedrun", "--text", "corpus.txt", "--seconds", "0"],
         r"--seconds must be positive"),
    Case("speedrun: a tokenizer file", ["speedrun", "--text", "corpus.txt", "data.tokenizer=tok.json"],
         r"the speedrun trains data.tokenizer=byte or data.tokenizer=bpe"),
    Case("an option no command has", ["eval", BASE, "--frobnicate"], r"unrecognized arguments: --frobnicate"),
    Case("an option without its value", ["sample", BASE, "--top-k"], r"argument --top-k: expected one argument"),
]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def make_gguf(path: Path, arch: str, tensor_type: str) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_head_count(2)
    writer.add_feed_forward_length(64)
    kind = gguf.GGMLQuantizationType[tensor_type]
    dtype = np.float32 if tensor_type == "F32" else np.int8
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=dtype), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folder every row runs in: a tiny trained run and the broken inputs; returns (folder, run's files)."""
    root = tmp_path_factory.mktemp("world")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        lines = [f"Line {i}: the quick brown fox jumps over the lazy dog, mat number {i % 7}." for i in range(300)]
        Path("corpus.txt").write_text("\n".join(lines) + "\n")
        main(["train", "data.path=corpus.txt", *TINY, "data.tokenizer=bpe", "data.vocab_size=300", "--out", BASE])
    finally:
        os.chdir(cwd)
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02\xff\xfe binary \x00" * 50)
    (root / "latin1.txt").write_bytes("caf\u00e9 na\u00efve r\u00e9sum\u00e9\n".encode("latin-1") * 50)
    (root / "mixed").mkdir()
    (root / "mixed/a.txt").write_text("good UTF-8 text\n" * 20)
    (root / "mixed/b.txt").write_bytes("caf\u00e9\n".encode("latin-1") * 20)
    (root / "broken.yaml").write_text("model: [1, 2\n")
    good = json.dumps({"context": "The sky is", "choices": ["blue", "loud"], "gold": 0})
    (root / "not_json.jsonl").write_text(f"{good}\n{{context: oops\n")
    (root / "bad_gold.jsonl").write_text(f"{good}\n\n" + json.dumps({"context": "a", "choices": ["b", "c"],
                                                                      "gold": 2}) + "\n")
    (root / "latin1_task.jsonl").write_bytes(f"{good}\n".encode() + '{"context": "caf\u00e9"}\n'.encode("latin-1"))
    shutil.copytree(root / BASE, root / "truncated")
    weights = root / "truncated/checkpoint/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(root / BASE, root / "mismatched")
    byte_tokenizer().save(root / "mismatched/checkpoint")  # 257 tokens for a model with 300 rows
    # a compact tokenizer's folder cut from another tokenizer (the byte one) than the parent's BPE
    byte_tokenizer().save(root / "foreign_compact")
    (root / "foreign_compact/id_map.json").write_text(json.dumps(list(range(257))))
    try:
        make_gguf(root / "gpt2.gguf", "gpt2", "F32")
        make_gguf(root / "int8.gguf", "llama", "I8")
    except ImportError:
        pass  # the rows that need them skip
    (root / "full").mkdir()
    (root / "ro").mkdir()
    return root, files_of(root / BASE)


def one_error_line(err: str) -> str:
    """The error line, which must be the only line but for the progress bars of work done before the failure
    (a report that cannot be written is found out only when it is written)."""
    lines = [line.split("\r")[-1] for line in err.split("\n")]  # a progress bar redraws after each \r
    lines = [line for line in lines if line.strip()]
    assert lines and all("%|" in line for line in lines[:-1]), err
    assert lines[-1].startswith("tinylm: error: ")
    return lines[-1]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gives_one_line_and_keeps_the_run(case, world, cli, monkeypatch):
    root, run_files = world
    for package in case.needs:
        pytest.importorskip(package, reason=f"this row needs the optional package {package}")
    monkeypatch.chdir(root)
    if case.setup:
        case.setup(monkeypatch)
    code, _, err = cli(*case.argv)
    monkeypatch.undo()
    assert code == 2
    assert "Traceback" not in err
    line = one_error_line(err)
    assert re.search(case.expected, line), line
    assert files_of(root / BASE) == run_files


@pytest.mark.parametrize("name", ["train: binary corpus", "eval --tasks: a row that is not JSON"])
def test_bad_input_as_a_separate_process(name, world):
    """The same rows through the installed entry point's code path: a real process, a real exit status."""
    root, run_files = world
    case = next(case for case in CASES if case.name == name)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("TINYLM_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "tinylm.cli", *case.argv], cwd=root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(case.expected, one_error_line(proc.stderr))
    assert files_of(root / BASE) == run_files


@pytest.mark.parametrize("argv", [["--debug", "eval", "nope"], ["eval", "nope", "--debug"]])
def test_debug_flag_raises_the_error_with_its_traceback(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINYLM_DEBUG", raising=False)
    with pytest.raises(TinyLMError, match="'nope' does not exist"):
        main(argv)


def test_tinylm_debug_variable_raises_the_error_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYLM_DEBUG", "1")
    with pytest.raises(TinyLMError):
        main(["eval", "nope"])


def test_debug_shows_the_traceback_of_a_disk_error(world, monkeypatch):
    root, _ = world
    monkeypatch.chdir(root)
    full_disk(monkeypatch)
    with pytest.raises(OSError) as raised:
        main(["--debug", "eval", BASE, "--json", "full/debug.json"])
    assert raised.value.errno == errno.ENOSPC


def test_a_bug_keeps_its_traceback(world, monkeypatch):
    """Only user errors become one line: anything else (here a ValueError, and an OSError of a kind no user
    causes) propagates out of main with its traceback."""
    import tinylm.eval

    root, _ = world
    monkeypatch.chdir(root)
    monkeypatch.delenv("TINYLM_DEBUG", raising=False)

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(tinylm.eval, "evaluate", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["eval", BASE])

    def failing_device(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/dev/sda")

    monkeypatch.setattr(tinylm.eval, "evaluate", failing_device)
    with pytest.raises(OSError):
        main(["eval", BASE])
