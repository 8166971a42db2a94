"""Training: the optimisation loop, its objectives (CE, distillation), schedules,
throughput/MFU accounting, the loss plot and the loggers (metrics.jsonl, TensorBoard, W&B).

Uses the model and data packages, and reads a distillation teacher through
tinylm.formats; writes run directories through tinylm.checkpoint. Must not
import evaluation or export.
"""

from tinylm.train.loop import StepInfo, TrainResult, train
from tinylm.train.schedule import dropout_at, lr_at

__all__ = ["StepInfo", "TrainResult", "dropout_at", "lr_at", "train"]
