"""Weight averaging (train.average_from): the final weights are the mean over the last steps, and resume is exact."""

import pytest
import torch

from tinylm import faults
from tinylm.checkpoint import load_checkpoint
from tinylm.errors import TinyLMError
from tinylm.faults import Stopped
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import train
from tinylm.train.average import WeightAverage

from test_dropout import tiny_config
from test_train import StopAt, data  # noqa: F401  Ctrl-C at a step; the same tiny byte-level corpus (a fixture)
from test_train import tiny_config as rounds_base


class Weights:
    """Copies of the weights after every step."""

    def __init__(self):
        self.after = {}

    def __call__(self, info):
        self.after[info.step] = [p.detach().clone() for p in info.model.parameters()]


def test_the_final_weights_are_the_mean_of_those_after_each_step_from_the_start_on(tmp_path, data):
    seen = Weights()
    train(tiny_config("train.max_steps=8", "train.average_from=0.5"), data, byte_tokenizer(), tmp_path / "run",
          progress=False, callbacks=(seen,))
    final = list(load_checkpoint(tmp_path / "run").model.parameters())
    # progress after step s of 8 is s / 8: steps 4..8 reach 0.5
    expected = [torch.stack(ws).mean(0) for ws in zip(*(seen.after[s] for s in range(4, 9)))]
    assert all(torch.allclose(f, e, atol=1e-6) for f, e in zip(final, expected))
    assert not all(torch.equal(f, w) for f, w in zip(final, seen.after[8]))  # the average is not the last weights


def test_without_it_the_final_weights_are_the_last_ones(tmp_path, data):
    seen = Weights()
    train(tiny_config("train.max_steps=6"), data, byte_tokenizer(), tmp_path / "run", progress=False, callbacks=(seen,))
    assert all(torch.equal(f, w) for f, w in zip(load_checkpoint(tmp_path / "run").model.parameters(), seen.after[6]))


def test_a_run_stopped_inside_the_average_resumes_to_the_uninterrupted_weights(tmp_path, data):
    cfg = ["train.max_steps=8", "train.average_from=0.25", "train.ckpt_every=1"]
    whole = train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):  # after step 5: two steps already in the mean
        train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", progress=False, callbacks=(StopAt(5),))
    split = train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    weights = [list(load_checkpoint(tmp_path / run).model.parameters()) for run in ("whole", "split")]
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    assert split.val_bits_per_byte == whole.val_bits_per_byte


def test_a_run_stopped_while_scoring_for_its_next_round_resumes_to_the_uninterrupted_weights(tmp_path, data,
                                                                                              monkeypatch):
    # the round's checkpoints come before its first step's weights join the mean, so a resumed run adds them once
    cfg = ("train.max_steps=12", "train.rounds=2", "train.refine_ratio=0.5", "train.average_from=0.5")
    train(rounds_base(*cfg), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    monkeypatch.setenv(faults.KILL_AT, "scoring-batch:3")
    monkeypatch.setenv(faults.KILL_SIGNAL, "TERM")
    with pytest.raises(Stopped):
        train(rounds_base(*cfg), data, byte_tokenizer(), tmp_path / "split", progress=False)
    monkeypatch.delenv(faults.KILL_AT)
    train(rounds_base(*cfg), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    weights = [list(load_checkpoint(tmp_path / run).model.parameters()) for run in ("whole", "split")]
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_the_running_mean_is_exact():
    w = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage(torch.nn.ParameterList([w]), start=0.5)
    for progress, value in [(0.25, 100.0), (0.5, 1.0), (0.75, 2.0), (1.0, 6.0)]:
        w.data.fill_(value)
        average.update(progress)
    average.apply()
    assert w.tolist() == [3.0, 3.0, 3.0]  # (1 + 2 + 6) / 3: the step before 0.5 is left out


def test_an_average_from_outside_zero_to_one_is_refused():
    with pytest.raises(TinyLMError, match="train.average_from"):
        tiny_config("train.average_from=1.5")
