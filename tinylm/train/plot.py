"""The loss-curve picture written at the end of training."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line]
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", ms=4, label="validation loss")
    rounds = [r for r in records if "round" in r]
    starts = [r["tokens"] for prev, r in zip(rounds, rounds[1:]) if r["round"] != prev["round"]]
    for i, x in enumerate(starts):  # multiple-round training: where each later round began (roughly, at log steps)
        ax.axvline(x, color="grey", ls="--", lw=0.8, label="next round" if i == 0 else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
