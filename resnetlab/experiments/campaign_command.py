"""``resnetlab experiment campaign``: its arguments checked, then one of its three jobs: a window of training,
the status (``--status``) or the iterations gained (``--gained-since``), printed (``campaign_status.py``)."""

from __future__ import annotations

from pathlib import Path

from .campaign import Campaign
from .campaign_status import format_gained, format_status

__all__ = ["campaign_command"]


def campaign_command(
    budget: float,
    runs: Path,
    carry: Path,
    weights: Path,
    *,
    iterations: int,
    data_dir: str | None,
    seeds: int,
    nets: list[str] | None,
    status_only: bool,
    plan: str = "auto",
    since: float | None = None,
    overrides: list[str] | None = None,
) -> int:
    campaign = Campaign(
        runs, carry, weights, iterations=iterations, data_dir=data_dir, seeds=seeds, nets=nets, plan=plan,
        overrides=overrides,
    )  # fmt: skip
    if since is not None:  # one line for scripts/cpu_window.sh stop
        print(format_gained(campaign.gained(since)))
        return 0
    if status_only:  # reads the run folder and the carry, writes nothing: a window may be training beside it
        print(f"the {campaign.plan.upper()} plan:")
        print(format_status(campaign.status()))
        return 0
    status = campaign.run(budget)  # refuses a budget that is not a number of seconds > 0 (nan, inf)
    print(("stopped before the budget; " if status["stopped"] else "") + f"after {status['seconds']:.0f} s:")
    print(format_status(status))
    return 0
