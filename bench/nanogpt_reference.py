"""The speedrun's reference: nanoGPT's documented CPU recipe for shakespeare_char, re-implemented.

nanoGPT's README trains on CPU with
  config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --block_size=64
  --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
i.e. a GPT-2 block (pre-LayerNorm without biases, learned positions, GELU MLP of 4x width, tied
embeddings), AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1, 100 warmup iterations, cosine
decay to 1e-4, gradient clipping at 1.0, a character vocabulary, the first 90% of the file for
training. This script trains exactly that (including the periodic 20-batch estimates nanoGPT
runs every 250 iterations, which its wall-clock time includes) and then scores the WHOLE last
10% with non-overlapping windows, the same way `tinylm speedrun` is scored, so the two numbers
compare directly. Usage: python bench/nanogpt_reference.py FILE [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Block(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight",)) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("--json")
    ap.add_argument("--iters", type=int, default=2000)
    a = ap.parse_args()
    block, batch, iters, warmup, lr_max, lr_min = 64, 12, a.iters, 100, 1e-3, 1e-4
    text = open(a.text, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.int64)
    cut = int(len(ids) * 0.9)
    train, val = torch.from_numpy(ids[:cut]), torch.from_numpy(ids[cut:])
    torch.manual_seed(1337)
    model = GPT(len(chars), block, 4, 4, 128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr_max, betas=(0.9, 0.99))

    def get_batch(data):
        ix = torch.randint(len(data) - block, (batch,))
        x = torch.stack([data[i:i + block] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + block] for i in ix])
        return x, y

    def lr_at(it):
        if it < warmup:
            return lr_max * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (iters - warmup)
        return lr_min + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr_max - lr_min)

    @torch.no_grad()
    def estimate(data, n=20):
        model.eval()
        loss = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in (get_batch(data) for _ in range(n)))
        model.train()
        return loss / n

    for it in range(iters + 1):
        if it % 250 == 0:
            print(f"iter {it}: train {estimate(train):.4f}, val {estimate(val):.4f}", flush=True)
        if it == iters:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = get_batch(train)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - START

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(val) - 1, block):
            x = val[s:s + block][None]
            y = val[s + 1:s + 1 + block][None]
            x = x[:, :y.size(1)]
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    report = {"recipe": "nanoGPT shakespeare_char CPU", "val_nats_per_char": total / count,
              "val_bits_per_byte": total / count / math.log(2) * count / len(text[cut:].encode()),
              "train_tokens": iters * batch * block, "params": sum(p.numel() for p in model.parameters()),
              "seconds": round(seconds, 2), "threads": torch.get_num_threads()}
    print(json.dumps(report, indent=2))
    if a.json:
        open(a.json, "w").write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
