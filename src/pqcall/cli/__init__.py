"""The ``pqcall`` command. Thin: every subcommand calls the library.

One module per group of commands, each with ``add_parsers(commands, common)``:

- :mod:`~pqcall.cli.account`: ``register``, ``whoami``
- :mod:`~pqcall.cli.calls`: ``listen``, ``call``
- :mod:`~pqcall.cli.files`: ``send-file``, ``inbox``, ``receive``
- :mod:`~pqcall.cli.info`: ``contacts``, ``verify``, ``history``, ``devices``
- :mod:`~pqcall.cli.block`: ``block``, ``unblock``, ``blocked``
- :mod:`~pqcall.cli.demo`: ``demo``
- :mod:`~pqcall.cli.ui`: ``ui`` (the softphone with a web page)
- ``server`` (:mod:`pqcall.server.runner`) and ``bench`` (:mod:`pqcall.bench`)

and the shared pieces: :mod:`~pqcall.cli.options` (options several commands
take), :mod:`~pqcall.cli.output` (status line, tables, JSON),
:mod:`~pqcall.cli.runtime` (event loop, Ctrl-C, logging, stdin).

Importing this package stays cheap: the softphone library is imported by the
commands that use it, when they run. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import sys

from pqcall import __version__
from pqcall.bench import __main__ as bench
from pqcall.cli import account, block, calls, demo, files, info, ui
from pqcall.cli.options import add_global_options
from pqcall.exceptions import PqcallError
from pqcall.server import runner as server

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pqcall``."""
    parser = argparse.ArgumentParser(
        prog="pqcall", description="Post-quantum, end-to-end encrypted voice calls."
    )
    parser.add_argument("--version", action="version", version=f"pqcall {__version__}")
    add_global_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    add_global_options(common, top=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    account.add_parsers(commands, common)
    calls.add_parsers(commands, common)
    files.add_parsers(commands, common)
    info.add_parsers(commands, common)
    block.add_parsers(commands, common)
    demo.add_parsers(commands, common)
    ui.add_parsers(commands, common)
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
