"""Training: the loop over a TrainState, the LR schedules, run directories and their records, curves."""

from .loop import evaluate, train_step
from .plot import plot_runs
from .schedule import LRSchedule, scale_milestones
from .state import TrainState
from .trainer import TrainingDiverged, train

__all__ = [
    "LRSchedule",
    "TrainState",
    "TrainingDiverged",
    "evaluate",
    "plot_runs",
    "scale_milestones",
    "train",
    "train_step",
]
