"""The training loop: AdamW, warmup + cosine/WSD schedule, accumulation, clipping,
periodic validation, atomic checkpoints, exact resume and multiple-round training (rounds.py).

Exact resume: batches depend only on (seed, step) and the checkpoint holds the
optimizer and every RNG state, so on CPU a resumed run repeats the losses an
uninterrupted run would have logged. Optional behaviour plugs in as callbacks
called after every optimizer step, so the loop itself stays flat.

Numerical faults: a step whose summed loss or gradient norm is NaN/inf is skipped where it happens. The step
still counts (its tokens, its place in the schedule and in the data order), so a run's length and exact resume
do not depend on faults; only the weights and optimizer state are left as they were. Each skip is logged at
once; train.max_bad_steps in a row end the run, leaving the checkpoint from before them.

Several processes (torchrun, `tinylm train --nproc N`): tinylm/distributed.py holds the machinery; the
lines marked "distributed:" are all it changes here, and in one process they do what they did before.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tinylm import distributed
from tinylm.checkpoint import CHECKPOINT, load_checkpoint, read_config, save_checkpoint
from tinylm.config import Config
from tinylm.data.tokens import TokenData
from tinylm.errors import TinyLMError
from tinylm.faults import Stopped, kill_point, signals_deferred, stop_requested
from tinylm.model import Transformer, build_model, sum_nats
from tinylm.progress import progress_bar
from tinylm.tokenizer import PATCHES, Tokenizer
from tinylm.train.average import WeightAverage
from tinylm.train.loggers import TRACKER_DIRS, open_loggers, trackers
from tinylm.train.objectives import Batch, Objective, backpropagates, build_objective
from tinylm.train.optim import build_optimizer, peak_lrs
from tinylm.train.perf import peak_flops
from tinylm.train.plot import plot_metrics
from tinylm.train.rounds import ROUNDS_DIR, RoundSchedule, score_batches
from tinylm.train.schedule import DROPOUT_SCHEDULES, dropout_at, lr_at


@dataclass
class StepInfo:
    step: int
    loss: float | None  # mean micro-batch loss; None unless logged this step (reading it syncs the GPU)
    lr: float
    tokens: int
    seconds: float
    model: Transformer


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    mfu: float
    peak_flops: float
    val_loss: float
    val_bits_per_byte: float
    params: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyLMError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TinyLMError(f"unknown train.device={name}; use auto, cpu, cuda, cuda:N or mps") from None


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision not in ("auto", "fp32"):
        raise TinyLMError(f"train.precision='{precision}' is not one of auto, fp32, bf16")
    return contextlib.nullcontext()


@contextlib.contextmanager
def deterministic_scatter(on: bool):
    """While on, scatter-adds (a compiled embedding's backward) add in a fixed order. Inductor lowers them to
    index_put_, which on CPU otherwise adds rows with atomics from parallel threads, in an order that differs
    between runs: a compiled run could not repeat itself bit for bit (exact resume). The mode is read both when
    compiling and when the kernel runs, so it is on around every compiled call. Eager CPU ops are deterministic
    already; empty tensors are not NaN-filled, which the mode would otherwise add to every allocation."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def remove_run(run_dir: Path) -> None:
    for name in (CHECKPOINT, "metrics.jsonl", "loss.png", ROUNDS_DIR, *TRACKER_DIRS):
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def progress_of(cfg: Config, step: int, tokens: int, seconds: float) -> float:
    """How far training is toward its nearest stop condition (1.0 = done)."""
    t = cfg.train
    return max(step / t.max_steps if t.max_steps else 0.0,
               tokens / t.max_tokens if t.max_tokens else 0.0,
               seconds / t.max_seconds if t.max_seconds else 0.0)


def validate(model: Transformer, data: TokenData, cfg: Config, autocast, max_tokens: int) -> tuple[float, float]:
    """(loss in nats per token, bits per byte) on the validation split."""
    batches = data.val_batches(cfg.eval.batch_size, cfg.model.max_seq_len, max_tokens)
    nats, count = distributed.sum_over_ranks(*sum_nats(model, distributed.share_batches(batches), autocast))
    return nats / count, data.bits_per_byte(nats, count)


def check_tokenizer(cfg: Config, kind: str) -> None:
    """A byte model reads raw bytes: refuse a tokenizer of any other kind ("bpe", "file"); one that predicts its
    patches (model.patching=predicted) reads byte patches, which no other model reads."""
    m = cfg.model
    predicted = m.kind == "byte" and m.patching == "predicted"
    if predicted and kind != PATCHES:
        raise TinyLMError(f"model.kind=byte with model.patching=predicted reads bytes flagged at BPE token ends; set "
                          f"data.tokenizer=patches:PATH (a BPE tokenizer.json) (this run's tokenizer is "
                          f"'{cfg.data.tokenizer}')")
    if kind == PATCHES and not predicted:
        raise TinyLMError(f"data.tokenizer={cfg.data.tokenizer} makes byte patches, which only model.kind=byte with "
                          f"model.patching=predicted reads (this model is model.kind={m.kind}"
                          f"{f', model.patching={m.patching}' if m.kind == 'byte' else ''})")
    if m.kind == "byte" and not predicted and kind != "byte":
        raise TinyLMError(f"model.kind=byte reads raw bytes; set data.tokenizer=byte (this run's tokenizer is "
                          f"'{cfg.data.tokenizer}')")


def _replace_file(path: Path, text: str) -> None:
    """Write `path` so that a kill at any moment leaves the old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so the log has no repeats."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        _replace_file(path, "".join(line + "\n" for line in kept))


def _write_run_files(run_dir: Path, cfg: Config, tokenizer: Tokenizer) -> None:
    """config.yaml and the tokenizer's files, each replaced whole: the --resume command line reads config.yaml,
    so a kill while it is rewritten must not leave it torn."""
    staging = run_dir / "run-files.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save(staging)
    cfg.save(staging / "config.yaml")
    for written in staging.iterdir():
        os.replace(written, run_dir / written.name)
    staging.rmdir()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint to resume: checkpoint/ or, after a kill mid-swap, checkpoint.old/ (a kill
    mid-write leaves only checkpoint.tmp/, which is not one). Not whether it is intact: a damaged checkpoint must
    fail its load with a message naming the file, never be taken for "no checkpoint yet" and trained over."""
    return any((Path(run_dir) / name / "model.safetensors").is_file() for name in (CHECKPOINT, f"{CHECKPOINT}.old"))


def _fresh_start_of_resume(run_dir: Path, cfg: Config) -> None:
    """A run killed before its first checkpoint, re-run with the same `--resume` command (as a scheduler does),
    starts over; unless its config.yaml says it was another model, which resuming would silently replace."""
    if (run_dir / "config.yaml").is_file() and read_config(run_dir).model != cfg.model:
        raise TinyLMError(f"cannot resume '{run_dir}': its model config differs from the one given (and it has no "
                          "checkpoint yet); drop the model overrides, or start it again with --overwrite")
    print(f"no checkpoint in {run_dir} yet; starting from step 0", file=sys.stderr)


def compile_refusal(cfg: Config) -> str | None:
    """Why train.compile cannot train these settings (the error `train` raises when it is set), or None."""
    if cfg.train.dropout_schedule != "constant" and cfg.model.dropout:  # torch.compile guards on p
        return ("train.compile recompiles the model whenever dropout changes, which "
                f"train.dropout_schedule={cfg.train.dropout_schedule} does every step; set train.compile=false")
    if cfg.model.mtp != "none":  # its objective calls the trunk and heads, not the compiled forward
        return (f"train.compile compiles the model's forward, which model.mtp={cfg.model.mtp}'s objective "
                "does not call (it runs the trunk and heads itself); set train.compile=false")
    return None


@signals_deferred
def train(cfg: Config, data: TokenData, tokenizer: Tokenizer, run_dir: str | Path | None = None, *,
          resume: bool = False, init_from: str | Path | None = None, overwrite: bool = False,
          callbacks: tuple[Callable[[StepInfo], None], ...] = (), start_time: float | None = None,
          progress: bool = True, objective: Objective | None = None) -> TrainResult:
    """Train a model on `data`; with `run_dir`, write config, metrics, checkpoints and a loss plot there.

    `start_time` (a time.perf_counter() value) makes a time limit count from before the call, e.g.
    to include setup. A KeyboardInterrupt saves a checkpoint before it propagates; SIGINT and SIGTERM
    wait for the end of the step, then do the same with `Stopped` (tinylm.faults). `overwrite`
    removes an earlier run in `run_dir`, only once the new one has been set up without error. `resume`
    of a run directory with no checkpoint yet starts from step 0, saying so. `objective` replaces the
    configured one (SPIN's pairwise loss, whose batches `data` makes).
    """
    tc = cfg.train
    if not (tc.max_steps or tc.max_tokens or tc.max_seconds):
        raise TinyLMError("set a stop condition: train.max_steps, train.max_tokens or train.max_seconds")
    if tc.dropout_schedule not in DROPOUT_SCHEDULES:
        raise TinyLMError(f"train.dropout_schedule='{tc.dropout_schedule}' is not one of {', '.join(DROPOUT_SCHEDULES)}")
    if tc.compile and (refusal := compile_refusal(cfg)):
        raise TinyLMError(refusal)
    device = resolve_device(distributed.device_for(tc.device))
    # distributed: DDP or FSDP over the ranks torchrun started
    parallel = distributed.Parallel.for_run(tc, cfg.model.mtp)
    micros = distributed.micro_indices(tc.grad_accum)  # distributed: this rank's micro-batches of each step
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = tokenizer.vocab_size
    if cfg.model.vocab_size < data.vocab_size:
        raise TinyLMError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary ({data.vocab_size})")
    data.check_trainable(cfg.model.max_seq_len)
    check_tokenizer(cfg, tokenizer.kind)
    seq_len, tokens_per_step = cfg.model.max_seq_len, tc.batch_size * tc.grad_accum * cfg.model.max_seq_len
    run_dir = Path(run_dir) if run_dir is not None else None
    rounds = RoundSchedule.from_config(tc, tokens_per_step, run_dir)
    torch.manual_seed(tc.seed)
    try:
        model = build_model(cfg.model).to(device)
    except ValueError as e:
        raise TinyLMError(str(e))
    # distributed: FSDP shards the model in place, before the optimizer sees its parameters
    train_model = parallel.wrap(model, device, bf16=isinstance(autocast_for(device, tc.precision), torch.autocast))
    optimizer = build_optimizer(model, cfg, device)
    average = WeightAverage(model, tc.average_from) if tc.average_from else None
    if objective is None:
        objective = build_objective(cfg, tokenizer, device)  # before the run directory is touched: it may fail
    self_backward = backpropagates(objective)  # e.g. multi-token heads in their memory-saving order
    trackers(tc)  # likewise: an unknown tracker or a missing package fails here
    peak_lr = peak_lrs(cfg)[0]  # AdamW's, as logged
    step, tokens, seconds = 0, 0, 0.0
    skipped, bad_steps = 0, 0  # steps skipped for a non-finite loss or gradient: in all, and in a row now
    saved_step = None  # the step of the checkpoint on disk, named when faults stop the run
    if resume and run_dir is not None and not has_checkpoint(run_dir):
        _fresh_start_of_resume(run_dir, cfg)
        resume, overwrite = False, True  # overwrite: the killed attempt's log lines and round files go
    if resume:
        ckpt = load_checkpoint(run_dir, with_state=True)
        if ckpt.cfg.model != cfg.model:
            raise TinyLMError(f"cannot resume '{run_dir}': its model config differs from the one given; drop the model overrides")
        parallel.load_state(model, ckpt.model.state_dict(), optimizer, ckpt.state["optimizer"])
        step, tokens, seconds = ckpt.state["step"], ckpt.state["tokens"], ckpt.state["seconds"]
        skipped = ckpt.state.get("skipped", 0)  # absent from checkpoints written before steps could be skipped
        if average is not None and "average" in ckpt.state:
            average.load_state_dict(ckpt.state["average"])
        saved_step = step
        set_rng_state(ckpt.state["rng"], device)
    elif init_from is not None:
        init = load_checkpoint(init_from)
        if init.cfg.model != cfg.model:
            raise TinyLMError(f"--init '{init_from}' has a different model shape; train with its model config")
        parallel.load_state(model, init.model.state_dict())
    if run_dir is not None and distributed.is_main():  # distributed: only rank 0 writes
        if overwrite and not resume:
            remove_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, cfg, tokenizer)
        _trim_metrics(run_dir / "metrics.jsonl", step)
    # metrics.jsonl and train.log_to's trackers; distributed: only rank 0 writes
    loggers = open_loggers(cfg, run_dir, step) if distributed.is_main() else []

    def log(record: dict) -> None:
        for logger in loggers:
            logger.log(record)

    def checkpoint() -> None:
        nonlocal saved_step
        if run_dir is not None:
            # distributed: every rank takes part (FSDP gathers its shards), rank 0 writes
            if (gathered := parallel.checkpoint_state(model, optimizer)) is not None:
                state = {"optimizer": gathered[1], "step": step, "tokens": tokens,
                         "seconds": seconds, "rng": rng_state(device), "skipped": skipped}
                if average is not None:
                    state["average"] = average.state_dict()
                save_checkpoint(run_dir, gathered[0], cfg, tokenizer, state)
            saved_step = step

    def micro_batches(first_round_step: int, to_device: bool = True,
                      which: list[int] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of a first-round step (those numbered `which`; default all): they depend only on
        (seed, step), so every round, a resumed run and every number of ranks see the same ones."""
        pairs = [data.batch(tc.batch_size, seq_len, tc.seed, first_round_step * tc.grad_accum + micro)
                 for micro in (range(tc.grad_accum) if which is None else which)]
        if to_device:
            pairs = [(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in pairs]
        return pairs

    # Only the training forward (and its backward) is compiled: validation, round scoring and checkpoints use the
    # plain `model`, so eval shapes never recompile the training graph and saved names carry no `_orig_mod.`.
    # Compiling happens in the first step, inside train.max_seconds: that is what a compiled run costs.
    train_model = torch.compile(train_model) if tc.compile else train_model
    autocast = autocast_for(device, tc.precision)
    params = model.param_counts()
    desc = f"train {params['total'] / 1e6:.1f}M params"
    compiling = tc.compile  # the first step compiles (tens of seconds on CPU): the bar says so, not to look hung
    # the bar runs over training progress (steps, tokens or seconds: whichever limit is nearest), so its
    # ETA is right for every stop condition
    bar = progress_bar(total=1.0, initial=progress_of(cfg, step, tokens, seconds), disable=not progress,
                       dynamic_ncols=True, desc=f"{desc} (compiling)" if compiling else desc,
                       bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
    clock = start_time if start_time is not None else time.perf_counter()
    clock -= seconds  # a resumed run continues its clock
    window_tokens, window_start = 0, time.perf_counter()
    val_loss = val_bpb = float("nan")
    model.train()
    try:
        # the clock read that decides to stop is the one reported, so a time-limited run reports >= its limit
        while (p := progress_of(cfg, step, tokens,
                                seconds := distributed.same_on_all_ranks(time.perf_counter() - clock))) < 1.0:
            if rounds.needs_selection(step):  # a new round: score the first round's batches, draw this round's
                checkpoint()  # the round's end, so a crash while scoring resumes the scoring, not the round
                rounds.select(step, lambda scores_file: score_batches(
                    model, lambda i: micro_batches(i, to_device=False), rounds.first_round_steps, scores_file,
                    autocast, progress))
                window_tokens, window_start = 0, time.perf_counter()  # scoring time is not training throughput
            # the weights as the last step left them, at the progress it reached; after every checkpoint of that
            # step, so a run resumed from one folds them in once
            if average is not None:
                average.update(p)
            round_step, round_progress = rounds.position(step, p)
            factor = lr_at(round_step, round_progress, lr=1.0, schedule=tc.schedule, warmup_steps=tc.warmup_steps,
                           min_lr_ratio=tc.min_lr_ratio, decay_fraction=tc.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            lr = peak_lr * factor
            # a function of progress alone, so a resumed run sets exactly the p the uninterrupted one did
            dropout = dropout_at(p, peak=cfg.model.dropout, schedule=tc.dropout_schedule, until=tc.dropout_until,
                                 start=tc.dropout_from, cycles=tc.dropout_cycles)
            model.set_dropout(dropout)
            loss_sum = torch.zeros((), device=device)
            numbers_sum: dict[str, torch.Tensor] = {}  # the objective's numbers, averaged over micro-batches
            source_step = rounds.source_step(step)
            for micro, (x, y) in zip(micros, micro_batches(source_step, which=micros)):
                index = source_step * tc.grad_accum + micro
                if distributed.active():
                    distributed.seed_micro_batch(tc.seed, index)
                # distributed: each rank averages its micro-batches, DDP/FSDP average over the ranks on the last
                with (parallel.sync_gradients(train_model, sync=micro == micros[-1]),
                      deterministic_scatter(tc.compile and device.type == "cpu")):
                    with autocast:
                        loss, numbers = objective(train_model, Batch(x, y, index, p, 1 / len(micros)))
                        loss = loss / len(micros)
                    if not self_backward:
                        loss.backward()
                loss_sum += loss.detach()
                for name, value in numbers.items():
                    numbers_sum[name] = numbers_sum.get(name, 0) + value / len(micros)
            parallel.average_gradients(model)  # distributed: where DDP's hooks did not (multi-token prediction)
            loss_sum, numbers_sum = distributed.mean_over_ranks(loss_sum, numbers_sum)
            # with grad_clip=0 the norm is still needed to catch an inf gradient; max_norm=inf scales by exactly 1
            grad_norm = parallel.clip_gradients(model, tc.grad_clip or math.inf)
            # one host read per step (a GPU sync): whether to step must be known before the optimizer runs
            loss_finite, grad_finite = torch.isfinite(torch.stack([loss_sum, grad_norm.to(loss_sum)])).tolist()
            if loss_finite and grad_finite:
                optimizer.step()
                bad_steps = 0
            else:
                skipped, bad_steps = skipped + 1, bad_steps + 1
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            window_tokens += tokens_per_step
            seconds = time.perf_counter() - clock
            if bad_steps:
                log({"step": step, "skipped": "non-finite gradient" if loss_finite else "non-finite loss",
                     "skipped_total": skipped})
                if tc.max_bad_steps and bad_steps >= tc.max_bad_steps:
                    kept = (f"the checkpoint in '{run_dir}' from step {saved_step} is untouched"
                            if saved_step is not None else "no checkpoint was written")
                    raise TinyLMError(
                        f"training stopped at step {step}: {bad_steps} steps in a row had a non-finite loss or "
                        f"gradient (train.max_bad_steps={tc.max_bad_steps}); {kept}. Try a lower train.lr, more "
                        f"train.warmup_steps or train.precision=fp32 instead of bf16, and check the data near step "
                        f"{step - bad_steps + 1}")
            # a skipped step has no loss worth logging: its skip record stands in for it
            logged = step % tc.log_every == 0 and not bad_steps if tc.log_every else False
            loss_value = loss_sum.item() if logged else None
            if logged:
                now = time.perf_counter()
                rate = window_tokens / (now - window_start)
                window_tokens, window_start = 0, now
                log({"step": step, "loss": loss_value, **{k: v.item() for k, v in numbers_sum.items()},
                     "lr": lr, "dropout": dropout, "tokens": tokens, "seconds": round(seconds, 3),
                     "tokens_per_s": round(rate, 1), **({"round": r.index} if (r := rounds.round_at(step - 1)) else {})})
                bar.set_postfix(step=step, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
            if compiling:
                compiling = False
                bar.set_description_str(desc, refresh=False)
            bar.update(min(progress_of(cfg, step, tokens, seconds), 1.0) - bar.n)
            if tc.eval_every and step % tc.eval_every == 0:
                val_loss, val_bpb = validate(model, data, cfg, autocast, tc.eval_tokens)
                log({"step": step, "val_loss": val_loss, "val_bpb": val_bpb, "tokens": tokens})
                if progress:
                    bar.write(f"step {step}: val loss {val_loss:.4f}, {val_bpb:.4f} bits/byte")
            # not during a run of skipped steps: if they end the run, resuming from the step before them retries
            # their batches (e.g. at a lower train.lr) instead of counting them as done
            if tc.ckpt_every and step % tc.ckpt_every == 0 and not bad_steps:
                checkpoint()
            for callback in callbacks:
                callback(StepInfo(step, loss_value, lr, tokens, seconds, model))
            kill_point("train-step")
            if (signum := stop_requested()) is not None:
                raise Stopped(signum)  # saved below, like Ctrl-C
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        for logger in loggers:
            logger.close()
        raise
    bar.close()
    train_seconds = seconds
    if average is not None:  # the last step's weights, then their mean replaces them for what follows
        average.update(p)
        average.apply()
    checkpoint()
    matmul_dtype = torch.bfloat16 if isinstance(autocast, torch.autocast) else torch.float32
    peak = tc.peak_tflops * 1e12 if tc.peak_tflops else peak_flops(device, matmul_dtype)
    peak *= distributed.world_size()  # distributed: MFU is of all the ranks' devices together
    rate = tokens / train_seconds if train_seconds else 0.0
    mfu = model.flops_per_token(seq_len) * rate / peak
    if not (tc.eval_every and step % tc.eval_every == 0 and tc.eval_tokens == cfg.eval.max_tokens):
        # the final score covers what `tinylm eval` scores (eval.max_tokens; 0 = the whole split)
        val_loss, val_bpb = validate(model, data, cfg, autocast, cfg.eval.max_tokens)
        log({"step": step, "val_loss": val_loss, "val_bpb": val_bpb, "tokens": tokens})
    log({"step": step, "summary": True, "tokens_per_s": round(rate, 1), "mfu": mfu, "peak_flops": peak,
         "skipped_total": skipped})
    for logger in loggers:
        logger.close()
    if run_dir is not None and distributed.is_main():
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
    return TrainResult(step, tokens, train_seconds, rate, mfu, peak, val_loss, val_bpb, params)
