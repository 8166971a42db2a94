"""Data parallelism over several processes: torchrun workers, DDP or FSDP2, and the `--nproc` launcher.

One process per device, started by `torchrun` (or `tinylm train --nproc N`, which runs torchrun's launcher
in-process). The process group uses NCCL on GPUs and gloo on CPUs, with a timeout so that a rank whose peer
died or hangs gives up with a message instead of waiting forever.

How a step is split: the global batch is `train.grad_accum` micro-batches of `train.batch_size` sequences,
the same micro-batches a 1-process run draws for that step (they depend only on (seed, step)). Rank r
takes micro-batches r, r + R, r + 2R, ... of them, so `train.grad_accum` must be a multiple of the number
of ranks R, and each rank averages its grad_accum / R micro-batches while DDP or FSDP averages over the
ranks: the sum is the 1-process gradient, up to the order of the float additions.

Checkpoints keep the 1-process format (one model.safetensors, an optimizer state keyed by parameter
position): FSDP's shards are gathered to full tensors on rank 0 with torch.distributed.checkpoint's
state-dict functions and scattered back with its set_* functions, so a checkpoint written by N ranks
resumes on any M, 1 included, and every other command reads it.

Multi-token prediction calls the model's parts outside its forward, which DDP's gradient hooks cannot follow:
its model is not wrapped, and each step's gradients are averaged by one all-reduce after the backward passes
(Parallel.reduce_after_backward). Multiple-round training scores its batches in turns shared over the ranks
(tinylm.train.rounds).

Dropout RNG in a run of more than one rank is re-seeded for every micro-batch from (seed, micro-batch
index), so the masks depend on the data position, not on which rank draws them, and need no saving.

Used by training (tinylm.train.loop), evaluation (tinylm.eval) and the command line; imports neither.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from tinylm.errors import TinyLMError

PARALLEL_KINDS = ("ddp", "fsdp")


def launched() -> bool:
    """Whether this process is one of several started by torchrun (which sets WORLD_SIZE for its workers)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device_for(name: str) -> str:
    """The device this rank trains on: each GPU rank takes the GPU torchrun assigned it (LOCAL_RANK)."""
    if launched() and (name == "cuda" or (name == "auto" and torch.cuda.is_available())):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return name


def start(device: str, timeout_s: float) -> None:
    """Join the process group torchrun set up (NCCL for GPUs, gloo otherwise); nothing in a 1-process run."""
    if not launched() or active():
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. preparing a shared data cache), then the others, which find its output."""
    if not is_main():
        dist.barrier()
    yield
    if is_main() and active():
        dist.barrier()


def lost_peer(error: BaseException) -> TinyLMError | None:
    """A one-line error for a collective that failed because another rank died or stopped answering."""
    if not active() or not (isinstance(error, dist.DistError) or "gloo" in str(error).lower()):
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]
    return TinyLMError(f"rank {rank()} of {world_size()}: another rank died or stopped answering ({first}); "
                       f"the last checkpoint is intact: fix the cause and continue with --resume")


def micro_indices(grad_accum: int) -> list[int]:
    """The micro-batches of each step this rank computes: every world_size-th, starting at its rank."""
    ranks = world_size()
    if grad_accum % ranks:
        raise TinyLMError(f"train.grad_accum={grad_accum} is not a multiple of the {ranks} ranks: each rank takes "
                          f"whole micro-batches of the global batch; set train.grad_accum to a multiple of {ranks} "
                          f"(dividing train.batch_size by as much keeps the tokens per step)")
    return list(range(rank(), grad_accum, ranks))


def seed_micro_batch(seed: int, index: int) -> None:
    """Dropout masks of micro-batch `index`, the same whichever rank computes it."""
    # hashed as the data draws are (numpy's SeedSequence), so no two (seed, index) pairs share a seed
    torch.manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]))


def _collective_device() -> torch.device:
    """Where tensors for a collective must live: NCCL reduces only GPU tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over the ranks (the tensor itself in a 1-process run), on the tensor's device."""
    if not active():
        return values
    total = values.to(_collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(values.device)


def same_on_all_ranks(value: float) -> float:
    """Rank 0's value everywhere: decisions such as "the time limit is reached" must not differ between ranks,
    or one would stop while the others wait for it."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, src=0)
    return float(t)


def from_main(value):
    """Rank 0's `value` (any picklable object) on every rank: what it read from the run directory, for example,
    so that no rank decides on a file another rank is about to write."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def mean_over_ranks(loss: torch.Tensor, numbers: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Each rank's mean over its micro-batches -> the mean over the whole step, the same on every rank."""
    if not active():
        return loss, numbers
    names = list(numbers)
    total = reduce_sum(torch.stack([loss.float(), *(numbers[n].float().to(loss.device) for n in names)]))
    total /= world_size()
    return total[0], dict(zip(names, total[1:]))


def share(items: Iterable) -> Iterator:
    """This rank's items: every world_size-th, starting at its rank, so the ranks together see each once."""
    ranks, me = world_size(), rank()
    for i, item in enumerate(items):
        if i % ranks == me:
            yield item


def gather_shares(mine: list) -> list:
    """The whole list, in its order, from every rank's `share` of it (the same list on every rank)."""
    if not active():
        return mine
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, mine)
    return [part[i] for i in range(len(parts[0])) for part in parts if i < len(part)]


def share_batches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (inputs, targets) batches, as `share`. Where the last round of batches has fewer than one
    per rank, the ranks left over get a copy with every target masked (-1): it adds nothing to a loss sum, but
    every rank runs the same number of forward passes, which a sharded (FSDP) model needs."""
    ranks, me = world_size(), rank()
    group: list = []
    for batch in batches:
        group.append(batch)
        if len(group) == ranks:
            yield group[me]
            group = []
    if group:
        x, y = group[me] if me < len(group) else (group[0][0], torch.full_like(group[0][1], -1))
        yield x, y


def sum_over_ranks(nats: float, count: int) -> tuple[float, int]:
    """(summed loss, predicted tokens) of all ranks' shares; float64 so the sum matches one process's closely."""
    if not active():
        return nats, count
    total = reduce_sum(torch.tensor([nats, count], dtype=torch.float64))
    return float(total[0]), int(total[1])


@dataclass
class Parallel:
    """How the training model is spread over the ranks: `kind` none (one process), ddp or fsdp.

    `reduce_after_backward`: DDP averages gradients from hooks that only its own forward arms, and expects one
    backward per forward. An objective that reaches past forward into the model's parts, or back-propagates
    several times per micro-batch (multi-token prediction does both), gets the plain model instead, and each
    step's gradients are averaged once, by one all-reduce after the rank's last backward (`average_gradients`)."""
    kind: str = "none"
    reduce_after_backward: bool = False

    @classmethod
    def for_run(cls, tc, mtp: str = "none") -> "Parallel":
        """The spread `tc` (a TrainConfig) asks for, checked against the settings it cannot go with; `mtp` is
        model.mtp."""
        if tc.parallel not in PARALLEL_KINDS:
            raise TinyLMError(f"train.parallel='{tc.parallel}' is not one of {', '.join(PARALLEL_KINDS)}")
        if not active():
            return cls()
        if tc.parallel == "fsdp" and tc.optimizer != "adamw":
            raise TinyLMError(f"train.optimizer={tc.optimizer} orthogonalizes whole matrices, which FSDP splits "
                              "across ranks; use train.parallel=ddp with it")
        if tc.parallel == "fsdp" and tc.average_from:
            raise TinyLMError(f"train.average_from={tc.average_from} keeps a mean of the whole weights, which FSDP "
                              "splits across ranks; use train.parallel=ddp with it")
        if tc.parallel == "fsdp" and mtp != "none":
            raise TinyLMError(f"model.mtp={mtp} calls the model's layers one by one, outside the forward that "
                              "FSDP gathers their shards in; use train.parallel=ddp with it")
        return cls(tc.parallel, reduce_after_backward=mtp != "none")

    def wrap(self, model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
        """The module the loop runs forward and backward on. FSDP shards `model` in place (one unit per layer
        when no layer shares weights with another, else the whole model as one unit)."""
        if self.kind == "ddp" and self.reduce_after_backward:
            for tensor in model.state_dict().values():  # start every replica from rank 0's, as DDP's constructor does
                dist.broadcast(tensor, src=0)
            return model
        if self.kind == "ddp":
            return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if self.kind == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            # on GPU, compute in bf16 with fp32 master weights and gradient reduction; CPUs stay fp32
            policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                      else MixedPrecisionPolicy())
            layers = list(getattr(model, "layers", []))
            if len({id(layer) for layer in layers}) == len(layers) and not _shares_weights(layers):
                for layer in layers:
                    fully_shard(layer, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
        return model

    def sync_gradients(self, train_model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Gradients are averaged over the ranks only on a rank's last micro-batch of the step."""
        if self.kind == "ddp" and not sync and not self.reduce_after_backward:
            return train_model.no_sync()
        if self.kind == "fsdp":
            train_model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def average_gradients(self, model: nn.Module) -> None:
        """With `reduce_after_backward`, each rank's gradients -> their mean over the ranks (nothing otherwise:
        DDP and FSDP have averaged them during the backward pass)."""
        if not self.reduce_after_backward:
            return
        # which parameters have a gradient is the same on every rank: they run the same code on equal shapes
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        # one flat all-reduce, not one per tensor: gloo and NCCL pay a latency per collective
        mean = reduce_sum(torch.cat([g.flatten() for g in grads])) / world_size()
        for grad, averaged in zip(grads, mean.split([g.numel() for g in grads])):
            grad.copy_(averaged.view_as(grad))

    def checkpoint_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, dict] | None:
        """(a plain model holding the full weights, the optimizer state in the 1-process format) on rank 0, None
        on the others. Under FSDP every rank must call it: the shards are gathered, to a CPU copy of the model."""
        if self.kind != "fsdp":
            return (model, optimizer.state_dict()) if is_main() else None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        from tinylm.model import build_model

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        by_name = get_optimizer_state_dict(model, optimizer, options=options)
        if not is_main():
            return None
        plain = build_model(model.cfg)
        plain.load_state_dict(weights)
        return plain, _by_position(by_name, model, optimizer)

    def load_state(self, model: nn.Module, weights: dict, optimizer: torch.optim.Optimizer | None = None,
                   optimizer_state: dict | None = None) -> None:
        """Load full (1-process format) states on every rank; FSDP keeps only each rank's shard."""
        if self.kind != "fsdp":
            model.load_state_dict(weights)
            if optimizer is not None:
                optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, _by_name(optimizer_state, model, optimizer), options=options)

    def clip_gradients(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """torch's clip_grad_norm_, its result a plain tensor (under FSDP it is the global norm as a DTensor)."""
        norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _shares_weights(layers: list[nn.Module]) -> bool:
    seen: set[int] = set()
    for layer in layers:
        ids = {id(p) for p in layer.parameters()}
        if ids & seen:
            return True
        seen |= ids
    return False


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Each optimizer group's parameters by name (a tied tensor by the first name it has)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _by_position(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """torch.distributed.checkpoint's name-keyed optimizer state -> torch.optim's position-keyed one."""
    groups, per_param, position = [], {}, 0
    for names, group in zip(_param_names(model, optimizer), state["param_groups"]):
        ids = list(range(position, position + len(names)))
        per_param.update({i: state["state"][name] for i, name in zip(ids, names) if name in state["state"]})
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        position += len(names)
    return {"state": per_param, "param_groups": groups}


def _by_name(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """torch.optim's position-keyed optimizer state -> the name-keyed one torch.distributed.checkpoint loads."""
    groups, per_param = [], {}
    for names, group in zip(_param_names(model, optimizer), state["param_groups"]):
        per_param.update({name: state["state"][i] for i, name in zip(group["params"], names) if i in state["state"]})
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": names})
    return {"state": per_param, "param_groups": groups}


def launch(nproc: int, argv: list[str]) -> None:
    """Run `tinylm ARGV` in `nproc` worker processes on this machine through torchrun's launcher. A worker
    that fails stops the others; the error names it and how it ended."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun would otherwise pin every worker to one thread; share the cores out instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(["--standalone", "--nproc_per_node", str(nproc), "--module", "tinylm", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        # SIGTERM is torchrun stopping the ranks left once one has failed: a consequence, not a cause
        causes = [f for f in e.failures.values() if f.exitcode != -signal.SIGTERM]
        if causes and all(f.exitcode == 2 for f in causes):
            raise SystemExit(2)  # ranks stopped on a user error, which they have printed
        # a rank killed by a signal is the likely cause; those that saw it go came after
        ordered = sorted(e.failures.items(), key=lambda item: (item[1].exitcode >= 0, item[0]))
        failures = ", ".join(
            f"rank {r} {f'was killed by {f.signal_name()}' if f.exitcode < 0 else f'exited with code {f.exitcode}'}"
            for r, f in ordered)
        raise TinyLMError(f"{failures}; the other ranks were stopped. The last checkpoint is intact: fix the cause "
                          f"and continue with --resume") from None
