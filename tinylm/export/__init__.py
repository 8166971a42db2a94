"""Export: a trained run as a Hugging Face directory, a GGUF file or an ONNX graph.

`export(run, fmt, out, dtype, overwrite)` reads the run's checkpoint and writes

  hf    OUT/ (a folder)   config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                          generation_config.json: loads with transformers' AutoModelForCausalLM
  gguf  OUT (a file)      llama.cpp's format, the tokenizer embedded in its metadata
  onnx  OUT (a file)      logits from input_ids, batch and sequence axes dynamic, tokenizer.json beside it

A model with weight sharing goes to hf and gguf unrolled (each shared weight copied
into every layer that applies it, since Llama has no notion of sharing); ONNX
traces it as it is. FFN adapters have no place in a Llama layer: hf and gguf
refuse them. Multi-token prediction modules are training (and drafting) aids: every format gets the model
without them (model/mtp.py without_mtp), whose logits are the trunk's next-token logits exactly.

Each is written to a hidden staging path next to OUT and moved into place only
when complete, so a failed export leaves nothing half-written and an older
output is replaced only with --overwrite. The run itself is never written to.
Uses the model and the shared name maps of tinylm.formats; knows nothing of
training, data or evaluation.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tinylm.errors import TinyLMError
from tinylm.files import replace_folder

# format -> the dtypes it can store
DTYPES = {"hf": ("f32", "f16", "bf16"), "gguf": ("f32", "f16", "bf16", "q8_0"), "onnx": ("f32", "f16")}
# format -> the pip packages its writer needs
NEEDS = {"hf": (), "gguf": ("gguf",), "onnx": ("onnx", "onnxscript")}


@dataclass
class Exported:
    paths: list[Path]  # what was written
    notes: list[str] = field(default_factory=list)  # what a user of the output should know


def export(run: str | Path, fmt: str, out: str | Path, dtype: str = "f32", overwrite: bool = False) -> Exported:
    """Write the run's model in `fmt` to `out`."""
    from tinylm.checkpoint import CHECKPOINT, find_checkpoint, load_checkpoint, read_config
    from tinylm.model.llama import is_shared, unshare
    from tinylm.model.mtp import without_mtp

    if fmt not in DTYPES:
        raise TinyLMError(f"unknown export format '{fmt}'; choose one of {', '.join(DTYPES)}")
    if dtype not in DTYPES[fmt]:
        where = " (q8_0 is GGUF only)" if dtype == "q8_0" else ""
        raise TinyLMError(f"--format {fmt} cannot store dtype '{dtype}'{where}; choose one of {', '.join(DTYPES[fmt])}")
    out = Path(out)
    targets = outputs(fmt, out)
    ckpt_dir = find_checkpoint(run).resolve()
    if (kind := read_config(ckpt_dir).model.kind) != "token":
        raise TinyLMError(f"'{run}' is a model.kind={kind} model, which --format {fmt} cannot hold (it stores "
                          "token Transformers); evaluate and sample it with tinylm")
    for target in targets:
        t = target.resolve()
        if t == ckpt_dir or ckpt_dir.is_relative_to(t) or t.is_relative_to(ckpt_dir):
            raise TinyLMError(f"'{target}' would overwrite the run's checkpoint '{ckpt_dir}'; export somewhere else")
    if fmt == "hf" and out.exists() and not out.is_dir():
        raise TinyLMError(f"'{out}' is a file; --format hf writes a folder")
    if fmt != "hf" and out.is_dir():
        raise TinyLMError(f"'{out}' is a folder; --format {fmt} writes a file, e.g. --out {out / f'model.{fmt}'}")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise TinyLMError(f"'{existing[0]}' already exists; pass --overwrite to replace it or choose another --out")
    _check_installed(fmt)

    ckpt = load_checkpoint(run)
    model, tokenizer = ckpt.model.eval(), ckpt.tokenizer
    notes = []
    if model.mtp is not None:
        model = without_mtp(model)
        notes.append(f"multi-token prediction ({ckpt.cfg.model.mtp}, {ckpt.cfg.model.mtp_heads} extra) left out: the "
                     "export predicts the next token only, exactly as the trunk does")
    if fmt != "onnx" and is_shared(model.cfg):
        try:
            model = unshare(model)
        except ValueError as e:
            raise TinyLMError(f"--format {fmt} cannot hold this model: {e}; export --format onnx, which keeps it")
        notes.append(f"weight sharing unrolled: {model.cfg.n_layer} layers, each with its own copy of shared weights")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if fmt == "hf":
            from tinylm.export.hf import write_hf

            notes += write_hf(model, tokenizer, staging, dtype)
        elif fmt == "gguf":
            from tinylm.export.gguf import write_gguf

            run_dir = ckpt.path.parent if ckpt.path.name.startswith(CHECKPOINT) else ckpt.path
            write_gguf(model, tokenizer, staging / out.name, dtype, name=run_dir.resolve().name)
        else:
            from tinylm.export.onnx import write_onnx

            write_onnx(model, tokenizer, staging / out.name, dtype)
        _move_into_place(staging, out, targets, folder=fmt == "hf")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported([t for t in targets if t.exists()], notes)


def outputs(fmt: str, out: Path) -> list[Path]:
    """The paths an export to `out` occupies (OUT.data: the weights of an ONNX model over 2 GB)."""
    if fmt == "onnx":
        return [out, out.with_name(out.name + ".data"), out.parent / "tokenizer.json"]
    return [out]


def _check_installed(fmt: str) -> None:
    import importlib.util

    missing = [name for name in NEEDS[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise TinyLMError(f"--format {fmt} needs {', '.join(missing)}; install it with: pip install 'tinylm[export]'")


def _move_into_place(staging: Path, out: Path, targets: list[Path], folder: bool) -> None:
    if not folder:
        for target in targets:
            if (staging / target.name).exists():
                (staging / target.name).replace(target)
            elif target.exists():
                target.unlink()  # a stale OUT.data from an earlier, larger export
        return
    replace_folder(out, staging)
