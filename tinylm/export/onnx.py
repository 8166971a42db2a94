"""A tinylm model as an ONNX graph: input_ids (batch, sequence) int64 -> logits (batch, sequence, vocab).

Exported with torch.onnx's dynamo exporter (torch.export, then onnxscript), the
path PyTorch maintains; both axes are dynamic, the sequence up to the model's
max_seq_len. The graph has no KV cache: each call scores the whole sequence,
which is what evaluation and reranking need; generation runs it once per new
token. With f16 the weights, activations and logits are float16 (ONNX Runtime
runs it on CPU too), else float32. Weights over 2 GB go to OUT.data beside the
graph (protobuf's limit), and tokenizer.json is copied beside it. Needs the onnx
and onnxscript packages. Knows nothing of training.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from tinylm.model import Transformer
from tinylm.tokenizer import FILENAME, Tokenizer

OPSET = 18


class LogitsFromIds(nn.Module):
    """The graph's one signature: Transformer.forward also takes targets and a KV cache, which ONNX does not."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def write_onnx(model: Transformer, tokenizer: Tokenizer, path: Path, dtype: str = "f32") -> None:
    cfg = model.cfg
    # an example longer than 1 on each axis, or torch.export specializes the axis to that size
    example = torch.zeros(2, min(8, cfg.max_seq_len), dtype=torch.long)
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1, max=cfg.max_seq_len)
    wrapper = LogitsFromIds(model.half() if dtype == "f16" else model).eval()
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about torchvision ops this graph never uses
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              input_names=["input_ids"], output_names=["logits"], opset_version=OPSET,
                              dynamic_shapes={"input_ids": {0: batch, 1: sequence}})
    finally:
        exporter_log.setLevel(level)
    tokenizer.hf.save(str(path.parent / FILENAME))
