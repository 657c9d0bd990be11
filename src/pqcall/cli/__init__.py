"""The ``pqcall`` command. Thin: every subcommand calls the library.

One module per group of commands, each with ``add_parsers(commands, common)``
(:mod:`~pqcall.cli.examples` adds every EXAMPLES epilog and the typo suggestion):

- :mod:`~pqcall.cli.account`: ``register``, ``whoami``
- :mod:`~pqcall.cli.calls`: ``listen``, ``call``
- :mod:`~pqcall.cli.files`: ``send-file``, ``inbox``, ``receive``
- :mod:`~pqcall.cli.info`: ``contacts``, ``verify``, ``history``, ``audio-devices``
- :mod:`~pqcall.cli.devices`: ``link``, ``devices``, ``unlink``, ``rotate-key``, ``recover``
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
from typing import NoReturn

from pqcall import __version__
from pqcall.exceptions import PqcallError

EXIT_USAGE = 2
"""argparse's exit code for a command line it cannot parse."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that answers an unknown command with the closest one."""

    def error(self, message: str) -> NoReturn:
        from pqcall.cli.examples import suggest

        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and "invalid choice" in message:
                word = message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0]
                print(suggest(word.strip("'\""), list(action.choices)), file=sys.stderr)
                sys.exit(EXIT_USAGE)
        super().error(message)


__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pqcall``."""
    from pqcall.bench import __main__ as bench
    from pqcall.cli import account, block, calls, demo, devices, files, info, relay, ui
    from pqcall.cli.examples import add_examples
    from pqcall.cli.options import add_global_options
    from pqcall.server import runner as server

    parser = _Parser(prog="pqcall", description="Post-quantum, end-to-end encrypted voice calls.")
    parser.add_argument("--version", action="version", version=f"pqcall {__version__}")
    add_global_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    add_global_options(common, top=False)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser
    )
    account.add_parsers(commands, common)
    calls.add_parsers(commands, common)
    files.add_parsers(commands, common)
    info.add_parsers(commands, common)
    devices.add_parsers(commands, common)
    block.add_parsers(commands, common)
    demo.add_parsers(commands, common)
    ui.add_parsers(commands, common)
    bench_parser = commands.add_parser("bench", help="run a benchmark and print its figures")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=bench.run)
    server_parser = commands.add_parser("server", help="run the signaling server")
    server.add_arguments(server_parser)
    server_parser.set_defaults(handler=server.run)
    relay.add_parsers(commands, common)  # `pqcall relay` (server/relay_store.py)
    add_examples(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. User errors print one line, no traceback."""
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"pqcall {__version__}")  # without building the parser: instant
        sys.exit(0)  # as argparse's version action does
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
