"""Would modded-nanogpt's architecture changes pay in tinylm's 180 s CPU speedrun? One run with them patched in.

These are measurement patches, not tinylm features: the model classes are monkeypatched in this process only,
so a change is built into tinylm (with config keys, export support and tests) only once a two-seed comparison
at equal wall-clock shows it pays. Patches (any combination, joined by "+"):

  qknorm    RMSNorm (no gain) of every head's queries and keys before RoPE (QK-norm)
  relu2     the FFN as w2(relu(w1 x)^2), 4x wide (model.ffn_hidden=512 at width 128; SwiGLU's w3 is left unused)
  softcap   logits squashed to 15 * tanh(logits / 15) (modded-nanogpt's cap, scaled down for a 257-token vocabulary)
  zeroinit  the residual writers (attention wo, FFN w2) and the output head start at zero

The wall-clock budget starts before torch is imported, as `tinylm speedrun`'s does. The runs in BENCHMARKS.md
were byte-level without decay on Muon's matrices or weight averaging, the speedrun's defaults then: add
data.tokenizer=byte train.muon_weight_decay=0 train.average_from=0 to repeat them.

  PYTHONPATH=. python bench/speedrun_patches.py TEXT PATCHES SEED [--seconds 180] [key=value ...]
One JSON line on stdout: the patches, seed, validation nats/byte, tokens and tokens/s.
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tinylm.model.llama as llama  # noqa: E402
from tinylm.speedrun import speedrun  # noqa: E402

PATCHES = ("qknorm", "relu2", "softcap", "zeroinit")


def patch(names: list[str]) -> list[str]:
    """Apply the named patches; returns the config overrides they need."""
    overrides = []
    if "qknorm" in names:
        rope = llama.apply_rope
        llama.apply_rope = lambda x, cos, sin: rope(F.rms_norm(x, (x.size(-1),)), cos, sin)
    if "relu2" in names:
        llama.SwiGLU.forward = lambda self, x: self.w2(F.relu(self.w1(x)).square())
        overrides.append("model.ffn_hidden=512")
    if "softcap" in names:
        head = llama.Transformer.forward_from

        def forward_from(self, x, first_layer, targets=None, cache=None, start=0):
            logits = head(self, x, first_layer, None, cache, start)
            logits = 15 * torch.tanh(logits / 15)
            if targets is None:
                return logits
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

        llama.Transformer.forward_from = forward_from
    if "zeroinit" in names:
        reset = llama.Transformer.reset_parameters

        def reset_parameters(self):
            reset(self)
            for name, p in self.named_parameters():
                if name.endswith(("wo.weight", "w2.weight")) or name == "lm_head.weight":
                    nn.init.zeros_(p)

        llama.Transformer.reset_parameters = reset_parameters
    return overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text")
    ap.add_argument("patches", help=f"'+'-joined, from {', '.join(PATCHES)}; 'none' for the plain speedrun")
    ap.add_argument("seed", type=int)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    names = [] if a.patches == "none" else a.patches.split("+")
    if unknown := [n for n in names if n not in PATCHES]:
        ap.error(f"unknown patch {', '.join(unknown)}; choose from {', '.join(PATCHES)}")
    overrides = patch(names)
    r = speedrun(a.text, a.seconds, [f"train.seed={a.seed}", *overrides, *a.overrides], progress=False,
                 start_time=START)
    print(json.dumps({"patches": names, "seed": a.seed, "val_nats_per_byte": r["val_nats_per_byte"],
                      "train_tokens": r["train_tokens"], "tokens_per_s": r["tokens_per_s"], "seconds": r["seconds"]}))


if __name__ == "__main__":
    main()
