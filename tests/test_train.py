import json

import numpy as np
import pytest
import torch

from tinylm.checkpoint import load_checkpoint
from tinylm.config import load_config
from tinylm.data.tokens import TokenData
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import StepInfo, train


def byte_data(text: str) -> TokenData:
    ids = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16)
    cut = int(len(ids) * 0.9)
    return TokenData(ids[:cut], ids[cut:], {"train": cut, "val": len(ids) - cut}, 257, 256)


@pytest.fixture
def data(text_file):
    return byte_data(text_file.read_text())


def tiny_config(*overrides):
    return load_config(overrides=[
        "model.n_layer=2", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
        "train.batch_size=4", "train.max_steps=8", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=4", "train.eval_tokens=256", "train.ckpt_every=0", "train.device=cpu",
        "train.peak_tflops=1", *overrides])


def losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


class StopAt:
    def __init__(self, step):
        self.step = step

    def __call__(self, info: StepInfo):
        if info.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_repeats_the_uninterrupted_losses_exactly(tmp_path, data, optimizer):
    # dropout and accumulation make the check cover RNG state and micro-batch positions too
    cfg = ["model.dropout=0.1", "train.grad_accum=2", f"train.optimizer={optimizer}"]
    assert_resume_repeats_the_whole_run(cfg, data, tmp_path)


def assert_resume_repeats_the_whole_run(cfg: list[str], data, tmp_path) -> None:
    """A run stopped after step 3 and resumed logs the losses of, and ends with the weights of, one run through."""
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", progress=False, callbacks=(StopAt(3),))
    assert [s for s, _ in losses(tmp_path / "split")] == [1, 2, 3]
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    whole = load_checkpoint(tmp_path / "whole").model.state_dict()
    split = load_checkpoint(tmp_path / "split").model.state_dict()
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_training_lowers_loss_and_writes_a_run(tmp_path, data):
    result = train(tiny_config("train.max_steps=40", "train.lr=1e-2"), data, byte_tokenizer(), tmp_path, progress=False)
    first, last = losses(tmp_path)[0][1], losses(tmp_path)[-1][1]
    assert last < first - 1.0
    assert result.val_loss < np.log(257)
    assert result.val_bits_per_byte == pytest.approx(result.val_loss / np.log(2), rel=0.02)  # bytes == tokens
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "loss.png", "checkpoint/model.safetensors",
                 "checkpoint/state.pt", "checkpoint/tokenizer.json", "checkpoint/config.yaml"):
        assert (tmp_path / name).is_file(), name
    assert result.mfu > 0 and result.tokens == 40 * 4 * 32


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_mfu_is_stated_against_the_matmul_rate_of_the_precision_trained_in(monkeypatch, data, precision, dtype):
    import tinylm.train.perf as perf

    rates = {torch.float32: 1e11, torch.bfloat16: 4e11}
    asked = []
    monkeypatch.setattr(perf, "measured_matmul_flops",
                        lambda device, dtype=torch.float32: asked.append(dtype) or rates[dtype])
    perf.peak_flops.cache_clear()
    try:
        cfg = tiny_config("train.max_steps=3", "train.peak_tflops=0", f"train.precision={precision}")
        result = train(cfg, data, byte_tokenizer(), progress=False)
    finally:
        perf.peak_flops.cache_clear()
    assert asked == [dtype] and result.peak_flops == rates[dtype]


def test_token_and_time_limits_stop_training(data):
    result = train(tiny_config("train.max_steps=0", "train.max_tokens=640"), data, byte_tokenizer(), progress=False)
    assert result.steps == 5  # 640 tokens / (4 x 32) per step
    result = train(tiny_config("train.max_steps=0", "train.max_seconds=1.5"), data, byte_tokenizer(), progress=False)
    assert 1.5 <= result.seconds < 6.0  # stops at the first step boundary past the limit


def test_resume_from_a_corrupt_checkpoint_fails_cleanly_and_keeps_files(tmp_path, data):
    train(tiny_config(), data, byte_tokenizer(), tmp_path, progress=False)
    state = tmp_path / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(TinyLMError, match="state.pt' is corrupt"):
        train(tiny_config(), data, byte_tokenizer(), tmp_path, resume=True, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_corrupt_weights_are_reported(tmp_path, data):
    train(tiny_config(), data, byte_tokenizer(), tmp_path, progress=False)
    weights = tmp_path / "checkpoint" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(TinyLMError, match="model.safetensors' is corrupt"):
        load_checkpoint(tmp_path)


def test_checkpoint_with_a_mismatched_tokenizer_is_rejected(tmp_path, data):
    train(tiny_config(), data, byte_tokenizer(), tmp_path, progress=False)
    from tinylm.tokenizer import train_bpe
    train_bpe(iter(["some text to learn a few merges from"] * 5), 300).save(tmp_path / "checkpoint")
    with pytest.raises(TinyLMError, match="does not match its tokenizer"):
        load_checkpoint(tmp_path)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(TinyLMError, match="fewer than one sequence"):
        train(tiny_config(), byte_data("tiny text"), byte_tokenizer(), progress=False)
