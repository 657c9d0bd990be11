"""Group calls on the command line: ``pqcall call A B C`` and group invites under ``listen``.

``pqcall call bob carol dave`` (more than one name) starts a group call with
everyone invited and shows the roster (each member's state, trust and loss) and
the group code, which every participant's screen shows alike when nobody was
added or swapped. While it runs, a line ``+ NAME`` invites someone, ``-`` leaves,
``m`` mutes or unmutes. It ends on ``-``, Ctrl-C, after ``--duration`` seconds, or
when everyone else has left. ``--json`` prints the call as one object
(:func:`pqcall.client.group_summary.group_summary`).

``pqcall listen`` rings on a group invite as on a call (``--auto-answer`` joins).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from pqcall.cli import runtime
from pqcall.cli.output import Console
from pqcall.cli.runtime import Interrupt, LineReader, race

if TYPE_CHECKING:
    from pqcall.client.call import Call
    from pqcall.client.group_call import GroupCall
    from pqcall.client.home import Home
    from pqcall.client.media_options import MediaOptions
    from pqcall.client.phone import Phone

STATUS_INTERVAL_S = 1.0


def run_group_call(args: argparse.Namespace, names: list[str]) -> int:
    """``pqcall call A B ...`` with more than one name."""
    from pqcall.cli.calls import call_setup

    home, secret, media = call_setup(args)
    console = Console(json_mode=args.json)
    return runtime.run(_group_call(args, names, home, secret, media, console))


async def _group_call(
    args: argparse.Namespace,
    names: list[str],
    home: Home,
    secret: str,
    media: MediaOptions,
    console: Console,
) -> int:
    from pqcall.cli.calls import call_frame

    async def place(phone: Phone) -> GroupCall:
        call = await phone.group_call(names)
        console.say(f"group call {call.call_id[:8]}: inviting {', '.join(names)}")
        return call

    async def attend(call: GroupCall, interrupt: Interrupt) -> tuple[bool, int]:
        interrupted = await follow_group(
            call, console, interrupt, duration_s=args.duration, commands=LineReader()
        )
        return interrupted, finish_group(call, console, json_mode=args.json)

    return await call_frame(home, secret, media, console, place, attend)


async def next_call(phone: Phone) -> Call | GroupCall:
    """The next incoming 1:1 call or group invite, whichever comes first."""
    one = asyncio.ensure_future(phone.next_incoming())
    group = asyncio.ensure_future(phone.next_group_invite())
    try:
        done, _ = await asyncio.wait({one, group}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (one, group):
            if not future.done():
                future.cancel()
    if one in done:
        if group.done() and not group.cancelled():
            phone._group_invites.put_nowait(group.result())  # not lost: next time
        return one.result()
    return group.result()


def state_text(state: str) -> str:
    """A roster state as the roster line shows it (``no_answer`` -> ``no answer``)."""
    return state.replace("_", " ")


def is_group(call: object) -> bool:
    """Whether ``call`` is a group call."""
    from pqcall.client.group_call import GroupCall

    return isinstance(call, GroupCall)


async def take_group(
    call: GroupCall,
    args: argparse.Namespace,
    console: Console,
    interrupt: Interrupt,
    reader: LineReader,
) -> int:
    """Ring for a group invite, ask (unless joined already), follow; return the exit code."""
    others = [m.name for m in call.view.members if m.name != call.context.username]
    console.ring(f"group call from {call.view.creator} with {', '.join(others)}")
    if call.state == "invited":
        console.prompt("join? [y/N] ")
        line = await race(interrupt, _answer_or_end(call, reader))
        if call.is_ended:  # it rang out (or ended) before we answered
            console.say(f"group call from {call.view.creator}: {call.reason}")
            return finish_group(call, console, json_mode=args.json)
        if line is None or not line.strip().lower().startswith("y"):
            await call.decline()
            console.say("declined")
            return runtime.EXIT_FAILED
        await call.accept()
    await follow_group(call, console, interrupt, duration_s=None, commands=reader)
    return finish_group(call, console, json_mode=args.json)


async def _answer_or_end(call: GroupCall, reader: LineReader) -> str | None:
    """The line typed, or None when the call ends here first (the invitation rang out)."""
    typed = asyncio.ensure_future(reader.readline())
    ended = asyncio.ensure_future(call.wait_ended())
    try:
        await asyncio.wait({typed, ended}, return_when=asyncio.FIRST_COMPLETED)
        return typed.result() if typed.done() and not call.is_ended else None
    finally:
        for future in (typed, ended):
            future.cancel()


async def follow_group(
    call: GroupCall,
    console: Console,
    interrupt: Interrupt,
    *,
    duration_s: float | None,
    commands: LineReader | None,
) -> bool:
    """Show the roster until the call ends here; returns whether Ctrl-C ended it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    typed: asyncio.Future[str | None] | None = None
    shown: dict[str, str] = {}
    code_shown: str | None = None
    ended = asyncio.ensure_future(call.wait_ended())
    try:
        while not call.is_ended:
            if typed is None and commands is not None:
                typed = asyncio.ensure_future(commands.readline())
            timeout = STATUS_INTERVAL_S
            if duration_s is not None:
                remaining = started + duration_s - loop.time()
                if remaining <= 0:
                    break
                timeout = min(timeout, remaining)
            stop = asyncio.ensure_future(interrupt.wait())
            waiting: set[asyncio.Future[Any]] = {ended, stop}
            if typed is not None:
                waiting.add(typed)
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if interrupt.is_set:
                console.clear_status()
                await call.leave()
                return True
            if typed is not None and typed.done():
                line, typed = typed.result(), None
                if line is None:
                    commands = None
                elif await _command(call, console, line.strip()):
                    break
            for member in call.view.members:
                if member.name != call.context.username and shown.get(member.name) != member.state:
                    shown[member.name] = member.state
                    console.say(f"{member.name}: {state_text(member.state)}")
            if shown and not any(state in ("invited", "joined") for state in shown.values()):
                break  # everyone else left or said no
            if call.group_code is not None and call.group_code != code_shown:
                code_shown = call.group_code
                console.say(f"group code {code_shown} (compare it with the others)")
            console.status(_status(call))
    finally:
        if typed is not None:
            typed.cancel()
        console.clear_status()
    await call.leave()
    ended.cancel()
    return False


async def _command(call: GroupCall, console: Console, line: str) -> bool:
    """Carry out one typed line; True when it leaves the call."""
    from pqcall.exceptions import PqcallError

    if line == "-":
        return True
    if line.startswith("+"):
        name = line[1:].strip()
        try:
            await call.invite(name)
            console.say(f"invited {name}")
        except PqcallError as exc:
            console.say(f"could not invite {name}: {exc}")
    elif line == "m":
        muted = not (call.media is not None and call.media.pipeline.is_muted)
        call.set_muted(muted)
        console.say("muted" if muted else "unmuted")
    elif line:
        console.say("type '+ NAME' to invite, '-' to leave, 'm' to mute")
    return False


def _status(call: GroupCall) -> str:
    from pqcall.client.group_summary import group_summary

    parts = []
    for entry in group_summary(call)["participants"]:
        if entry["state"] != "joined":
            continue
        loss = entry["loss_percent"]
        heard = "" if loss is None else f" {loss:.0f}%"
        parts.append(f"{entry['name']}{'' if entry['has_key'] else ' (no key yet)'}{heard}")
    return "in call with " + (", ".join(parts) if parts else "nobody yet")


def finish_group(call: GroupCall, console: Console, *, json_mode: bool) -> int:
    """Say how the call ended (and print its JSON); 0 if someone was heard."""
    from pqcall.client.group_summary import group_summary

    summary = group_summary(call)
    heard = [p["name"] for p in summary["participants"] if p["packets_received"]]
    console.say(
        f"group call ended ({call.reason}); heard {', '.join(heard) if heard else 'nobody'}"
    )
    if json_mode:
        console.emit_json(summary)
    return runtime.EXIT_OK if heard else runtime.EXIT_FAILED
