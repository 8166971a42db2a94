"""Causal attention on CPU: SDPA's kernel against the two-matmul path of `tinylm.model.llama.causal_attention`.

--part kernel: forward + backward of one attention call, (B, H, T, 64) queries, fp32 and bf16, at the shapes of
the speedrun, the throughput bench's sizes and longer sequences; best of 3 bursts each (in fp32 the
two matmuls are timed too, though tinylm uses them in bf16 and fp16 only).
--part profile: torch.profiler's top operators (self CPU time) over 5 speedrun training steps, SDPA then the two
matmuls: the profile that found this change.
--part step: one whole training step of the speedrun's model (bf16 autocast where the CPU has it, Muon + AdamW,
batch 32 x 128), SDPA and the two matmuls alternating burst by burst in this process, medians of the bursts.
--part compiled: a lever tried for fp32 training and not kept. The throughput bench's ~1M and ~10M training steps
(fp32, fused AdamW) compiled as train.compile=true compiles them, with SDPA (what tinylm runs in fp32) against the
two matmuls forced in fp32, and at ~1M also the two matmuls with Inductor's C++ wrapper; sides alternating burst
by burst in this process, medians of the bursts.

Usage: PYTHONPATH=. python bench/attention.py [--part kernel|profile|step|compiled|all] [--threads 2] [--json OUT]
Run it alone: a second torch process on a 2-core machine slows both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F

import tinylm.model.llama as llama

SHAPES = [(12, 2, 64), (32, 2, 128), (8, 5, 256), (4, 9, 256), (16, 2, 256), (4, 2, 512), (2, 2, 1024)]


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def time_call(fn, shape, dtype, calls=10) -> float:
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(*shape, dtype=dtype)
    for _ in range(2):
        fn(q, k, v).backward(grad)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn(q, k, v).backward(grad)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1000


def kernel_part() -> list[dict]:
    rows = []
    print("| B, H, T (head dim 64) | dtype | SDPA ms | two matmuls ms | SDPA ÷ matmuls |\n|---|---|---:|---:|---:|")
    for B, H, T in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            a, b = time_call(sdpa, (B, H, T, 64), dtype), time_call(llama.matmul_attention, (B, H, T, 64), dtype)
            rows.append({"shape": [B, H, T, 64], "dtype": str(dtype)[6:], "sdpa_ms": a, "matmuls_ms": b})
            print(f"| {B}, {H}, {T} | {str(dtype)[6:]} | {a:.2f} | {b:.2f} | {a / b:.2f}× |", flush=True)
    return rows


@contextlib.contextmanager
def attention_path(side: str):
    """Inside, the model's attention takes SDPA (side "sdpa") or the two matmuls (side "matmuls")."""
    saved = llama.MATMUL_ATTENTION_MAX_LEN
    llama.MATMUL_ATTENTION_MAX_LEN = 0 if side == "sdpa" else saved
    try:
        yield
    finally:
        llama.MATMUL_ATTENTION_MAX_LEN = saved


def speedrun_step():
    """One training step of the speedrun's model on a fixed random batch, as a function."""
    from tinylm.model import build_model
    from tinylm.speedrun import speedrun_config
    from tinylm.train.loop import autocast_for
    from tinylm.train.optim import build_optimizer

    cfg = speedrun_config(180, ["model.vocab_size=1024"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    autocast = autocast_for(torch.device("cpu"), cfg.train.precision)
    x, y = (torch.randint(0, 1024, (cfg.train.batch_size, cfg.model.max_seq_len)) for _ in range(2))

    def step():
        with autocast:
            loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, cfg


def profile_part(steps: int = 5) -> dict:
    from torch.profiler import profile

    step, cfg = speedrun_step()
    tables = {}
    for side in ("sdpa", "matmuls"):
        with attention_path(side):
            for _ in range(3):
                step()
            with profile() as prof:
                for _ in range(steps):
                    step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        tables[side] = [{"op": e.key, "calls": e.count // steps, "ms_per_step": e.self_cpu_time_total / 1000 / steps,
                         "share": e.self_cpu_time_total / total} for e in events[:8]]
        print(f"{side} ({cfg.train.precision}), one step: {total / 1000 / steps:.1f} ms of self CPU time")
        for row in tables[side]:
            print(f"  {row['op'][:60]:60s} {row['ms_per_step']:7.1f} ms {100 * row['share']:5.1f}%  x{row['calls']}")
    return tables


def step_part(bursts: int = 8, steps: int = 5) -> dict:
    step, cfg = speedrun_step()
    times = {"sdpa": [], "matmuls": []}
    for _ in range(2):
        step()
    for _ in range(bursts):
        for side in times:
            with attention_path(side):
                step()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                times[side].append((time.perf_counter() - start) / steps)
    tokens = cfg.train.batch_size * cfg.model.max_seq_len
    result = {"precision": cfg.train.precision, "bursts": bursts, "steps_per_burst": steps,
              **{f"{side}_ms": 1000 * statistics.median(t) for side, t in times.items()},
              **{f"{side}_tokens_per_s": tokens / statistics.median(t) for side, t in times.items()}}
    result["speedup"] = result["sdpa_ms"] / result["matmuls_ms"]
    print(f"speedrun step ({result['precision']}): SDPA {result['sdpa_ms']:.1f} ms, two matmuls "
          f"{result['matmuls_ms']:.1f} ms, {result['speedup']:.2f}x", flush=True)
    return result


def compiled_part(bursts: int = 8) -> list[dict]:
    from tinylm.config import ModelConfig
    from tinylm.model import Transformer
    from tinylm.train.loop import deterministic_scatter

    def forced_matmuls(q, k, v, dropout_p, enable_gqa):
        return llama.matmul_attention(q, k, v)  # the throughput shapes have no GQA below ~50M

    rows = []
    for name, (vocab, n_layer, d_model, n_heads, batch, seq, steps) in {
            "1m": (257, 4, 128, 2, 12, 64, 20), "10m": (8192, 8, 320, 5, 8, 256, 3)}.items():
        cfg = ModelConfig(vocab_size=vocab, n_layer=n_layer, d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads,
                          max_seq_len=256, tie_embeddings=True)
        torch.manual_seed(0)
        weights = Transformer(cfg).state_dict()
        data = torch.randint(0, vocab, (batch, seq + 1))
        x, y = data[:, :-1], data[:, 1:]
        sides = {"sdpa": (llama.causal_attention, {}), "matmuls": (forced_matmuls, {})}
        if name == "1m":
            sides["matmuls + C++ wrapper"] = (forced_matmuls, {"cpp_wrapper": True})
        runs = {}
        for side, (attention, options) in sides.items():
            model = Transformer(cfg)
            model.load_state_dict(weights)
            runs[side] = (attention, torch.compile(model, options=options),
                          torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True))

        def step(side):
            attention, compiled, optimizer = runs[side]
            saved, llama.causal_attention = llama.causal_attention, attention
            try:
                with deterministic_scatter(True):
                    compiled(x, y).backward()
            finally:
                llama.causal_attention = saved
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        compile_s = {}
        for side in runs:
            start = time.perf_counter()
            step(side)
            compile_s[side] = time.perf_counter() - start
            step(side)
        rates = {side: [] for side in runs}
        for _ in range(bursts):
            for side in runs:
                start = time.perf_counter()
                for _ in range(steps):
                    step(side)
                rates[side].append(x.numel() * steps / (time.perf_counter() - start))
        row = {"size": name, "batch": [batch, seq], "bursts": rates, "first_step_s": compile_s,
               **{f"{side}_tokens_per_s": statistics.median(r) for side, r in rates.items()}}
        rows.append(row)
        cells = ", ".join(f"{side} {row[f'{side}_tokens_per_s']:,.0f}" for side in runs)
        ratios = ", ".join(f"{side} {row[f'{side}_tokens_per_s'] / row['sdpa_tokens_per_s']:.3f}x"
                           for side in runs if side != "sdpa")
        print(f"~{name.upper()} compiled fp32 training, tokens/s (median of {bursts} bursts): {cells}; "
              f"against SDPA: {ratios}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("kernel", "profile", "step", "compiled", "all"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "torch": torch.__version__}
    if args.part in ("kernel", "all"):
        result["kernel"] = kernel_part()
    if args.part in ("profile", "all"):
        result["profile"] = profile_part()
    if args.part in ("step", "all"):
        result["step"] = step_part()
    if args.part in ("compiled", "all"):
        result["compiled"] = compiled_part()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
