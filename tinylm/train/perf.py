"""The peak FLOP/s that model FLOPs utilisation (MFU) is stated against.

GPUs: the vendor's dense bf16 tensor-core peak for known parts. CPUs have no
published figure that means much for PyTorch, so tinylm measures the best
fp32 matrix-multiply rate this machine reaches and states MFU against that.
"""

from __future__ import annotations

import functools
import time

import torch

# dense bf16 peaks, FLOP/s (vendor datasheets)
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12, "L4": 121e12, "T4": 65e12}


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAKS.items():
            if key in name:
                return value
    return measured_matmul_flops(device)


def measured_matmul_flops(device: torch.device, n: int = 1024, repeats: int = 8) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
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
