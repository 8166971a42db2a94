"""`tinylm ablate stlm` on a tiny preset: every row with every seed, equal text, resumable, a verdict per row."""

import json

import pytest

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.experiments import stlm as stlm_module
from tinylm.experiments.stlm import ROWS, StlmPreset, run_ablation, shared_deeper
from tinylm.model import Transformer

from test_ladder import parent, task_file  # noqa: F401  a tiny saved run (the teacher) and a task file


@pytest.fixture(autouse=True)
def _data_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # prepared data goes to ./data_cache


def tiny_preset(task_file) -> StlmPreset:
    return StlmPreset(shape=dict(n_layer=2, d_model=64, n_heads=2, n_kv_heads=1, ffn_hidden=128), text_bytes=4000,
                      batch_size=2, seq_len=32, byte_seq_len=64, limit=2, seeds=(1, 2), vocab=300,
                      byte_model=(("patching", "space"), ("d_local", 32), ("n_local_heads", 2)),
                      tasks=(str(task_file),))


def test_sharing_the_ffn_spends_the_saved_parameters_on_depth():
    import torch

    tied = ModelConfig(vocab_size=8192, n_layer=8, d_model=256, n_heads=4, n_kv_heads=2, ffn_hidden=704)
    deeper = shared_deeper(tied)
    with torch.device("meta"):
        budget = Transformer(tied).param_counts()["total"]
        spent = Transformer(deeper).param_counts()["total"]
        one_more = Transformer(ModelConfig(**{**deeper.__dict__, "n_layer": deeper.n_layer + 1})).param_counts()["total"]
    assert deeper.ffn_sharing == "all" and deeper.n_layer > tied.n_layer
    assert spent <= budget < one_more


def test_the_ablation_trains_every_row_on_equal_text_and_resumes(tmp_path, parent, text_file, task_file,
                                                                  monkeypatch):
    calls = []
    real_train = stlm_module.StlmAblation.train_row

    def counting(self, name, seed, *args, **kwargs):
        calls.append((name, seed))
        if len(calls) == 3 and stop:
            raise KeyboardInterrupt  # killed in row 2's first seed
        return real_train(self, name, seed, *args, **kwargs)
    monkeypatch.setattr(stlm_module.StlmAblation, "train_row", counting)

    stop = True
    kwargs = dict(teacher=parent, data=str(text_file), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(tmp_path / "stlm", tiny_preset(task_file), **kwargs)
    stop = False
    report = run_ablation(tmp_path / "stlm", tiny_preset(task_file), **kwargs)
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == list(ROWS)
    for r in rows.values():
        assert set(r["seeds"]) == {"1", "2"} and r["val_bpb"] > 0
        assert abs(r["text_bytes"] - 4000) <= 0.25 * 4000  # equal text, up to whole steps
    assert rows["+byte-level pooling"]["tokens"] > rows["+tied embeddings"]["tokens"]  # bytes, not tokens
    assert rows["+tied embeddings"]["params"]["total"] < rows["baseline"]["params"]["total"]
    assert all(0 <= r["zero_shot_avg"] <= 1 for r in rows.values())
    assert rows["+distillation"]["train"]["distill_teacher"] == str(parent)
    assert len(report["verdicts"]) == len(ROWS) - 1
    for name in ("ablation.json", "ablation.md", "ablation.png"):
        assert (tmp_path / "stlm" / name).is_file()
    logged = [json.loads(line) for line in
              (tmp_path / "stlm" / "runs" / "5-dropout-schedule" / "seed1" / "metrics.jsonl").read_text().splitlines()]
    assert any("dropout" in record for record in logged)

    calls.clear()
    again = run_ablation(tmp_path / "stlm", tiny_preset(task_file), **kwargs)
    assert again["rows"] == report["rows"]
    assert len(list((tmp_path / "stlm" / "runs").rglob("metrics.jsonl"))) == 2 * len(ROWS)


def test_one_seed_is_refused(tmp_path, parent, task_file):
    with pytest.raises(TinyLMError, match="two seeds"):
        run_ablation(tmp_path / "stlm", tiny_preset(task_file), teacher=parent, seeds=(1,))
