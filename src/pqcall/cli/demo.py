"""``pqcall demo``: a whole call on one machine, with nothing to configure.

It starts ``pqcall server`` as a child process (a temporary data directory,
127.0.0.1, free ports, no mDNS), registers alice and bob in two temporary
homes, and runs both phones in this process on one event loop: alice calls
bob playing ``alice.wav`` while bob answers and plays ``bob.wav`` back
(bundled speech, :mod:`pqcall.media.samples`). Both sides show the same SAS;
after ``--duration`` seconds alice hangs up, both sides' statistics are
printed side by side, and what each side heard is left in a WAV file. No
sound card and no network beyond loopback are needed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pqcall.cli import runtime
from pqcall.cli.calls import wait_connected
from pqcall.cli.options import seconds
from pqcall.cli.output import Console, statistics_table, status_text
from pqcall.cli.runtime import Interrupt
from pqcall.exceptions import CallError, ServerError

if TYPE_CHECKING:
    import asyncio
    import socket

    from pqcall.client.call import Call

T = TypeVar("T")

DEFAULT_DURATION_S = 10.0
SERVER_START_TIMEOUT_S = 30.0
"""How long the demo waits for its server to answer ``/health``."""
SERVER_STOP_TIMEOUT_S = 10.0
"""How long it waits for the server to exit after SIGTERM, before SIGKILL."""
CONNECT_TIMEOUT_S = 15.0
"""How long each phone may take to open its push connection."""
CALL_SETUP_TIMEOUT_S = 30.0
"""From dialling to audio flowing on both phones."""
HANGUP_TIMEOUT_S = 10.0
"""How long bob's side may take to hear of the hang-up."""
STATUS_INTERVAL_S = 0.5
SERVER_NAME = "pqcall-demo"
SAMPLES = "pqcall.media.samples"


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``demo``."""
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="a complete call between two phones on this machine (no setup, no sound card)",
        description="Start a server and two phones (alice, bob) on this machine, have alice call"
        " bob with recorded speech both ways, show the SAS, print both sides' statistics and"
        " write what each side received to WAV files.",
    )
    demo.add_argument(
        "--duration",
        type=seconds,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds of conversation (default: {DEFAULT_DURATION_S:g})",
    )
    demo.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where to write the received audio (default: a new folder in the temp directory)",
    )
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """``pqcall demo [--duration S] [--out DIR]``."""
    import tempfile

    runtime.setup_logging(args.verbose)
    out: Path = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="pqcall-demo-"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CallError(f"cannot create {out}: {exc.strerror}") from None
    return runtime.run(_demo(args.duration, out.absolute(), Console()))


async def _demo(duration_s: float, out: Path, console: Console) -> int:
    import importlib.resources
    import secrets
    import tempfile

    from pqcall.client.home import Home
    from pqcall.client.media_options import MediaOptions
    from pqcall.client.phone import Phone, register
    from pqcall.client.phone_callstate import CallState

    received = {"alice": out / "alice-received.wav", "bob": out / "bob-received.wav"}
    with (
        tempfile.TemporaryDirectory(prefix="pqcall-demo-") as scratch,
        importlib.resources.as_file(importlib.resources.files(SAMPLES) / "alice.wav") as alice_wav,
        importlib.resources.as_file(importlib.resources.files(SAMPLES) / "bob.wav") as bob_wav,
    ):
        work = Path(scratch)
        async with Interrupt() as interrupt:
            console.say("starting server…")
            async with demo_server(work / "server", work / "server.log") as url:
                console.say(f"server running at {url} (data in a temporary folder)")
                console.say("registering alice and bob…")
                secret = secrets.token_urlsafe(24)
                homes = {name: Home(work / name) for name in ("alice", "bob")}
                for name, home in homes.items():
                    # one at a time: two Argon2id derivations at once can deadlock in OpenSSL
                    await register(home, name, url, secret)
                bob = Phone(
                    homes["bob"],
                    passphrase=secret,
                    media=MediaOptions(audio_in=str(bob_wav), audio_out=str(received["bob"])),
                    auto_answer=True,
                )
                alice = Phone(
                    homes["alice"],
                    passphrase=secret,
                    media=MediaOptions(audio_in=str(alice_wav), audio_out=str(received["alice"])),
                )
                async with bob, alice:
                    if not await wait_connected(bob, alice, timeout_s=CONNECT_TIMEOUT_S):
                        raise ServerError("the phones could not connect to the demo server")
                    console.say("alice calls bob…")
                    ours = await alice.call("bob")
                    theirs = await _wait(bob.next_incoming(), "bob's phone did not ring")
                    console.say("bob answers…")
                    for call in (ours, theirs):
                        await _wait(call.wait_for(CallState.ACTIVE), "the call did not connect")
                        if call.state is not CallState.ACTIVE:
                            raise CallError(f"the demo call failed: {call.reason or call.state}")
                    _show_sas(ours, theirs, console)
                    if await _talk(ours, duration_s, console, interrupt):
                        console.say("interrupted: alice hangs up…")
                    else:
                        console.say(f"{duration_s:g} s up: alice hangs up…")
                    await ours.hangup()
                    await _wait(theirs.wait_ended(), "bob's phone did not hear the hang-up")
            console.say("server stopped")
    summaries = {"alice": ours.summary(), "bob": theirs.summary()}
    console.say("")
    console.say(statistics_table(summaries))
    console.say("")
    for name, path in received.items():
        console.say(f"{name} heard: {path}")
    if interrupt.is_set:
        return interrupt.exit_code
    is_ok = all(summary["result"] == "ended" for summary in summaries.values())
    return runtime.EXIT_OK if is_ok else runtime.EXIT_FAILED


def _show_sas(ours: Call, theirs: Call, console: Console) -> None:
    if ours.path is not None:
        host, port = ours.path.shown_address
        console.say(f"media path: {ours.path.label} ({host}:{port})")
    if ours.sas is not None and ours.sas == theirs.sas:
        console.say(f"SAS {ours.sas} on both phones: they match, no one is in the middle")
    else:
        console.warn(f"the SAS differ: alice sees {ours.sas}, bob sees {theirs.sas}")


async def _talk(call: Call, duration_s: float, console: Console, interrupt: Interrupt) -> bool:
    """Let the call run ``duration_s`` (status line on a terminal); True if Ctrl-C cut it short."""
    import asyncio

    from pqcall.client.phone_callstate import CallState

    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    while loop.time() < deadline and call.state is CallState.ACTIVE:
        step = min(STATUS_INTERVAL_S, deadline - loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupt.wait(), step)
        if interrupt.is_set:
            console.clear_status()
            return True
        stats = call.stats()
        elapsed = time.time() - call.answered if call.answered else 0.0
        path = call.path.label if call.path else None
        console.status(status_text(elapsed, path, stats.as_dict() if stats else None))
    console.clear_status()
    return False


async def _wait(awaitable: Awaitable[T], what: str) -> T:
    """Await ``awaitable`` for at most :data:`CALL_SETUP_TIMEOUT_S`.

    Raises:
        CallError: ``what`` happened instead (it timed out).
    """
    import asyncio

    try:
        return await asyncio.wait_for(awaitable, CALL_SETUP_TIMEOUT_S)
    except TimeoutError:
        raise CallError(what) from None


# ---------------------------------------------------------------- the server


@contextlib.asynccontextmanager
async def demo_server(data_dir: Path, log_path: Path) -> AsyncIterator[str]:
    """Run ``pqcall server`` on loopback for the block; yield its URL.

    Raises:
        ServerError: it exited or did not answer ``/health`` in time (the
            message quotes its last log line).
    """
    import asyncio
    import socket

    port = free_port(socket.SOCK_STREAM)
    relay_port = free_port(socket.SOCK_DGRAM)
    command = [
        sys.executable,
        "-m",
        "pqcall",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--relay-port",
        str(relay_port),
        "--no-mdns",
        "--data-dir",
        str(data_dir),
        "--name",
        SERVER_NAME,
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        # its own session: a Ctrl-C in the terminal reaches the demo, which stops it in order
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        await _wait_for_health(url, process, log_path)
        yield url
    finally:
        await _stop(process)


def free_port(kind: socket.SocketKind) -> int:
    """A port on 127.0.0.1 free right now for TCP (``SOCK_STREAM``) or UDP (``SOCK_DGRAM``)."""
    import socket

    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_for_health(url: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
    import asyncio

    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVER_START_TIMEOUT_S
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            if process.returncode is not None:
                raise ServerError(f"the demo server exited: {_last_line(log_path)}")
            try:
                response = await client.get(f"{url}/health")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if loop.time() > deadline:
                raise ServerError(
                    f"the demo server did not start in {SERVER_START_TIMEOUT_S:g} s:"
                    f" {_last_line(log_path)}"
                )
            await asyncio.sleep(0.05)


async def _stop(process: asyncio.subprocess.Process) -> None:
    import asyncio

    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), SERVER_STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _last_line(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return lines[-1] if lines else "no output"
