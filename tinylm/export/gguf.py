"""A tinylm model as a GGUF file for llama.cpp, its tokenizer embedded in the metadata.

Architecture "llama", or "qwen2" when the model has q/k/v biases. llama.cpp
applies RoPE to interleaved pairs, so the llama architecture's Q and K rows are
stored permuted (`permute_qk`, as llama.cpp's own converter does); qwen2 uses
rotate-half RoPE and keeps them as they are. Norm gains and biases stay f32 in
every dtype, as llama.cpp's converter keeps them; with q8_0 a matrix whose rows
are not a whole number of 32-value blocks stays f16.

The tokenizer is written as llama.cpp's "gpt2" model: vocabulary, token types,
merges, and in `tokenizer.ggml.pre` a pre-tokenizer name under which llama.cpp,
transformers and tinylm all split text as the run's tokenizer does (a byte
tokenizer has no merges, so any byte-level split gives the same ids). A
tokenizer this cannot express (a normalizer, SentencePiece, an unknown split
rule) is refused rather than written with one that would encode text
differently. Needs the `gguf` package. Knows nothing of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinylm.errors import TinyLMError
from tinylm.formats.gguf_file import PERMUTED, gguf_name, permute_qk
from tinylm.model import Transformer
from tinylm.model.llama import head_dim, parameter_names, resolved_ffn_hidden
from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.gguf_vocab import PRE_TOKENIZERS, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_USER_DEFINED

Q8_BLOCK = 32  # values per q8_0 block
# tokenizer.ggml.pre names llama.cpp knows, best first. llama.cpp calls GPT-2's rule "gpt-2" and splits exactly
# so for "mpt" and "olmo" too; "gpt2" and "default" are not its names for GPT-2's rule. Only names that
# tinylm.tokenizer.gguf_vocab can read back are written.
LLAMA_CPP_PRE = ("gpt-2", "mpt", "olmo", "smollm", "starcoder", "refact", "codeshell", "llama-bpe", "llama3", "qwen2")


def write_gguf(model: Transformer, tokenizer: Tokenizer, path: Path, dtype: str = "f32", name: str = "tinylm") -> None:
    from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

    vocab = gguf_vocab(tokenizer)  # before anything is written: an inexpressible tokenizer leaves no file
    cfg = model.cfg
    arch = "qwen2" if cfg.qkv_bias else "llama"
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                 "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]
    writer = _writer_class()(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)  # GGML_QNT_VERSION, what llama.cpp's converter writes
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(resolved_ffn_hidden(cfg))
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_dimension_count(head_dim(cfg))
    if head_dim(cfg) * cfg.n_heads != cfg.d_model:
        writer.add_key_length(head_dim(cfg))
        writer.add_value_length(head_dim(cfg))
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    # llama.cpp refuses a "gpt2" tokenizer without the merges key, even when there are none (a byte tokenizer)
    writer.add_key_value("tokenizer.ggml.merges", vocab["merges"], GGUFValueType.ARRAY)
    writer.add_bos_token_id(tokenizer.eos_id)  # GPT-2's convention, see tinylm.export.hf
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_add_bos_token(False)  # tinylm never prepends one
    writer.add_add_eos_token(False)

    state = model.state_dict()
    for param in parameter_names(cfg):
        w = state[param].detach().float()
        if arch in PERMUTED and param.endswith(("attn.wq.weight", "attn.wk.weight")):
            w = permute_qk(w, cfg.n_heads if param.endswith("wq.weight") else cfg.n_kv_heads)
        data, qtype = _encode(w.numpy(), dtype, GGMLQuantizationType)
        writer.add_tensor(gguf_name(param), data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _writer_class():
    from gguf import GGUFValueType, GGUFWriter

    class Writer(GGUFWriter):
        """gguf-py refuses to write an empty array, which the format allows; an empty one here is string-typed."""

        def _pack_val(self, val, vtype, add_vtype, **kwargs):
            if vtype == GGUFValueType.ARRAY and len(val) == 0:
                vtype_prefix = self._pack("I", vtype) if add_vtype else b""
                return vtype_prefix + self._pack("I", GGUFValueType.STRING) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, **kwargs)

    return Writer


def _encode(w: np.ndarray, dtype: str, Q):
    """(data, GGML type) of one tensor in the export dtype."""
    from gguf.quants import quantize

    if w.ndim == 1 or dtype == "f32":
        return w, Q.F32
    if dtype == "q8_0" and w.shape[-1] % Q8_BLOCK == 0:
        return quantize(w, Q.Q8_0), Q.Q8_0
    if dtype == "bf16":
        return quantize(w, Q.BF16), Q.BF16
    return w.astype(np.float16), Q.F16


def gguf_vocab(tokenizer: Tokenizer) -> dict:
    """The tokenizer as llama.cpp's "gpt2" metadata: {"pre", "tokens", "types", "merges"}; TinyLMError if it cannot be."""
    content = json.loads(tokenizer.hf.to_str())
    model = content["model"]
    if model["type"] != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        raise TinyLMError(f"the run's tokenizer ({model['type']}) is not a byte-level BPE; GGUF export writes "
                          "llama.cpp's byte-level BPE tokenizer only")
    if content.get("normalizer"):
        raise TinyLMError(f"the run's tokenizer has a {content['normalizer']['type']} normalizer, which a GGUF "
                          "byte-level BPE tokenizer cannot express")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if any(len(m.split(" ")) != 2 for m in merges):
        raise TinyLMError("the run's tokenizer has a merge whose parts contain a space; GGUF stores merges as "
                          "'left right' text, so it cannot express it")
    pre = _pre_tokenizer_name(content["pre_tokenizer"], bool(model.get("ignore_merges")), has_merges=bool(merges))

    by_id = {i: token for token, i in tokenizer.hf.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise TinyLMError("the run's tokenizer leaves gaps in its token ids; GGUF needs ids 0..N-1")
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [TOKEN_NORMAL] * len(tokens)
    for added in content.get("added_tokens", []):
        types[added["id"]] = TOKEN_CONTROL if added["special"] else TOKEN_USER_DEFINED
    return {"pre": pre, "tokens": tokens, "types": types, "merges": merges}


def _pre_tokenizer_name(pre_tokenizer: dict | None, ignore_merges: bool, has_merges: bool) -> str:
    """The tokenizer.ggml.pre name whose splitting (as tinylm.tokenizer.gguf_vocab rebuilds it) is this one's."""
    names = [name for name in LLAMA_CPP_PRE if name in PRE_TOKENIZERS]
    splitting = _without_offsets(pre_tokenizer)
    for name in names:
        known, known_ignore_merges = PRE_TOKENIZERS[name]
        if _without_offsets(known) == splitting and known_ignore_merges == ignore_merges:
            return name
    if not has_merges and (pre_tokenizer or {}).get("type") == "ByteLevel":
        return names[0]  # without merges every byte is a token of its own, however the text is split
    kind = (pre_tokenizer or {"type": "none"})["type"]
    raise TinyLMError(f"the run's tokenizer splits text with a {kind} pre-tokenizer that no llama.cpp "
                      "pre-tokenizer name reproduces; GGUF cannot express it")


def _without_offsets(pre_tokenizer):
    # trim_offsets changes the reported character offsets only, never the split
    if isinstance(pre_tokenizer, dict):
        return {k: _without_offsets(v) for k, v in pre_tokenizer.items() if k != "trim_offsets"}
    if isinstance(pre_tokenizer, list):
        return [_without_offsets(v) for v in pre_tokenizer]
    return pre_tokenizer
