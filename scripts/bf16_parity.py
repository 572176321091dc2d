"""Does bf16 on the CPU reach float32's error? The four-run test that sets ``train.amp=auto`` on CPUs with
native bf16 (``resnetlab.runtime.AUTO_BF16_ON_NATIVE_CPU``).

ResNet-20 (the cifar10-resnet20 preset: BN over 64, channels_last) on CIFAR-10, 4,000 iterations of batch
128 with the lr divided by 10 at 2,000 and 3,000 (the paper's fractions of the run, 0.5 and 0.75), seeds 0
and 1, in float32 (``train.amp=off``) and bf16 autocast (``train.amp=bf16``): four ordinary runs under
``--runs``, trained one after another (``--resume auto``: an interrupted run continues, a finished one is
read). Then the table of final test errors (the last iteration's; nothing selected on the test set), and
the decision rule: bf16 becomes auto's choice if the bf16 mean lies within the larger of 0.5 point and the
float32 seeds' spread (max - min) of the float32 mean.

    python scripts/bf16_parity.py --data-dir ../shared/data --runs runs/bf16-parity     # about 35 min, 2-core VM
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from resnetlab.engine.rundir import read_record

SEEDS = (0, 1)
PRECISIONS = {"float32": "off", "bf16": "bf16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 (the shared JPEG copy, or the original)")
    parser.add_argument("--runs", type=Path, default=Path("runs/bf16-parity"))
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--no-train", action="store_true", help="only read the runs that are there")
    args = parser.parse_args()
    drops = f"[{args.iterations // 2},{args.iterations * 3 // 4}]"
    errors: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    rows = []
    for seed in SEEDS:
        for name, amp in PRECISIONS.items():
            run = args.runs / f"s{seed}-{name}"
            if not args.no_train:
                command = [sys.executable, "-m", "resnetlab", "train", "--preset", "cifar10-resnet20",
                           "--data-dir", args.data_dir, "--iterations", str(args.iterations), "--eval-every", "1000",
                           "--checkpoint-every", "500", "--seed", str(seed), "--out", str(run), "--resume", "auto",
                           "--set", f"schedule.milestones={drops}", "--set", f"train.amp={amp}"]  # fmt: skip
                subprocess.run(command, check=True)
            if not (run / "metrics.jsonl").is_file():
                print(f"{run}: not trained yet")
                continue
            record = read_record(run)
            if not record.finished:
                print(f"{run}: not finished ({record.reached} of {record.iterations} iterations)")
                continue
            error = float(record.final["test_top1_error"])
            errors[name].append(error)
            recorded = record.env.get("precision") or f"train.amp={record.config['train']['amp']}"
            rows.append((seed, name, error, record.final.get("train_error", float("nan")), recorded))
    print(f"{'seed':<5} {'precision':<10} {'test error':>10} {'train error':>11}  recorded")
    for seed, name, error, train_error, recorded in rows:
        print(f"{seed:<5} {name:<10} {error:>10.2%} {train_error:>11.2%}  {recorded}")
    if all(len(e) == len(SEEDS) for e in errors.values()):
        mean32, mean16 = (sum(errors[n]) / len(SEEDS) for n in ("float32", "bf16"))
        spread = max(errors["float32"]) - min(errors["float32"])
        allowed = max(0.005, spread)
        verdict = "bf16 reaches float32's error" if abs(mean16 - mean32) <= allowed else "bf16 does NOT reach it"
        print(
            f"float32 mean {mean32:.2%} (seed spread {spread:.2%}), bf16 mean {mean16:.2%}: difference "
            f"{mean16 - mean32:+.2%}, allowed +-{allowed:.2%}: {verdict}"
        )


if __name__ == "__main__":
    main()
