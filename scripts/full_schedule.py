"""Redraw the results page's section "The full schedule" from the campaign's records (``campaign/records``)
and its exported networks (``weights/``), with the existing experiment commands' functions:

- Table 6 from the finished 64k runs (n of 25, mean +- std, best, the paper's column): ``table6_report``;
- Fig. 6 (and Fig. 1) from the 64k records, drawn as they are: ``degradation(..., train_missing=False)``;
- Fig. 7 from the seed-0 networks in ``weights/`` (needs CIFAR-10's test set: $RESNETLAB_DATA): ``responses``;
- each shipped network's test error as ``resnetlab eval`` gives it on this machine (``evaluate_checkpoint``
  with eval's default runtime: the page's number is the command's), beside the training record's last one;
- each run's windows (machine, precision, iterations): ``windows.jsonl``;
- what the campaign has done and what is pending, at the measured speed: ``Campaign.status``.

Nothing is typed in and nothing is selected on the test set. The section sits between two markers in the page
(added before "## Redraw from the records" the first time).

    python scripts/full_schedule.py --carry campaign --weights weights --page docs/results.md --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import torch

from resnetlab.deploy.runtimes import choose_runtime
from resnetlab.engine.rundir import RunDir
from resnetlab.errors import UserError
from resnetlab.evaluation import evaluate_checkpoint
from resnetlab.experiments import DEGRADATION_NETS, RESPONSE_NETS, degradation, responses, run_name, table6_report
from resnetlab.experiments.campaign import Campaign, finished
from resnetlab.experiments.campaign_status import format_status
from resnetlab.experiments.windows import window_summary
from resnetlab.files import replace_section

BEGIN = "<!-- full-schedule:begin (scripts/full_schedule.py draws this section; do not edit by hand) -->"
END = "<!-- full-schedule:end -->"
ITERATIONS = 64000
TABLE6_RUNS = 25  # ResNet-20, 32, 44, 56, 110 x 5 seeds
FIG6_NETS = [*DEGRADATION_NETS, "plain110"]
# What the CIFAR-10 copy this project trains and tests on costs: measured by scripts/akamaster_penalty.py (the
# section "The JPEG copy's penalty, measured" of the same page).
JPEG_COPY = (
    "Trained and tested on the project's CIFAR-10 copy, every image re-encoded as JPEG at quality ~75 (the "
    "original release cannot be downloaded here). Networks trained on the original release lose about 10 points "
    "on it ([measured](#the-jpeg-copys-penalty-measured): akamaster's ResNet-20..56, 8.3-6.6 % on the original "
    "test set, 19.0-16.8 % on the copy). So compare these numbers with each other and with the paper's claims "
    "and orderings, not its absolute errors. Each error is the last iteration's (nothing selected on the test "
    "set)."
)


def _eval_error(path: Path, data_dir: str | None) -> str:
    """``resnetlab eval``'s top-1 error of a shipped file on CIFAR-10's test set, as the command computes it
    (its default runtime on this machine's CPU); a dash where the data is not here."""
    try:
        runtime, _ = choose_runtime(None, torch.device("cpu"))
        result = _quiet(evaluate_checkpoint, path, data_dir=data_dir, runtime_name=runtime)
    except UserError as err:
        print(f"full_schedule: {path.name} not evaluated here ({err})", file=sys.stderr)
        return "-"
    return f"{100 * result.top1_error:.2f} %"


def _windows_table(campaign: Campaign, names: list[str]) -> list[str]:
    """Each run's windows, consecutive ones on one machine in one precision merged (with the commits they ran;
    each window's own line is in the run's windows.jsonl)."""
    rows = []
    for name in names:
        merged: list[dict] = []
        for w in window_summary(campaign.windows(name)):
            key = (w["machine"], w["precision"])
            if merged and merged[-1]["key"] == key and merged[-1]["last"] == w["iterations"][0]:
                merged[-1]["last"] = w["iterations"][1]
                merged[-1]["commits"].append((w["git_commit"] or "?")[:7])
            else:
                first, last = w["iterations"]
                merged.append({"key": key, "first": first, "last": last, "commits": [(w["git_commit"] or "?")[:7]]})
        for m in merged:
            commits = m["commits"]
            span = f"`{commits[0]}`" if len(commits) == 1 else f"`{commits[0]}` .. `{commits[-1]}` ({len(commits)})"
            rows.append(f"| {name} | {m['first']:,}-{m['last']:,} | {m['key'][0]} | {m['key'][1]} | {span} |")
    if not rows:
        return []
    header = ["| run | iterations | machine | precision | commits |", "|---|---|---|---|---|"]
    return ["### Where each run trained", "", *header, *rows, ""]


def _quiet(call, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args, **kwargs)


def section(carry: Path, weights: Path, figures: Path, page: Path, plan: str, data_dir: str | None) -> str:
    records = carry / "records"
    campaign = Campaign(records, carry, weights, iterations=ITERATIONS, plan=plan)  # records stand in for the runs
    status = campaign.status()
    done = [run.path.name for run in RunDir.under(records) if finished(run.path)]
    table6_done = [n for n in done if n.startswith("cifar10-resnet") and "resnet1202" not in n]
    rel = lambda p: os.path.relpath(p, page.parent)  # noqa: E731
    lines = [
        BEGIN,
        "## The full schedule (64,000 iterations, in CPU and GPU windows)",
        "",
        "The paper's recipe at its full length, worked through by `resnetlab experiment campaign` a window at a "
        "time, the state carried between windows in `campaign/`: CPU windows on the development machine while "
        "we work (`scripts/cpu_window.sh`; ResNet-20 and plain-20 first, then ResNet-56/plain-56, 32, 44, 110 "
        "and the other seeds) and short GPU windows when one is lent (`scripts/gpu_campaign.sh`); "
        "docs/training.md gives both plans and why. The records are in "
        f"[`campaign/records/`]({rel(records)}), the finished seed-0 networks in [`weights/`]({rel(weights)}).",
        "",
        JPEG_COPY,
        "",
        f"**Done so far: {len(table6_done)} of {TABLE6_RUNS} Table 6 runs**, {len(done)} runs in all.",
        "",
    ]
    try:
        markdown, _ = _quiet(table6_report, records, figures, ITERATIONS)
        lines += ["### Table 6 (finished 64k runs)", "", markdown, ""]
    except UserError:
        lines += ["Table 6: no 64k run has finished yet.", ""]
    try:
        nets = [n for n in FIG6_NETS if RunDir(records / run_name(f"cifar10-{n}", ITERATIONS, 0)).metrics.is_file()]
        if nets:
            paths = _quiet(degradation, nets, [0], ITERATIONS, records, figures, None, train_missing=False)
            png = next(p for p in paths if str(p).endswith("fig6.png"))
            lines += ["### Fig. 6 (seed 0, as far as each run has got)", "", f"![Fig. 6 at 64k]({rel(png)})", ""]
        else:
            lines += ["Fig. 6: no 64k record yet.", ""]
    except UserError as err:
        lines += [f"Fig. 6: not drawn ({err}).", ""]
    index_path = weights / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    shipped = [  # Fig. 7 at the full schedule: the networks that finished it
        n
        for n in RESPONSE_NETS
        if (weights / f"cifar10-{n}.safetensors").is_file() and index.get(n, {}).get("iterations") == ITERATIONS
    ]
    if shipped:
        try:
            summary = _quiet(responses, records, figures, iterations=ITERATIONS, nets=shipped, weights=weights)
            png = next(p for p in summary["figures"] if p.endswith(".png"))
            claims = "; ".join(f"{c}: {'holds' if ok else 'does not hold'}" for c, ok in summary["claims"].items())
            lines += ["### Fig. 7 (seed-0 networks)", "", f"![Fig. 7 at 64k]({rel(png)})", "", claims or "", ""]
        except UserError as err:
            lines += [f"Fig. 7: not drawn here ({err}).", ""]
    else:
        lines += ["Fig. 7: waits for the seed-0 networks of plain-20/56 and ResNet-20/56/110.", ""]
    if index:
        lines += [
            "### The project's CIFAR-10 weights",
            "",
            "| network | iterations | test error, `resnetlab eval` of the file | test error, training's last record "
            "| file | sha256 |",
            "|---|---|---|---|---|---|",
        ]
        for net, entry in index.items():
            lines.append(
                f"| {net} | {entry['iterations']:,} | {_eval_error(weights / entry['file'], data_dir)} | "
                f"{100 * entry['test_top1_error']:.2f} % | `weights/{entry['file']}` | `{entry['sha256'][:12]}` |"
            )
        lines += [
            "",
            "The first error is what `resnetlab eval --checkpoint weights/cifar10-NET.safetensors --data-dir "
            "../shared/data` prints (BN folded, float32); the second is the training run's own evaluation at "
            "its last iteration, in the run's precision (bf16 in the CPU windows): they may differ by a few "
            "test images. Load one with `torch.hub.load(REPO, 'resnet20', source='local', weights='cifar10')` "
            "(hubconf.py).",
            "",
        ]
    lines += _windows_table(campaign, campaign.names())
    lines += ["### What is done and what is pending", "", "```", format_status(status), "```", "", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carry", default="campaign", type=Path)
    parser.add_argument("--weights", default="weights", type=Path)
    parser.add_argument("--page", default="docs/results.md", type=Path)
    parser.add_argument("--figures", default="docs/results/full", type=Path)
    parser.add_argument(
        "--plan", default="auto", choices=("auto", "gpu", "cpu"), help="the plan whose progress is shown"
    )
    parser.add_argument("--data-dir", help="CIFAR-10 for Fig. 7 and the shipped weights' errors (else $RESNETLAB_DATA)")
    args = parser.parse_args()
    try:
        text = section(args.carry, args.weights, args.figures, args.page, args.plan, args.data_dir)
    except UserError as err:
        print(f"full_schedule: error: {err}", file=sys.stderr)
        sys.exit(2)
    replace_section(args.page, text, BEGIN, END, before="## Redraw from the records")
    print(f"full_schedule: redrew the section in {args.page}")


if __name__ == "__main__":
    main()
