"""The models: a Llama-style decoder over tokens, a byte-level decoder with patch pooling, their
sampler and their loss over batches.

Owns the networks, their parameter/FLOP accounting and generation. Knows nothing
of data preparation, tokenizers, training, evaluation or the command line.
"""

import torch.nn as nn

from tinylm.config import ModelConfig
from tinylm.model.bytes import ByteCache, ByteTransformer
from tinylm.model.generate import filter_logits, generate
from tinylm.model.llama import KVCache, Transformer, resolved_ffn_hidden
from tinylm.model.scoring import sum_nats

KINDS = ("token", "byte")


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `model.kind` names; ValueError on a config it cannot be built with."""
    if cfg.kind == "token":
        return Transformer(cfg)
    if cfg.kind == "byte":
        if cfg.mtp != "none":
            raise ValueError(f"model.mtp={cfg.mtp} is for token models; set model.mtp=none for model.kind=byte")
        return ByteTransformer(cfg)
    raise ValueError(f"model.kind='{cfg.kind}' is not one of {', '.join(KINDS)}")


__all__ = ["ByteCache", "ByteTransformer", "KVCache", "Transformer", "build_model", "filter_logits", "generate",
           "resolved_ffn_hidden", "sum_nats"]
