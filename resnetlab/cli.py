"""`resnetlab` on the command line: each sub-command parses its options and calls one plain function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import UserError

__all__ = ["main", "build_parser"]


def _models(args: argparse.Namespace) -> int:
    from .models.summary import format_size_table, size_table

    rows = size_table(variants=not args.no_variants, family=args.family)
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        print(format_size_table(rows, markdown=args.markdown))
        checked = [row for row in rows if row.paper_parameters or row.paper_multiply_adds]
        agree = sum(row.matches for row in checked)
        print(
            f"\n{len(rows)} networks; {agree} of the {len(checked)} with a figure in the paper agree with it "
            "(parameters exactly, multiply-adds within 0.5%, or to the digits Table 1 gives)."
        )
    mismatches = [row.name for row in rows if not row.matches]
    if args.check and mismatches:
        print(f"resnetlab: error: differs from the paper: {', '.join(mismatches)}", file=sys.stderr)
        return 1
    return 0


def _add_models(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser(
        "models",
        help="list the paper's networks with measured parameters and multiply-adds beside the paper's figures",
        description="Every registered network (paper defaults) and the variants the paper counts (options A/C, "
        "v1.5 stride), with parameters and multiply-adds measured by torch.utils.flop_counter at the native "
        "resolution (224x224 ImageNet, 32x32 CIFAR), beside the paper's figure.",
    )
    p.add_argument("--family", choices=("imagenet", "cifar"), help="only one family")
    p.add_argument("--no-variants", action="store_true", help="only the registered networks at their defaults")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table (as in the README)")
    fmt.add_argument("--json", action="store_true", help="JSON, one object per network")
    p.add_argument("--check", action="store_true", help="exit 1 if any count differs from the paper")
    return _models


def _data(args: argparse.Namespace) -> int:
    from .data.report import data_command

    return data_command(
        args.name, args.data_dir, as_json=args.json, download=not args.no_download,
        on_bad_image="skip" if args.skip_bad_images else "error",
    )  # fmt: skip


def _add_data(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser(
        "data",
        help="find, decode and describe a dataset: splits, classes and counts, image size, mean image, cache",
        description="Finds the dataset (--data-dir, then $RESNETLAB_DATA, then the system location, then "
        "torchvision's download), decodes it once into the cache ($RESNETLAB_CACHE, default ~/.cache/resnetlab) "
        "and prints what a training run will see.",
    )
    # The names are checked by resnetlab.data (importing it here would slow every command's start).
    p.add_argument("name", metavar="NAME", help="cifar10, cifar100, fashion-mnist, mnist, imagefolder or synthetic")
    p.add_argument("--data-dir", metavar="DIR", help="a folder holding the dataset (see docs/data.md for layouts)")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading when not found")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted) instead of failing")
    return _data


def _train(args: argparse.Namespace) -> int:
    from .config import apply_overrides
    from .engine import train
    from .presets import get_preset

    config = get_preset(args.preset)
    overrides = list(args.set or [])
    for flag, key in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = apply_overrides(config, overrides)
    out = args.out or f"runs/{config.preset}"
    train(config, out, resume=args.resume)
    return 0


# First-class `train` flags and the config field each one sets (anything else: --set section.key=value).
_TRAIN_FLAGS = {
    "data_dir": "data.data_dir",
    "train_subset": "data.train_subset",
    "iterations": "train.iterations",
    "batch_size": "optim.batch_size",
    "eval_every": "train.eval_every",
    "checkpoint_every": "train.checkpoint_every",
    "seed": "train.seed",
    "device": "train.device",
}


def _add_train(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser(
        "train",
        help="train a network with one of the paper's recipes (`resnetlab presets` lists them)",
        description="Train with a preset (one per experiment of the paper), in the paper's units. Writes the "
        "resolved config, an environment record, metrics.jsonl, checkpoints (last, best by validation error) and "
        "curves.png into the run directory. Under torchrun it trains with DDP; the global batch is split over "
        "the ranks. Ctrl-C (or SIGTERM) finishes the step, saves and exits 0; --resume auto continues.",
    )
    p.add_argument("--preset", required=True, metavar="NAME", help="e.g. cifar10-resnet20, fashion-mnist-resnet20")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset is (then $RESNETLAB_DATA, the system location)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/PRESET)")
    p.add_argument("--iterations", type=int, metavar="N", help="total training iterations (the schedule is not rescaled)")
    p.add_argument("--batch-size", type=int, metavar="N", help="global mini-batch")
    p.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N iterations")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="save last.pt every N iterations")
    p.add_argument("--seed", type=int, help="random seed (data order, augmentation, initialisation)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--train-subset", type=int, metavar="N", help="train on the first N training images only")
    p.add_argument("--resume", metavar="auto|PATH", help="continue from RUN_DIR's last checkpoint (auto) or a file")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="any other config field; repeatable")
    return _train


def _presets(args: argparse.Namespace) -> int:
    from .presets import PRESETS

    if args.json:
        print(json.dumps({name: cfg.to_dict() for name, cfg in PRESETS.items()}, indent=2))
        return 0
    width = max(map(len, PRESETS))
    for name, cfg in PRESETS.items():
        s, t = cfg.schedule, cfg.train
        when = f"/10 at {', '.join(f'{m:,}' for m in s.milestones)}" if s.kind == "steps" else "/10 on plateau"
        print(f"{name:<{width}}  {cfg.model.name:<10} {cfg.data.dataset:<13} batch {cfg.optim.batch_size:<3} "
              f"lr {cfg.optim.lr:g} {when}; {t.iterations:,} iterations" + (f", warm-up {s.warmup_lr:g}" if s.warmup_lr else ""))  # fmt: skip
        if args.verbose:
            print(f"{'':<{width}}  {cfg.description}")
    return 0


def _add_presets(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("presets", help="list the training presets, one per experiment of the paper")
    p.add_argument("-v", "--verbose", action="store_true", help="also print each preset's description")
    p.add_argument("--json", action="store_true", help="every preset's full config as JSON")
    return _presets


def _plot(args: argparse.Namespace) -> int:
    from .engine import plot_runs

    out = plot_runs(args.runs, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    p = sub.add_parser("plot", help="overlay the training curves of run directories (the paper's Fig. 6 style)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png", help="PNG (or SVG, PDF) to write (default curves.png)")
    p.add_argument("--title", help="figure title")
    return _plot


COMMANDS = [_add_models, _add_data, _add_presets, _add_train, _add_plot]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Deep Residual Learning for Image Recognition (He et al., CVPR 2016): the networks, "
        "recipes and experiments of the paper.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers = {}
    for add in COMMANDS:
        handler = add(sub)
        handlers[list(sub.choices)[-1]] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except UserError as err:
        print(f"resnetlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
