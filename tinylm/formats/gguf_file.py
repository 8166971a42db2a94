"""Model weights inside a GGUF file (llama.cpp's format) as a tinylm config and state dict.

Reads the llama and qwen2 architectures with the `gguf` package, dequantizing
every tensor to float32. llama.cpp stores the llama architecture's Q and K
projections permuted for its interleaved RoPE; `unpermute_qk` restores the
rotate-half layout tinylm (and Hugging Face) use, and `permute_qk` is its
inverse for writing. Knows nothing of training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.model.llama import parameter_names
from tinylm.tokenizer.gguf_vocab import open_gguf

ARCHITECTURES = ("llama", "qwen2")
PERMUTED = ("llama",)  # architectures whose Q/K rows llama.cpp stores permuted

# tinylm name -> GGUF name, per layer ({i}) and global
LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.wq.weight": "attn_q.weight", "attn.wk.weight": "attn_k.weight", "attn.wv.weight": "attn_v.weight",
    "attn.wq.bias": "attn_q.bias", "attn.wk.bias": "attn_k.bias", "attn.wv.bias": "attn_v.bias",
    "attn.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.w1.weight": "ffn_gate.weight", "ffn.w3.weight": "ffn_up.weight", "ffn.w2.weight": "ffn_down.weight",
}
GLOBAL_NAMES = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    """The GGUF name of a tinylm parameter."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{LAYER_NAMES[rest]}"


def tinylm_name(name: str) -> str | None:
    """The tinylm name of a GGUF tensor, or None for tensors tinylm does not use (e.g. rope_freqs)."""
    for ours, theirs in GLOBAL_NAMES.items():
        if name == theirs:
            return ours
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk":
        for ours, theirs in LAYER_NAMES.items():
            if parts[2] == theirs:
                return f"layers.{parts[1]}.{ours}"
    return None


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's interleaved-RoPE row order -> rotate-half order (rows are n_head blocks of head_dim)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half row order -> llama.cpp's interleaved order (inverse of unpermute_qk)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, path: Path, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise TinyLMError(f"'{path}' lacks the GGUF key '{key}'; is it a complete model file?")
        return default
    return field.contents()


def read_gguf_model(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, float32 state dict in tinylm names) of a llama- or qwen2-architecture GGUF file."""
    from gguf.quants import dequantize

    path = Path(path)
    reader = open_gguf(path)
    arch = _field(reader, "general.architecture", path)
    if arch not in ARCHITECTURES:
        raise TinyLMError(f"'{path}' is a '{arch}' model; tinylm reads GGUF files of the "
                          f"{' and '.join(ARCHITECTURES)} architectures")
    heads = int(_field(reader, f"{arch}.attention.head_count", path))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", path, heads))
    width = int(_field(reader, f"{arch}.embedding_length", path))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", path, width // heads))
    state = {}
    for t in reader.tensors:
        name = tinylm_name(t.name)
        if name is None:
            continue
        try:
            w = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
        except (ValueError, NotImplementedError) as e:
            raise TinyLMError(f"'{path}': cannot dequantize {t.name} ({e}); re-export it as f16 or q8_0")
        w = torch.from_numpy(np.array(w, dtype=np.float32))  # a copy: F32 tensors are read-only views of the file
        if arch in PERMUTED and name.endswith(("attn.wq.weight", "attn.wk.weight")):
            w = unpermute_qk(w, heads if name.endswith("wq.weight") else kv_heads)
        state[name] = w
    vocab = state["embed.weight"].shape[0] if "embed.weight" in state else 0
    cfg = ModelConfig(
        vocab_size=vocab, n_layer=int(_field(reader, f"{arch}.block_count", path)), d_model=width,
        n_heads=heads, n_kv_heads=kv_heads, head_dim=0 if head_dim * heads == width else head_dim,
        qkv_bias="layers.0.attn.wq.bias" in state, ffn_hidden=int(_field(reader, f"{arch}.feed_forward_length", path)),
        max_seq_len=int(_field(reader, f"{arch}.context_length", path, 2048)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", path, 10000.0)),
        tie_embeddings="lm_head.weight" not in state,
        norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path, 1e-5)))
    expected = {gguf_name(n) for n in parameter_names(cfg)}
    missing = sorted(expected - {t.name for t in reader.tensors})
    if missing:
        raise TinyLMError(f"'{path}' lacks {len(missing)} tensors (e.g. {missing[0]}); is the file complete?")
    return cfg, state

