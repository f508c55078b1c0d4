"""The ``conveyor`` command line: ``conveyor demo`` and ``conveyor run``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._backends import names
    from ._demo import QUICK_SCALE
    from ._options import cli_seconds
    from ._runcmd import EXIT_STATUS, add_run_parser

    backends = names()
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Run many tasks at once: on threads, asyncio, worker processes or a\n"
                    f"Dask cluster (backends: {', '.join(backends)}).",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="time the classic concurrency examples: stdlib versus conveyor",
        description="Replay the classic concurrency examples (threads, executors, "
                    "processes, asyncio), each first as the standard library teaches "
                    "it and then with conveyor, and print a table of the times against "
                    "the ideal. Takes about 20 s (a few with --quick).")
    speed = demo.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_const", dest="scale", const=QUICK_SCALE,
                       help=f"scale every duration down to finish in seconds "
                            f"(same as --scale {QUICK_SCALE:g})")
    speed.add_argument("--scale", type=cli_seconds, metavar="FLOAT",
                       help="multiply every duration by FLOAT (default: 1)")
    demo.set_defaults(scale=1.0)
    add_run_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``conveyor`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        try:
            run_demo(scale=args.scale)
        except KeyboardInterrupt:
            print("conveyor demo: interrupted", file=sys.stderr)
            return 130
        return 0
    if args.command == "run":
        from ._runcmd import run_command

        try:
            return run_command(args)
        except KeyboardInterrupt:
            print("conveyor run: interrupted", file=sys.stderr)
            return 130
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse allows no other
