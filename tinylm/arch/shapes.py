"""Model shapes at a parameter budget: closed-form parameter counts, the Llama-style shapes within a
tolerance of a budget, and the shape a recipe describes.

Builds no model: counts follow from the shape alone, so thousands of shapes are checked in a blink.
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from pathlib import Path

import yaml

from tinylm.config import ModelConfig, load_config
from tinylm.errors import TinyLMError
from tinylm.model.llama import ffn_owners, head_dim, resolved_ffn_hidden

# The space searched. Head size 64 is the small-model norm (SmolLM2, MobileLLM); 32 only below width 256,
# where 64 would leave fewer than 4 heads. FFN ratios span SwiGLU practice; PanGu-π Pro found the ratio
# matters little next to depth. d_model / n_layer from 8 (deeper and thinner than MobileLLM-125M's 19) to
# 256 (wider than PanGu-π-1B's baseline, 171), so the search covers both ends of the depth question.
HEAD_DIMS = (64, 32)
SMALL_HEAD_DIM_BELOW = 256
FFN_RATIOS = (Fraction(2), Fraction(8, 3), Fraction(7, 2), Fraction(4))
FFN_MULTIPLE = 32  # as tinylm rounds its default 8/3 ratio
WIDTH_STEP = 64
MIN_LAYERS, MAX_LAYERS = 2, 48
MIN_ASPECT, MAX_ASPECT = 8, 256
TOLERANCE = 0.05

_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str | int) -> int:
    """'20M' -> 20_000_000; also 1.5B, 500k, 1,000,000 and plain integers."""
    match = re.fullmatch(r"\s*([0-9][0-9,_]*(?:\.[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
    if not match:
        raise TinyLMError(f"'{text}' is not a parameter count; write it like 20M, 1.5B, 500k or 2000000")
    count = round(float(match.group(1).replace(",", "").replace("_", "")) * _SUFFIXES[match.group(2).lower()])
    if count <= 0:
        raise TinyLMError(f"the parameter count must be positive, got '{text}'")
    return count


def embedding_params(cfg: ModelConfig) -> int:
    """The input embedding, plus the output head when it is not tied to it."""
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def param_count(cfg: ModelConfig) -> int:
    """Every parameter of Transformer(cfg), counted from the shape alone; a shared weight counts once, so
    block_repeat and stack_repeat add none."""
    d, hd = cfg.d_model, head_dim(cfg)
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    attention = d * q + 2 * d * kv + q * d + (q + 2 * kv if cfg.qkv_bias else 0)
    layer = attention + 2 * d  # two RMSNorm gains
    owners = ffn_owners(cfg)
    ffns = len(set(owners)) * 3 * d * resolved_ffn_hidden(cfg)  # SwiGLU: gate, up, down
    adapters = sum(owners.count(o) > 1 for o in owners) * 2 * d * cfg.ffn_adapter_rank  # one per block sharing
    return embedding_params(cfg) + cfg.n_layer * layer + ffns + adapters + d  # + the final norm


def ffn_hidden_for(d_model: int, ratio: Fraction) -> int:
    return FFN_MULTIPLE * math.ceil(ratio * d_model / FFN_MULTIPLE)


def shape_name(cfg: ModelConfig) -> str:
    """A short unique name, e.g. 24x256-h4x64-kv2-ffn704-tied."""
    return (f"{cfg.n_layer}x{cfg.d_model}-h{cfg.n_heads}x{head_dim(cfg)}-kv{cfg.n_kv_heads}-"
            f"ffn{resolved_ffn_hidden(cfg)}-{'tied' if cfg.tie_embeddings else 'untied'}")


def enumerate_shapes(budget: int, vocab_size: int, max_seq_len: int = 256, tolerance: float = TOLERANCE,
                     head_dims: tuple[int, ...] = HEAD_DIMS) -> list[ModelConfig]:
    """Every shape of the searched space whose parameter count is within ±tolerance of `budget`, ordered by
    depth, then width, tying, head size, KV heads and FFN size."""
    low, high = budget * (1 - tolerance), budget * (1 + tolerance)
    shapes = []
    for n_layer in range(MIN_LAYERS, MAX_LAYERS + 1):
        first_width = WIDTH_STEP * math.ceil(MIN_ASPECT * n_layer / WIDTH_STEP)
        for d_model in range(first_width, MAX_ASPECT * n_layer + 1, WIDTH_STEP):
            sizes = [hd for hd in head_dims if d_model % hd == 0 and (hd >= 64 or d_model < SMALL_HEAD_DIM_BELOW)]
            if not sizes:
                continue
            base = ModelConfig(vocab_size=vocab_size, n_layer=n_layer, d_model=d_model, max_seq_len=max_seq_len)
            # counts grow with KV heads, FFN size and untying, so two extremes bound every variant of this width
            smallest = dataclasses.replace(base, n_heads=d_model // min(sizes), n_kv_heads=1, tie_embeddings=True,
                                           ffn_hidden=ffn_hidden_for(d_model, FFN_RATIOS[0]))
            if param_count(smallest) > high:
                break  # a wider model is larger still
            largest = dataclasses.replace(base, n_heads=d_model // sizes[0], n_kv_heads=d_model // sizes[0],
                                          tie_embeddings=False, ffn_hidden=ffn_hidden_for(d_model, FFN_RATIOS[-1]))
            if param_count(largest) < low:
                continue
            for tie in (True, False):
                for hd in sizes:
                    n_heads = d_model // hd
                    for n_kv in (k for k in range(1, n_heads + 1) if n_heads % k == 0):
                        for ratio in FFN_RATIOS:
                            cfg = dataclasses.replace(base, n_heads=n_heads, n_kv_heads=n_kv, tie_embeddings=tie,
                                                      ffn_hidden=ffn_hidden_for(d_model, ratio))
                            if low <= param_count(cfg) <= high:
                                shapes.append(cfg)
    return shapes


def read_shape(recipe: str | Path) -> ModelConfig:
    """The model a recipe describes (e.g. a sweep's recommended.yaml), as `tinylm train RECIPE` would build
    it: the recipe's model section over the defaults. Its vocabulary comes from the tokenizer in use."""
    cfg = load_config(recipe)  # checks that the file exists and that every key and value is valid
    if "model" not in (yaml.safe_load(Path(recipe).read_text()) or {}):
        raise TinyLMError(f"recipe '{recipe}' has no model: section; give one that sets the shape, such as the "
                          "recommended.yaml of `tinylm arch sweep`")
    return cfg.model
