"""The model: a Llama-style decoder, its sampler and its loss over batches.

Owns the network, its parameter/FLOP accounting and generation. Knows nothing
of data preparation, tokenizers, training, evaluation or the command line.
"""

from tinylm.model.generate import filter_logits, generate
from tinylm.model.llama import KVCache, Transformer, resolved_ffn_hidden
from tinylm.model.scoring import sum_nats

__all__ = ["KVCache", "Transformer", "filter_logits", "generate", "resolved_ffn_hidden", "sum_nats"]
