import pytest
import torch

from tinylm.checkpoint import save_checkpoint
from tinylm.cli import main
from tinylm.config import Config, ModelConfig
from tinylm.model import Transformer
from tinylm.tokenizer import byte_tokenizer


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def small_cfg() -> ModelConfig:
    return ModelConfig(vocab_size=97, n_layer=2, d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=32)


def write_corpus(path, n_lines: int = 400):
    """Write a small real-ish English text, enough for a few training windows, to `path`; return the path.
    For module-scoped fixtures, which cannot use `text_file`."""
    lines = [f"Line {i}: the quick brown fox jumps over the lazy dog, and the cat sat on mat number {i % 7}."
             for i in range(n_lines)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def text_file(tmp_path):
    return write_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def cli(capsys):
    """Run the tinylm command in-process: cli(*args) -> (exit code, stdout, stderr)."""
    def run(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


def save_tiny_byte_run(directory):
    """A 2-layer byte-level run with random, fairly peaked weights; returns (run dir, model, tokenizer)."""
    tokenizer = byte_tokenizer()
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, d_model=32, n_heads=2, n_kv_heads=1,
                            max_seq_len=48, init_std=0.2)
    torch.manual_seed(0)
    model = Transformer(cfg.model).eval()
    save_checkpoint(directory, model, cfg, tokenizer)
    return directory, model, tokenizer


@pytest.fixture
def tiny_run(tmp_path):
    return save_tiny_byte_run(tmp_path / "run")
