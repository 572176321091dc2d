"""Evaluating a trained network as the paper did: its test views, averaged scores, errors and per-class
accuracy, over the whole split with every image counted once on any number of ranks (Sec. 3.4, 4.2)."""

from .batches import EvalData, default_batch_size, eval_data
from .evaluator import default_out_dir, eval_command, evaluate_checkpoint, evaluate_model
from .metrics import EvalResult, Tally, format_result, plot_confusion

__all__ = [
    "EvalData",
    "EvalResult",
    "Tally",
    "default_batch_size",
    "default_out_dir",
    "eval_command",
    "eval_data",
    "evaluate_checkpoint",
    "evaluate_model",
    "format_result",
    "plot_confusion",
]
