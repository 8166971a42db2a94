"""The peak FLOP/s that model FLOPs utilisation (MFU) is stated against.

GPUs: the vendor's dense bf16 tensor-core peak for known parts. CPUs have no
published figure that means much for PyTorch, so tinylm measures the best
matrix-multiply rate this machine reaches in the dtype the run multiplies in
(fp32, or bf16 under bf16 autocast) and states MFU against that.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

# dense bf16 tensor-core peaks, FLOP/s (vendor datasheets); the first key found in the device's name is its part,
# so a variant comes before its family's name (the H100 PCIe and NVL run slower clocks than the SXM part)
GPU_PEAKS = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "A10G": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "L4": 121e12, "T4": 65e12}


def published_bf16_peak(device_name: str) -> tuple[str, float] | None:
    """(part, dense bf16 FLOP/s) of a GPU whose name holds a part listed in GPU_PEAKS; None for any other."""
    return next(((key, value) for key, value in GPU_PEAKS.items() if key in device_name), None)


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The FLOP/s a run multiplying in `dtype` is measured against. A CPU with native bf16 multiplies bf16 about
    twice as fast as fp32, so stating a bf16 run against the fp32 rate would overstate its utilisation; on a GPU
    the datasheet's bf16 peak holds only for bf16, and an fp32 run (or an unlisted part) is measured instead."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        if found := published_bf16_peak(torch.cuda.get_device_name(device)):
            return found[1]
    return measured_matmul_flops(device, dtype=dtype)


def measured_matmul_flops(device: torch.device, n: int = 1024, repeats: int = 8,
                          dtype: torch.dtype = torch.float32) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def cpu_can_compile() -> bool:
    """Whether torch.compile can build CPU kernels here: Inductor writes them in C++ and needs a compiler (g++, or
    the one $CXX names)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or a torch without Inductor
        return False
    return True


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16, read from Linux's cpuinfo flags).
    There bf16 autocast trains faster than fp32; elsewhere PyTorch emulates bf16 and it is slower. False where
    the flags cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags
