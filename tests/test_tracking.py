"""train.log_to: TensorBoard and W&B receive the numbers metrics.jsonl records, at the same steps.

Everything runs offline: W&B in offline mode writes its run into the run folder, and the values are read
back from that folder, as TensorBoard's are from its event file."""

import json
import struct
import sys

import pytest

from test_train import byte_data, tiny_config
from tinylm.config import load_config
from tinylm.errors import TinyLMError
from tinylm.tokenizer import byte_tokenizer
from tinylm.train import StepInfo, train
from tinylm.train import loggers

pytest.importorskip("tensorboard", reason="reads TensorBoard event files: pip install tensorboard")


@pytest.fixture(scope="module")
def module_text():
    return "".join(f"Line {i}: the quick brown fox jumps over the lazy dog number {i % 7}.\n" for i in range(400))


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, module_text):
    """One tiny run logged to both trackers: (run folder, metrics.jsonl records)."""
    pytest.importorskip("wandb", reason="writes an offline W&B run: pip install wandb")
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")  # train.wandb_mode is offline too: never the network, whatever is set
        patch.setenv("WANDB_SILENT", "true")
        train(tiny_config("train.log_to=tensorboard,wandb", "train.max_steps=6", "train.eval_every=3"),
              byte_data(module_text), byte_tokenizer(), run_dir, progress=False)
    return run_dir, records(run_dir)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def series(records, key):
    """(step, value) of every record holding `key`, summaries left out."""
    return [(r["step"], r[key]) for r in records if key in r and not r.get("summary")]


def tensorboard_series(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / loggers.TENSORBOARD_DIR))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def wandb_records(run_dir):
    """The records of the run's .wandb file: a LevelDB-style log (32 KiB blocks of chunks, each with a 7-byte
    header: checksum, length, type) after a 7-byte file header, each record a wandb_internal Record message."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / loggers.WANDB_DIR).glob("offline-run-*/run-*.wandb")
    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    position, pending, messages = 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 2):  # whole record, first chunk
            pending = chunk
        elif kind in (3, 4):  # middle, last chunk
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            messages.append(record)
    return messages


def wandb_items(items) -> dict:
    """A history row or summary update as a dict: W&B writes a plain key in `key` or, split on '/', in `nested_key`."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_history(run_dir, key):
    rows = [record.history for record in wandb_records(run_dir) if record.WhichOneof("record_type") == "history"]
    return [(row.step.num, items[key]) for row in rows if key in (items := wandb_items(row.item))]


def wandb_summary(run_dir):
    summary = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            summary.update(wandb_items(record.summary.update))
    return summary


def test_tensorboard_event_file_holds_the_logged_losses(tracked_run):
    run_dir, logged = tracked_run
    for key in ("loss", "lr", "val_loss", "val_bpb"):
        expected = series(logged, key)
        assert len(expected) >= 2
        assert tensorboard_series(run_dir, key) == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected]
    summary = next(r for r in logged if r.get("summary"))
    assert tensorboard_series(run_dir, "summary/mfu") == [(summary["step"], pytest.approx(summary["mfu"], rel=1e-6))]


def test_wandb_offline_run_holds_the_logged_values(tracked_run):
    run_dir, logged = tracked_run
    assert wandb_history(run_dir, "loss") == series(logged, "loss")
    # at the last step the loop logs the periodic validation, then the final one over eval.max_tokens; W&B keeps
    # one value per name and step, the later
    val_losses = series(logged, "val_loss")
    assert val_losses[-2][0] == val_losses[-1][0]
    assert wandb_history(run_dir, "val_loss") == val_losses[:-2] + val_losses[-1:]
    summary = next(r for r in logged if r.get("summary"))
    assert wandb_summary(run_dir)["mfu"] == summary["mfu"]
    run_config = next(r.run.config for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run")
    assert set(wandb_items(run_config.update)) >= {"model", "data", "train"}


class FailAt:
    """Stops a run with an error (not Ctrl-C, so no checkpoint is saved on the way out) at a step."""

    def __init__(self, step):
        self.step = step

    def __call__(self, info: StepInfo):
        if info.step == self.step:
            raise RuntimeError("stopped by the test")


def test_a_resumed_run_logs_each_step_once_to_tensorboard(tmp_path, module_text):
    data, run_dir = byte_data(module_text), tmp_path / "run"
    cfg = ["train.log_to=tensorboard", "train.max_steps=6", "train.ckpt_every=3"]
    with pytest.raises(RuntimeError):  # the checkpoint is from step 3; steps 4 and 5 were logged after it
        train(tiny_config(*cfg), data, byte_tokenizer(), run_dir, progress=False, callbacks=(FailAt(5),))
    assert [step for step, _ in tensorboard_series(run_dir, "loss")] == [1, 2, 3, 4, 5]
    train(tiny_config(*cfg), data, byte_tokenizer(), run_dir, resume=True, progress=False)
    expected = series(records(run_dir), "loss")
    assert [step for step, _ in expected] == [1, 2, 3, 4, 5, 6]
    assert tensorboard_series(run_dir, "loss") == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected]


def test_overwrite_removes_the_old_runs_tracker_files(tmp_path, module_text):
    run_dir = tmp_path / "run"
    old_events = run_dir / loggers.TENSORBOARD_DIR / "events.out.tfevents.old"
    old_events.parent.mkdir(parents=True)
    old_events.write_bytes(b"")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    train(tiny_config("train.max_steps=2"), byte_data(module_text), byte_tokenizer(), run_dir, overwrite=True,
          progress=False)
    assert not old_events.parent.exists()


def test_log_to_takes_a_list_or_a_comma_string(tmp_path):
    assert load_config(overrides=["train.log_to=tensorboard,wandb"]).train.log_to == ["tensorboard", "wandb"]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  log_to: [wandb]\n")
    assert load_config(recipe).train.log_to == ["wandb"]
    assert load_config().train.log_to == []
    with pytest.raises(TinyLMError, match="train.log_to.*list of names"):
        load_config(overrides=["train.log_to=3"])


def test_an_unknown_tracker_fails_before_an_old_run_is_touched(tmp_path, module_text):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    with pytest.raises(TinyLMError, match="'mlflow', which is not one of none, tensorboard, wandb"):
        train(tiny_config("train.log_to=mlflow"), byte_data(module_text), byte_tokenizer(), run_dir,
              overwrite=True, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 9.0}\n'


def test_a_missing_tracker_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a module that cannot be imported
    with pytest.raises(TinyLMError, match="needs the wandb package; install it with: pip install wandb"):
        loggers.trackers(load_config(overrides=["train.log_to=none,wandb"]).train)


def test_none_logs_only_to_metrics_jsonl(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    opened = loggers.open_loggers(load_config(overrides=["train.log_to=none"]), run_dir, 0)
    assert [type(logger) for logger in opened] == [loggers.MetricsFile]
    opened[0].close()


def test_trackers_need_a_run_folder():
    with pytest.raises(TinyLMError, match="writes into the run folder"):
        loggers.open_loggers(load_config(overrides=["train.log_to=tensorboard"]), None, 0)
