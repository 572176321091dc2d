"""The paper's experiments, each one command that draws only from run records (Sec. 4.2)."""

from ..engine.rundir import RunRecord, read_record
from .cifar import (
    DEGRADATION_NETS,
    RESPONSE_NETS,
    degradation,
    ensure_run,
    experiment_config,
    responses,
    run_name,
    table6_report,
)
from .figures import plot_fig1, plot_fig6, plot_fig7
from .report import format_responses, format_table6_report, format_written
from .responses import layer_response_stds, response_layers
from .table6 import table6

__all__ = [
    "DEGRADATION_NETS",
    "RESPONSE_NETS",
    "RunRecord",
    "degradation",
    "ensure_run",
    "experiment_config",
    "format_responses",
    "format_table6_report",
    "format_written",
    "layer_response_stds",
    "plot_fig1",
    "plot_fig6",
    "plot_fig7",
    "read_record",
    "response_layers",
    "responses",
    "run_name",
    "table6",
    "table6_report",
]
