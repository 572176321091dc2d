"""Training: the loop over TrainStates (one run, or K packed seeds), the LR schedules, run directories and
their records, curves."""

from .loop import evaluate, train_step
from .packed import train_packed
from .plot import plot_runs
from .schedule import LRSchedule, scale_milestones
from .slot import TrainingDiverged
from .state import TrainState
from .trainer import choose_stepper, train

__all__ = [
    "LRSchedule",
    "TrainState",
    "TrainingDiverged",
    "choose_stepper",
    "evaluate",
    "plot_runs",
    "scale_milestones",
    "train",
    "train_packed",
    "train_step",
]
