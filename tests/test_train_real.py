"""Real-data training smoke test: ResNet-20 on the CIFAR-10 JPEG copy in $RESNETLAB_DATA (CI: ../shared/data).

300 iterations of the paper's recipe (about a minute on 2 cores, after the cached decode the data tests
share) must take the test error far below chance (90%). Skipped when RESNETLAB_DATA is unset.
"""

from __future__ import annotations

import json
import os

import pytest

from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.presets import get_preset

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("RESNETLAB_DATA"), reason="RESNETLAB_DATA is not set"),
]


def test_resnet20_learns_cifar10(tmp_path):
    config = apply_overrides(
        get_preset("cifar10-resnet20"), ["train.iterations=300", "train.eval_every=300", "schedule.milestones=200,250"]
    )
    result = train(config, tmp_path / "run", progress=False)
    assert result["test_images"] == 10_000
    assert result["test_top1_error"] < 0.6, result
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["iteration"] == 300 and (tmp_path / "run" / "curves.png").exists()
