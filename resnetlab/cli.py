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


COMMANDS = [_add_models]


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
