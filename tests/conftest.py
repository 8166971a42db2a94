import pytest
import torch

from tinylm.config import ModelConfig


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def small_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=97, n_layer=2, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=32)


@pytest.fixture
def text_file(tmp_path):
    """A small real-ish English text, enough for a few training windows."""
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog, and the cat sat on mat number {i % 7}."
             for i in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
