"""Architecture search: closed-form parameter counts, the shapes near a budget, latency measurement, the
recommendation rule, and `tinylm arch sweep` end to end (outputs, resuming, refusing other arguments)."""

import csv

import pytest
import torch

import tinylm.arch.sweep as sweep_module
from tinylm.arch import enumerate_shapes, measure_latency, param_count, parse_count, read_shape, shape_name
from tinylm.arch.shapes import MAX_ASPECT, MIN_ASPECT
from tinylm.arch.sweep import depth_bands, pareto_front, parse_latency, proxy_candidates, recommend, spread_over_depth
from tinylm.config import ModelConfig, load_config
from tinylm.errors import TinyLMError
from tinylm.model import Transformer


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # proxy training prepares its data into ./data_cache


def _built_total(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return Transformer(cfg).param_counts()["total"]


def _fake_latency(cfg, device="cpu"):
    """Deterministic stand-in for measure_latency: deeper is slower."""
    return {"decode_ms": 0.1 * cfg.n_layer + cfg.d_model / 10_000, "prefill_tok_s": 1000.0, "weights_kv_mb": 1.0}


@pytest.mark.parametrize("budget,vocab", [(500_000, 512), (2_000_000, 512)])
def test_closed_form_count_equals_the_built_model_for_every_enumerated_shape(budget, vocab):
    shapes = enumerate_shapes(budget, vocab, max_seq_len=32)
    assert shapes
    for cfg in shapes:
        assert param_count(cfg) == _built_total(cfg), shape_name(cfg)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("head_dim", [0, 24])
def test_closed_form_count_covers_tying_biases_and_explicit_head_size(tie, qkv_bias, head_dim):
    cfg = ModelConfig(vocab_size=300, n_layer=3, d_model=96, n_heads=6, n_kv_heads=2, head_dim=head_dim,
                      ffn_hidden=0, qkv_bias=qkv_bias, tie_embeddings=tie, max_seq_len=16)
    assert param_count(cfg) == _built_total(cfg)


@pytest.mark.parametrize("budget", [1_000_000, 5_000_000, 20_000_000, 135_000_000, 500_000_000, 1_500_000_000])
def test_sensible_budgets_give_distinct_shapes_within_five_percent(budget):
    shapes = enumerate_shapes(budget, 8192)
    assert shapes
    assert len({shape_name(cfg) for cfg in shapes}) == len(shapes)
    for cfg in shapes:
        assert abs(param_count(cfg) - budget) <= 0.05 * budget
        assert cfg.n_heads % cfg.n_kv_heads == 0 and cfg.ffn_hidden % 32 == 0
        assert MIN_ASPECT <= cfg.d_model / cfg.n_layer <= MAX_ASPECT


def test_a_budget_the_embedding_alone_exceeds_gives_no_shape():
    assert enumerate_shapes(100_000, 8192) == []


@pytest.mark.parametrize("text,count", [("20M", 20_000_000), ("1.5B", 1_500_000_000), ("500k", 500_000),
                                        ("2000000", 2_000_000), ("1,000,000", 1_000_000), (300, 300)])
def test_parameter_counts_are_read_with_suffixes(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["20X", "", "M", "0"])
def test_a_bad_parameter_count_is_a_user_error(text):
    with pytest.raises(TinyLMError):
        parse_count(text)


def test_latency_budgets_are_read_in_milliseconds():
    assert parse_latency("10ms") == parse_latency("10") == 10.0
    assert parse_latency("0.5s") == 500.0
    with pytest.raises(TinyLMError):
        parse_latency("fast")


def test_measure_latency_gives_positive_numbers_and_leaves_a_model_in_its_mode(small_cfg):
    report = measure_latency(small_cfg, "cpu", decode_tokens=4)
    assert report["decode_ms"] > 0 and report["prefill_tok_s"] > 0
    model = Transformer(small_cfg).train()
    report = measure_latency(model, decode_tokens=4)
    weights = sum(p.numel() for p in model.parameters()) * 4
    kv = 2 * small_cfg.n_layer * small_cfg.n_kv_heads * (small_cfg.d_model // small_cfg.n_heads) * 32 * 4
    assert report["weights_kv_mb"] * 2**20 == pytest.approx(weights + kv)
    assert model.training


def test_the_spread_covers_the_shallowest_and_the_deepest_shapes():
    shapes = enumerate_shapes(2_000_000, 512)
    depths = sorted({cfg.n_layer for cfg in shapes})
    picked = spread_over_depth(shapes, 3, 2_000_000)
    assert len({cfg.n_layer for cfg in picked}) == 3 and {depths[0], depths[-1]} <= {cfg.n_layer for cfg in picked}
    more = spread_over_depth(shapes, len(depths) + 5, 2_000_000)
    assert len({shape_name(cfg) for cfg in more}) == len(depths) + 5
    assert {cfg.n_layer for cfg in more} == set(depths)
    assert spread_over_depth(shapes, 0, 2_000_000) == shapes


def _row(name, n_layer, decode_ms, params=1000, val_bpb=None):
    return {"shape": name, "n_layer": n_layer, "decode_ms": decode_ms, "params": params, "val_bpb": val_bpb}


def test_without_training_the_deepest_shape_within_the_latency_budget_is_recommended():
    rows = [_row("a", 4, 1.0), _row("b", 8, 2.0), _row("c", 8, 1.5), _row("d", 12, 9.0)]
    assert recommend(rows, None)[0]["shape"] == "d"
    best, reason = recommend(rows, 5.0)
    assert best["shape"] == "c" and "deepest" in reason
    best, reason = recommend(rows, 0.5)
    assert best["shape"] == "a" and "no measured shape" in reason


def test_with_training_the_best_bits_per_byte_within_the_budget_is_recommended():
    rows = [_row("a", 4, 1.0, val_bpb=2.0), _row("b", 8, 2.0, val_bpb=1.8), _row("c", 12, 9.0, val_bpb=1.5),
            _row("d", 16, 3.0)]
    assert recommend(rows, None)[0]["shape"] == "c"
    assert recommend(rows, 5.0)[0]["shape"] == "b"


def test_proxy_candidates_are_the_nearest_the_budget_in_each_depth_band():
    assert depth_bands([2, 2, 3, 5, 8, 9, 12, 16]) == [[2, 3], [5, 8], [9, 12, 16]]
    assert depth_bands([4, 6]) == [[4], [6]]
    rows = [_row("a", 2, 1.0, params=900), _row("b", 2, 1.1, params=1000), _row("c", 5, 2.0, params=1020),
            _row("d", 9, 3.0, params=980), _row("e", 9, 3.2, params=1000)]
    assert [row["shape"] for row in proxy_candidates(rows, 1000, 1, None)] == ["b", "c", "e"]
    assert [row["shape"] for row in proxy_candidates(rows, 1000, 1, 2.5)] == ["b", "c"]


def test_the_pareto_front_keeps_only_undominated_shapes():
    rows = [_row("a", 4, 1.0), _row("b", 3, 2.0), _row("c", 8, 2.5), _row("d", 8, 3.0)]
    assert [row["shape"] for row in pareto_front(rows, "n_layer", True)] == ["a", "c"]


def _sweep(cli, out, *extra, max_shapes=4):
    return cli("arch", "sweep", "--params", "0.5M", "--tokenizer", "byte", "--max-seq-len", 32, "--max-shapes",
               max_shapes, "--out", out, *extra)


def test_a_sweep_writes_its_table_plot_and_a_recipe_that_train_and_inherit_read(cli, tmp_path):
    code, out, err = _sweep(cli, tmp_path / "sweep", max_shapes=2)
    assert code == 0, err
    files = {p.name for p in (tmp_path / "sweep").iterdir()}
    assert {"sweep.csv", "sweep.md", "pareto.png", "recommended.yaml", "sweep.json"} <= files
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert len(rows) == 2 and all(float(row["decode_ms"]) > 0 and float(row["prefill_tok_s"]) > 0 for row in rows)
    deepest = max(rows, key=lambda row: int(row["n_layer"]))
    assert f"**{deepest['shape']}**" in (tmp_path / "sweep" / "sweep.md").read_text()
    recipe = tmp_path / "sweep" / "recommended.yaml"
    cfg = load_config(recipe, ["model.vocab_size=257"]).model
    assert param_count(cfg) == int(deepest["params"]) == _built_total(cfg)
    shape = read_shape(recipe)
    assert (shape.n_layer, shape.d_model, shape.max_seq_len) == (int(deepest["n_layer"]), int(deepest["d_model"]), 32)


def test_inherit_takes_the_childs_shape_from_a_recipe_with_flags_over_it(cli, tiny_run, tmp_path):
    run, _, _ = tiny_run
    recipe = tmp_path / "shape.yaml"
    recipe.write_text("model:\n  n_layer: 1\n  d_model: 16\n  n_heads: 1\n  n_kv_heads: 1\n  ffn_hidden: 24\n"
                      "  max_seq_len: 40\n")
    code, _, err = cli("inherit", "--parent", run, "--shape", recipe, "--width", "l1", "--out", tmp_path / "child")
    assert code == 0, err
    child = load_config(tmp_path / "child" / "config.yaml").model
    assert (child.n_layer, child.d_model, child.n_heads, child.ffn_hidden, child.max_seq_len) == (1, 16, 1, 24, 40)
    code, _, err = cli("inherit", "--parent", run, "--shape", recipe, "--n-layer", "2", "--max-seq-len", "20",
                       "--width", "l1", "--out", tmp_path / "child2")
    assert code == 0, err
    child = load_config(tmp_path / "child2" / "config.yaml").model
    assert (child.n_layer, child.d_model, child.max_seq_len) == (2, 16, 20)


def test_a_recipe_without_a_model_section_is_no_shape(tmp_path):
    recipe = tmp_path / "train_only.yaml"
    recipe.write_text("train:\n  lr: 0.001\n")
    with pytest.raises(TinyLMError, match="no model: section"):
        read_shape(recipe)


def test_a_rerun_skips_the_shapes_already_measured(cli, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep_module, "measure_latency", lambda cfg, device: calls.append(cfg) or _fake_latency(cfg))
    assert _sweep(cli, tmp_path / "sweep")[0] == 0
    assert len(calls) == 4

    def interrupted(cfg, device):
        raise KeyboardInterrupt

    (tmp_path / "sweep" / "sweep.csv").unlink()  # the table is rebuilt from the steps' files
    monkeypatch.setattr(sweep_module, "measure_latency", interrupted)
    code, out, err = _sweep(cli, tmp_path / "sweep")
    assert code == 0, err
    assert "skipped 4 already measured" in out + err
    assert len(list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))) == 4


def test_an_interrupted_sweep_measures_only_what_is_left(cli, tmp_path, monkeypatch):
    calls = []

    def dies_on_the_third(cfg, device):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(shape_name(cfg))
        return _fake_latency(cfg)

    monkeypatch.setattr(sweep_module, "measure_latency", dies_on_the_third)
    assert _sweep(cli, tmp_path / "sweep")[0] == 130  # Ctrl-C: one line, the status of SIGINT
    assert len(list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))) == 2
    measured_before = list(calls)
    monkeypatch.setattr(sweep_module, "measure_latency", lambda cfg, device: calls.append(shape_name(cfg)) or
                        _fake_latency(cfg))
    assert _sweep(cli, tmp_path / "sweep")[0] == 0
    assert len(calls) == 4 and not set(calls[2:]) & set(measured_before)


def test_proxy_training_fills_in_bits_per_byte_and_is_not_repeated(cli, tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(sweep_module, "measure_latency", lambda cfg, device: _fake_latency(cfg))
    args = ("--params", "0.3M", "--proxy-seconds", 1, "--proxy-top", 1, "--data", text_file, "--max-shapes", 2)
    code, out, err = cli("arch", "sweep", "--tokenizer", "byte", "--max-seq-len", 32, "--out", tmp_path / "sweep",
                         *args)
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert len(rows) == 2 and all(float(row["val_bpb"]) > 0 and int(row["train_tokens"]) > 0 for row in rows)
    assert "best validation bits/byte" in out

    def no_training(*args, **kwargs):
        raise AssertionError("a finished proxy training ran again")

    monkeypatch.setattr(sweep_module, "train", no_training)
    code, out, err = cli("arch", "sweep", "--tokenizer", "byte", "--max-seq-len", 32, "--out", tmp_path / "sweep",
                         *args)
    assert code == 0, err
    assert "skipped 2 proxy trainings" in out + err


def test_a_sweep_with_other_arguments_is_refused_unless_overwritten(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "measure_latency", lambda cfg, device: _fake_latency(cfg))
    assert _sweep(cli, tmp_path / "sweep")[0] == 0
    code, _, err = cli("arch", "sweep", "--params", "0.6M", "--tokenizer", "byte", "--max-seq-len", 32,
                       "--max-shapes", 4, "--out", tmp_path / "sweep")
    assert code == 2
    assert err.count("\n") == 1 and "--overwrite" in err and "500000 there, 600000 now" in err
    code, _, err = cli("arch", "sweep", "--params", "0.6M", "--tokenizer", "byte", "--max-seq-len", 32,
                       "--max-shapes", 4, "--out", tmp_path / "sweep", "--overwrite")
    assert code == 0, err
    assert "600000" in (tmp_path / "sweep" / "sweep.md").read_text()


def test_a_budget_too_small_for_the_vocabulary_is_one_clear_line(cli, tmp_path):
    code, _, err = cli("arch", "sweep", "--params", "50k", "--vocab", "8192", "--out", tmp_path / "sweep")
    assert code == 2 and err.count("\n") == 1 and "lower --vocab" in err
