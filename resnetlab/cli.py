"""`resnetlab` on the command line: each sub-command parses its options, calls one plain function and prints
what it returns; the formatting lives beside the function (``format_models``, ``format_presets``, ...).

``resnetlab train``'s first-class flags (--iterations, --batch-size, ...) are generated from the config fields
that declare them (``resnetlab.config.train_flags``), parsed by the config's own parser and set as typed values;
every other field is ``--set section.key=value``. Plain argparse rather than jsonargparse: that would be a new
dependency, and it would change the CLI users see (its flags are --train.iterations, its help and its errors
read differently).
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from .config import Flag, train_flags
from .errors import UserError, user_message

__all__ = ["main", "build_parser"]

# import-weights' networks, spelled here so that --help does not import torch (tests hold them to deploy's)
TORCHVISION_CHOICES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
AKAMASTER_CHOICES = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")


def _models(args: argparse.Namespace) -> int:
    from .models.summary import format_models, size_table

    rows = size_table(variants=not args.no_variants, family=args.family)
    print(format_models(rows, markdown=args.markdown, as_json=args.json))
    mismatches = [row.name for row in rows if not row.matches]
    if args.check and mismatches:
        print(f"resnetlab: error: differs from the paper: {', '.join(mismatches)}", file=sys.stderr)
        return 1
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_models)


def _data(args: argparse.Namespace) -> int:
    from .data.report import data_command

    return data_command(
        args.name,
        args.data_dir,
        as_json=args.json,
        download=not args.no_download,
        on_bad_image="skip" if args.skip_bad_images else "error",
    )


def _add_data(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_data)


def _train(args: argparse.Namespace) -> int:
    from .config import parse_overrides, set_values
    from .engine import train
    from .presets import get_preset

    config = get_preset(args.preset)
    values = parse_overrides(args.set or [])
    # A first-class flag wins over --set for the same field; its value is already typed.
    values |= {f.key: getattr(args, f.dest) for f in train_flags() if getattr(args, f.dest) is not None}
    if args.seeds is not None and "train.seed" in values:
        raise UserError("--seeds sets each run's seed; leave out --seed (and --set train.seed)")
    config = set_values(config, values)
    out = args.out or f"runs/{config.preset}"
    if args.seeds is not None:
        from pathlib import Path

        from .engine.packed import train_packed

        outs = [Path(out) / f"seed{seed}" for seed in args.seeds]
        train_packed(config, args.seeds, outs, resume=args.resume, accept_resume_changes=args.accept_resume_changes)
        return 0
    train(config, out, resume=args.resume, accept_resume_changes=args.accept_resume_changes)
    return 0


def _typed(flag: Flag) -> Callable[[str], Any]:
    """An argparse ``type`` that parses with the config's own parser. A value it refuses is argparse's usage
    error (exit 2), worded as argparse words it for a plain type ("argument --iterations: invalid int value:
    'ten'"), as it was before the flags were generated; other types keep the config's message (a Literal's
    choices)."""
    union = typing.get_origin(flag.annotation) in (typing.Union, types.UnionType)
    (kind, *_) = [t for t in typing.get_args(flag.annotation) if t is not type(None)] if union else [flag.annotation]
    plain = isinstance(kind, type) and not typing.get_args(kind)  # int, float, bool, str; not list[int], Literal

    def convert(text: str) -> Any:
        try:
            return flag.parse(text)
        except UserError as err:
            if plain:
                raise ValueError(text) from None  # argparse: "invalid {convert.__name__} value: {text!r}"
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = kind.__name__ if plain else "value"
    return convert


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a network with one of the paper's recipes (`resnetlab presets` lists them)",
        description="Train with a preset (one per experiment of the paper), in the paper's units. Writes the "
        "resolved config, an environment record, metrics.jsonl, checkpoints (last, best by validation error) and "
        "curves.png into the run directory. Under torchrun it trains with DDP; the global batch is split over "
        "the ranks. Ctrl-C (or SIGTERM) finishes the step, saves and exits 0; --resume auto continues.",
    )
    p.add_argument("--preset", required=True, metavar="NAME", help="e.g. cifar10-resnet20, fashion-mnist-resnet20")
    for f in train_flags():
        p.add_argument(f.name, dest=f.dest, type=_typed(f), metavar=f.metavar, help=f.help)
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/PRESET)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="train one run per seed, all packed into one network (faster on a GPU), each into RUN_DIR/seedS: "
        "its own initialisation, data order, augmentation and checkpoints, as a single run with --seed S",
    )
    p.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue from RUN_DIR's newest intact checkpoint (auto; a fresh start if there is none) or a file",
    )
    p.add_argument(
        "--accept-resume-changes",
        action="store_true",
        help="resume although the config differs in more than length and frequencies (batch, seed, lr, data, "
        "schedule...): no longer an exact continuation; the changes are recorded in metrics.jsonl",
    )
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="any other config field; repeatable")
    p.set_defaults(func=_train)


def _presets(args: argparse.Namespace) -> int:
    from .presets import format_presets

    print(format_presets(verbose=args.verbose, as_json=args.json))
    return 0


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the training presets, one per experiment of the paper")
    p.add_argument("-v", "--verbose", action="store_true", help="also print each preset's description")
    p.add_argument("--json", action="store_true", help="every preset's full config as JSON")
    p.set_defaults(func=_presets)


def _plot(args: argparse.Namespace) -> int:
    from .engine import plot_runs

    out = plot_runs(args.runs, args.out, title=args.title)
    print(f"wrote {out}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="overlay the training curves of run directories (the paper's Fig. 6 style)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="curves.png", help="PNG (or SVG, PDF) to write (default curves.png)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=_plot)


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import eval_command

    return eval_command(
        args.checkpoint,
        view=args.views,
        split=args.split,
        data_dir=args.data_dir,
        out=args.out,
        as_json=args.json,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        compile=args.compile,
        runtime_name=args.runtime,
    )


RUNTIME_HELP = (
    "what runs the network: onnxruntime (resnetlab's ONNX export, BN folded, cached by the checkpoint's "
    "content; the optional extra resnetlab[onnx]) or torch (default: onnxruntime on the CPU where installed, "
    "faster there; else torch)"
)


def _add_running_options(p: argparse.ArgumentParser) -> None:
    """--device, --compile and --runtime: where and how eval and predict run the network."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile with freezing: faster per image after a compilation of seconds to a minute (worth it "
        "on large splits and many images)",
    )
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), help=RUNTIME_HELP)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or an exported file with the paper's test views: errors, per-class accuracy",
        description="Top-1/top-5 error, loss, per-class accuracy and images/s of a run's checkpoint (or an "
        "exported .safetensors file) on its dataset, with a test view of the paper: single (CIFAR, Sec. 4.2), "
        "center (256 -> 224), 10crop (Tables 2-3) or multiscale (shorter side 224..640 and flips, Table 4). "
        "Writes metrics-SPLIT-VIEW.json and confusion-SPLIT-VIEW.png. Under torchrun the split is shared "
        "out across the ranks, every image counted once.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="runs/X/checkpoints/last.pt, or an export")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset is (default: where the run found it)")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="test: the dataset's test set (val/ of the ImageNet layout); val: the run's held-out "
        "validation split (data.val_split)",
    )
    p.add_argument(
        "--views",
        choices=("single", "center", "10crop", "multiscale"),
        help="test view (default: the checkpoint's, single for CIFAR-style data, center for ImageNet)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the metrics and the confusion matrix (default: beside the checkpoint, <name>-eval/)",
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="images per batch (default: by view and size)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes for image files (default: up to 8)")
    _add_running_options(p)
    p.set_defaults(func=_eval)


def _predict(args: argparse.Namespace) -> int:
    from .deploy import predict_command

    return predict_command(
        args.checkpoint,
        args.images,
        top=args.top,
        view=args.views,
        as_json=args.json,
        device=args.device,
        compile=args.compile,
        runtime_name=args.runtime,
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a checkpoint: top classes with probabilities",
        description="The top classes of each image by the checkpoint's network, with its own class names and "
        "preprocessing (channels, size, mean image, test view). An unreadable image is reported on stderr "
        "and the others are still classified; the exit code is then 1.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint or an exported .safetensors")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG or any image PIL reads")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument(
        "--views", choices=("single", "center", "10crop", "multiscale"), help="test view (default: the checkpoint's)"
    )
    p.add_argument("--json", action="store_true", help="JSON, one object per image")
    _add_running_options(p)
    p.set_defaults(func=_predict)


def _export(args: argparse.Namespace) -> int:
    from .deploy import export_command

    return export_command(args.checkpoint, args.format, args.out)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint, BatchNorm folded: safetensors (read by eval/predict), pt2, onnx or torchscript",
        description="Writes the network with every BN folded into its convolution, then reads the file back "
        "and checks its outputs against the eager network on random inputs (within 1e-4). Formats: "
        "safetensors (weights and record, read by eval and predict); pt2 (torch.export's ExportedProgram, "
        "torch.export.load; batch and image size dynamic); onnx (needs pip install 'resnetlab[onnx]'); "
        "torchscript (for older consumers only: torch deprecates TorchScript and torch.jit.load in favour "
        "of torch.export, i.e. pt2).",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint (or an export)")
    p.add_argument(
        "--format",
        required=True,
        choices=("safetensors", "pt2", "onnx", "torchscript"),
        help="safetensors, pt2 (torch.export), onnx, or torchscript (deprecated by torch; old consumers only)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.set_defaults(func=_export)


def _import_weights(args: argparse.Namespace) -> int:
    from .deploy import import_command

    return import_command(args.source, args.file, args.model, args.out, resize=args.resize)


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-weights",
        help="turn published ResNet weights (torchvision's ImageNet .pth, akamaster's CIFAR-10 .th) into a checkpoint",
        description="Reads a local file of published weights (weights_only; nothing is downloaded), checks its keys "
        "and shapes against the network, and writes a resnetlab checkpoint with the classes and the preprocessing "
        "the weights expect, for eval, predict, export, train --init and torch.hub. torchvision: its ImageNet "
        "ResNets (v1.5: stride on the 3x3, option B). akamaster: akamaster/pytorch_resnet_cifar10's CIFAR-10 "
        "ResNets (option A, its channels reordered to resnetlab's zero padding; per-channel mean/std).",
    )
    p.add_argument("source", choices=("torchvision", "akamaster"), help="where the weights come from")
    p.add_argument(
        "file", metavar="FILE", help="e.g. resnet50-0676ba61.pth (torchvision), resnet20-12fca82f.th (akamaster)"
    )
    p.add_argument(
        "--model",
        required=True,
        choices=sorted({*TORCHVISION_CHOICES, *AKAMASTER_CHOICES}, key=lambda n: (len(n), n)),
        help=f"torchvision: {', '.join(TORCHVISION_CHOICES)}; akamaster: {', '.join(AKAMASTER_CHOICES)}",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        metavar="N",
        help="torchvision only: the centre view's shorter side, 256 for IMAGENET1K_V1 weights (default), 232 for V2",
    )
    p.set_defaults(func=_import_weights)


def _experiment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import experiments

    root, out = Path(args.runs), Path(args.out)
    if args.set and args.which != "campaign":
        raise UserError(f"--set is for campaign only (every run it trains), not {args.which}")
    if args.which == "campaign":
        from .experiments.campaign_command import campaign_command

        if args.budget is None and not args.status and args.gained_since is None:
            raise UserError("experiment campaign needs --budget SECONDS (or --status)")
        return campaign_command(
            args.budget or 0.0,
            root,
            Path(args.carry),
            Path(args.weights),
            iterations=args.iterations,
            data_dir=args.data_dir,
            seeds=args.table6_seeds,
            nets=args.nets,
            status_only=args.status,
            plan=args.plan,
            since=args.gained_since,
            overrides=args.set or [],
        )
    if args.which == "degradation":
        nets = args.nets or experiments.DEGRADATION_NETS
        paths = experiments.degradation(
            nets,
            args.seeds,
            args.iterations,
            root,
            out,
            args.data_dir,
            args.eval_points,
            train_missing=not args.no_train,
        )
        print(experiments.format_written(paths))
    elif args.which == "table6":
        markdown, paths = experiments.table6_report(root, out, args.iterations)
        print(experiments.format_table6_report(markdown, paths))
    else:
        summary = experiments.responses(
            root,
            out,
            iterations=args.iterations,
            seed=args.seeds[0],
            nets=args.nets or experiments.RESPONSE_NETS,
            data_dir=args.data_dir,
            split=args.split,
            bn_mode=args.bn_mode,
            std_over=args.std_over,
        )
        print(experiments.format_responses(summary))
    return 0


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="reproduce a CIFAR-10 experiment of the paper: degradation (Fig. 1, 6), table6, responses (Fig. 7); "
        "campaign: the whole section at the full schedule, a GPU or CPU window at a time",
        description="Each experiment trains (or reuses, or resumes) ordinary runs of the CIFAR-10 presets under "
        "--runs and draws its figure or table from their records only. A shorter --iterations keeps the lr drops "
        "at the paper's fractions of the run (0.5 and 0.75), stated on every figure. Several --seeds of a "
        "network train packed into one (train --seeds). campaign works through the section's runs in the paper's "
        "order for --budget seconds, stops checkpointed, carries records and checkpoints in --carry for the "
        "next window, exports finished seed-0 networks into --weights and says what is left (docs/training.md).",
    )
    p.add_argument("which", choices=("degradation", "table6", "responses", "campaign"))
    p.add_argument("--runs", default="runs/cifar10", metavar="DIR", help="where the runs live (default runs/cifar10)")
    p.add_argument("--out", default="results", metavar="DIR", help="where figures and tables go (default results)")
    p.add_argument("--iterations", type=int, default=64000, help="schedule length (default the paper's 64,000)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds to train (degradation; on a GPU each network's seeds packed into one run); "
        "the seed to read (responses)",
    )
    p.add_argument("--budget", type=float, metavar="SECONDS", help="campaign: stop, checkpointed, before this")
    p.add_argument(
        "--carry", default="campaign", metavar="DIR", help="campaign: records and checkpoints between windows"
    )
    p.add_argument("--weights", default="weights", metavar="DIR", help="campaign: exported seed-0 networks")
    p.add_argument(
        "--table6-seeds", type=int, default=5, metavar="N", help="campaign: seeds per network (default 5, the paper's)"
    )
    p.add_argument("--status", action="store_true", help="campaign: print what is done and left; train nothing")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="campaign: a config field of every run it trains, e.g. train.cuda_graph=off; only what a run may change "
        "when it resumes (how it is computed, not what: docs/training.md); repeatable",
    )
    p.add_argument(
        "--plan",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="campaign: the order of the runs; gpu: the paper's, seeds packed; cpu: soonest done first, one run at "
        "a time (docs/training.md); auto (default): gpu where CUDA is, else cpu",
    )
    p.add_argument(
        "--gained-since",
        type=float,
        metavar="UNIX_TIME",
        help="campaign: print one line, the iterations each run gained in the windows ended since then; train nothing",
    )
    p.add_argument("--nets", nargs="+", metavar="NET", help="networks, e.g. plain20 resnet56 (default: the figure's)")
    p.add_argument(
        "--eval-points",
        type=int,
        default=32,
        metavar="N",
        help="degradation: test-set evaluations per run, evenly spaced (default 32; each costs a pass over 10k images)",
    )
    p.add_argument(
        "--no-train",
        action="store_true",
        help="degradation: draw from the records already under --runs (e.g. copied without checkpoints); train nothing",
    )
    p.add_argument("--data-dir", metavar="DIR", help="where CIFAR-10 is (then $RESNETLAB_DATA)")
    p.add_argument("--split", choices=("test", "train", "val"), default="test", help="responses: images to use")
    p.add_argument(
        "--bn-mode", choices=("eval", "train"), default="eval", help="responses: BN running or batch statistics"
    )
    p.add_argument(
        "--std-over",
        choices=("all", "channel"),
        default="all",
        help="responses: one std over all elements, or per channel",
    )
    p.set_defaults(func=_experiment)


COMMANDS = [
    _add_models,
    _add_data,
    _add_presets,
    _add_train,
    _add_plot,
    _add_eval,
    _add_predict,
    _add_export,
    _add_import_weights,
    _add_experiment,
]


def build_parser() -> argparse.ArgumentParser:
    """The `resnetlab` parser; each sub-command's parse result carries its function as ``func``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Deep Residual Learning for Image Recognition (He et al., CVPR 2016): the networks, "
        "recipes and experiments of the paper.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A path whose name is not UTF-8 (Latin-1 bytes, surrogate-escaped in Python) is printed as the bytes it
    # is, as ls prints it; under a UTF-8 locale stdout is strict and the first `done: RUN_DIR` was a traceback.
    if callable(getattr(sys.stdout, "reconfigure", None)):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        return args.func(args)
    except UserError as err:
        print(f"resnetlab {args.command}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`resnetlab models | head`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so that Python's flush at exit does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
