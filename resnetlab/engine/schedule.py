"""The paper's learning-rate schedules, in iterations (Sec. 3.4 and 4.2).

- ``steps``: lr divided by ``gamma`` at fixed iterations (CIFAR: 0.1, /10 at 32k and 48k, stop at 64k).
- ``plateau``: lr divided by 10 when the validation error stops improving (ImageNet, Sec. 3.4).
- Either with the ResNet-110 warm-up of Sec. 4.2: lr ``warmup_lr`` (0.01) until the running training error
  falls below ``warmup_until_error`` (80%), then back to the base lr and the usual schedule.

The scheduler is ours, not a torch.optim.lr_scheduler, because the warm-up switch depends on the training
error; its whole state is a few numbers, saved in every checkpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["LRSchedule", "scale_milestones"]


def scale_milestones(milestones: Sequence[int], paper_iterations: int, iterations: int) -> list[int]:
    """The paper's drops at the same fractions of a shorter or longer run (32k/48k of 64k -> 0.5 and 0.75)."""
    return [round(m * iterations / paper_iterations) for m in milestones]


class LRSchedule:
    def __init__(
        self,
        base_lr: float,
        *,
        kind: str = "steps",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_lr: float | None = None,
        warmup_until_error: float = 0.8,
        warmup_window: int = 20,
        plateau_patience: int = 3,
        plateau_threshold: float = 1e-3,
        min_lr: float = 0.0,
    ) -> None:
        if kind not in ("steps", "plateau"):
            raise ValueError(f"schedule kind must be 'steps' or 'plateau', got {kind!r}")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.base_lr, self.kind, self.milestones, self.gamma = base_lr, kind, list(milestones), gamma
        self.warmup_lr, self.warmup_until_error, self.warmup_window = warmup_lr, warmup_until_error, warmup_window
        self.plateau_patience, self.plateau_threshold, self.min_lr = plateau_patience, plateau_threshold, min_lr
        # State: everything below is saved and restored with the checkpoint.
        self.warmup_done_at: int | None = None if warmup_lr is not None else 0  # iteration of the switch
        self.plateau_drops = 0
        self.best_error = float("inf")
        self.evals_since_best = 0
        self._recent_errors: deque[float] = deque(maxlen=warmup_window)

    @property
    def in_warmup(self) -> bool:
        return self.warmup_done_at is None

    def lr_at(self, iteration: int) -> float:
        """The lr of the step that runs iteration ``iteration`` (0-based: 0..31,999 at 0.1, 32,000.. at 0.01)."""
        if self.in_warmup:
            return self.warmup_lr  # type: ignore[return-value]
        if self.kind == "steps":
            drops = sum(iteration >= m for m in self.milestones)
        else:
            drops = self.plateau_drops
        return max(self.base_lr * self.gamma**drops, self.min_lr)

    def observe_train_error(self, iteration: int, batch_error: float) -> bool:
        """Feed one step's training error; returns True at the step that ends the warm-up."""
        if not self.in_warmup:
            return False
        self._recent_errors.append(batch_error)
        running = sum(self._recent_errors) / len(self._recent_errors)
        if len(self._recent_errors) == self.warmup_window and running < self.warmup_until_error:
            self.warmup_done_at = iteration + 1  # the next step runs at the base lr
            return True
        return False

    def observe_val_error(self, error: float) -> bool:
        """Feed one validation error (plateau schedule); returns True when it divides the lr."""
        if self.kind != "plateau" or self.in_warmup:
            return False
        if error < self.best_error - self.plateau_threshold:
            self.best_error, self.evals_since_best = error, 0
            return False
        self.evals_since_best += 1
        if self.evals_since_best >= self.plateau_patience:
            self.plateau_drops += 1
            self.evals_since_best = 0
            return True
        return False

    def state_dict(self) -> dict[str, object]:
        return {
            "warmup_done_at": -1 if self.warmup_done_at is None else self.warmup_done_at,
            "plateau_drops": self.plateau_drops,
            "best_error": self.best_error,
            "evals_since_best": self.evals_since_best,
            "recent_errors": list(self._recent_errors),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        done = int(state["warmup_done_at"])  # type: ignore[arg-type]
        self.warmup_done_at = None if done < 0 else done
        self.plateau_drops = int(state["plateau_drops"])  # type: ignore[arg-type]
        self.best_error = float(state["best_error"])  # type: ignore[arg-type]
        self.evals_since_best = int(state["evals_since_best"])  # type: ignore[arg-type]
        self._recent_errors = deque((float(e) for e in state["recent_errors"]), maxlen=self.warmup_window)  # type: ignore[union-attr]
