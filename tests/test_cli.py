import json
import subprocess
import sys

import pytest


TINY = ["model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
        "train.batch_size=4", "train.max_steps=6", "train.warmup_steps=1", "train.eval_every=0",
        "train.ckpt_every=3", "train.device=cpu", "train.peak_tflops=1", "data.tokenizer=byte", "data.workers=1"]


def one_error_line(err: str) -> str:
    # what a terminal shows: a progress bar redraws itself after each carriage return
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tinylm: error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_train_eval_sample_end_to_end(cli, text_file, tmp_path):
    code, out, _ = cli("train", f"data.path={text_file}", *TINY, "--out", "runs/e2e")
    assert code == 0
    assert "bits/byte" in out and (tmp_path / "runs/e2e/loss.png").is_file()
    code, out, _ = cli("eval", "runs/e2e", "--json", "report.json")
    assert code == 0 and "bits/byte" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["perplexity"] > 1 and 0 < report["bits_per_byte"] < 8.1
    code, out, _ = cli("sample", "runs/e2e", "--prompt", "The quick", "--max-tokens", "20")
    assert code == 0 and out.startswith("The quick")


def test_a_size_out_of_range_fails_before_the_run_directory_is_made(cli, tmp_path):
    code, _, err = cli("train", "model.n_layer=-2", "--out", "runs/neg")
    assert code == 2
    assert one_error_line(err) == "tinylm: error: model.n_layer=-2 must be at least 1"
    assert list(tmp_path.iterdir()) == []  # no run directory, no prepared data


def test_existing_run_is_not_overwritten_without_asking(cli, text_file, tmp_path):
    assert cli("train", f"data.path={text_file}", *TINY, "--out", "runs/a")[0] == 0
    before = (tmp_path / "runs/a/checkpoint/model.safetensors").read_bytes()
    code, _, err = cli("train", f"data.path={text_file}", *TINY, "--out", "runs/a")
    assert code == 2 and "--resume" in one_error_line(err)
    assert (tmp_path / "runs/a/checkpoint/model.safetensors").read_bytes() == before


def test_overwrite_with_a_bad_model_keeps_the_old_run(cli, text_file, tmp_path):
    assert cli("train", f"data.path={text_file}", *TINY, "--out", "runs/o")[0] == 0
    files = {p: p.read_bytes() for p in (tmp_path / "runs/o").rglob("*") if p.is_file()}
    code, _, err = cli("train", f"data.path={text_file}", *TINY, "model.n_heads=3", "--out", "runs/o",
                       "--overwrite")
    assert code == 2 and "n_heads" in one_error_line(err)
    assert {p: p.read_bytes() for p in (tmp_path / "runs/o").rglob("*") if p.is_file()} == files
    assert cli("train", f"data.path={text_file}", *TINY, "train.max_steps=3", "--out", "runs/o",
               "--overwrite")[0] == 0
    assert [json.loads(line)["step"] for line in (tmp_path / "runs/o/metrics.jsonl").read_text().splitlines()
            if "loss" in line][-1] <= 3


def test_resume_of_a_corrupt_checkpoint_fails_and_keeps_the_run(cli, text_file, tmp_path):
    assert cli("train", f"data.path={text_file}", *TINY, "--out", "runs/c")[0] == 0
    weights = tmp_path / "runs/c/checkpoint/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    files = {p: p.read_bytes() for p in (tmp_path / "runs/c").rglob("*") if p.is_file()}
    code, _, err = cli("train", "--out", "runs/c", "--resume", "train.max_steps=9")
    assert code == 2 and "corrupt" in one_error_line(err)
    assert {p: p.read_bytes() for p in (tmp_path / "runs/c").rglob("*") if p.is_file()} == files


def test_speedrun_reports_bits_per_byte(cli, text_file, tmp_path):
    code, out, _ = cli("speedrun", "--text", str(text_file), "--seconds", "4", "--json", "sr.json",
                       "model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=2")
    assert code == 0
    report = json.loads((tmp_path / "sr.json").read_text())
    assert report["val_bits_per_byte"] == pytest.approx(report["val_nats_per_byte"] / 0.6931471805599453)
    assert report["train_tokens"] > 0 and report["params"] > 0
    assert 4 <= report["seconds"] < 20
    assert report["val_bytes"] == len(text_file.read_bytes()) - int(len(text_file.read_bytes()) * 0.9)


def test_speedrun_with_a_bpe_counts_bytes_not_tokens(cli, text_file, tmp_path):
    code, out, _ = cli("speedrun", "--text", str(text_file), "--seconds", "4", "--json", "sr.json",
                       "--out", "sr-run", "data.tokenizer=bpe", "data.vocab_size=300", "train.precision=fp32",
                       "model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=2")
    assert code == 0
    report = json.loads((tmp_path / "sr.json").read_text())
    assert report["tokenizer"] == "bpe-300" and report["bytes_per_token"] > 1.1
    assert report["val_nats_per_byte"] == pytest.approx(report["val_bits_per_byte"] * 0.6931471805599453)
    raw = text_file.read_bytes()
    assert report["val_bytes"] == len(raw) - int(len(raw) * 0.9)
    import torch
    import torch.nn.functional as F

    from tinylm.checkpoint import load_checkpoint

    # scored again from the saved run (which keeps its tokenizer): the validation text's summed cross-entropy over
    # non-overlapping windows, divided by the bytes behind the predicted tokens, not by the tokens
    run = load_checkpoint(tmp_path / "sr-run")
    assert run.tokenizer.vocab_size == 300
    ids = torch.tensor(run.tokenizer.encode(raw[int(len(raw) * 0.9):].decode("utf-8")))
    context, nats = run.cfg.model.max_seq_len, 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            window = ids[start:start + context + 1]
            nats += F.cross_entropy(run.model(window[None, :-1])[0], window[1:], reduction="sum").item()
    per_byte = nats / (report["val_bytes"] * (len(ids) - 1) / len(ids))
    assert report["val_nats_per_byte"] == pytest.approx(per_byte, rel=1e-4)
    assert per_byte < 0.9 * nats / (len(ids) - 1)  # several bytes per token: nats per byte is well below per token


def test_speedrun_bpe_is_trained_on_the_training_split_only(tmp_path):
    from tinylm.speedrun import token_splits

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 400 + "zyxwvut qponm " * 60)  # the last ~10% only in validation
    data, tokenizer = token_splits(text, None, vocab_size=320)
    train_text, val_text = text.read_text()[:int(len(text.read_text()) * 0.9)], text.read_text()[int(len(text.read_text()) * 0.9):]
    assert tokenizer.decode(data.train.tolist()) + tokenizer.decode(data.val.tolist()) == text.read_text()
    assert data.bytes == {"train": len(train_text), "val": len(val_text)}
    assert "the" in "".join(tokenizer.hf.get_vocab()) and "zyx" not in "".join(tokenizer.hf.get_vocab())
    assert len(tokenizer.encode(" zyxwvut")) >= 7  # never merged: it only occurs after the cut


def test_speedrun_byte_ids_are_what_the_byte_tokenizer_gives(tmp_path):
    from tinylm.speedrun import token_splits
    from tinylm.tokenizer import byte_tokenizer

    text = tmp_path / "t.txt"
    text.write_text("a" + "—" * 1000)  # 3,001 bytes: 90% (byte 2,700) falls inside a three-byte character
    data, tokenizer = token_splits(text, byte_tokenizer())
    raw = text.read_bytes()
    assert len(data.train) == 2701  # the cut moves to the next character's start
    assert data.train.tolist() == tokenizer.encode(raw[:2701].decode("utf-8"))
    assert data.val.tolist() == tokenizer.encode(raw[2701:].decode("utf-8"))
    assert data.bytes == {"train": 2701, "val": 300}


def test_user_errors_print_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tinylm.cli", "eval", str(tmp_path / "no-such-run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "no-such-run" in one_error_line(proc.stderr)


def test_sample_help_says_generation_slides_past_the_context(cli):
    code, out, _ = cli("sample", "--help")
    assert code == 0
    assert "max_seq_len // 2" in " ".join(out.split())


@pytest.mark.parametrize("flags, native", [("fpu sse avx512f avx512_bf16 avx512vl", True),
                                           ("fpu amx_tile amx_bf16", True), ("fpu sse avx2 avx512f avx512bw", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    from tinylm.train.perf import cpu_has_native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n"
                       f"processor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [True, False])
def test_speedrun_trains_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    from tinylm import speedrun

    monkeypatch.setattr(speedrun, "cpu_has_native_bf16", lambda: native)
    assert speedrun.speedrun_config(10).train.precision == ("bf16" if native else "fp32")
    assert speedrun.speedrun_config(10, ["train.precision=fp32"]).train.precision == "fp32"  # an override wins


def test_speedrun_compiles_only_where_the_budget_repays_it(monkeypatch):
    from tinylm import speedrun

    monkeypatch.setattr(speedrun, "cpu_can_compile", lambda: True)
    assert speedrun.speedrun_config(180).train.compile is True
    assert speedrun.speedrun_config(speedrun.COMPILE_MIN_SECONDS).train.compile is True
    assert speedrun.speedrun_config(speedrun.COMPILE_MIN_SECONDS - 1).train.compile is False  # the compile would eat it
    assert speedrun.speedrun_config(180, ["train.compile=false"]).train.compile is False  # an override wins
    # settings train.compile refuses leave it off rather than fail the run
    assert speedrun.speedrun_config(180, ["model.mtp=sequential"]).train.compile is False
    assert speedrun.speedrun_config(180, ["model.dropout=0.1", "train.dropout_schedule=late"]).train.compile is False
    assert speedrun.speedrun_config(180, ["model.dropout=0.1"]).train.compile is True  # a constant dropout compiles
    monkeypatch.setattr(speedrun, "cpu_can_compile", lambda: False)  # no C++ compiler for Inductor
    assert speedrun.speedrun_config(180).train.compile is False


def test_cpu_can_compile_needs_a_cpp_compiler():
    import torch._inductor.config as inductor_config
    from torch._inductor.cpp_builder import cpp_compiler_search

    from tinylm.train.perf import cpu_can_compile

    cpu_can_compile.cache_clear()
    cpp_compiler_search.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-compiler-tinylm",)}):  # Inductor's own override, undone after
            assert cpu_can_compile() is False
    finally:
        cpu_can_compile.cache_clear()
        cpp_compiler_search.cache_clear()
