"""``pqcall ui``: the softphone with a local web page.

One process runs the phone (once the page unlocks it) and the page's web
server (uvicorn) on the same event loop, on 127.0.0.1 only. The API refuses requests
without the process's random session token. The link printed (and opened)
carries only a one-time code that the page trades for the token, once, within
:data:`~pqcall.ui.bootstrap.LINK_LIFETIME_S` seconds: the browser's command
line, which every local user can read, holds nothing that still works. Enter
on stdin prints a fresh link. The passphrase is typed in the page, never on
the command line. Ctrl-C hangs up and stops (exit code 130).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pqcall.cli import runtime
from pqcall.cli.options import AUDIO_IN_HELP, AUDIO_OUT_HELP, MAX_PORT, open_home
from pqcall.cli.output import Console
from pqcall.cli.runtime import Interrupt
from pqcall.exceptions import PqcallError

if TYPE_CHECKING:
    import socket

    import uvicorn
    from fastapi import FastAPI

    from pqcall.client.home import Home
    from pqcall.client.media_options import MediaOptions
    from pqcall.ui.bootstrap import BootstrapCodes

HOST = "127.0.0.1"
"""The only interface the page is served on."""
TOKEN_BYTES = 32
"""Random bytes in the access token."""


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``ui``."""
    ui = commands.add_parser(
        "ui",
        parents=[common],
        help="run the softphone with a web page in the browser",
        description="Run the softphone and serve its page on 127.0.0.1; open it in the"
        " browser. The printed link works once, within a minute; press Enter for a new one.",
    )
    ui.add_argument(
        "--port", type=port, default=0, metavar="PORT", help="TCP port (default: any free one)"
    )
    ui.add_argument(
        "--no-browser", action="store_true", help="print the link but do not open a browser"
    )
    ui.add_argument("--audio-in", metavar="SRC", default="default", help=AUDIO_IN_HELP)
    ui.add_argument("--audio-out", metavar="SINK", default="default", help=AUDIO_OUT_HELP)
    ui.set_defaults(handler=run_ui)


def port(text: str) -> int:
    """Parse ``--port``: 0 (any) to 65535.

    Raises:
        argparse.ArgumentTypeError: not a number in that range.
    """
    if not text.isdigit() or int(text) > MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 0-{MAX_PORT} (0: any)")
    return int(text)


def run_ui(args: argparse.Namespace) -> int:
    """``pqcall ui``."""
    from pqcall.client.media_options import MediaOptions

    runtime.setup_logging(args.verbose)
    home = open_home(args)
    media = MediaOptions(audio_in=args.audio_in, audio_out=args.audio_out)
    with bound_socket(args.port) as sock:
        return runtime.run(_ui(home, media, sock, not args.no_browser, Console()))


@contextlib.contextmanager
def bound_socket(port: int) -> Iterator[socket.socket]:
    """A TCP socket bound to 127.0.0.1:``port`` (0: any free port).

    Raises:
        PqcallError: the port is taken or cannot be bound.
    """
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise PqcallError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
        yield sock
    finally:
        sock.close()


def make_server(app: FastAPI) -> uvicorn.Server:
    """A uvicorn server for ``app`` that leaves Ctrl-C to the command's :class:`Interrupt`."""
    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    return QuietServer(config)


async def _ui(
    home: Home, media: MediaOptions, sock: socket.socket, open_browser: bool, console: Console
) -> int:
    import asyncio
    import secrets
    import webbrowser

    from pqcall.ui.app import create_app
    from pqcall.ui.bootstrap import BootstrapCodes
    from pqcall.ui.controller import Controller

    token = secrets.token_urlsafe(TOKEN_BYTES)
    codes = BootstrapCodes()
    controller = Controller(home, media=media)
    async with Interrupt() as interrupt:
        await controller.start()
        server = make_server(create_app(controller, token, bootstrap=codes, clock=time.monotonic))
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="ui server")
        stop = asyncio.create_task(interrupt.wait(), name="ui interrupt")
        links = asyncio.create_task(_new_links(codes, sock, console), name="ui links")
        try:
            while not server.started and not serving.done():
                await asyncio.sleep(0.02)
            if serving.done():
                serving.result()  # raises why it stopped
                return runtime.EXIT_FAILED
            url = link(sock, codes)
            console.say(f"pqcall ui for {home.path}: open {url}")
            console.say(
                "the link works once, within a minute; Enter prints a new one; Ctrl-C to stop"
            )
            if open_browser:
                await asyncio.to_thread(webbrowser.open, url)
            await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            links.cancel()
            await controller.close()
            server.should_exit = True
            await asyncio.gather(serving, stop, links, return_exceptions=True)
    return interrupt.exit_code if interrupt.is_set else runtime.EXIT_OK


def link(sock: socket.socket, codes: BootstrapCodes) -> str:
    """A one-time link to the page served on ``sock`` (never the session token)."""
    code = codes.issue(now=time.monotonic())
    return f"http://{HOST}:{sock.getsockname()[1]}/#code={code}"


async def _new_links(codes: BootstrapCodes, sock: socket.socket, console: Console) -> None:
    """Print a fresh link for each line typed on stdin, until it ends."""
    lines = runtime.LineReader()
    while await lines.readline() is not None:
        console.say(f"open {link(sock, codes)}")
