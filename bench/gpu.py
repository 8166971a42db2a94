"""Training throughput on a GPU: tinylm eager and compiled against transformers, bf16, MFU against the GPU's
published peak.

The GPU counterpart of bench/throughput.py's training part, with what a GPU run uses: bf16 autocast over fp32
master weights (train.precision=auto on CUDA), fused AdamW (lr 1e-3, weight decay 0.1) on every parameter,
attention through SDPA (its flash kernel, for causal bf16 at these head sizes), and a third side through
torch.compile (train.compile=true). The transformers side is tinylm's own Hugging Face export of the same weights
(tinylm.export.hf), LlamaForCausalLM with its default attention, under the same autocast; its fp32 logits are
checked to agree with tinylm's before anything is timed. The sides take turns, burst after burst, and each
number is the median over bursts; a burst synchronises the GPU before it reads the clock.

MFU = the model's flops_per_token (6 x matmul parameters + the attention scores, PaLM appendix B) x tokens/s /
the GPU's dense bf16 peak from its datasheet (tinylm.train.perf.GPU_PEAKS; --peak-tflops for a part not listed).
On a CPU (--device cpu, which the test uses with --smoke) the peak is the bf16 matmul rate measured in the run.

Sizes (vocab 8,192 as in bench/throughput.py, sequences of 1,024, batches that fill a GPU):
  50m   12 x 576, GQA 9/3 (bench/throughput.py's ~50M), batch 32
  125m  12 x 768, GQA 12/4, batch 32
  350m  24 x 1024, GQA 16/4, batch 16

  PYTHONPATH=. python bench/gpu.py [--sizes 50m,125m,350m] [--seconds 10] [--bursts 5] [--no-compile]
      [--peak-tflops T] [--device cuda] [--json bench/results/throughput/gpu.json] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from tinylm.config import ModelConfig
from tinylm.data import builtin_documents
from tinylm.model import Transformer
from tinylm.tokenizer import Tokenizer, train_bpe
from tinylm.train.perf import measured_matmul_flops, published_bf16_peak

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Size, alternate, check_logits, hf_twin, median  # noqa: E402  the CPU bench's helpers

LOGIT_TOL = 1e-3  # fp32 on both sides; a GPU's fp32 kernels sum in other orders than a CPU's
CHECK_EVERY = 5  # steps between two reads of the clock (each read waits for the GPU)


def sizes(smoke: bool) -> dict[str, Size]:
    def cfg(vocab, n_layer, d_model, n_heads, n_kv_heads, seq):
        return ModelConfig(vocab_size=vocab, n_layer=n_layer, d_model=d_model, n_heads=n_heads,
                           n_kv_heads=n_kv_heads, max_seq_len=seq, tie_embeddings=True)

    if smoke:
        return {"50m": Size(cfg(512, 1, 64, 4, 2, 64), 2, 64), "125m": Size(cfg(512, 2, 64, 4, 1, 64), 2, 64)}
    return {"50m": Size(cfg(8192, 12, 576, 9, 3, 1024), 32, 1024),
            "125m": Size(cfg(8192, 12, 768, 12, 4, 1024), 32, 1024),
            "350m": Size(cfg(8192, 24, 1024, 16, 4, 1024), 16, 1024)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak(device: torch.device, tflops: float | None) -> tuple[float, str]:
    """The FLOP/s MFU is stated against, and where the figure comes from."""
    if tflops:
        return tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if found := published_bf16_peak(name):
            return found[1], f"datasheet dense bf16 ({found[0]})"
        sys.exit(f"no published bf16 peak is listed for '{name}' (tinylm.train.perf.GPU_PEAKS); "
                 "give it with --peak-tflops")
    return measured_matmul_flops(device, n=1024, dtype=torch.bfloat16), "measured bf16 1024² matmul"


def train_burst(forward_loss: Callable, model: torch.nn.Module, x, y, seconds: float) -> Callable[[], dict]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    model.train()

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = forward_loss(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def burst() -> dict:
        synchronize(x.device)
        steps, start = 0, time.perf_counter()
        while steps == 0 or time.perf_counter() - start < seconds:
            for _ in range(CHECK_EVERY):
                step()
            steps += CHECK_EVERY
            synchronize(x.device)
        elapsed = time.perf_counter() - start
        return {"tokens_per_s": steps * x.numel() / elapsed, "steps": steps, "seconds": elapsed}

    return burst


def bench_size(name: str, size: Size, tokenizer: Tokenizer, work: Path, device: torch.device,
               a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = Transformer(size.model).to(device)
    hf = hf_twin(model.cpu(), tokenizer, work / f"hf-{name}", device)  # the export reads the weights on the CPU
    model.to(device)
    gap = check_logits(model, hf, size.model.vocab_size, tol=LOGIT_TOL)
    data = torch.randint(0, size.model.vocab_size, (size.batch, size.seq + 1),
                         generator=torch.Generator().manual_seed(0)).to(device)
    x, y = data[:, :-1], data[:, 1:]

    def hf_loss(x, y):
        return F.cross_entropy(hf(input_ids=x, use_cache=False).logits.float().flatten(0, 1), y.flatten())

    sides = {"tinylm": train_burst(lambda x, y: model(x, y), model, x, y, a.seconds),
             "transformers": train_burst(hf_loss, hf, x, y, a.seconds)}
    compile_s = None
    if a.compile:  # train.compile=true's path, from the same weights; its first step compiles, timed apart
        twin = Transformer(size.model).to(device)
        twin.load_state_dict(model.state_dict())
        compiled = torch.compile(twin)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = compiled(x, y)
        loss.backward()
        synchronize(device)
        compile_s = time.perf_counter() - start
        twin.zero_grad(set_to_none=True)
        sides["tinylm compiled"] = train_burst(lambda x, y: compiled(x, y), twin, x, y, a.seconds)
    runs = alternate(sides, a.bursts)  # after a warm-up: the optimizer states, the kernels' first launches
    row = {"size": name, "params": model.param_counts()["total"], "batch": size.batch, "seq": size.seq,
           "flops_per_token": model.flops_per_token(size.seq), "logit_max_abs_diff": gap, "compile_s": compile_s,
           "transformers_attention": hf.config._attn_implementation, "bursts": runs}
    for side in runs:
        row[side] = {"tokens_per_s": median(runs[side], "tokens_per_s")}
        row[side]["mfu"] = row["flops_per_token"] * row[side]["tokens_per_s"] / a.peak
    for side in runs.keys() - {"transformers"}:
        row[f"ratio_{side.replace(' ', '_')}"] = row[side]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
    if device.type == "cuda":
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def first_documents(max_chars: int) -> Iterator[str]:
    for document in builtin_documents():
        yield document[:max_chars]
        max_chars -= len(document)
        if max_chars <= 0:
            return


def print_table(result: dict) -> None:
    print(f"\nTraining on {result['device_name']}, bf16 autocast, fused AdamW; MFU against "
          f"{result['peak_tflops']:.4g} TFLOP/s ({result['peak_source']})")
    print("| size | params | batch | tinylm tok/s | compiled tok/s | transformers tok/s | vs transformers "
          "(eager / compiled) | MFU (eager / compiled / transformers) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["train"]:
        compiled = r.get("tinylm compiled")
        cells = [f"~{r['size'].upper()}", f"{r['params'] / 1e6:.1f}M", f"{r['batch']}×{r['seq']}",
                 f"{r['tinylm']['tokens_per_s']:,.0f}", f"{compiled['tokens_per_s']:,.0f}" if compiled else "—",
                 f"{r['transformers']['tokens_per_s']:,.0f}",
                 f"{r['ratio_tinylm']:.2f}× / " + (f"{r['ratio_tinylm_compiled']:.2f}×" if compiled else "—"),
                 f"{r['tinylm']['mfu']:.0%} / " + (f"{compiled['mfu']:.0%}" if compiled else "—")
                 + f" / {r['transformers']['mfu']:.0%}",
                 f"{r['compile_s']:.1f}" if compiled else "—"]
        print(f"| {' | '.join(cells)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (only to check the script, with --smoke)")
    ap.add_argument("--sizes", default=None, help="comma-separated (default: every size)")
    ap.add_argument("--seconds", type=float, default=None, help="length of one burst (default 10; smoke 0.2)")
    ap.add_argument("--bursts", type=int, default=None, help="rounds of bursts after the warm-up (default 5; smoke 2)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled side")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not listed")
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/throughput/gpu[-smoke].json")
    ap.add_argument("--smoke", action="store_true", help="toy shapes: every side in well under a minute")
    a = ap.parse_args()
    a.seconds = a.seconds if a.seconds is not None else 0.2 if a.smoke else 10.0
    a.bursts = a.bursts if a.bursts is not None else 2 if a.smoke else 5
    try:
        device = torch.device(a.device)
    except RuntimeError:
        sys.exit(f"--device: unknown device '{a.device}'; use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible: this benchmark is for GPUs (bench/throughput.py measures a CPU)")
    if device.type not in ("cuda", "cpu"):
        sys.exit(f"--device: '{a.device}' is not a CUDA GPU or the CPU")
    if importlib.util.find_spec("transformers") is None:
        sys.exit("transformers is not installed (pip install transformers)")
    shapes = sizes(a.smoke)
    chosen = a.sizes.split(",") if a.sizes else list(shapes)
    if unknown := [s for s in chosen if s not in shapes]:
        sys.exit(f"--sizes: unknown size {', '.join(unknown)}; choose from {', '.join(shapes)}")
    a.peak, source = peak(device, a.peak_tflops)
    out = a.json or Path("bench/results/throughput") / f"gpu{'-smoke' if a.smoke else ''}.json"
    vocab = {s.model.vocab_size for s in shapes.values()}.pop()
    # the export writes a real tokenizer beside the weights: a BPE trained on the built-in corpus's first plays (2 MB)
    tokenizer = train_bpe(first_documents(200_000 if a.smoke else 2_000_000), vocab)
    result = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "peak_tflops": a.peak / 1e12, "peak_source": source, "smoke": a.smoke,
              "flash_sdp_enabled": device.type == "cuda" and torch.backends.cuda.flash_sdp_enabled(),
              "train": []}
    with tempfile.TemporaryDirectory(prefix="tinylm-gpu-") as tmp:
        for name in chosen:
            print(f"training ~{name}", flush=True)
            result["train"].append(bench_size(name, shapes[name], tokenizer, Path(tmp), device, a))
            if device.type == "cuda":  # the size's models and optimizer states are gone with its frame
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
