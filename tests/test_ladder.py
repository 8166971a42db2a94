import json

import pytest

from tinylm.checkpoint import save_checkpoint
from tinylm.config import Config, ModelConfig
from tinylm.errors import TinyLMError
from tinylm.experiments import ladder as ladder_module
from tinylm.experiments.ladder import LadderPreset, deepest_shape, run_ladder
from tinylm.model import Transformer
from tinylm.tokenizer import train_bpe

SMOLLM2 = ModelConfig(vocab_size=49152, n_layer=30, d_model=576, n_heads=9, n_kv_heads=3, ffn_hidden=1536,
                      max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True)


def test_the_deeper_shape_spends_the_baselines_budget_on_depth_inside_the_parent():
    from tinylm.arch.shapes import param_count
    from tinylm.inherit import ChildShape, child_config

    baseline = child_config(SMOLLM2, ChildShape(2, 128, 2, 1, 352, 256), 49152)  # the quick preset's rung 1
    budget = param_count(baseline)
    shape = deepest_shape(SMOLLM2, budget, 8192, 8)
    assert shape == {"n_layer": 13, "d_model": 192, "n_heads": 3, "n_kv_heads": 1, "ffn_hidden": 512}
    deeper = child_config(SMOLLM2, ChildShape(**shape, max_seq_len=256), 8192)  # inheritable: no error
    assert abs(param_count(deeper) - budget) <= 0.05 * budget
    with pytest.raises(TinyLMError, match="fits inside the parent"):
        deepest_shape(SMOLLM2, 10**9, 8192, 8)


@pytest.fixture(autouse=True)
def _data_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # prepared data goes to ./data_cache


@pytest.fixture
def parent(tmp_path, text_file):
    """A random 4-layer parent with a byte-level BPE of its own, saved as a tinylm run."""
    tokenizer = train_bpe(iter(text_file.read_text().splitlines() * 3), 400)
    cfg = Config(model=ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=4, d_model=128, n_heads=2, n_kv_heads=1,
                                   ffn_hidden=256, max_seq_len=64))
    run = tmp_path / "parent"
    save_checkpoint(run, Transformer(cfg.model), cfg, tokenizer)
    tokenizer.save(run)  # as `tinylm train` leaves it beside the checkpoint
    return run


@pytest.fixture
def task_file(tmp_path):
    rows = [{"context": "the quick brown", "choices": [" fox", " cat"], "gold": 0},
            {"context": "the cat sat on", "choices": [" mat", " fox"], "gold": 0}]
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_preset(task_file) -> LadderPreset:
    return LadderPreset(baseline=dict(n_layer=1, d_model=64, n_heads=1, n_kv_heads=1, ffn_hidden=96), tokens=512,
                        batch_size=2, seq_len=32, limit=2, seeds=(1, 2), calib_tokens=128, vocab=300,
                        tasks=(str(task_file),))


@pytest.fixture
def shape_file(tmp_path):
    path = tmp_path / "recommended.yaml"
    path.write_text("model:\n  n_layer: 3\n  d_model: 64\n  n_heads: 1\n  n_kv_heads: 1\n  ffn_hidden: 128\n")
    return path


def test_the_ladder_trains_every_rung_with_every_seed_and_resumes_without_redoing_work(
        tmp_path, parent, text_file, task_file, shape_file, monkeypatch):
    calls = []
    real_train = ladder_module.Ladder.train_rung

    def counting(self, name, seed, *args, **kwargs):
        calls.append((name, seed))
        if len(calls) == 4 and stop:
            raise KeyboardInterrupt  # killed in the middle of rung 2's second seed
        return real_train(self, name, seed, *args, **kwargs)
    monkeypatch.setattr(ladder_module.Ladder, "train_rung", counting)

    stop = True
    kwargs = dict(parent=parent, shape=shape_file, data=str(text_file), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_ladder(tmp_path / "ladder", tiny_preset(task_file), **kwargs)
    done = sorted(p.parent.parent.name + "/" + p.parent.name for p in (tmp_path / "ladder" / "runs").rglob("result.json"))
    assert done == ["1-baseline/seed1", "1-baseline/seed2", "2-tokenizer/seed1"]

    stop = False
    report = run_ladder(tmp_path / "ladder", tiny_preset(task_file), **kwargs)
    assert [r["rung"] for r in report["rungs"]] == ["baseline", "+tokenizer", "+architecture", "+inheritance", "+rounds"]
    for r in report["rungs"]:
        assert set(r["seeds"]) == {"1", "2"} and r["tokens"] == 512 and r["val_bpb"] > 0
        assert r["latency"]["decode_ms"] > 0 and 0 <= r["zero_shot_avg"] <= 1
    vocab = [r["shape"]["vocab_size"] for r in report["rungs"]]
    assert vocab[0] > vocab[1] == 300 and len(set(vocab[1:])) == 1
    assert report["rungs"][2]["shape"]["n_layer"] == 3  # rung 3 takes the shape it was given
    assert len(report["verdicts"]) == 4
    inherit = json.loads((tmp_path / "ladder" / "inherit" / "inherit.json").read_text())
    assert inherit["depth"] == "loss" and len(inherit["layers"]) == 3
    rounds = json.loads((tmp_path / "ladder" / "runs" / "5-rounds" / "seed1" / "rounds" / "round2.batches.json").read_text())
    assert len(rounds["batches"]) > 0
    for name in ("ladder.json", "ladder.md", "ladder.png"):
        assert (tmp_path / "ladder" / name).is_file()

    calls.clear()
    again = run_ladder(tmp_path / "ladder", tiny_preset(task_file), **kwargs)
    assert again["rungs"] == report["rungs"]
    # a finished rung is read back from its result file, not trained again
    seeds_trained = [p for p in (tmp_path / "ladder" / "runs").rglob("metrics.jsonl")]
    assert len(seeds_trained) == 10


def test_a_ladder_with_other_settings_is_not_mixed_in(tmp_path, parent, text_file, task_file, shape_file):
    kwargs = dict(parent=parent, shape=shape_file, data=str(text_file), progress=False)
    out = tmp_path / "ladder"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"parent": "elsewhere"}))
    with pytest.raises(TinyLMError, match="other settings"):
        run_ladder(out, tiny_preset(task_file), **kwargs)


def test_one_seed_is_refused(tmp_path, parent, task_file):
    with pytest.raises(TinyLMError, match="two seeds"):
        run_ladder(tmp_path / "ladder", tiny_preset(task_file), parent=parent, seeds=(1,))
