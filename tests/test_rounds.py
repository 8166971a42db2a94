import json

import numpy as np
import pytest
import torch

from tinylm.checkpoint import load_checkpoint
from tinylm.config import load_config
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import loop, train
from tinylm.train.optim import build_optimizer, peak_lrs
from tinylm.train.rounds import draw_batches, plan_rounds
from tinylm.model import Transformer

from test_train import StopAt, byte_data, losses, tiny_config


@pytest.fixture
def data(text_file):
    return byte_data(text_file.read_text())


def rounds_config(*overrides):
    return tiny_config("train.max_steps=12", "train.rounds=2", "train.refine_ratio=0.5", "train.eval_every=0",
                       "model.dropout=0.1", *overrides)


@pytest.mark.parametrize("total, rounds, ratio, sizes", [
    (12, 2, 0.5, [8, 4]), (100, 3, 0.5, [50, 25, 25]), (10, 1, 0.5, [10]), (7, 2, 1.0, [4, 3]), (13, 3, 0.5, [6, 3, 4])])
def test_rounds_split_the_whole_budget(total, rounds, ratio, sizes):
    plan = plan_rounds(total, rounds, ratio)
    assert [r.steps for r in plan] == sizes
    assert sum(sizes) == total and [r.start for r in plan] == [sum(sizes[:i]) for i in range(len(sizes))]
    assert all(r.steps <= plan[0].steps for r in plan)  # later rounds draw without replacement


def test_a_refine_ratio_outside_0_1_is_refused():
    with pytest.raises(TinyLMError, match="refine_ratio"):
        plan_rounds(10, 2, 1.5)


def test_draws_are_distinct_and_as_many_as_asked():
    losses = np.random.default_rng(0).normal(3, 1, 50)
    for n in (1, 10, 50):
        drawn = draw_batches(losses, n, 1.0, [0, n])
        assert len(drawn) == n == len(set(drawn.tolist())) and set(drawn.tolist()) <= set(range(50))


def test_a_single_draw_follows_softmax_of_loss_over_temperature():
    losses = np.log([1.0, 2.0, 3.0, 4.0])  # softmax at tau = 1: 0.1, 0.2, 0.3, 0.4
    trials = 20000
    firsts = np.bincount([draw_batches(losses, 1, 1.0, [7, t])[0] for t in range(trials)], minlength=4)
    assert np.allclose(firsts / trials, [0.1, 0.2, 0.3, 0.4], atol=0.012)
    # tau = 2 flattens them: p proportional to sqrt(1, 2, 3, 4)
    firsts = np.bincount([draw_batches(losses, 1, 2.0, [8, t])[0] for t in range(trials)], minlength=4)
    expected = np.sqrt([1, 2, 3, 4]) / np.sqrt([1, 2, 3, 4]).sum()
    assert np.allclose(firsts / trials, expected, atol=0.012)


def test_the_second_draw_excludes_the_first():
    # with one dominant batch, it is drawn first and the second draw follows softmax over the rest
    losses = np.array([50.0, 0.0, np.log(3.0)])
    seconds = np.bincount([draw_batches(losses, 2, 1.0, [1, t])[1] for t in range(8000)], minlength=3)
    assert seconds[0] == 0 and seconds[2] / seconds.sum() == pytest.approx(0.75, abs=0.02)


def test_two_rounds_train_on_drawn_hard_batches_with_their_own_warmup(tmp_path, data):
    result = train(rounds_config(), data, byte_tokenizer(), tmp_path, progress=False)
    assert result.steps == 12
    record = json.loads((tmp_path / "rounds" / "round2.batches.json").read_text())
    assert len(record["batches"]) == 4 and len(set(record["batches"])) == 4
    assert set(record["batches"]) <= set(range(8))
    scores = np.load(tmp_path / "rounds" / "round2.scores.npy")
    assert scores.shape == (8,) and np.isfinite(scores).all()
    assert record["mean_loss_all"] == pytest.approx(scores.mean())
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in lines if "loss" in r}
    assert [by_step[s]["round"] for s in range(1, 13)] == [1] * 8 + [2] * 4
    # warmup (2 steps) restarts at the round's first step: half the peak lr, as at step 1
    assert by_step[9]["lr"] == pytest.approx(by_step[1]["lr"]) == pytest.approx(1e-3)


def test_round_two_trains_on_the_first_rounds_batches_it_drew(tmp_path, data, monkeypatch):
    seen = []
    original = data.batch
    monkeypatch.setattr(data, "batch", lambda *a: seen.append(a[3]) or original(*a))
    train(rounds_config("train.grad_accum=2"), data, byte_tokenizer(), tmp_path, progress=False)
    drawn = json.loads((tmp_path / "rounds" / "round2.batches.json").read_text())["batches"]
    micro = [2 * b + m for b in drawn for m in (0, 1)]
    assert seen[:16] == list(range(16))  # round 1: steps 0..7, two micro-batches each
    assert seen[16:32] == list(range(16))  # scoring: every first-round batch
    assert seen[32:] == micro


def test_resume_inside_round_two_repeats_the_uninterrupted_run_without_rescoring(tmp_path, data, monkeypatch):
    train(rounds_config(), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(rounds_config(), data, byte_tokenizer(), tmp_path / "split", progress=False, callbacks=(StopAt(10),))

    def no_scoring(*args, **kwargs):
        raise AssertionError("round 2 was scored again")
    monkeypatch.setattr(loop, "score_batches", no_scoring)
    train(rounds_config(), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    whole, split = (load_checkpoint(tmp_path / d).model.state_dict() for d in ("whole", "split"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_scoring_interrupted_halfway_continues_where_it_stopped(tmp_path, data, monkeypatch):
    train(rounds_config(), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    real = loop.score_batches
    scored = []

    def interrupted(model, batch_of, n, scores_file, autocast, progress):
        def counting(i):
            if len(scored) == 5:
                raise KeyboardInterrupt
            scored.append(i)
            return batch_of(i)
        return real(model, counting, n, scores_file, autocast, progress, save_every_s=0.0)
    monkeypatch.setattr(loop, "score_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(rounds_config(), data, byte_tokenizer(), tmp_path / "split", progress=False)
    partial = np.load(tmp_path / "split" / "rounds" / "round2.scores.npy")
    assert np.isfinite(partial).sum() == 5 and np.isnan(partial).sum() == 3
    assert load_checkpoint(tmp_path / "split", with_state=True).state["step"] == 8  # the round's end was saved

    scored.clear()
    monkeypatch.setattr(loop, "score_batches", lambda *a: real(*a, save_every_s=0.0) if scored.append(1) is None else 0)
    train(rounds_config(), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    assert np.array_equal(np.load(tmp_path / "split" / "rounds" / "round2.scores.npy"),
                          np.load(tmp_path / "whole" / "rounds" / "round2.scores.npy"))
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")


def test_rounds_need_a_step_or_token_budget(data):
    with pytest.raises(TinyLMError, match="step or token budget"):
        train(rounds_config("train.max_steps=0", "train.max_seconds=5"), data, byte_tokenizer(), progress=False)


def test_rounds_split_a_token_budget_too(data):
    result = train(rounds_config("train.max_steps=0", "train.max_tokens=1536"), data, byte_tokenizer(), progress=False)
    assert result.steps == 12 and result.tokens == 1536  # 1536 / (4 x 32) steps over both rounds


def test_sqrt_rule_scales_both_learning_rates_with_the_batch():
    base = ["train.lr=1e-3", "train.muon_lr=0.02", "train.lr_batch_tokens=512", "model.max_seq_len=32"]
    cfg = load_config(overrides=[*base, "train.lr_scaling=sqrt", "train.batch_size=16", "train.grad_accum=4"])
    assert peak_lrs(cfg) == pytest.approx((2e-3, 0.04))  # 16 x 4 x 32 = 2048 tokens, 4 x the reference -> x2
    cfg = load_config(overrides=[*base, "train.lr_scaling=sqrt", "train.batch_size=4"])
    assert peak_lrs(cfg) == pytest.approx((5e-4, 0.01))  # 128 tokens: a quarter of the reference -> half the lr
    cfg = load_config(overrides=[*base, "train.batch_size=64"])
    assert peak_lrs(cfg) == pytest.approx((1e-3, 0.02))  # the rule is off by default


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_groups_start_from_the_scaled_learning_rates(optimizer):
    cfg = load_config(overrides=["model.vocab_size=64", "model.n_layer=1", "model.d_model=32", "model.n_heads=2",
                                 "model.n_kv_heads=1", "model.max_seq_len=32", "train.batch_size=4",
                                 "train.lr_scaling=sqrt", "train.lr_batch_tokens=32", f"train.optimizer={optimizer}"])
    opt = build_optimizer(Transformer(cfg.model), cfg, torch.device("cpu"))
    lr, muon_lr = cfg.train.lr * 2, cfg.train.muon_lr * 2  # 4 x 32 = 4 x the reference
    expected = [muon_lr, lr, lr] if optimizer == "muon" else [lr, lr]
    assert [g["base_lr"] for g in opt.param_groups] == pytest.approx(expected)


def test_an_unknown_scaling_rule_is_refused():
    with pytest.raises(TinyLMError, match="lr_scaling"):
        peak_lrs(load_config(overrides=["train.lr_scaling=linear"]))
