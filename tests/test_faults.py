"""Numerical faults: a step with a non-finite loss or gradient is skipped, logged, and too many in a row stop
the run with the last good checkpoint kept."""

import json
import math

import pytest
import torch

from tinylm.checkpoint import load_checkpoint
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import StepInfo, loop, train

from test_train import StopAt, byte_data, losses, tiny_config


@pytest.fixture
def data(text_file):
    return byte_data(text_file.read_text())


def nan_loss(loss):
    return loss * math.nan


def inf_gradient(loss):
    loss.register_hook(lambda grad: grad * math.inf)  # the loss stays finite, every gradient does not
    return loss


def fault_at(monkeypatch, steps, fault=nan_loss):
    """Make the objective's loss go through `fault` on the given (1-based) steps; with grad_accum=1 and one
    round, step s trains on batch s - 1."""
    build = loop.build_objective

    def build_faulty(*args):
        objective = build(*args)

        def faulty(model, batch):
            loss, numbers = objective(model, batch)
            return (fault(loss) if batch.index + 1 in steps else loss), numbers
        return faulty
    monkeypatch.setattr(loop, "build_objective", build_faulty)


class Weights:
    """Records the weights after every step."""

    def __init__(self):
        self.after = {}

    def __call__(self, info: StepInfo):
        self.after[info.step] = {k: v.clone() for k, v in info.model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_loss_skips_its_step_and_training_continues(tmp_path, monkeypatch, data):
    fault_at(monkeypatch, {3})
    weights = Weights()
    result = train(tiny_config(), data, byte_tokenizer(), tmp_path, progress=False, callbacks=(weights,))
    assert same(weights.after[3], weights.after[2])
    assert not same(weights.after[4], weights.after[3])
    assert result.steps == 8 and math.isfinite(result.val_loss)
    assert {"step": 3, "skipped": "non-finite loss", "skipped_total": 1} in records(tmp_path)
    assert [s for s, _ in losses(tmp_path)] == [1, 2, 4, 5, 6, 7, 8]
    assert records(tmp_path)[-1]["skipped_total"] == 1


@pytest.mark.parametrize("grad_clip", ["1.0", "0"])
def test_an_inf_gradient_is_caught_with_or_without_clipping(tmp_path, monkeypatch, data, grad_clip):
    fault_at(monkeypatch, {2}, inf_gradient)
    weights = Weights()
    train(tiny_config(f"train.grad_clip={grad_clip}"), data, byte_tokenizer(), tmp_path, progress=False,
          callbacks=(weights,))
    assert same(weights.after[2], weights.after[1])
    assert {"step": 2, "skipped": "non-finite gradient", "skipped_total": 1} in records(tmp_path)
    assert all(torch.isfinite(v).all() for v in weights.after[8].values())


def test_max_bad_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch, data):
    fault_at(monkeypatch, {5, 6, 7, 8})
    weights = Weights()
    with pytest.raises(TinyLMError, match=r"stopped at step 7: 3 steps in a row .* from step 4 is untouched") as e:
        train(tiny_config("train.max_bad_steps=3", "train.ckpt_every=2"), data, byte_tokenizer(), tmp_path,
              progress=False, callbacks=(weights,))
    assert "\n" not in str(e.value)
    saved = load_checkpoint(tmp_path, with_state=True)  # not step 6: no checkpoint is taken among bad steps
    assert saved.state["step"] == 4
    assert same(saved.model.state_dict(), weights.after[4])
    assert [r["skipped_total"] for r in records(tmp_path) if "skipped" in r] == [1, 2, 3]


def test_max_bad_steps_0_never_stops(monkeypatch, data):
    fault_at(monkeypatch, set(range(1, 9)))
    weights = Weights()
    result = train(tiny_config("train.max_bad_steps=0"), data, byte_tokenizer(), progress=False, callbacks=(weights,))
    assert result.steps == 8
    assert same(weights.after[8], weights.after[1])


def test_a_resumed_run_repeats_a_run_with_skips_exactly(tmp_path, monkeypatch, data):
    fault_at(monkeypatch, {2})
    train(tiny_config(), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), data, byte_tokenizer(), tmp_path / "split", progress=False, callbacks=(StopAt(3),))
    train(tiny_config(), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert records(tmp_path / "split")[-1]["skipped_total"] == 1


def test_a_clean_run_skips_nothing(tmp_path, data):
    train(tiny_config(), data, byte_tokenizer(), tmp_path, progress=False)
    assert not any("skipped" in r for r in records(tmp_path))
    assert records(tmp_path)[-1]["skipped_total"] == 0
