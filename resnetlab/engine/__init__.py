"""Training: the loop, checkpoints, the LR schedules, distributed helpers, run records, curves."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import evaluate, train_step
from .plot import plot_runs
from .schedule import LRSchedule, scale_milestones
from .trainer import TrainingDiverged, train

__all__ = [
    "LRSchedule",
    "TrainingDiverged",
    "evaluate",
    "load_checkpoint",
    "plot_runs",
    "save_checkpoint",
    "scale_milestones",
    "train",
    "train_step",
]
