"""Hugging Face Llama-family checkpoints (Llama, SmolLM, Mistral, Qwen2) <-> tinylm models.

A Hugging Face directory holds config.json, one or more *.safetensors files and
usually tokenizer.json. The two layouts differ only in names: rotary embeddings
use the same rotate-half convention, so weights copy across unchanged.
Knows nothing of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.model.llama import head_dim, parameter_names, resolved_ffn_hidden

SUPPORTED = ("llama", "mistral", "qwen2")

# tinylm name -> Hugging Face name, per layer ({i}) and global
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wq.bias": "self_attn.q_proj.bias",
    "attn.wk.bias": "self_attn.k_proj.bias",
    "attn.wv.bias": "self_attn.v_proj.bias",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                "lm_head.weight": "lm_head.weight"}


def hf_name(name: str) -> str:
    """The Hugging Face name of a tinylm parameter."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, i, rest = name.split(".", 2)  # layers.{i}.rest
    return f"model.layers.{i}.{LAYER_NAMES[rest]}"


def rope_theta_of(config: dict) -> float:
    params = config.get("rope_parameters") or {}  # transformers >= 5 keeps it here
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def model_config_from_hf(config: dict, source: str = "config.json") -> ModelConfig:
    """The tinylm ModelConfig of a Hugging Face config.json; TinyLMError for what tinylm cannot represent."""
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        raise TinyLMError(f"'{source}' is a '{kind}' model; tinylm reads {', '.join(SUPPORTED)} (and SmolLM, "
                          "which is llama) checkpoints")
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or (config.get("rope_parameters") or {}).get("rope_type")
    if rope_type not in (None, "default"):
        raise TinyLMError(f"'{source}' uses '{rope_type}' RoPE scaling, which tinylm does not implement")
    if config.get("hidden_act", "silu") != "silu" or config.get("mlp_bias") or config.get("attention_bias"):
        raise TinyLMError(f"'{source}': only SwiGLU (silu) MLPs without biases and attention without an output "
                          "bias are supported")
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    head_size = config.get("head_dim") or hidden // heads
    max_len = config.get("max_position_embeddings", 2048)
    if kind == "mistral" and config.get("sliding_window"):
        max_len = min(max_len, config["sliding_window"])  # within the window attention is plain causal
    return ModelConfig(
        vocab_size=config["vocab_size"], n_layer=config["num_hidden_layers"], d_model=hidden,
        n_heads=heads, n_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=0 if head_size * heads == hidden else head_size, qkv_bias=kind == "qwen2",
        ffn_hidden=config["intermediate_size"], max_seq_len=max_len, rope_theta=rope_theta_of(config),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), norm_eps=config.get("rms_norm_eps", 1e-6))


def read_hf_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict in tinylm names, float32) of a Hugging Face model directory."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TinyLMError(f"'{path / 'config.json'}' is missing or not JSON ({type(e).__name__})")
    cfg = model_config_from_hf(config, str(path / "config.json"))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TinyLMError(f"'{path}' has no *.safetensors weights (pytorch_model.bin is not read: convert it)")
    hf = {}
    for f in files:
        try:
            hf.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise TinyLMError(f"'{f}' is corrupt ({str(e).splitlines()[0][:120]}); download it again")
    names = parameter_names(cfg)
    missing = [hf_name(n) for n in names if hf_name(n) not in hf]
    if missing:
        raise TinyLMError(f"'{path}' lacks {len(missing)} expected tensors (e.g. {missing[0]}); "
                          "is it a complete Llama-family checkpoint?")
    return cfg, {n: hf[hf_name(n)].float() for n in names}


def hf_config_from_model(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    """A config.json for a tinylm ModelConfig (LlamaForCausalLM, or Qwen2ForCausalLM with q/k/v biases)."""
    kind = "qwen2" if cfg.qkv_bias else "llama"
    config = {
        "architectures": ["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"], "model_type": kind,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": resolved_ffn_hidden(cfg),
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": head_dim(cfg), "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "float32", "bos_token_id": bos_id, "eos_token_id": eos_id,
    }
    return config

