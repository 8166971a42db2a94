"""train.compile=true on CPU: a compiled run trains like an eager one, compiles its training graph once, writes
checkpoints that eager code loads, resumes exactly, and refuses what it cannot compile.

Every run here has the same model shape, so after the first test Dynamo reuses the compiled graphs (its guards
check shapes, not the module instance) and each test costs seconds, not a fresh compile."""

import pytest
import torch
import torch._dynamo

from tinylm.checkpoint import load_checkpoint
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import train

from conftest import save_tiny_byte_run
from test_train import assert_resume_repeats_the_whole_run, byte_data, losses, tiny_config

# Inductor fuses the forward and backward into other kernels that sum in another order, so each step's loss
# differs from eager's by fp32 rounding; training carries that into the weights, and over the 8 steps here the
# losses stay within 1e-7 relative of eager (measured, AdamW and Muon). 1e-5 leaves room for other CPUs' kernels
# and is still far below any real difference: one optimizer step moves these losses by ~1e-2 relative.
RTOL = 1e-5


@pytest.fixture
def data(text_file):
    return byte_data(text_file.read_text())


def test_a_run_compiles_its_training_graph_once(tmp_path, data):
    # accumulation, validation every 4 steps, the final validation and a second round's scoring all run in the
    # same process; none may recompile the training graph (validation and scoring use the plain model)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        train(tiny_config("train.compile=true", "train.grad_accum=2", "train.rounds=2", "train.refine_ratio=0.5"),
              data, byte_tokenizer(), tmp_path / "run", progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_compiled_run_logs_the_eager_losses(tmp_path, data):
    train(tiny_config(), data, byte_tokenizer(), tmp_path / "eager", progress=False)
    train(tiny_config("train.compile=true"), data, byte_tokenizer(), tmp_path / "compiled", progress=False)
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert [s for s, _ in compiled] == [s for s, _ in eager] == list(range(1, 9))
    assert [c for _, c in compiled] == pytest.approx([e for _, e in eager], rel=RTOL)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_compiled_resume_repeats_the_uninterrupted_compiled_run(tmp_path, data, optimizer):
    assert_resume_repeats_the_whole_run(["train.compile=true", "train.grad_accum=2", f"train.optimizer={optimizer}"],
                                        data, tmp_path)


def test_a_compiled_runs_checkpoint_loads_in_eager_under_the_plain_names(tmp_path, data):
    train(tiny_config("train.compile=true", "train.max_steps=2"), data, byte_tokenizer(), tmp_path, progress=False)
    model = load_checkpoint(tmp_path).model  # a plain Transformer: loading checks every name
    assert not any("_orig_mod" in name for name in model.state_dict())
    x = torch.randint(0, 257, (1, 8))
    assert torch.isfinite(model(x)).all()


def test_the_progress_bar_says_compiling_during_the_first_step_only(tmp_path, data, capsys):
    train(tiny_config("train.compile=true", "train.max_steps=2"), data, byte_tokenizer(), tmp_path, progress=True)
    lines = capsys.readouterr().err.splitlines()  # not a terminal: one plain line per redraw
    bar_lines = [line for line in lines if line.startswith("train ")]
    assert "(compiling)" in bar_lines[0] and " 0%" in bar_lines[0]
    assert "(compiling)" not in bar_lines[-1] and "100%" in bar_lines[-1]


def test_distillation_trains_compiled_like_eager(tmp_path, data):
    teacher, _, _ = save_tiny_byte_run(tmp_path / "teacher")
    cfg = ["data.tokenizer=byte", f"train.distill_teacher={teacher}", "train.distill_alpha=0.5", "train.max_steps=4"]
    train(tiny_config(*cfg), data, byte_tokenizer(), tmp_path / "eager", progress=False)
    train(tiny_config(*cfg, "train.compile=true"), data, byte_tokenizer(), tmp_path / "compiled", progress=False)
    assert [c for _, c in losses(tmp_path / "compiled")] == pytest.approx(
        [e for _, e in losses(tmp_path / "eager")], rel=RTOL)


@pytest.mark.parametrize("mtp", ["sequential", "parallel"])
def test_multi_token_prediction_under_compile_is_refused(tmp_path, data, mtp):
    with pytest.raises(TinyLMError, match="set train.compile=false"):
        train(tiny_config(f"model.mtp={mtp}", "train.compile=true"), data, byte_tokenizer(), tmp_path,
              progress=False)
    assert not tmp_path.joinpath("config.yaml").exists()  # refused before the run directory is touched
