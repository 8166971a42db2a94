"""Models from outside tinylm: Hugging Face directories and GGUF files, read into tinylm's Transformer.

`load_model(path)` accepts a tinylm run or checkpoint, a Hugging Face Llama /
SmolLM / Mistral / Qwen2 directory (config.json + *.safetensors), or a llama-
or qwen2-architecture GGUF file, and returns the model with its tokenizer.
Evaluation, inheritance and export go through it. Knows nothing of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer

from tinylm.config import ModelConfig
from tinylm.errors import TinyLMError
from tinylm.formats.gguf_file import read_gguf_model
from tinylm.formats.hf import read_hf_dir
from tinylm.model import Transformer, build_model
from tinylm.tokenizer import FILENAME, Tokenizer


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer | None  # None: a Hugging Face directory without tokenizer.json
    kind: str  # "tinylm" | "hf" | "gguf"
    path: Path


def model_kind(path: str | Path) -> str:
    """"gguf", "hf" or "tinylm" for a path (without reading weights)."""
    path = Path(path)
    if not path.exists():
        raise TinyLMError(f"'{path}' does not exist; give a tinylm run, a Hugging Face model folder or a .gguf file")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return "gguf"
        raise TinyLMError(f"'{path}' is a file but not a GGUF model; give a tinylm run, a Hugging Face model "
                          "folder or a .gguf file")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")) and not (path / "config.yaml").is_file():
        return "hf"
    return "tinylm"


def model_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> Transformer:
    """A Transformer holding `state` (tinylm names; a tied head may be absent)."""
    try:
        model = build_model(cfg)
    except ValueError as e:
        raise TinyLMError(f"'{source}': {e}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise TinyLMError(f"'{source}' does not fit its own config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    kind = model_kind(path)
    if kind == "tinylm":
        from tinylm.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device=device)
        return LoadedModel(ckpt.model.eval(), ckpt.tokenizer, kind, ckpt.path)
    if kind == "gguf":
        from tinylm.tokenizer.gguf_vocab import read_gguf_tokenizer

        cfg, state = read_gguf_model(path)
        content, _ = read_gguf_tokenizer(path)
        tokenizer = Tokenizer(HFTokenizer.from_str(json.dumps(content)), "file")
    else:
        cfg, state = read_hf_dir(path)
        tokenizer = Tokenizer.load(path) if (path / FILENAME).is_file() else None
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise TinyLMError(f"'{path}': the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{cfg.vocab_size} embedding rows; they do not belong together")
    return LoadedModel(model_from_state(cfg, state, str(path)).to(device), tokenizer, kind, path)
