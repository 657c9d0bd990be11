"""``pqcall listen`` and ``pqcall call``: a phone in the terminal.

Both run one :class:`~pqcall.client.phone.Phone` on one event loop and follow
each call through its states (:mod:`pqcall.client.phone_callstate`) with a line per
step, the SAS to read aloud, a live status line while audio flows, and one
summary line (or, with ``--json``, the call's summary object) at the end.

On a terminal in the foreground, single keys act during a call
(:mod:`pqcall.cli.incall`); an incoming call rings the bell every
:data:`RING_BELL_INTERVAL_S` until it is answered or stops ringing. Ctrl-C
during a call hangs up; ``call`` then exits, ``listen`` keeps listening (Ctrl-C
while idle, or twice within :data:`SECOND_INTERRUPT_S`, quits).

Exit codes: 0 when the call was answered and ended normally, 1 when it was
declined, busy, missed or failed (or for any error), 130 after Ctrl-C (which
hangs up first).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
from typing import TYPE_CHECKING, Any, TypeVar

from pqcall.cli import runtime
from pqcall.cli.account import registered_config
from pqcall.cli.options import (
    add_json_option,
    add_media_options,
    add_passphrase_option,
    check_audio,
    media_options,
    open_home,
    passphrase,
    seconds,
)
from pqcall.cli.output import (
    Console,
    call_outcome,
    reconnecting_text,
    status_text,
    with_outcome,
)
from pqcall.cli.runtime import Interrupt, LineReader, race

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from pqcall.client.call import Call
    from pqcall.client.home import Home
    from pqcall.client.media_options import MediaOptions
    from pqcall.client.missed_calls import MissedCall
    from pqcall.client.phone import Phone

CONNECT_TIMEOUT_S = 10.0
"""How long ``listen`` waits for the push connection before saying it is still trying."""
STATUS_INTERVAL_S = 0.5
"""How often the status line is redrawn."""
RING_BELL_INTERVAL_S = 2.0
"""How often the terminal bell rings while an incoming call waits for an answer."""
SECOND_INTERRUPT_S = 2.0
"""A Ctrl-C this soon after the one that hung up a call quits ``listen``."""
YES = frozenset({"y", "yes"})
C = TypeVar("C")


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``listen`` and ``call``."""
    listen = commands.add_parser(
        "listen",
        parents=[common],
        help="stay online and answer calls",
        description="Stay online; ring on incoming calls and ask whether to accept them"
        " (unless --auto-answer).",
    )
    listen.add_argument(
        "--auto-answer", action="store_true", help="accept every incoming call at once"
    )
    listen.add_argument(
        "--silence-strangers",
        action="store_true",
        help="calls from callers not in your contacts do not ring (recorded as missed);"
        " pqcall blocked --silence-strangers on makes it the home's setting",
    )
    listen.add_argument(
        "--once",
        action="store_true",
        help="exit after the first call (code 0 if it was answered and ended normally)",
    )
    add_media_options(listen)
    add_passphrase_option(listen)
    add_json_option(listen, "each finished call")
    listen.set_defaults(handler=run_listen)

    call = commands.add_parser(
        "call",
        parents=[common],
        help="call someone",
        description="Call NAME; show ringing, the SAS to read aloud and live quality. The call"
        " ends on Ctrl-C, after --duration seconds of conversation, or when NAME hangs up.",
    )
    call.add_argument(
        "name", metavar="NAME", nargs="+", help="who to call (several names: a group call)"
    )
    call.add_argument(
        "--duration",
        type=seconds,
        metavar="SECONDS",
        help="hang up after this many seconds of conversation",
    )
    add_media_options(call)
    add_passphrase_option(call)
    add_json_option(call, "the finished call")
    call.set_defaults(handler=run_call)


# ---------------------------------------------------------------- listen


def run_listen(args: argparse.Namespace) -> int:
    """``pqcall listen``."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    registered_config(home)
    media = media_options(args)
    check_audio(media)
    secret = passphrase(args, home=home)
    return runtime.run(_listen(args, home, secret, media, Console(json_mode=args.json)))


async def _listen(
    args: argparse.Namespace, home: Home, secret: str, media: MediaOptions, console: Console
) -> int:
    import asyncio

    from pqcall.cli import group
    from pqcall.client.phone import Phone

    reader = LineReader()
    async with Interrupt() as interrupt:
        phone = Phone(
            home,
            passphrase=secret,
            media=media,
            auto_answer=args.auto_answer,
            silence_strangers=args.silence_strangers,
        )
        # before start: calls missed while away are told as soon as the events come in
        phone.on_missed(lambda missed: console.say(missed_call_line(missed)))
        try:
            await race(interrupt, phone.start())
            if interrupt.is_set:
                return interrupt.exit_code
            if not await race(interrupt, wait_connected(phone)):
                if interrupt.is_set:
                    return interrupt.exit_code
                console.say(f"not connected to {phone.server_url} yet; retrying in the background")
            phone.on_file(
                lambda view: console.say(f"file from {view.sender} waiting (pqcall inbox)")
            )
            mode = "answering every call" if args.auto_answer else "Ctrl-C to stop"
            console.say(f"listening as {phone.username} on {phone.server_url} ({mode})")
            loop = asyncio.get_running_loop()
            hung_up_at = -SECOND_INTERRUPT_S  # loop time Ctrl-C last hung up a call
            async with show_warnings(phone, console):
                while True:
                    call = await race(interrupt, group.next_call(phone))
                    if call is None:
                        return interrupt.exit_code
                    if group.is_group(call):
                        code = await group.take_group(call, args, console, interrupt, reader)  # type: ignore[arg-type]
                    else:
                        code = await _take(phone, call, args, console, interrupt, reader)  # type: ignore[arg-type]
                    if interrupt.is_set:
                        again = loop.time() - hung_up_at < SECOND_INTERRUPT_S
                        if args.once or again or interrupt.signum != signal.SIGINT:
                            return interrupt.exit_code
                        hung_up_at = loop.time()
                        interrupt.clear()  # Ctrl-C ended the call, not the phone
                        console.say(f"still listening as {phone.username} (Ctrl-C again to quit)")
                        continue
                    if args.once:
                        return code
        finally:
            await phone.close()


async def _take(
    phone: Phone,
    call: Call,
    args: argparse.Namespace,
    console: Console,
    interrupt: Interrupt,
    reader: LineReader,
) -> int:
    """Ring, ask, and follow one incoming call; return its exit code."""
    from pqcall.client.phone_callstate import CallState, is_terminal

    if is_terminal(call.state):  # a waiting call that ended while we were in another one
        console.say(f"missed call from {call.peer} ({call.reason or call.state})")
        return 1
    console.ring(f"incoming call from {call.peer} ({trust(call)})")
    if not args.auto_answer and call.state is CallState.INCOMING:
        answer = await ask(call, console, interrupt, reader)
        if call.state is CallState.INCOMING:
            if answer:
                await call.accept()
            else:
                await call.reject()
    await follow(call, console, interrupt, commands=reader)
    return finish(call, console, json_mode=args.json, quiet_failure=True)


def missed_call_line(missed: MissedCall) -> str:
    """``missed call from alice at 14:03`` (local time; the date too if not today);
    ``missed group call from alice at 14:03`` for a group invite."""
    when = time.localtime(missed.created)
    today = time.localtime()
    same_day = (when.tm_year, when.tm_yday) == (today.tm_year, today.tm_yday)
    stamp = time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", when)
    kind = "group call" if missed.is_group else "call"
    return f"missed {kind} from {missed.caller} at {stamp}"


def trust(call: Call) -> str:
    """How far ``call.peer``'s identity is trusted: verified, key saved, or new."""
    return {"verified": "verified", "pinned": "key saved"}.get(str(call.peer_trust), "NEW contact")


async def ask(call: Call, console: Console, interrupt: Interrupt, reader: LineReader) -> bool:
    """Ask whether to accept; False when declined, stdin ends, or the call stops ringing."""
    import asyncio

    from pqcall.client.phone_callstate import CallState

    console.prompt("accept? [y/N] ")
    line = asyncio.ensure_future(_answer(reader))
    stopped = asyncio.ensure_future(call.wait_for(CallState.CONNECTING))
    stop = asyncio.ensure_future(interrupt.wait())
    bell = asyncio.ensure_future(_ring_bell(console))
    try:
        await asyncio.wait({line, stopped, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (line, stopped, stop, bell):
            future.cancel()
        await asyncio.gather(line, stopped, stop, bell, return_exceptions=True)
    if not line.done() or line.cancelled():
        console.say("")  # end the prompt's line
        return False
    answer = line.result()
    if answer is None:
        console.say("")
        console.say("no answer on stdin: declining")
        return False
    return answer.strip().lower() in YES


async def _answer(reader: LineReader) -> str | None:
    """The answer line; a terminal is read only once we are its foreground job."""
    from pqcall.cli import incall

    if reader.is_terminal and reader.fd is not None:
        await incall.wait_foreground(reader.fd)
    return await reader.readline()


async def _ring_bell(console: Console) -> None:
    """The terminal bell every :data:`RING_BELL_INTERVAL_S` (the first rang with the line)."""
    import asyncio

    while True:
        await asyncio.sleep(RING_BELL_INTERVAL_S)
        console.bell()


# ---------------------------------------------------------------- call


def run_call(args: argparse.Namespace) -> int:
    """``pqcall call NAME``."""
    from pqcall.signaling.usernames import normalize

    if len(args.name) > 1:
        from pqcall.cli.group import run_group_call

        return run_group_call(args, [normalize(name) for name in args.name])
    name = normalize(args.name[0])
    home, secret, media = call_setup(args)
    return runtime.run(_call(args, name, home, secret, media, Console(json_mode=args.json)))


def call_setup(args: argparse.Namespace) -> tuple[Home, str, MediaOptions]:
    """What ``pqcall call`` needs before its loop: logging, the home, audio and the passphrase."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    registered_config(home)
    media = media_options(args)
    check_audio(media)
    return home, passphrase(args, home=home), media


async def call_frame(
    home: Home,
    secret: str,
    media: MediaOptions,
    console: Console,
    place: Callable[[Phone], Awaitable[C]],
    attend: Callable[[C, Interrupt], Awaitable[tuple[bool, int]]],
) -> int:
    """The frame of an outgoing call (1:1 or group); returns the exit code.

    Starts a phone under Ctrl-C handling, shows its security warnings, places
    the call with ``place`` (a refused key change exits 1, the warning says it
    all), then ``attend`` follows and finishes it, returning whether Ctrl-C ended
    it and the call's own exit code. The phone is closed on every way out.
    """
    from pqcall.client.phone import Phone
    from pqcall.exceptions import KeyChangedError

    async with Interrupt() as interrupt:
        phone = Phone(home, passphrase=secret, media=media)
        try:
            await race(interrupt, phone.start())
            if interrupt.is_set:
                return interrupt.exit_code
            async with show_warnings(phone, console):
                try:
                    call = await race(interrupt, place(phone))
                except KeyChangedError:
                    return runtime.EXIT_FAILED  # the warning says it all
                if call is None:
                    return interrupt.exit_code
                interrupted, code = await attend(call, interrupt)
                return interrupt.exit_code if interrupted else code
        finally:
            await phone.close()


async def _call(
    args: argparse.Namespace,
    name: str,
    home: Home,
    secret: str,
    media: MediaOptions,
    console: Console,
) -> int:
    async def attend(call: Call, interrupt: Interrupt) -> tuple[bool, int]:
        interrupted = await follow(
            call, console, interrupt, duration_s=args.duration, commands=LineReader()
        )
        return interrupted, finish(call, console, json_mode=args.json, quiet_failure=False)

    return await call_frame(home, secret, media, console, lambda phone: phone.call(name), attend)


# ---------------------------------------------------------------- both


async def follow(
    call: Call,
    console: Console,
    interrupt: Interrupt,
    *,
    duration_s: float | None = None,
    commands: LineReader | None = None,
) -> bool:
    """Show ``call`` until it ends; hang up on Ctrl-C or after ``duration_s`` active.

    While the call is active, commands from ``commands`` are carried out
    (:mod:`pqcall.cli.incall`: mute, switch devices, hang up): single keys when
    it is a terminal (in cbreak mode, restored before returning), else lines.

    Returns:
        Whether Ctrl-C ended it.
    """
    import asyncio

    from pqcall.cli import incall
    from pqcall.client.phone_callstate import CallState, is_terminal

    loop = asyncio.get_running_loop()
    shown: set[CallState] = set()
    active_since: float | None = None  # loop time the call became active
    typed: asyncio.Future[str | None] | None = None  # the next command line, while active
    reconnecting = False  # whether the last line said nothing comes from the peer
    peer_muted = False  # whether the last line said the peer muted
    peer_disguised = False  # whether the last line said the peer's voice is disguised
    keyboard = (
        incall.Keyboard(commands.fd, commands)
        if commands is not None and commands.is_terminal and commands.fd is not None
        else None
    )
    try:
        while not is_terminal(call.state):
            state = call.state
            if state not in shown:
                shown.add(state)
                announce(call, console)
                if (
                    state is CallState.ACTIVE
                    and commands is not None
                    and incall.is_foreground_terminal(commands.fd)
                ):
                    console.say(incall.KEYS_HELP)
            timeout: float | None = None
            if state is CallState.ACTIVE:
                if active_since is None:
                    active_since = loop.time()
                timeout = STATUS_INTERVAL_S
                if duration_s is not None:
                    remaining = active_since + duration_s - loop.time()
                    if remaining <= 0:
                        console.clear_status()
                        await call.hangup()
                        break
                    timeout = min(timeout, remaining)
                if typed is None and commands is not None:
                    typed = asyncio.ensure_future(
                        commands.readline()
                        if keyboard is None
                        else incall.next_command(keyboard, console)
                    )
            change = asyncio.ensure_future(call.wait_for(*(s for s in CallState if s is not state)))
            stop = asyncio.ensure_future(interrupt.wait())
            waiting: set[asyncio.Future[Any]] = {change, stop}
            if typed is not None:
                waiting.add(typed)
            try:
                await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in (change, stop):
                    future.cancel()
                await asyncio.gather(change, stop, return_exceptions=True)
            if interrupt.is_set:
                console.clear_status()
                console.say("hanging up…")
                await call.hangup()
                return True
            if typed is not None and typed.done():
                line, typed = typed.result(), None
                if line is None:
                    commands = None  # stdin ended: no more commands, the call goes on
                elif await incall.run_command(call, console, line, keys=keyboard is not None):
                    break
            if call.state is CallState.ACTIVE and CallState.ACTIVE in shown:
                if call.is_peer_muted != peer_muted:
                    peer_muted = call.is_peer_muted
                    console.say(f"{call.peer} {'muted' if peer_muted else 'unmuted'}")
                if call.is_peer_voice_disguised != peer_disguised:
                    peer_disguised = call.is_peer_voice_disguised
                    still = "" if peer_disguised else "no longer "
                    console.say(f"{call.peer}'s voice is {still}disguised")
                if call.is_reconnecting != reconnecting:  # a line, also when not on a terminal
                    reconnecting = call.is_reconnecting
                    console.say(
                        reconnecting_text(call.peer)
                        if reconnecting
                        else f"audio from {call.peer} is back"
                    )
                console.status(live_status(call))
    finally:
        if typed is not None:
            typed.cancel()
            await asyncio.gather(typed, return_exceptions=True)
        if keyboard is not None:
            keyboard.close()  # the terminal as it was, also on errors and cancellation
    console.clear_status()
    return False


def announce(call: Call, console: Console) -> None:
    """The line for the state ``call`` just entered."""
    from pqcall.client.phone_callstate import CallState, Direction

    state = call.state
    if state is CallState.OUTGOING and call.peer_offline:
        console.say(f"{call.peer} is offline; ringing in case they come back…")
    elif state is CallState.OUTGOING:
        console.say(f"ringing {call.peer}…")
    elif state is CallState.CONNECTING:
        who = f"{call.peer} answered" if call.direction is Direction.OUTGOING else "accepted"
        console.say(f"{who}; connecting…")
    elif state is CallState.ACTIVE:
        if call.path is not None:
            host, port = call.path.shown_address
            console.say(
                f"connected: {call.path.label} path to {host}:{port}"
                f" (found in {call.path.elapsed_ms:.0f} ms)"
            )
        console.say(f"SAS: read this aloud: {call.sas}  ({call.peer} must see the same)")


def live_status(call: Call) -> str:
    """The status line of an active call."""
    stats = call.stats()
    elapsed = time.time() - call.answered if call.answered else 0.0
    line = status_text(
        elapsed,
        call.path.label if call.path else None,
        stats.as_dict() if stats else None,
        peer=call.peer,
    )
    processing = call.processing_report()
    if processing is not None and processing.echo_cancelled:
        line += f"  echo cancelled {processing.erle_db:.0f} dB"
    if call.is_peer_muted:
        line = f"{call.peer} MUTED  {line}"
    return f"MUTED  {line}" if call.is_muted else line


def finish(call: Call, console: Console, *, json_mode: bool, quiet_failure: bool) -> int:
    """Print how ``call`` ended (and its JSON); return its exit code.

    Args:
        quiet_failure: a call that was not answered is news, not an error
            (``listen``); otherwise its line goes to stderr.
    """
    from pqcall.client.phone_callstate import CallState

    summary = call.summary()
    is_ok = call.state is CallState.ENDED and call.answered is not None
    line = call_outcome(summary)  # "no answer: bob was offline" when bob was
    if is_ok or quiet_failure:
        console.say(line)
    else:
        console.clear_status()
        print(line, file=console.err, flush=True)
    if json_mode:
        console.emit_json(with_outcome(summary))
    return runtime.EXIT_OK if is_ok else runtime.EXIT_FAILED


async def wait_connected(*phones: Phone, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Wait until every phone's push connection is up (so calls reach it); False on timeout."""
    import asyncio

    try:
        await asyncio.gather(*(phone.wait_connected(timeout_s) for phone in phones))
    except TimeoutError:
        return False
    return True


@contextlib.asynccontextmanager
async def show_warnings(phone: Phone, console: Console) -> AsyncIterator[None]:
    """Print the phone's security warnings loudly while the block runs (and any left after)."""
    import asyncio

    async def pump() -> None:
        while True:
            warning = await phone.warnings.get()
            console.warn(warning.message)

    task = asyncio.create_task(pump(), name="security warnings")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        while not phone.warnings.empty():
            console.warn(phone.warnings.get_nowait().message)
