"""The check ``test_cuda`` holds the graphed step to (``fusedcheck``), run on the CPU: eager against eager it
passes, and each way a broken graph would go wrong (the lr it was captured with, a stale batch, the first
epoch's plan replayed after the boundary) is caught. The CUDA test itself cannot run here."""

from __future__ import annotations

import pytest
import torch
from fusedcheck import assert_same_training, fused_step

from resnetlab.engine.fused import FusedStep

CPU = torch.device("cpu")


class FrozenLr(FusedStep):
    """The lr a graph would keep if it had captured the host's number instead of reading the lr tensor."""

    def set_lr(self, lrs):
        if self._lr_host is None:
            super().set_lr(lrs)


class StaleBatch(FusedStep):
    """The batch at the captured position, replayed every step."""

    def batch(self):
        self.position.zero_()
        return super().batch()


class StalePlan(FusedStep):
    """The first epoch's plan kept after the boundary (the position still restarts)."""

    def _prepare(self):
        if self.plan_epoch is not None and self.plan_epoch != self.loaders[0].epoch:
            self.plan_epoch = self.loaders[0].epoch
            self.position.fill_(0)
        super()._prepare()


def _step(step_class=FusedStep):
    return fused_step(CPU, graph=False, model="cifar_resnet8", batch=32, step_class=step_class)


def test_the_same_step_passes():
    assert_same_training(_step(), _step())


@pytest.mark.parametrize("broken", [FrozenLr, StaleBatch, StalePlan], ids=lambda c: c.__name__)
def test_a_broken_step_is_caught(broken):
    with pytest.raises(AssertionError):
        assert_same_training(_step(broken), _step())
