"""A tinylm model as a Hugging Face model folder that transformers' Auto classes load.

LlamaForCausalLM, or Qwen2ForCausalLM when the model has q/k/v biases (Llama
has no option for biases on q/k/v alone). The weights keep their values and
change only names, because tinylm's RoPE already uses Hugging Face's rotate-half
layout; a tied head is stored once, as the embedding, and config.json says
tie_word_embeddings. The tokenizer is the run's tokenizer.json, wrapped by
PreTrainedTokenizerFast. Its end-of-sequence token is also the beginning of
sequence, as in GPT-2: tinylm ends every document with it, so it is what comes
before a document's first token. Pitfall: AutoTokenizer loads a Qwen2 folder as
Qwen2Tokenizer, which swaps the file's pre-tokenizer for Qwen2's own, while
PreTrainedTokenizerFast reads tokenizer.json as it is. Knows nothing of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tinylm.formats.hf import hf_config_from_model, hf_name
from tinylm.model import Transformer
from tinylm.model.llama import parameter_names
from tinylm.tokenizer import FILENAME, Tokenizer

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def write_hf(model: Transformer, tokenizer: Tokenizer, out_dir: Path, dtype: str = "f32") -> list[str]:
    """Write the folder; returns notes for its user."""
    cfg, eos = model.cfg, tokenizer.eos_id
    torch_dtype = TORCH_DTYPES[dtype]
    state = model.state_dict()
    tensors = {hf_name(name): state[name].to(torch_dtype).contiguous() for name in parameter_names(cfg)}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    config = hf_config_from_model(cfg, bos_id=eos, eos_id=eos)
    config["torch_dtype"] = str(torch_dtype).removeprefix("torch.")
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json",
                {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos})
    tokenizer.hf.save(str(out_dir / FILENAME))
    _write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokenizer.eos_token,
        "eos_token": tokenizer.eos_token, "pad_token": tokenizer.eos_token, "add_bos_token": False,
        "add_eos_token": False, "model_max_length": cfg.max_seq_len, "clean_up_tokenization_spaces": False})
    if cfg.qkv_bias:
        return ["transformers' AutoTokenizer loads a Qwen2 folder with Qwen2's own pre-tokenizer, which may split text "
                "differently; PreTrainedTokenizerFast.from_pretrained(...) gives exactly tinylm's token ids"]
    return []


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
