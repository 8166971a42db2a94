"""Weight averaging over the end of training (stochastic weight averaging, Izmailov et al., 2018).

From the step at which training progress first reaches `start` (a share of the run, as the lr schedule counts it),
a running uniform mean of the weights is kept beside them; when training ends it replaces them, so the final
evaluation, checkpoint and export see the average. The mean is part of the checkpoint state, so a resumed run
continues it exactly. In the speedrun, where the model reads Tiny Shakespeare 6-7 times and overfits, the average
of the last quarter scored lower validation loss than the last weights (BENCHMARKS.md).
"""

from __future__ import annotations

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, start: float):
        self.params = list(model.parameters())
        self.start = start
        self.mean: list[torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """Fold in the weights as they are after a step that ended at `progress`."""
        if progress < self.start:
            return
        self.count += 1
        if self.mean is None:
            self.mean = [p.detach().clone() for p in self.params]
        else:  # mean += (w - mean) / n: the exact running mean, in place
            torch._foreach_lerp_(self.mean, [p.detach() for p in self.params], 1.0 / self.count)

    @torch.no_grad()
    def apply(self) -> None:
        """Replace the weights by their mean (nothing if no step reached `start`)."""
        if self.mean is not None:
            torch._foreach_copy_(self.params, self.mean)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": [m.cpu() for m in self.mean] if self.mean is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]
        self.mean = None if state["mean"] is None else [
            m.to(device=p.device, dtype=p.dtype) for m, p in zip(state["mean"], self.params)]
