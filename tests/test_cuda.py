"""The GPU path: training in bf16 on CUDA (eager, compiled, resumed, data-parallel over NCCL), decoding there, MFU
against the datasheet peak, and bench/gpu.py. Every test but two (the peak table, and bench/gpu.py's eager sides
on the CPU) needs a CUDA GPU and skips without one; the two-rank tests need two.

Tolerances, each far below one optimizer step's change in loss (~1e-2 relative at these settings):
- the same run twice on a GPU (resume): CUDA's embedding backward adds rows with atomics in an order that can
  differ between runs, so losses may move by fp32 rounding (~1e-7 relative per step); RESUME_RTOL = 1e-4.
- compiled against eager under bf16 autocast: Inductor keeps some bf16 intermediates in fp32, and bf16 keeps
  8 significant bits (2^-8 = 0.4% relative), so the two runs are not the same computation; COMPILE_RTOL = 2e-2.
- two NCCL ranks against one process, in fp32: the all-reduce adds the ranks' gradients in another order than
  one process accumulates them; DIST_RTOL = 1e-4.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinylm.checkpoint import load_checkpoint
from tinylm.model import Transformer
from tinylm.model.generate import generate
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import train
from tinylm.train.perf import published_bf16_peak

from conftest import write_corpus
from test_train import StopAt, byte_data, losses, tiny_config

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda"
RESUME_RTOL, COMPILE_RTOL, DIST_RTOL = 1e-4, 2e-2, 1e-4

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_the_published_peak_is_the_parts_own():
    assert published_bf16_peak("NVIDIA H100 80GB HBM3") == ("H100", 989e12)
    assert published_bf16_peak("NVIDIA H100 PCIe") == ("H100 PCIe", 756e12)  # not the SXM part's figure
    assert published_bf16_peak("NVIDIA H200") == ("H200", 989e12)
    assert published_bf16_peak("NVIDIA A100-SXM4-80GB") == ("A100", 312e12)
    assert published_bf16_peak("Some Future GPU") is None


@pytest.fixture
def data(text_file):
    return byte_data(text_file.read_text())


def gpu_config(*overrides):
    return tiny_config(f"train.device={DEVICE}", "train.precision=auto", "train.peak_tflops=0", *overrides)


@needs_gpu
def test_bf16_training_on_the_gpu_learns_and_its_checkpoint_runs_on_the_cpu(tmp_path, data):
    result = train(gpu_config("train.max_steps=40", "train.lr=1e-2"), data, byte_tokenizer(), tmp_path,
                   progress=False)
    first, last = losses(tmp_path)[0][1], losses(tmp_path)[-1][1]
    assert last < 0.8 * first
    name = torch.cuda.get_device_name(DEVICE)
    if published_bf16_peak(name):  # train.precision=auto on CUDA is bf16, stated against the datasheet's bf16 peak
        assert result.peak_flops == published_bf16_peak(name)[1]
    assert 0 < result.mfu < 1
    model = load_checkpoint(tmp_path).model  # master weights are fp32, wherever they were trained
    assert model.embed.weight.dtype == torch.float32 and model.embed.weight.device.type == "cpu"
    x = torch.randint(0, 257, (2, 24))
    with torch.no_grad():
        on_cpu = model(x)
        on_gpu = model.to(DEVICE)(x.to(DEVICE)).cpu()
    assert torch.allclose(on_cpu, on_gpu, atol=1e-3, rtol=1e-3)


@needs_gpu
def test_a_gpu_run_resumes_like_one_run_through(tmp_path, data):
    train(gpu_config("train.grad_accum=2"), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(gpu_config("train.grad_accum=2"), data, byte_tokenizer(), tmp_path / "split", progress=False,
              callbacks=(StopAt(3),))
    train(gpu_config("train.grad_accum=2"), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert [s for s, _ in split] == [s for s, _ in whole] == list(range(1, 9))
    assert [loss for _, loss in split] == pytest.approx([loss for _, loss in whole], rel=RESUME_RTOL)


@needs_gpu
def test_a_compiled_gpu_run_follows_the_eager_one(tmp_path, data):
    train(gpu_config(), data, byte_tokenizer(), tmp_path / "eager", progress=False)
    train(gpu_config("train.compile=true"), data, byte_tokenizer(), tmp_path / "compiled", progress=False)
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert [s for s, _ in compiled] == [s for s, _ in eager]
    assert [c for _, c in compiled] == pytest.approx([e for _, e in eager], rel=COMPILE_RTOL)


@needs_gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cached_greedy_decoding_on_the_gpu_picks_the_full_forwards_argmax(small_cfg, compile):
    model = Transformer(small_cfg).to(DEVICE).eval()
    prompt = torch.randint(0, small_cfg.vocab_size, (6,)).tolist()
    new = generate(model, prompt, 12, temperature=0, compile=compile)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(model(torch.tensor([ids], device=DEVICE))[0, -1].argmax()))
    assert new == ids[len(prompt):]


def run_gpu_bench(tmp_path, device: str, *args: str) -> dict:
    pytest.importorskip("transformers", reason="bench/gpu.py compares against transformers")
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--device", device, "--json", str(out), *args],
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert [row["size"] for row in result["train"]] == ["50m", "125m"]
    return result


def test_the_gpu_bench_runs_its_eager_sides_on_the_cpu(tmp_path):
    # the script's own code, checked where there is no GPU (the compiled side is the next test's)
    result = run_gpu_bench(tmp_path, "cpu", "--no-compile")
    assert result["peak_source"].startswith("measured")
    for row in result["train"]:
        assert "tinylm compiled" not in row and row["compile_s"] is None
        for side in ("tinylm", "transformers"):
            assert row[side]["tokens_per_s"] > 0 and 0 < row[side]["mfu"] < 1 and len(row["bursts"][side]) == 2
        assert row["logit_max_abs_diff"] <= 1e-3


@needs_gpu
def test_the_gpu_bench_runs_every_side(tmp_path):
    result = run_gpu_bench(tmp_path, DEVICE)
    for row in result["train"]:
        for side in ("tinylm", "tinylm compiled", "transformers"):
            assert row[side]["tokens_per_s"] > 0 and 0 < row[side]["mfu"] < 1
        assert row["logit_max_abs_diff"] <= 1e-3 and row["compile_s"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_nccl_ranks_follow_the_one_process_trajectory(tmp_path, parallel):
    write_corpus(tmp_path / "corpus.txt")
    settings = [f"data.path={tmp_path / 'corpus.txt'}", f"data.cache_dir={tmp_path / 'cache'}", "data.tokenizer=byte",
                "model.n_layer=2", "model.d_model=64", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
                "train.batch_size=4", "train.grad_accum=2", "train.max_steps=6", "train.warmup_steps=2",
                "train.log_every=1", "train.eval_every=0", "train.ckpt_every=0", "eval.max_tokens=2048",
                "train.device=cuda", "train.precision=fp32", f"train.parallel={parallel}"]
    runs = {}
    for name, nproc in (("one", []), ("two", ["--nproc", "2"])):
        result = subprocess.run([sys.executable, "-m", "tinylm", "train", *settings, "--out", name, *nproc],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = losses(tmp_path / name)
    assert [s for s, _ in runs["two"]] == [s for s, _ in runs["one"]] == list(range(1, 7))
    assert [x for _, x in runs["two"]] == pytest.approx([x for _, x in runs["one"]], rel=DIST_RTOL)
