"""Shape presets in recipes/: each loads as a recipe and builds a model with the parameter count its
`# params:` comment states."""

import re
from pathlib import Path

import pytest
import torch

from tinylm.config import load_config
from tinylm.model import Transformer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
PARAMS_LINE = re.compile(r"^# params: ([0-9,]+)\s*$", re.MULTILINE)


def _stated_params(recipe: Path) -> int | None:
    match = PARAMS_LINE.search(recipe.read_text())
    return int(match.group(1).replace(",", "")) if match else None


PRESETS = sorted(recipe for recipe in RECIPES.glob("*.yaml") if _stated_params(recipe) is not None)


def test_the_shape_presets_are_there():
    names = {recipe.stem for recipe in PRESETS}
    assert {"pangu-pi-1b-baseline", "pangu-pi-1b-pro", "pangu-pi-1.5b-pro", "smollm2-135m", "mobilellm-125m",
            "tiny-10m", "tiny-20m", "tiny-50m", "stlm-50m-baseline", "stlm-10m", "stlm-50m", "stlm-100m"} <= names


@pytest.mark.parametrize("recipe", PRESETS, ids=lambda recipe: recipe.stem)
def test_a_preset_builds_the_parameter_count_it_states(recipe):
    cfg = load_config(recipe).model
    assert cfg.vocab_size > 0, "a preset sets its vocabulary: there is no tokenizer to take it from"
    with torch.device("meta"):
        total = Transformer(cfg).param_counts()["total"]
    stated = _stated_params(recipe)
    assert abs(total - stated) <= 0.01 * stated  # the tolerance; every preset here states it exactly
    assert total == stated


def test_the_quickstart_recipe_still_loads():
    cfg = load_config(RECIPES / "quickstart.yaml")
    assert cfg.model.n_layer == 4 and cfg.train.optimizer == "muon"
