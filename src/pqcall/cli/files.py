"""``pqcall send-file``, ``pqcall inbox`` and ``pqcall receive``: encrypted files.

Each command opens the account, talks to the server over HTTP only (no push
connection, so it never takes events meant for a running ``pqcall listen``)
and calls :class:`~pqcall.client.files.FileTransfers`. Long work shows a
progress line on a terminal (``--json`` keeps stdout for the one JSON object).

Exit codes: 0 done, 1 any error (one line) or a refused key change (the
security warning), 130 after Ctrl-C (an upload or download then resumes when
the same command is run again).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pqcall.cli import runtime
from pqcall.cli.account import registered_config
from pqcall.cli.options import add_json_option, add_passphrase_option, open_home, passphrase
from pqcall.cli.output import Console, byte_size, progress_text, render_table

if TYPE_CHECKING:
    from pqcall.client.files import FileTransfers
    from pqcall.client.home import Home

REDRAW_INTERVAL_S = 0.1
"""Least time between two redraws of the progress line."""

FileCommand = Callable[[argparse.Namespace, "Home", str, Console], Coroutine[Any, Any, int]]
"""What ``send-file``, ``inbox`` and ``receive`` run once the account is open."""
FILE_ID_DIGITS = 32
"""A file id's length in hex digits (``FILE_ID_PATTERN`` in :mod:`pqcall.signaling.messages`)."""
HEX_DIGITS = "0123456789abcdef"


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``send-file``, ``inbox`` and ``receive``."""
    send = commands.add_parser(
        "send-file",
        parents=[common],
        help="send an encrypted file to someone (online or not)",
        description="Encrypt PATH to NAME's saved key, sign it, and upload it to the server,"
        " where it waits for NAME. Run it again after an interruption to resume.",
    )
    send.add_argument("name", metavar="NAME", help="who may decrypt it")
    send.add_argument("path", metavar="PATH", help="the file to send")
    add_passphrase_option(send)
    add_json_option(send, "the transfer")
    send.set_defaults(handler=run_send)

    inbox = commands.add_parser(
        "inbox",
        parents=[common],
        help="list encrypted files waiting for you",
        description="List the files waiting on the server for this account. Their names and"
        " exact sizes are encrypted: receive shows them.",
    )
    add_passphrase_option(inbox)
    add_json_option(inbox, "each waiting file")
    inbox.set_defaults(handler=run_inbox)

    receive = commands.add_parser(
        "receive",
        parents=[common],
        help="download, verify and decrypt a waiting file",
        description="Download file ID, check the sender's signature and every chunk, save it"
        " in --out under the name the sender gave (never overwriting), and delete it on"
        " the server. Run it again after an interruption to resume.",
    )
    receive.add_argument(
        "file_id",
        metavar="ID",
        help="the file id from pqcall inbox, or its first digits if no other id starts so",
    )
    receive.add_argument(
        "--out", metavar="DIR", help="where to save it (default: received/ in the home)"
    )
    add_passphrase_option(receive)
    add_json_option(receive, "the received file")
    receive.set_defaults(handler=run_receive)


# ---------------------------------------------------------------- send-file


def _run(args: argparse.Namespace, command: FileCommand) -> int:
    """Set up logging, open the registered home, ask for the passphrase, run ``command``."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    registered_config(home)
    secret = passphrase(args)
    return runtime.run(command(args, home, secret, Console(json_mode=args.json)))


def run_send(args: argparse.Namespace) -> int:
    """``pqcall send-file NAME PATH``."""
    return _run(args, _send)


async def _send(args: argparse.Namespace, home: Home, secret: str, console: Console) -> int:
    from pqcall.exceptions import KeyChangedError

    async with transfers(home, secret) as files:
        try:
            sent = await files.send(args.name, args.path, progress=Meter(console))
        except KeyChangedError as exc:
            console.warn(str(exc))
            return runtime.EXIT_FAILED
    console.clear_status()
    resumed = f", resumed at {byte_size(sent.resumed_from)}" if sent.resumed_from else ""
    console.say(
        f"sent {sent.name} ({byte_size(sent.size)}) to {sent.recipient}{resumed}:"
        f" {sent.recipient} receives it with: pqcall receive {sent.file_id}"
    )
    if args.json:
        console.emit_json(sent.to_json())
    return runtime.EXIT_OK


# ---------------------------------------------------------------- inbox


def run_inbox(args: argparse.Namespace) -> int:
    """``pqcall inbox``."""
    return _run(args, _inbox)


async def _inbox(args: argparse.Namespace, home: Home, secret: str, console: Console) -> int:
    async with transfers(home, secret) as files:
        waiting = await files.inbox()
    if args.json:
        for item in waiting:
            console.emit_json(item.to_json())
        return runtime.EXIT_OK
    if not waiting:
        console.say("no files waiting")
        return runtime.EXIT_OK
    rows = [
        [
            item.view.file_id,
            item.view.sender,
            item.sender_trust.upper() if item.sender_trust == "key changed" else item.sender_trust,
            byte_size(item.view.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(item.view.created)),
        ]
        for item in waiting
    ]
    console.say(render_table(["ID", "FROM", "SENDER KEY", "SIZE", "SENT"], rows, right={3}))
    console.say(
        "names and exact sizes are encrypted (SIZE is the padded ciphertext);"
        " pqcall receive ID downloads, checks and saves a file"
    )
    return runtime.EXIT_OK


# ---------------------------------------------------------------- receive


def run_receive(args: argparse.Namespace) -> int:
    """``pqcall receive ID``."""
    args.file_id = file_id_prefix(args.file_id)
    return _run(args, _receive)


def file_id_prefix(text: str) -> str:
    """Check ``receive``'s ID: a whole file id or its first hex digits; lowercased.

    Raises:
        TransferError: not 1 to 32 hex digits (checked before any passphrase).
    """
    from pqcall.exceptions import TransferError

    prefix = text.strip().lower()
    if not 0 < len(prefix) <= FILE_ID_DIGITS or prefix.strip(HEX_DIGITS):
        raise TransferError(f"{text!r} is not a file id (32 hex digits, from pqcall inbox)")
    return prefix


def pick_file_id(prefix: str, waiting: list[str]) -> str:
    """The one id in ``waiting`` that starts with ``prefix`` (like a short git hash).

    Raises:
        TransferError: none or several start so (one line, the candidates listed).
    """
    from pqcall.exceptions import TransferError

    found = sorted(file_id for file_id in waiting if file_id.startswith(prefix))
    if not found:
        raise TransferError(f"no waiting file has an id starting with {prefix} (pqcall inbox)")
    if len(found) > 1:
        raise TransferError(f"{prefix} is ambiguous: it starts {', '.join(found)}")
    return found[0]


async def _receive(args: argparse.Namespace, home: Home, secret: str, console: Console) -> int:
    from pqcall.exceptions import KeyChangedError

    async with transfers(home, secret) as files:
        file_id = args.file_id
        if len(file_id) < FILE_ID_DIGITS:
            file_id = pick_file_id(file_id, [item.view.file_id for item in await files.inbox()])
        try:
            received = await files.receive(file_id, args.out, progress=Meter(console))
        except KeyChangedError as exc:
            console.warn(f"refused a file: {exc}")
            return runtime.EXIT_FAILED
    console.clear_status()
    trust = "verified" if received.sender_verified else "not verified: pqcall verify"
    console.say(
        f"received {received.path.name} ({byte_size(received.size)}) from {received.sender}"
        f" (signature checked; contact {trust}) into {received.path}"
    )
    if not received.deleted:
        console.say("the server did not confirm deleting its copy; it expires there by itself")
    if args.json:
        console.emit_json(received.to_json())
    return runtime.EXIT_OK


# ---------------------------------------------------------------- both


def transfers(home: Home, secret: str) -> contextlib.AbstractAsyncContextManager[FileTransfers]:
    """The registered account's file transfers, with their own server connection.

    Raises:
        NoAccount: no registered account in ``home`` (before any passphrase work).
    """
    from pqcall.client.transfers import open_transfers

    return open_transfers(home, secret, registered_config(home))


class Meter:
    """A progress callback that draws :func:`~pqcall.cli.output.progress_text` on a terminal.

    The rate counts only the bytes of the current phase moved since it began,
    so a resumed upload does not claim the bytes sent before.

    Args:
        console: where the line goes (only on a terminal).
        clock: monotonic seconds.
    """

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console  # draws the status line
        self._clock = clock  # monotonic seconds
        self._phase = ""  # the phase being shown
        self._start = 0.0  # when the phase began
        self._first = 0  # bytes done when it began
        self._drawn = float("-inf")  # when the line was last drawn

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self._clock()
        if phase != self._phase:
            self._phase, self._start, self._first = phase, now, done
        elif now - self._drawn < REDRAW_INTERVAL_S and done < total:
            return
        self._drawn = now
        elapsed = now - self._start
        rate = (done - self._first) / elapsed if elapsed > 0 else None
        self._console.status(progress_text(phase, done, total, rate))
