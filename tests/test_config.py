import re
from pathlib import Path

import pytest

from tinylm.config import RANGES, Config, _all_keys, load_config, validate
from tinylm.errors import TinyLMError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_defaults_recipe_and_overrides_apply_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  n_layer: 3\ntrain:\n  lr: 1.0e-3\n")
    cfg = load_config(recipe, ["train.lr=3e-3", "data.tokenizer=byte", "model.tie_embeddings=false"])
    assert cfg.model.n_layer == 3  # recipe over default
    assert cfg.train.lr == 3e-3  # override over recipe
    assert cfg.data.tokenizer == "byte"
    assert cfg.model.tie_embeddings is False
    assert cfg.model.d_model == Config().model.d_model  # untouched default


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(TinyLMError, match=r"unknown config key 'train.lrr'.*'train.lr'"):
        load_config(overrides=["train.lrr=1"])
    with pytest.raises(TinyLMError, match=r"'model.n_layers'.*'model.n_layer'"):
        load_config(overrides=["model.n_layers=4"])


def test_unknown_key_in_a_recipe_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  d_modle: 128\n")
    with pytest.raises(TinyLMError, match="model.d_model"):
        load_config(recipe)


def test_wrong_types_are_errors():
    with pytest.raises(TinyLMError, match="needs an integer"):
        load_config(overrides=["model.n_layer=two"])
    with pytest.raises(TinyLMError, match="needs true or false"):
        load_config(overrides=["model.tie_embeddings=3"])
    with pytest.raises(TinyLMError, match="key=value"):
        load_config(overrides=["model.n_layer"])


def test_numbers_are_coerced_to_the_field_type():
    cfg = load_config(overrides=["train.lr=1", "train.max_tokens=1e6", "data.path=123"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_tokens == 1_000_000 and isinstance(cfg.train.max_tokens, int)
    assert cfg.data.path == "123"


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(overrides=["model.n_layer=5", "train.lr=7e-4"])
    cfg.save(tmp_path / "config.yaml")
    import yaml
    assert load_config(base=yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


def test_missing_or_invalid_recipe_is_an_error(tmp_path):
    with pytest.raises(TinyLMError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(TinyLMError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("override", [
    "model.n_layer=-2", "model.n_layer=0", "model.d_model=0", "model.n_heads=0", "model.n_kv_heads=0",
    "model.vocab_size=-1", "model.head_dim=-64", "model.ffn_hidden=-1", "model.max_seq_len=0",
    "model.dropout=1", "model.dropout=-0.1", "model.norm_eps=0", "model.init_std=0", "model.rope_theta=-1",
    "model.block_repeat=0", "model.stack_repeat=0", "model.ffn_sharing_keep=-1", "model.ffn_adapter_rank=-1",
    "model.patch_size=0", "model.d_local=0", "model.n_local_heads=0", "model.n_encoder_layers=-1",
    "model.n_decoder_layers=-1", "model.norm_eps=.nan",
    "data.vocab_size=0", "data.val_fraction=0", "data.val_fraction=1", "data.workers=-1",
    "train.batch_size=0", "train.grad_accum=0", "train.lr=0", "train.lr=-1e-3", "train.muon_lr=0",
    "train.muon_momentum=1", "train.warmup_steps=-1", "train.max_steps=-1", "train.max_tokens=-1",
    "train.max_seconds=-5", "train.decay_fraction=1.5", "train.min_lr_ratio=-0.1", "train.weight_decay=-0.1",
    "train.beta1=1", "train.beta2=-0.5", "train.grad_clip=-1", "train.rounds=0", "train.refine_ratio=0",
    "train.refine_ratio=1.5", "train.refine_temperature=0", "train.dropout_until=2", "train.dropout_from=-1",
    "train.dropout_cycles=0", "train.eval_every=-1", "train.eval_tokens=-1", "train.ckpt_every=-1",
    "train.log_every=-1", "train.peak_tflops=-1",
    "eval.batch_size=0", "eval.temperature=-1", "eval.top_k=-1", "eval.top_p=0", "eval.top_p=1.5",
    "eval.sample_tokens=0", "eval.max_tokens=-1",
])
def test_a_value_outside_its_range_is_an_error_naming_key_value_and_range(override):
    key, value = override.split("=")
    with pytest.raises(TinyLMError, match=rf"^{re.escape(key)}=\S+ must be (at least|greater than|in [\[(])"):
        load_config(overrides=[override])


def test_a_bad_value_in_a_recipe_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  d_model: 0\n")
    with pytest.raises(TinyLMError, match=r"model.d_model=0 must be at least 1"):
        load_config(recipe)


@pytest.mark.parametrize("override", [
    "model.vocab_size=0", "model.head_dim=0", "model.ffn_hidden=0", "model.ffn_sharing_keep=0",
    "model.n_encoder_layers=0", "model.n_decoder_layers=0", "model.dropout=0", "data.workers=0",
    "train.max_steps=0", "train.max_tokens=0", "train.max_seconds=0", "train.warmup_steps=0",
    "train.eval_every=0", "train.eval_tokens=0", "train.ckpt_every=0", "train.log_every=0", "train.grad_clip=0",
    "train.weight_decay=0", "train.min_lr_ratio=1", "train.decay_fraction=0", "train.refine_ratio=1",
    "eval.max_tokens=0", "eval.temperature=0", "eval.top_k=0", "eval.top_p=1",
])
def test_zero_and_range_ends_that_mean_something_are_accepted(override):
    load_config(overrides=[override])


def test_the_defaults_and_every_recipe_are_in_range():
    validate(Config())
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


def test_every_ranged_key_is_a_config_key():
    assert set(RANGES) <= set(_all_keys(Config))
