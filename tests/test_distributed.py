"""Data-parallel training and evaluation (tinylm/distributed.py) on CPU: gloo, 2 processes started by torchrun.

Tolerance for "2 ranks == 1 rank": the ranks see exactly the micro-batches one process sees, and the
only difference is where the float additions happen: one process accumulates micro-batch gradients in
param.grad, two processes each hold one and gloo's all-reduce adds them. At fp32 that moves a loss by
about 1e-7 relative per step, compounding slowly; RTOL = 1e-5 is two orders above that and four below a
step's change in loss (~1e-2), so it passes on reordered sums and fails on any wrong or missing batch.
Measured (torch 2.13, gloo): DDP repeats the 1-process losses bit for bit, FSDP to 9e-8 relative.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm import distributed
from tinylm.checkpoint import load_checkpoint
from tinylm.config import TrainConfig, load_config
from tinylm.data import TokenData, prepare_cached
from tinylm.errors import TinyLMError
from tinylm.eval import evaluate, text_bits_per_byte
from tinylm.eval.harness import run_benchmarks
from tinylm.tokenizer import Tokenizer
from tinylm.train import StepInfo, train
from tinylm.train.optim import build_optimizer

from conftest import write_corpus

RTOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["data.tokenizer=byte", "model.n_layer=2", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1",
            "model.max_seq_len=32", "train.batch_size=4", "train.grad_accum=2", "train.max_steps=6",
            "train.warmup_steps=2", "train.log_every=1", "train.eval_every=3", "train.eval_tokens=2048",
            "train.ckpt_every=3", "eval.max_tokens=2048", "train.device=cpu"]

# one torchrun worker: train, stopping (as Ctrl-C does: checkpoint, then exit) after step STOP (0: never); each
# rank then saves its multi-token prediction weights (if any) to OUT.rankR.mtp.pt
WORKER = """
import sys
import torch
from tinylm import distributed
from tinylm.config import load_config
from tinylm.data import TokenData, prepare_cached
from tinylm.tokenizer import Tokenizer
from tinylm.train import train

out, stop, resume, *overrides = sys.argv[1:]
cfg = load_config(overrides=overrides)
distributed.start("cpu", cfg.train.parallel_timeout)
with distributed.main_first():
    data_dir = prepare_cached(cfg.data, progress=False)

trained = {}

def stop_at(info):
    trained["model"] = info.model
    if info.step == int(stop):
        raise KeyboardInterrupt

try:
    train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), out, resume=resume == "resume",
          callbacks=(stop_at,), progress=False)
except KeyboardInterrupt:
    pass
mtp = {k: v for k, v in trained["model"].state_dict().items() if k.startswith("mtp.")} if trained else {}
if mtp:
    torch.save(mtp, f"{out}.rank{distributed.rank()}.mtp.pt")
distributed.stop()
"""


# evaluation on every rank: RUN's validation split and TEXT as library calls, TASK through the command line
EVAL_WORKER = """
import json, sys
from tinylm import distributed
from tinylm.cli import main
from tinylm.eval import evaluate, text_bits_per_byte

run, text, task, out = sys.argv[1:]
distributed.start("cpu", 60)
report = {"val": evaluate(run, batch_size=3, progress=False),
          "text": text_bits_per_byte(run, text, batch_size=8, progress=False)}
if distributed.is_main():
    open(out, "w").write(json.dumps(report))
main(["eval", run, "--tasks", task, "--batch-size", "3", "--json", out + ".tasks"])
"""


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args, cwd: Path, environ: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *map(str, args)], cwd=cwd, env={**env(), **(environ or {})},
                          capture_output=True, text=True, timeout=300)


def losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def assert_same_trajectory(got: list, want: list) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=RTOL)


class StopAt:
    def __init__(self, step: int):
        self.step = step

    def __call__(self, info: StepInfo):
        if info.step == self.step:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A corpus, its prepared byte data, and the reference: an uninterrupted 1-process run (in this process)."""
    work = tmp_path_factory.mktemp("dist")
    write_corpus(work / "corpus.txt")
    (work / "worker.py").write_text(WORKER)
    (work / "eval_worker.py").write_text(EVAL_WORKER)
    cfg = config(work)
    data_dir = prepare_cached(cfg.data, progress=False)
    train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), work / "one", progress=False)
    return work


def overrides(work: Path, *extra: str) -> list[str]:
    return [f"data.path={work / 'corpus.txt'}", f"data.cache_dir={work / 'cache'}", *SETTINGS, *extra]


def config(work: Path, *extra: str):
    return load_config(overrides=overrides(work, *extra))


def test_a_single_process_has_rank_0_of_1_and_every_micro_batch():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.micro_indices(3) == [0, 1, 2]


def test_batches_shared_over_ranks_cover_each_batch_once_and_pad_with_masked_copies(monkeypatch):
    batches = [(torch.full((1, 2), i), torch.full((1, 2), i)) for i in range(5)]
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = {}
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shares[r] = list(distributed.share_batches(batches))
    assert [len(s) for s in shares.values()] == [3, 3]  # equal forward passes on every rank
    seen = sorted(int(y[0, 0]) for s in shares.values() for _, y in s if (y != -1).any())
    assert seen == [0, 1, 2, 3, 4]
    assert (shares[1][2][1] == -1).all()  # rank 1's padding: batch 4's inputs, every target masked


def test_grad_accum_must_split_evenly_over_the_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.micro_indices(4) == [1, 3]
    with pytest.raises(TinyLMError, match="train.grad_accum=3 is not a multiple of the 2 ranks"):
        distributed.micro_indices(3)


def test_an_unknown_parallel_kind_is_refused():
    with pytest.raises(TinyLMError, match="train.parallel='zero3' is not one of ddp, fsdp"):
        distributed.Parallel.for_run(TrainConfig(parallel="zero3"))


def test_fsdp_refuses_multi_token_prediction(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    assert distributed.Parallel.for_run(TrainConfig(parallel="ddp"), "sequential").reduce_after_backward
    with pytest.raises(TinyLMError, match="model.mtp=parallel .* use train.parallel=ddp"):
        distributed.Parallel.for_run(TrainConfig(parallel="fsdp"), "parallel")


def test_fsdp_refuses_weight_averaging(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    distributed.Parallel.for_run(TrainConfig(parallel="ddp", average_from=0.75))
    with pytest.raises(TinyLMError, match="train.average_from=0.75 .* use train.parallel=ddp"):
        distributed.Parallel.for_run(TrainConfig(parallel="fsdp", average_from=0.75))


def test_nproc_must_be_at_least_one(cli, tmp_path):
    code, _, err = cli("train", "--nproc", "0", "--out", tmp_path / "run")
    assert code == 2 and "--nproc 0: give the number of processes" in err
    assert not (tmp_path / "run").exists()


def test_optimizer_state_by_name_and_by_position_round_trip(small_cfg):
    from tinylm.config import Config
    from tinylm.model import Transformer

    cfg = Config(model=small_cfg)
    model = Transformer(small_cfg)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    model(torch.randint(0, 97, (2, 8))).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    by_name = distributed._by_name(state, model, optimizer)
    assert "embed.weight" in by_name["state"]  # the tied head is the same tensor, named once
    back = distributed._by_position(by_name, model, optimizer)
    assert back["param_groups"] == state["param_groups"]
    assert back["state"].keys() == state["state"].keys()
    assert all(torch.equal(back["state"][i]["exp_avg"], state["state"][i]["exp_avg"]) for i in state["state"])


@pytest.mark.slow
def test_two_ddp_ranks_follow_the_one_process_trajectory_and_only_rank_0_writes(workdir):
    result = subprocess.run([sys.executable, "-m", "tinylm", "train", *overrides(workdir), "--out", "ddp",
                             "--nproc", "2"], cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_trajectory(losses(workdir / "ddp"), losses(workdir / "one"))
    lines = (workdir / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((workdir / "one" / "metrics.jsonl").read_text().splitlines())  # no rank wrote twice
    assert result.stdout.count("done: 6 steps") == 1
    assert sorted(p.name for p in (workdir / "ddp").rglob("*")) == sorted(p.name for p in (workdir / "one").rglob("*"))


@pytest.mark.slow
def test_a_two_rank_fsdp_checkpoint_resumes_on_one_process(workdir):
    result = torchrun(2, workdir / "worker.py", workdir / "fsdp", 3, "new", *overrides(workdir, "train.parallel=fsdp"),
                      cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_trajectory(losses(workdir / "fsdp"), losses(workdir / "one")[:3])  # FSDP == 1 process == DDP
    assert load_checkpoint(workdir / "fsdp", with_state=True).state["step"] == 3
    cfg = config(workdir, "train.parallel=fsdp")
    data_dir = prepare_cached(cfg.data, progress=False)
    train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), workdir / "fsdp", resume=True, progress=False)
    assert_same_trajectory(losses(workdir / "fsdp"), losses(workdir / "one"))


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_fsdp_ranks(workdir):
    cfg = config(workdir)
    data_dir = prepare_cached(cfg.data, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), workdir / "grow", callbacks=(StopAt(3),),
              progress=False)
    result = torchrun(2, workdir / "worker.py", workdir / "grow", 0, "resume",
                      *overrides(workdir, "train.parallel=fsdp"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_trajectory(losses(workdir / "grow"), losses(workdir / "one"))
    one = load_checkpoint(workdir / "one").model.state_dict()
    grown = load_checkpoint(workdir / "grow").model.state_dict()
    assert all(torch.allclose(one[k], grown[k], rtol=RTOL, atol=1e-6) for k in one)


@pytest.mark.slow
def test_evaluation_on_two_ranks_equals_one_process(workdir):
    """The validation split, a text and a task, each scored in shares by 2 ranks, sum to the 1-process numbers
    (float64 sums in another order, hence rel=1e-9); the task goes through the command, which prints once."""
    text = workdir / "text.txt"
    text.write_text("".join((workdir / "corpus.txt").read_text().splitlines(keepends=True)[:40]))
    task = workdir / "task.jsonl"
    task.write_text("".join(json.dumps({"context": f"Line {i}: the quick brown", "choices": ["fox", "dog", "cat"],
                                        "gold": i % 3}) + "\n" for i in range(7)))  # 7: ranks get 4 and 3
    result = torchrun(2, workdir / "eval_worker.py", workdir / "one", text, task, "two.json", cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count(" items in ") == 1  # one table: rank 0 prints
    two = json.loads((workdir / "two.json").read_text())
    tasks = json.loads((workdir / "two.json.tasks").read_text())["tasks"]["task"]
    one = {"val": evaluate(workdir / "one", batch_size=3, progress=False),
           "text": text_bits_per_byte(workdir / "one", text, batch_size=8, progress=False)}
    one_tasks = run_benchmarks(workdir / "one", [str(task)], batch_size=3, progress=False)["tasks"]["task"]
    assert two["val"]["tokens"] == one["val"]["tokens"] and two["text"]["tokens"] == one["text"]["tokens"]
    for kind, key in (("val", "val_loss"), ("val", "bits_per_byte"), ("text", "loss"), ("text", "bits_per_byte")):
        assert two[kind][key] == pytest.approx(one[kind][key], rel=1e-9)
    assert (tasks["items"], tasks["acc"], tasks["acc_norm"]) == (7, one_tasks["acc"], one_tasks["acc_norm"])


ROUNDS = ("train.rounds=2", "train.refine_ratio=0.5", "train.max_steps=7")  # rounds of 5 and 2 steps


def train_here(work: Path, out: str, *extra: str) -> Path:
    cfg = config(work, *extra)
    data_dir = prepare_cached(cfg.data, progress=False)
    train(cfg, TokenData.load(data_dir), Tokenizer.load(data_dir), work / out, progress=False)
    return work / out


def scores_and_drawn(run: Path) -> tuple[np.ndarray, list[int]]:
    return (np.load(run / "rounds" / "round2.scores.npy"),
            json.loads((run / "rounds" / "round2.batches.json").read_text())["batches"])


@pytest.fixture(scope="module")
def rounds_one(workdir) -> Path:
    """The 1-process reference of a 2-round run."""
    return train_here(workdir, "rounds-one", *ROUNDS)


@pytest.mark.slow
def test_two_ranks_score_and_draw_the_rounds_one_process_does(workdir, rounds_one):
    """5 first-round batches to score: turns of 2, 2 and 1 (rank 1 pads the last); the scores file and the draw
    equal one process's (the weights at the round's end repeat it bit for bit under DDP, so rel=RTOL is slack)."""
    result = torchrun(2, workdir / "worker.py", workdir / "rounds-ddp", 0, "new", *overrides(workdir, *ROUNDS),
                      cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    (two, two_drawn), (one, one_drawn) = scores_and_drawn(workdir / "rounds-ddp"), scores_and_drawn(rounds_one)
    assert two.shape == (5,) and two == pytest.approx(one, rel=RTOL)
    assert two_drawn == one_drawn and len(two_drawn) == 2
    assert_same_trajectory(losses(workdir / "rounds-ddp"), losses(rounds_one))


@pytest.mark.slow
def test_two_fsdp_ranks_stopped_while_scoring_resume_the_scoring(workdir, rounds_one):
    """A stop signal on both ranks in their 2nd turn (batches 2 and 3) stops them together after it; rank 0 has
    saved 4 scores, and the resumed run scores the 5th and repeats the uninterrupted 1-process run."""
    settings = overrides(workdir, *ROUNDS, "train.parallel=fsdp", "train.parallel_timeout=60")
    stopped = torchrun(2, workdir / "worker.py", workdir / "rounds-fsdp", 0, "new", *settings, cwd=workdir,
                       environ={"TINYLM_KILL_AT": "scoring-batch:2", "TINYLM_KILL_SIGNAL": "TERM"})
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    partial = np.load(workdir / "rounds-fsdp" / "rounds" / "round2.scores.npy")
    assert np.isfinite(partial[:4]).all() and np.isnan(partial[4])
    assert load_checkpoint(workdir / "rounds-fsdp", with_state=True).state["step"] == 5  # the round's end
    result = torchrun(2, workdir / "worker.py", workdir / "rounds-fsdp", 0, "resume", *settings, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    (two, two_drawn), (one, one_drawn) = scores_and_drawn(workdir / "rounds-fsdp"), scores_and_drawn(rounds_one)
    assert two[:4].tolist() == partial[:4].tolist()  # kept, not scored again
    assert two == pytest.approx(one, rel=RTOL) and two_drawn == one_drawn
    assert_same_trajectory(losses(workdir / "rounds-fsdp"), losses(rounds_one))


@pytest.mark.slow
@pytest.mark.parametrize("mtp", ["sequential", "parallel"])
def test_two_ddp_ranks_train_multi_token_prediction_as_one_process(workdir, mtp):
    """Same losses as one process at the same global batch; the extra heads' weights equal on both ranks (their
    gradients were averaged once, the same on both)."""
    extra = (f"model.mtp={mtp}", "model.mtp_heads=2", "train.mtp_weight=0.5")
    one = train_here(workdir, f"mtp-{mtp}-one", *extra)
    result = torchrun(2, workdir / "worker.py", workdir / f"mtp-{mtp}", 0, "new", *overrides(workdir, *extra),
                      cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_trajectory(losses(workdir / f"mtp-{mtp}"), losses(one))
    rank_0, rank_1 = (torch.load(workdir / f"mtp-{mtp}.rank{r}.mtp.pt") for r in (0, 1))
    assert rank_0 and rank_0.keys() == rank_1.keys()
    assert all(torch.equal(rank_0[k], rank_1[k]) for k in rank_0)
    want = load_checkpoint(one).model.state_dict()
    assert all(torch.allclose(rank_0[k], want[k], rtol=RTOL, atol=1e-6) for k in rank_0)


# rank r's gradients are all r + 1; print them after Parallel.average_gradients
AVERAGE_WORKER = """
import torch
from tinylm import distributed
from tinylm.config import ModelConfig, TrainConfig
from tinylm.model import Transformer

distributed.start("cpu", 60)
model = Transformer(ModelConfig(vocab_size=16, n_layer=1, d_model=8, n_heads=2, n_kv_heads=1, max_seq_len=8,
                                mtp="sequential", mtp_heads=1))
parallel = distributed.Parallel.for_run(TrainConfig(parallel="ddp"), "sequential")
parallel.wrap(model, torch.device("cpu"), bf16=False)
for p in model.parameters():
    p.grad = torch.full_like(p, distributed.rank() + 1.0)
parallel.average_gradients(model)
with open(f"rank{distributed.rank()}.txt", "w") as f:  # one file per rank: two ranks' prints interleave on stdout
    f.write(str(sorted({float(v) for p in model.parameters() for v in p.grad.flatten()})))
distributed.stop()
"""


@pytest.mark.slow
def test_gradients_averaged_after_backward_are_the_mean_over_the_ranks(tmp_path):
    """Adam barely tells a mean from a sum (it divides by the gradient's scale), so the trajectory tests alone would
    pass gradients summed over the ranks: this checks the averaging itself."""
    (tmp_path / "average.py").write_text(AVERAGE_WORKER)
    result = torchrun(2, tmp_path / "average.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["[1.5]", "[1.5]"]


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in _descendants(c)]


def _worker(root: int, local_rank: int) -> int | None:
    for pid in _descendants(root):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return pid
    return None


def _start_then_hit_rank_1(workdir: Path, out: str, *extra: str) -> tuple[subprocess.Popen, int, int]:
    """Start a long 2-rank `tinylm train --nproc 2` and wait until it has written a checkpoint; return the job
    and the pids of ranks 0 and 1."""
    job = subprocess.Popen([sys.executable, "-m", "tinylm", "train", *overrides(workdir, "train.max_steps=100000", *extra),
                            "--out", out, "--nproc", "2"], cwd=workdir, env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (workdir / out / "checkpoint").is_dir():  # both ranks are training
        assert job.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    return job, _worker(job.pid, 0), _worker(job.pid, 1)


needs_proc = pytest.mark.skipif(not list(Path("/proc/self/task").glob("*/children")),
                                reason="finds the worker processes through Linux's /proc/PID/task/*/children")


@pytest.mark.slow
@needs_proc
def test_a_rank_that_dies_stops_the_job_with_a_message(workdir):
    job, _, rank_1 = _start_then_hit_rank_1(workdir, "dies")
    try:
        os.kill(rank_1, signal.SIGKILL)
        killed = time.monotonic()
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert time.monotonic() - killed < 60
    assert job.returncode != 0
    assert "rank 1 was killed by SIGKILL" in err and "the other ranks were stopped" in err
    assert "continue with --resume" in err
    assert "Traceback" not in err
    assert load_checkpoint(workdir / "dies", with_state=True).state["step"] >= 3


@pytest.mark.slow
@needs_proc
def test_a_rank_that_hangs_makes_the_others_give_up_after_the_timeout(workdir):
    # a frozen rank (as a machine cut off from the others) is alive to torchrun: only the timeout ends the wait
    job, rank_0, rank_1 = _start_then_hit_rank_1(workdir, "hangs", "train.parallel_timeout=5")
    try:
        os.kill(rank_1, signal.SIGSTOP)
        frozen = time.monotonic()
        while Path(f"/proc/{rank_0}").exists() and time.monotonic() - frozen < 60:
            time.sleep(0.2)
        waited = time.monotonic() - frozen
        os.kill(rank_1, signal.SIGCONT)  # so that torchrun's SIGTERM ends it at once
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert 4 <= waited < 30  # 5 s, less the part of the collective rank 0 was already in when rank 1 froze
    assert job.returncode != 0
    assert "rank 0 of 2: another rank died or stopped answering" in err and "Timed out" in err
