"""Data: reading corpora, tokenizing them into train/val token splits on disk, loading batches.

corpus.py reads text (the built-in corpus, files, folders, .jsonl, .parquet);
hf.py reads Hugging Face datasets (hf:NAME, save_to_disk folders, parquet shards) for it;
prepare.py tokenizes it into the on-disk format and caches prepared folders;
tokens.py memory-maps the splits and draws training and validation batches.
Uses tinylm.tokenizer; must not import tinylm.model or training.
"""

from tinylm.data.corpus import builtin_documents, iter_documents
from tinylm.data.prepare import prepare, prepare_cached
from tinylm.data.tokens import TokenData

__all__ = ["TokenData", "builtin_documents", "iter_documents", "prepare", "prepare_cached"]
