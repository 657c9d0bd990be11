"""The ``pqcall`` command. Thin: every subcommand calls the library."""

from __future__ import annotations

import argparse
import sys

from pqcall import __version__
from pqcall.bench import __main__ as bench
from pqcall.exceptions import PqcallError
from pqcall.server import runner as server


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pqcall``."""
    parser = argparse.ArgumentParser(
        prog="pqcall", description="Post-quantum, end-to-end encrypted voice calls."
    )
    parser.add_argument("--version", action="version", version=f"pqcall {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="run a benchmark and print its figures")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=bench.run)
    server_parser = commands.add_parser("server", help="run the signaling server")
    server.add_arguments(server_parser)
    server_parser.set_defaults(handler=server.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. User errors print one line, no traceback."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PqcallError as exc:
        print(f"pqcall: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
