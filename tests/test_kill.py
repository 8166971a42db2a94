"""Runs survive being killed: SIGKILL at random moments or between a checkpoint's write and its swap leaves a
run that the same command line continues exactly; SIGTERM and SIGINT save and exit cleanly; long commands
re-run after a kill skip their finished work. Kills are real: `tinylm` runs as a subprocess."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tinylm
from tinylm import faults
from tinylm.checkpoint import load_checkpoint
from tinylm.errors import TinyLMError
from tinylm.faults import Stopped
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import StepInfo, loop, train

from conftest import write_corpus
from test_ladder import parent, shape_file, task_file  # noqa: F401 (fixtures)
from test_train import byte_data, losses, tiny_config

ROOT = Path(tinylm.__file__).resolve().parents[1]
TRAIN = ["model.n_layer=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.max_seq_len=32",
         "model.dropout=0.1", "data.tokenizer=byte", "data.workers=1", "train.batch_size=4", "train.max_steps=40",
         "train.warmup_steps=2", "train.log_every=1", "train.eval_every=0", "train.ckpt_every=4",
         "train.device=cpu", "train.peak_tflops=1", "eval.max_tokens=512"]
ROUNDS = ["train.rounds=2", "train.refine_ratio=0.5"]


def child_env(kill_at: str | None = None, kill_signal: str | None = None) -> dict:
    """This environment, with this checkout importable and only the kill point asked for."""
    env = {k: v for k, v in os.environ.items() if k not in (faults.KILL_AT, faults.KILL_SIGNAL)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env |= {faults.KILL_AT: kill_at} if kill_at else {}
    return env | ({faults.KILL_SIGNAL: kill_signal} if kill_signal else {})


def tinylm_command(*args, cwd: Path, **kill) -> subprocess.Popen:
    command = [sys.executable, "-c", "from tinylm.cli import main; main()", *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=child_env(**kill), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def tinylm_run(*args, cwd: Path, **kill) -> tuple[int, str]:
    """Run `tinylm ARGS` to its end; (exit status, stdout and stderr). A process killed by signal s has status -s."""
    process = tinylm_command(*args, cwd=cwd, **kill)
    out, err = process.communicate(timeout=300)
    return process.returncode, out + err


def train_args(corpus: Path, run: str, *extra: str) -> list[str]:
    return ["train", f"data.path={corpus}", *TRAIN, *extra, "--out", run, "--resume"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a small corpus; prepared data is cached in it once for every run of this module."""
    folder = tmp_path_factory.mktemp("kill")
    write_corpus(folder / "corpus.txt")
    return folder


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    """The logged losses of runs nothing stopped, by their extra overrides."""
    done = {}

    def losses_of(*extra: str) -> list:
        if extra not in done:
            run = f"whole-{len(done)}"
            code, err = tinylm_run(*train_args(workdir / "corpus.txt", run, *extra), cwd=workdir)
            assert code == 0, err
            done[extra] = losses(workdir / run)
        return done[extra]
    return losses_of


def metrics_steps(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_same_command_continues_exactly(workdir, uninterrupted):
    expected = uninterrupted()
    rng, run, args = random.Random(14), workdir / "random", train_args(workdir / "corpus.txt", "random")
    kills = 0
    while True:
        process = tinylm_command(*args, cwd=workdir)
        logged = metrics_steps(run)
        # step logged + 5 is past a checkpoint the last attempt did not reach, so every attempt makes progress
        while process.poll() is None and metrics_steps(run) < logged + 5:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))  # a random moment: inside a step, a log line or a checkpoint write
        if process.poll() is not None:
            break
        process.kill()
        process.communicate()
        kills += 1
    _, err = process.communicate()
    assert process.returncode == 0, err
    assert kills >= 2  # training was cut several times, not just run through
    assert losses(run) == expected
    assert load_checkpoint(run, with_state=True).state["step"] == 40


@pytest.mark.slow
# the save of step 8: the second checkpoint write, the first swap (the first save has nothing to swap out)
@pytest.mark.parametrize("point", ["checkpoint-write:2", "checkpoint-swap:1"])
def test_a_kill_inside_a_checkpoint_write_keeps_the_last_good_one_and_resume_is_exact(workdir, uninterrupted, point):
    expected = uninterrupted()
    name = point.split(":")[0]
    args = train_args(workdir / "corpus.txt", name)
    code, _ = tinylm_run(*args, cwd=workdir, kill_at=point)
    assert code == -signal.SIGKILL
    run = workdir / name
    assert (run / "checkpoint.tmp" / "state.pt").is_file()  # the new one was written, not swapped in
    assert (run / "checkpoint").exists() == (name == "checkpoint-write")  # mid-swap: only checkpoint.old is whole
    assert load_checkpoint(run, with_state=True).state["step"] == 4
    code, err = tinylm_run(*args, cwd=workdir)
    assert code == 0, err
    assert losses(run) == expected
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_starts_over_from_the_same_resume_command(workdir, uninterrupted):
    expected = uninterrupted()
    args = train_args(workdir / "corpus.txt", "early")
    code, err = tinylm_run(*args, cwd=workdir, kill_at="train-step:3")
    assert code == -signal.SIGKILL
    assert "no checkpoint in early yet; starting from step 0" in err  # --resume of no run at all
    assert metrics_steps(workdir / "early") == 3 and not (workdir / "early" / "checkpoint").exists()
    code, err = tinylm_run(*args, cwd=workdir)
    assert code == 0, err
    assert "no checkpoint in early yet; starting from step 0" in err
    assert losses(workdir / "early") == expected


@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("TERM", 143), ("INT", 130)])
def test_sigterm_and_sigint_save_a_checkpoint_and_exit_with_the_resume_command(workdir, uninterrupted, name, code):
    expected = uninterrupted()
    args = train_args(workdir / "corpus.txt", f"sig{name}")
    status, err = tinylm_run(*args, cwd=workdir, kill_at="train-step:7", kill_signal=name)
    assert status == code
    assert err.strip().splitlines()[-1] == (f"stopped by SIG{name}; checkpoint saved. Continue with: "
                                            f"tinylm train --out sig{name} --resume")
    assert "Traceback" not in err
    assert load_checkpoint(workdir / f"sig{name}", with_state=True).state["step"] == 7  # the step it arrived in
    if name == "TERM":  # SIGINT stops the same way; one resume shows the stop kept exactness
        status, err = tinylm_run(*args, cwd=workdir)
        assert status == 0, err
        assert losses(workdir / f"sig{name}") == expected


@pytest.mark.slow
def test_a_sigterm_from_outside_stops_a_run_cleanly(workdir, uninterrupted):
    expected = uninterrupted()
    run, args = workdir / "outside", train_args(workdir / "corpus.txt", "outside")
    process = tinylm_command(*args, cwd=workdir)
    while process.poll() is None and metrics_steps(run) < 2:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 143 and "checkpoint saved" in err, err
    step = load_checkpoint(run, with_state=True).state["step"]
    assert 2 <= step < 40
    assert losses(run) == expected[:step]  # nothing logged past the saved step


@pytest.mark.slow
@pytest.mark.parametrize("point", ["scoring-batch:3", "rounds-file"])
def test_multi_round_scoring_killed_midway_resumes_to_the_uninterrupted_run(workdir, uninterrupted, point):
    expected = uninterrupted(*ROUNDS)
    name = "rounds-" + point.split(":")[0]
    args = train_args(workdir / "corpus.txt", name, *ROUNDS)
    code, _ = tinylm_run(*args, cwd=workdir, kill_at=point)
    assert code == -signal.SIGKILL
    assert load_checkpoint(workdir / name, with_state=True).state["step"] == 27  # round 1's end, saved before scoring
    code, err = tinylm_run(*args, cwd=workdir)
    assert code == 0, err
    assert losses(workdir / name) == expected


# -- in-process: signals delivered to this test's own process ----------------------------------------------------

@pytest.fixture
def data(text_file):
    return byte_data(text_file.read_text())


@pytest.fixture(autouse=True)
def _fresh_kill_points(monkeypatch):
    monkeypatch.setattr(faults, "_reached", faults.Counter())


class SignalAt:
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def __call__(self, info: StepInfo):
        if info.step == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_signal_mid_step_stops_at_the_step_boundary_and_resume_is_exact(tmp_path, data):
    train(tiny_config(), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped:
        train(tiny_config(), data, byte_tokenizer(), tmp_path / "split", progress=False,
              callbacks=(SignalAt(3, signal.SIGTERM),))
    assert stopped.value.exit_code == 143
    assert load_checkpoint(tmp_path / "split", with_state=True).state["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == before  # the handler training set is gone
    train(tiny_config(), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")


def test_a_second_signal_while_saving_does_not_cut_the_save_short(tmp_path, data, monkeypatch):
    real_save = loop.save_checkpoint

    def interrupted_save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while the first one's checkpoint is written
        return real_save(*args, **kwargs)
    monkeypatch.setattr(loop, "save_checkpoint", interrupted_save)
    with pytest.raises(Stopped) as stopped:
        train(tiny_config(), data, byte_tokenizer(), tmp_path, progress=False, callbacks=(SignalAt(5, signal.SIGINT),))
    assert stopped.value.exit_code == 130
    saved = load_checkpoint(tmp_path, with_state=True)
    assert saved.state["step"] == 5 and not (tmp_path / "checkpoint.tmp").exists()


def test_a_signal_while_scoring_saves_the_scores_so_far_and_resume_continues_them(tmp_path, data, monkeypatch):
    cfg = ("train.max_steps=12", "train.rounds=2", "train.refine_ratio=0.5")
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "whole", progress=False)
    monkeypatch.setenv(faults.KILL_AT, "scoring-batch:3")
    monkeypatch.setenv(faults.KILL_SIGNAL, "TERM")
    with pytest.raises(Stopped):
        train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", progress=False)
    partial = np.load(tmp_path / "split" / "rounds" / "round2.scores.npy")
    assert np.isfinite(partial).sum() == 3 and np.isnan(partial).sum() == 5
    monkeypatch.delenv(faults.KILL_AT)
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "split", resume=True, progress=False)
    assert np.array_equal(np.load(tmp_path / "split" / "rounds" / "round2.scores.npy"),
                          np.load(tmp_path / "whole" / "rounds" / "round2.scores.npy"))
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")


def test_resume_without_a_checkpoint_keeps_the_error_when_the_model_differs(tmp_path, data):
    tiny_config("model.vocab_size=257").save(tmp_path / "config.yaml")  # killed before its first checkpoint
    with pytest.raises(TinyLMError, match="model config differs"):
        train(tiny_config("model.d_model=64"), data, byte_tokenizer(), tmp_path, resume=True, progress=False)


# -- the other long commands: a killed one re-run with the same command skips its finished work ------------------

@pytest.mark.slow
def test_a_killed_sweep_rerun_measures_only_the_shapes_left(workdir):
    from tinylm.arch import enumerate_shapes, shape_name
    from tinylm.arch.sweep import spread_over_depth

    args = ("arch", "sweep", "--params", "0.3M", "--tokenizer", "byte", "--max-seq-len", 32, "--max-shapes", 3,
            "--out", "sweep")
    code, _ = tinylm_run(*args, cwd=workdir, kill_at="sweep-step:2")
    assert code == -signal.SIGKILL
    measured = {p: p.read_bytes() for p in (workdir / "sweep" / "steps").rglob("*.json")}
    assert len(measured) == 2
    code, err = tinylm_run(*args, cwd=workdir)
    assert code == 0, err
    assert "skipped 2 already measured" in err
    assert all(p.read_bytes() == text for p, text in measured.items())  # read back, not measured again
    expected = [shape_name(cfg) for cfg in spread_over_depth(enumerate_shapes(300_000, 257, 32), 3, 300_000)]
    rows = (workdir / "sweep" / "sweep.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == expected  # the uninterrupted sweep's shapes, in its order
    deepest = max(enumerate_shapes(300_000, 257, 32), key=lambda cfg: cfg.n_layer).n_layer
    assert f"  n_layer: {deepest}\n" in (workdir / "sweep" / "recommended.yaml").read_text()


def test_sigterm_stops_a_sweep_with_one_line_and_the_rerun_continues(cli, tmp_path, monkeypatch):
    import tinylm.arch.sweep as sweep_module
    from test_arch import _fake_latency, _sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep_module, "measure_latency", lambda cfg, device: _fake_latency(cfg))
    monkeypatch.setenv(faults.KILL_AT, "sweep-step:2")
    monkeypatch.setenv(faults.KILL_SIGNAL, "TERM")
    code, _, err = _sweep(cli, tmp_path / "sweep")
    assert code == 143
    assert err.strip().splitlines()[-1] == ("tinylm: stopped by SIGTERM; run the same command again to continue: "
                                            "finished steps are kept")
    monkeypatch.delenv(faults.KILL_AT)
    code, out, err = _sweep(cli, tmp_path / "sweep")
    assert code == 0 and "skipped 2 already measured" in out + err


@pytest.mark.slow
def test_a_killed_inherit_with_learned_masks_continues_them_and_gives_the_uninterrupted_child(workdir, tmp_path):
    from conftest import save_tiny_byte_run

    parent, _, _ = save_tiny_byte_run(tmp_path / "parent")
    args = ("inherit", "--parent", parent, "--n-layer", 1, "--d-model", 16, "--ffn-hidden", 32, "--width", "learned",
            "--mask-steps", 12, "--calib", workdir / "corpus.txt", "--calib-tokens", 512)
    assert tinylm_run(*args, "--out", tmp_path / "whole", cwd=workdir)[0] == 0
    code, _ = tinylm_run(*args, "--out", tmp_path / "child", cwd=workdir, kill_at="mask-step:6")
    assert code == -signal.SIGKILL
    assert not (tmp_path / "child").exists()  # nothing half-made where a child belongs
    progress = tmp_path / "child.masks.pt"  # the masks' state after their 6th step, kept for the re-run
    assert torch.load(progress, weights_only=True)["step"] == 6
    code, err = tinylm_run(*args, "--out", tmp_path / "child", cwd=workdir)
    assert code == 0, err
    assert "continuing the learned masks from step 6" in err and not progress.exists()
    whole, child = (load_checkpoint(tmp_path / d).model.state_dict() for d in ("whole", "child"))
    assert all(torch.equal(whole[k], child[k]) for k in whole)
    report = {d: json.loads((tmp_path / d / "inherit.json").read_text()) for d in ("whole", "child")}
    assert report["child"]["hidden"] == report["whole"]["hidden"] and report["child"]["layers"] == report["whole"]["layers"]


LADDER = """
import sys
from tinylm.experiments.ladder import LadderPreset, run_ladder

out, parent, shape, task, data = sys.argv[1:]
preset = LadderPreset(baseline=dict(n_layer=1, d_model=64, n_heads=1, n_kv_heads=1, ffn_hidden=96), tokens=512,
                      batch_size=2, seq_len=32, limit=2, seeds=(1, 2), calib_tokens=128, vocab=300, tasks=(task,))
run_ladder(out, preset, parent=parent, shape=shape, data=data, progress=False)
"""


@pytest.mark.slow
def test_a_killed_ladder_rerun_skips_the_finished_rungs(tmp_path, text_file, parent, task_file, shape_file):
    command = [sys.executable, "-c", LADDER, "ladder", parent, shape_file, task_file, text_file]

    # 5 rungs x 2 seeds x 8 steps: step 76 is inside the last rung's second seed
    killed = subprocess.run(command, cwd=tmp_path, env=child_env("train-step:76"), capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    runs = tmp_path / "ladder" / "runs"
    finished = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs.rglob("result.json")}
    assert len(finished) == 9 and not (runs / "5-rounds" / "seed2" / "result.json").exists()
    done = subprocess.run(command, cwd=tmp_path, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all((p.read_bytes(), p.stat().st_mtime_ns) == kept for p, kept in finished.items())  # not redone
    report = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert len(report["rungs"]) == 5 and all(set(r["seeds"]) == {"1", "2"} for r in report["rungs"])
