"""``pqcall block``, ``unblock`` and ``blocked``: who may ring this phone.

They edit the home's screening file (:mod:`pqcall.client.screening`) and need
no passphrase and no server; a running ``pqcall listen`` or ``pqcall ui`` on
the same home reads the change at the next incoming call. A blocked caller's
calls do not ring and are not answered (the caller is not told why); they are
recorded in ``pqcall history`` as ``blocked``. ``blocked --silence-strangers
on|off`` sets whether callers not in the contacts ring (see ``docs/cli.md``).
"""

from __future__ import annotations

import argparse

from pqcall.cli import runtime
from pqcall.cli.options import add_json_option, open_home
from pqcall.cli.output import Console


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``block``, ``unblock`` and ``blocked``."""
    block = commands.add_parser(
        "block",
        parents=[common],
        help="NAME's calls no longer ring (NAME is not told)",
        description="Block calls from NAME: they do not ring and are not answered, so NAME"
        " sees a call nobody picks up. They are recorded in the history as blocked.",
    )
    block.add_argument("name", metavar="NAME", help="the caller to block")
    block.set_defaults(handler=run_block)

    unblock = commands.add_parser("unblock", parents=[common], help="let NAME's calls ring again")
    unblock.add_argument("name", metavar="NAME", help="the caller to unblock")
    unblock.set_defaults(handler=run_unblock)

    blocked = commands.add_parser(
        "blocked",
        parents=[common],
        help="list blocked callers; --silence-strangers on|off",
        description="List the blocked callers and whether strangers (callers not in your"
        " contacts) are silenced; --silence-strangers on|off changes that setting.",
    )
    blocked.add_argument(
        "--silence-strangers",
        choices=("on", "off"),
        help="on: calls from callers not in your contacts do not ring (recorded as missed)",
    )
    add_json_option(blocked, "the block list and the setting")
    blocked.set_defaults(handler=run_blocked)


def run_block(args: argparse.Namespace) -> int:
    """``pqcall block NAME``."""
    from pqcall.client.screening import SCREENING_NAME, Screening
    from pqcall.signaling.usernames import normalize

    runtime.setup_logging(args.verbose)
    home = open_home(args)
    screening = Screening(home.path / SCREENING_NAME)
    name = normalize(args.name)
    console = Console(json_mode=False)
    if screening.block(name):
        console.say(f"blocked {name}: their calls will not ring (unblock: pqcall unblock {name})")
    else:
        console.say(f"{name} was already blocked")
    return runtime.EXIT_OK


def run_unblock(args: argparse.Namespace) -> int:
    """``pqcall unblock NAME``."""
    from pqcall.client.screening import SCREENING_NAME, Screening
    from pqcall.signaling.usernames import normalize

    runtime.setup_logging(args.verbose)
    home = open_home(args)
    screening = Screening(home.path / SCREENING_NAME)
    name = normalize(args.name)
    console = Console(json_mode=False)
    if screening.unblock(name):
        console.say(f"unblocked {name}: their calls ring again")
    else:
        console.say(f"{name} was not blocked")
    return runtime.EXIT_OK


def run_blocked(args: argparse.Namespace) -> int:
    """``pqcall blocked [--silence-strangers on|off] [--json]``."""
    from pqcall.cli.info import local_time
    from pqcall.client.screening import SCREENING_NAME, Screening

    runtime.setup_logging(args.verbose)
    home = open_home(args)
    screening = Screening(home.path / SCREENING_NAME)
    if args.silence_strangers is not None:
        screening.set_silence_strangers(args.silence_strangers == "on")
    state = screening.load()
    console = Console(json_mode=args.json)
    if args.json:
        console.emit_json(
            {
                "blocked": dict(sorted(state.blocked.items())),
                "silence_strangers": state.silence_strangers,
            }
        )
        return runtime.EXIT_OK
    if state.blocked:
        for name, since in sorted(state.blocked.items()):
            console.say(f"{name}  (blocked {local_time(since)})")
    else:
        console.say("nobody is blocked")
    strangers = "silenced" if state.silence_strangers else "ring"
    console.say(f"calls from strangers (not in your contacts): {strangers}")
    return runtime.EXIT_OK
