"""tinylm: build small language models that are as good as their size allows.

Packages, in the order a user walks through them:
  tinylm.data       corpora -> memory-mapped token shards
  tinylm.tokenizer  byte-level, trained BPE, or any tokenizer.json
  tinylm.model      the Llama-style decoder and its sampler
  tinylm.train      the training loop (writes run directories)
  tinylm.eval       loss / perplexity / bits per byte, sampling (reads run directories)
  tinylm.cli        the `tinylm` command
"""

__version__ = "0.1.0"
