"""Where training records go: metrics.jsonl always, TensorBoard and Weights & Biases when train.log_to asks.

The loop's records are dicts with a "step": a loss line (loss, the objective's numbers, lr, tokens, ...),
a validation score, a skipped step, and the final summary ("summary": true). Every logger receives every
record and keeps what it can show: metrics.jsonl keeps each record whole; the trackers keep the numbers,
each under its metrics.jsonl name, at the record's step (the summary's under summary/ in TensorBoard and in
the run summary in W&B). W&B keeps one value per name and step, so where the loop logs a name twice at one
step (the periodic and the final validation at the last step) it shows the later. `open_loggers` is the one
place loggers are made, so a multi-process run can make them on one rank only.

Resuming. metrics.jsonl is trimmed to the checkpoint's step by the loop; TensorBoard is told to drop the
events an earlier session wrote after that step (purge_step). A W&B run cannot be rewound offline, so
each session of a run is a W&B run of its own, named after the run folder.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
from pathlib import Path
from typing import Protocol

from tinylm.config import Config, TrainConfig
from tinylm.errors import TinyLMError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # train.log_to name -> the package it needs
WANDB_MODES = ("offline", "online")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B names the folder it makes in the dir it is given
TRACKER_DIRS = (TENSORBOARD_DIR, WANDB_DIR)  # what an --overwrite removes with the rest of a run


class Logger(Protocol):
    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def trackers(tc: TrainConfig) -> list[str]:
    """The trackers train.log_to names, checked (known names, packages installed) without touching any file."""
    names = [name for name in tc.log_to if name != "none"]
    for name in names:
        if name not in TRACKERS:
            raise TinyLMError(f"train.log_to has '{name}', which is not one of none, {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise TinyLMError(f"train.log_to={name} needs the {TRACKERS[name]} package; install it with: "
                              f"pip install {TRACKERS[name]}")
    if "wandb" in names and tc.wandb_mode not in WANDB_MODES:
        raise TinyLMError(f"train.wandb_mode='{tc.wandb_mode}' is not one of {', '.join(WANDB_MODES)}")
    return names


def open_loggers(cfg: Config, run_dir: Path | None, start_step: int) -> list[Logger]:
    """The loggers of a run that continues after `start_step` (0 for a new run): metrics.jsonl in `run_dir`
    and the trackers of train.log_to, which write into `run_dir` too."""
    names = trackers(cfg.train)
    if run_dir is None:
        if names:
            raise TinyLMError(f"train.log_to={','.join(names)} writes into the run folder; give one (--out)")
        return []
    loggers: list[Logger] = [MetricsFile(run_dir / "metrics.jsonl")]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR, start_step))
    if "wandb" in names:
        loggers.append(WandbLogger(cfg, run_dir))
    return loggers


def scalars(record: dict) -> dict[str, float]:
    """The record's numbers a tracker can plot: everything numeric but the step (flags and text are left out)."""
    return {key: value for key, value in record.items()
            if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)}


class MetricsFile:
    """One JSON record per line, appended and flushed as it comes, so a crashed run keeps its log."""

    def __init__(self, path: Path):
        self.file = open(path, "a")

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardLogger:
    """Scalars in an event file under <run>/tensorboard: `tensorboard --logdir runs` shows every run."""

    def __init__(self, log_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step makes TensorBoard discard what an interrupted session logged after the checkpoint
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict) -> None:
        prefix = "summary/" if record.get("summary") else ""
        for key, value in scalars(record).items():
            self.writer.add_scalar(prefix + key, value, record["step"])
        self.writer.flush()  # a run watched live, or killed, shows everything logged so far

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run in <run>/wandb holding the config, the history and the summary."""

    def __init__(self, cfg: Config, run_dir: Path):
        import wandb

        try:
            # console="off": W&B would otherwise copy the terminal, progress-bar redraws and all, into the run
            self.run = wandb.init(project=cfg.train.wandb_project, name=run_dir.resolve().name, dir=str(run_dir),
                                  mode=cfg.train.wandb_mode, config=cfg.to_dict(),
                                  settings=wandb.Settings(console="off"))
        except (wandb.errors.Error, OSError) as e:
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise TinyLMError(f"could not start a W&B run ({first}); log in with `wandb login` or set "
                              "train.wandb_mode=offline") from None

    def log(self, record: dict) -> None:
        values = scalars(record)
        if record.get("summary"):
            self.run.summary.update(values)
        elif values:
            self.run.log(values, step=record["step"])

    def close(self) -> None:
        self.run.finish()
