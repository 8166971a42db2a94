"""Dropout schedules: the values of each schedule, every dropout site set, logged, and exact resume."""

import json

import pytest
import torch
import torch.nn as nn

import tinylm.model.llama as llama
from tinylm.config import ModelConfig, load_config
from tinylm.errors import TinyLMError
from tinylm.model import Transformer
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import train
from tinylm.train.schedule import dropout_at

from test_train import StopAt, data  # noqa: F401  Ctrl-C at a step; the same tiny byte-level corpus (a fixture)


def tiny_config(*overrides):
    return load_config(overrides=[
        "model.n_layer=2", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
        "train.batch_size=4", "train.max_steps=8", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=0", "train.ckpt_every=0", "train.device=cpu", "train.peak_tflops=1",
        "train.eval_tokens=256", "eval.max_tokens=256", *overrides])


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def at(progress, schedule, **kw):
    return dropout_at(progress, peak=0.2, schedule=schedule, **kw)


def test_constant_is_the_peak_throughout():
    assert [at(p, "constant") for p in (0.0, 0.5, 1.0)] == [0.2, 0.2, 0.2]


def test_early_ramps_from_the_peak_to_zero_by_its_end_point():
    assert [at(p, "early", until=0.25) for p in (0.0, 0.125, 0.25, 0.6, 1.0)] == pytest.approx([0.2, 0.1, 0, 0, 0])


def test_late_is_off_until_its_start_then_the_peak():
    assert [at(p, "late", start=0.5) for p in (0.0, 0.49, 0.5, 1.0)] == [0.0, 0.0, 0.2, 0.2]


def test_triangle_rises_and_falls_once_per_cycle():
    assert [at(p, "triangle") for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([0, 0.1, 0.2, 0.1, 0])
    assert [at(p, "triangle", cycles=2) for p in (0.0, 0.25, 0.5, 0.75)] == pytest.approx([0, 0.2, 0, 0.2])


def test_an_unknown_schedule_is_refused_before_training(tmp_path, data):
    with pytest.raises(TinyLMError, match="train.dropout_schedule='ramp' is not one of constant, early, late, triangle"):
        train(tiny_config("train.dropout_schedule=ramp"), data, byte_tokenizer(), tmp_path, progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_changing_p_under_torch_compile_is_refused(data):
    # torch.compile guards on each dropout p, so a new p every step would recompile until it gives up
    with pytest.raises(TinyLMError, match="set train.compile=false"):
        train(tiny_config("model.dropout=0.1", "train.dropout_schedule=early", "train.compile=true"), data,
              byte_tokenizer(), progress=False)


def test_set_dropout_reaches_the_embedding_residual_and_attention_sites(monkeypatch):
    model = Transformer(ModelConfig(vocab_size=97, n_layer=3, d_model=32, n_heads=2, n_kv_heads=1, max_seq_len=16,
                                    block_repeat=2)).train()
    model.set_dropout(0.3)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 + 3 and all(m.p == 0.3 for m in dropouts)  # embedding + one per distinct block
    seen = []
    sdpa = llama.F.scaled_dot_product_attention

    def recording(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(llama.F, "scaled_dot_product_attention", recording)
    model(torch.randint(0, 97, (1, 8)))
    assert seen == [0.3] * 6  # every application of every block


def test_metrics_log_the_scheduled_p_and_resume_repeats_the_uninterrupted_run(tmp_path, data):
    cfg = ["model.dropout=0.3", "train.dropout_schedule=triangle"]
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    logged = [(r["step"], r["dropout"]) for r in records(tmp_path / "whole") if "loss" in r]
    # p is set before each step from the progress at its start: step s (1-based) trains at (s - 1) / 8
    assert logged == [(s, pytest.approx(dropout_at((s - 1) / 8, peak=0.3, schedule="triangle"))) for s in range(1, 9)]
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", progress=False, callbacks=(StopAt(3),))
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    losses = [[(r["step"], r["loss"], r["dropout"]) for r in records(run) if "loss" in r]
              for run in (tmp_path / "whole", tmp_path / "split")]
    assert losses[0] == losses[1]


def test_the_loop_applies_the_scheduled_p(tmp_path, data):
    """Late dropout trains exactly as no dropout while it is off (steps 1-4 of 8), and differently once on."""
    train(tiny_config("model.dropout=0.3", "train.dropout_schedule=late"), data, byte_tokenizer(), tmp_path / "late",
          progress=False)
    train(tiny_config("model.dropout=0.0"), data, byte_tokenizer(), tmp_path / "none", progress=False)
    late, none = ([r["loss"] for r in records(tmp_path / run) if "loss" in r] for run in ("late", "none"))
    assert late[:4] == none[:4] and late[4] != none[4]
