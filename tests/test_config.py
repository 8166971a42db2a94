import pytest

from tinylm.config import Config, load_config
from tinylm.errors import TinyLMError


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
