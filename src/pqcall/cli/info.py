"""``pqcall contacts``, ``verify``, ``history`` and ``audio-devices``: what this phone knows.

``contacts`` also shows each contact's presence (online, last seen, or unknown
when the server does not share it: it shows presence only to call partners,
docs/server.md#presence), from one login and one ``GET /presence``; no phone
is left running. Without a passphrase source or a reachable server the list is
shown without presence, with one line saying why.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pqcall.cli import runtime
from pqcall.cli.account import registered_config
from pqcall.cli.options import (
    add_json_option,
    add_passphrase_option,
    open_home,
    passphrase,
    positive_int,
)
from pqcall.cli.output import (
    MISSING,
    Console,
    clock,
    outcome_word,
    render_table,
    to_json,
    with_outcome,
)
from pqcall.exceptions import LocalProtocolError

if TYPE_CHECKING:
    from pqcall.client.contacts import Contact
    from pqcall.client.home import AccountConfig, Home
    from pqcall.crypto.identity import IdentityPublicKey
    from pqcall.crypto.keystore import AccountSecrets
    from pqcall.media.devices import DeviceInfo

SAFETY_GROUPS_PER_LINE = 4
"""A safety number is 12 groups of five digits: three lines of four."""


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``contacts``, ``verify``, ``history`` and ``audio-devices``."""
    contacts = commands.add_parser(
        "contacts",
        parents=[common],
        help="list contacts: presence, fingerprint, verified, key changes, last call",
    )
    contacts.add_argument(
        "--no-presence", action="store_true", help="do not ask the server who is online"
    )
    add_passphrase_option(contacts)
    add_json_option(contacts, "one object per contact")
    contacts.set_defaults(handler=run_contacts)

    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="show the safety number with NAME; --confirm marks NAME verified",
        description="Show the safety number of you and NAME. Compare it with NAME in person"
        " or on a call (it must be the same on both phones), then mark NAME verified with"
        " --confirm. After a key change, compare the new number and accept the new key with"
        " --accept-new-key.",
    )
    verify.add_argument("name", metavar="NAME", help="the contact")
    verify.add_argument(
        "--confirm", action="store_true", help="you compared the number: mark NAME verified"
    )
    verify.add_argument(
        "--accept-new-key",
        action="store_true",
        help="pin NAME's changed key (only after comparing the new safety number)",
    )
    add_passphrase_option(verify)
    verify.set_defaults(handler=run_verify)

    history = commands.add_parser("history", parents=[common], help="list past calls")
    add_json_option(history, "one object per call")
    history.add_argument(
        "--limit", type=positive_int, metavar="N", help="only the N most recent calls"
    )
    history.set_defaults(handler=run_history)

    devices = commands.add_parser(
        "audio-devices", parents=[common], help="list sound devices for --audio-in / --audio-out"
    )
    add_json_option(devices, "one object per device")
    devices.set_defaults(handler=run_devices)


# ---------------------------------------------------------------- contacts


def run_contacts(args: argparse.Namespace) -> int:
    """``pqcall contacts [--json]``."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    contacts = home.contacts().list()
    console = Console(json_mode=args.json)
    seen = None if args.no_presence or not contacts else _presence(args, home, contacts, console)
    if args.json:
        for contact in contacts:
            record = contact.to_json()
            if seen is not None:
                record["presence"], record["last_seen_unix"] = _presence_of(seen, contact.name)
            console.emit_json(record)
        return runtime.EXIT_OK
    if not contacts:
        console.say(f"no contacts yet in {home.path}: they are added on the first call")
        return runtime.EXIT_OK
    headers = ["name", "fingerprint", "verified", "warning", "last call"]
    rows = [
        [
            contact.name,
            contact.fingerprint,
            "yes" if contact.verified else "no",
            "KEY CHANGED" if contact.key_changed is not None else "",
            local_time(contact.last_call),
        ]
        for contact in contacts
    ]
    if seen is not None:
        headers.insert(1, "presence")
        for row, contact in zip(rows, contacts, strict=True):
            row.insert(1, presence_text(*_presence_of(seen, contact.name), now=time.time()))
    console.say(render_table(headers, rows))
    for contact in contacts:
        if contact.key_changed is not None:
            console.warn(
                f"{contact.name}'s identity key changed (new fingerprint"
                f" {contact.key_changed.fingerprint}); calls with {contact.name} are refused"
                f" until you compare the safety number and accept it:"
                f" pqcall verify {contact.name}"
            )
    return runtime.EXIT_OK


PresenceMap = dict[str, tuple[bool, float | None]]
"""Username -> (online, last seen unix time or None), for the names the server shares."""


def _presence(
    args: argparse.Namespace, home: Home, contacts: list[Contact], console: Console
) -> PresenceMap | None:
    """What the server says of ``contacts``; None (and a line why) when it cannot be asked."""
    import asyncio

    from pqcall.exceptions import KeystoreError, ServerError, WrongPassphrase

    config = home.load_config()
    if config is None:
        return None
    try:
        secret = passphrase(args, home=home)
        account = home.unlock(secret)
    except WrongPassphrase:
        raise
    except KeystoreError as exc:
        console.note(f"presence not shown: {exc}")
        return None
    try:
        return asyncio.run(_ask_presence(home, config, account, [c.name for c in contacts]))
    except ServerError as exc:
        console.note(f"presence not shown: {exc}")
        return None


async def _ask_presence(
    home: Home, config: AccountConfig, account: AccountSecrets, names: list[str]
) -> PresenceMap:
    from pqcall.client.api import ServerApi
    from pqcall.client.server_cert import server_verify

    async with ServerApi(
        config.server_url,
        config.username,
        account.identity,
        server_name=config.server_name,
        verify=server_verify(home),
        device_key=account.device_key,
    ) as api:
        shared = await api.presence(names)
    return {entry.username: (entry.online, entry.last_seen) for entry in shared}


def _presence_of(seen: PresenceMap, name: str) -> tuple[str, float | None]:
    """``("online" | "offline" | "unknown", last seen)`` of ``name``."""
    if name not in seen:
        return "unknown", None
    online, last_seen = seen[name]
    return ("online" if online else "offline"), last_seen


def presence_text(state: str, last_seen: float | None, *, now: float) -> str:
    """``online``, ``last seen 5 min ago`` (``3 h``, ``2 days``), ``offline`` or ``unknown``."""
    if state != "offline" or last_seen is None:
        return state
    minutes = max(0.0, now - last_seen) / 60
    if minutes < 60:
        return f"last seen {max(5, round(minutes / 5) * 5)} min ago"
    if minutes < 48 * 60:
        return f"last seen {round(minutes / 60)} h ago"
    return f"last seen {round(minutes / (24 * 60))} days ago"


# ---------------------------------------------------------------- verify


def run_verify(args: argparse.Namespace) -> int:
    """``pqcall verify NAME [--confirm] [--accept-new-key]``."""
    from pqcall.signaling.usernames import normalize

    runtime.setup_logging(args.verbose)
    name = normalize(args.name)
    home = open_home(args)
    config = registered_config(home)
    if name == config.username:
        raise LocalProtocolError("that is you: verify the people you call")
    secret = passphrase(args)
    account = home.unlock(secret)
    our_identity = account.identity.public_key()
    contact = home.contacts().get(name)
    console = Console()
    if contact is None:
        console.say(f"{name} is not a contact yet: fetching their key from {config.server_url}")
        runtime.run(_pin_from_server(home, config, account, name))
        contact = home.contacts().get(name)
        if contact is None:  # the lookup pins it; this would be a library bug
            raise LocalProtocolError(f"no contact named {name}")
    return _verify(home, config.username, our_identity, contact, args, console)


async def _pin_from_server(
    home: Home, config: AccountConfig, account: AccountSecrets, name: str
) -> int:
    """Pin ``name``'s identity from the server on first use (a login, no phone, no events)."""
    from pqcall.client.api import ServerApi
    from pqcall.client.peers import check_peer
    from pqcall.client.server_cert import server_verify

    identity = account.identity
    async with ServerApi(
        config.server_url,
        config.username,
        identity,
        server_name=config.server_name,
        verify=server_verify(home),
        device_key=account.device_key,
    ) as api:
        await check_peer(api, home.contacts(), name)
    return runtime.EXIT_OK


def _verify(
    home: Home,
    our_name: str,
    our_identity: IdentityPublicKey,
    contact: Contact,
    args: argparse.Namespace,
    console: Console,
) -> int:
    contacts = home.contacts()
    name = contact.name
    if contact.key_changed is not None:
        console.warn(
            f"{name}'s identity key changed: the server now presents fingerprint"
            f" {contact.key_changed.fingerprint}, you saved {contact.fingerprint}"
        )
        number = contacts.safety_number(our_name, our_identity, name, changed_key=True)
        console.say(f"safety number of {our_name} and {name} with {name}'s NEW key:")
        console.say(format_safety_number(number))
        if not args.accept_new_key:
            console.say(
                f"compare it with {name} in person or by another channel; only if it matches:"
                f" pqcall verify {name} --accept-new-key"
            )
            return runtime.EXIT_FAILED if args.confirm else runtime.EXIT_OK
        contact = contacts.accept_new_key(name)
        console.say(f"accepted {name}'s new key ({contact.fingerprint}); not verified yet")
    elif args.accept_new_key:
        raise LocalProtocolError(f"no key change recorded for {name}")
    else:
        number = contacts.safety_number(our_name, our_identity, name)
        console.say(f"safety number of {our_name} and {name}:")
        console.say(format_safety_number(number))
        console.say(f"{name}'s fingerprint: {contact.fingerprint}")
    if args.confirm:
        contact = contacts.mark_verified(name)
        console.say(f"{name} is now verified")
    elif contact.verified:
        console.say(f"{name} is verified")
    else:
        console.say(
            f"{name} is not verified: compare the number with {name} (it must be the same"
            f" on both phones), then: pqcall verify {name} --confirm"
        )
    return runtime.EXIT_OK


def format_safety_number(number: str) -> str:
    """A safety number as indented lines of :data:`SAFETY_GROUPS_PER_LINE` groups."""
    groups = number.split()
    lines = [
        " ".join(groups[start : start + SAFETY_GROUPS_PER_LINE])
        for start in range(0, len(groups), SAFETY_GROUPS_PER_LINE)
    ]
    return "\n".join(f"  {line}" for line in lines)


# ---------------------------------------------------------------- history


def run_history(args: argparse.Namespace) -> int:
    """``pqcall history [--json] [--limit N]``."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    history = home.history()
    records = history.list(args.limit)
    console = Console(json_mode=args.json)
    if args.json:
        for record in records:
            console.emit_json(with_outcome(record))
    elif not records:
        console.say("no calls yet")
    else:
        console.say(
            render_table(
                ["when", "peer", "direction", "outcome", "duration", "path", "MOS"],
                [history_row(record) for record in records],
            )
        )
    if history.skipped:
        console.say(f"({history.skipped} damaged line(s) in {history.path} skipped)")
    return runtime.EXIT_OK


def history_row(record: Mapping[str, Any]) -> list[str]:
    """One call of the history as table cells."""
    started = record.get("started_unix")
    duration = record.get("duration_s")
    mos = record.get("mos")
    return [
        local_time(started if isinstance(started, int | float) else None),
        str(record.get("peer", MISSING)),
        str(record.get("direction", MISSING)),
        outcome_word(record),
        clock(duration) if isinstance(duration, int | float) and duration else MISSING,
        str(record.get("path") or MISSING),
        f"{mos:.1f}" if isinstance(mos, int | float) and record.get("path") else MISSING,
    ]


def local_time(unix: float | None) -> str:
    """Unix time as local ``YYYY-MM-DD HH:MM``, or ``never``."""
    if unix is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix))


# ---------------------------------------------------------------- devices


def run_devices(args: argparse.Namespace) -> int:
    """``pqcall audio-devices [--json]``: PortAudio's devices, then PulseAudio's ``pulse:NAME``."""
    from pqcall.media.devices import list_devices
    from pqcall.media.pulse_devices import pulse_devices

    runtime.setup_logging(args.verbose)
    devices = [{"spec": str(device.index), **_device_fields(device)} for device in list_devices()]
    devices += [
        {
            "spec": device.spec,
            "index": None,
            "name": device.name,
            "host_api": PULSE_API,
            "input_channels": device.channels if device.kind == "input" else 0,
            "output_channels": device.channels if device.kind == "output" else 0,
            "default_samplerate_hz": device.samplerate_hz,
            "is_default_input": device.is_default and device.kind == "input",
            "is_default_output": device.is_default and device.kind == "output",
        }
        for device in pulse_devices("input") + pulse_devices("output")
    ]
    console = Console(json_mode=args.json)
    if args.json:  # one array, so "none" is ``[]`` rather than nothing
        print(to_json(devices), file=console.out)
        return runtime.EXIT_OK
    if not devices:
        console.say("no sound devices")
    else:
        rows = [
            [
                MISSING if device["index"] is None else str(device["index"]),
                device["spec"] if device["index"] is None else device["name"],
                device["host_api"],
                str(device["input_channels"]),
                str(device["output_channels"]),
                f"{device['default_samplerate_hz']:.0f}",
                " ".join(
                    word
                    for word, is_default in (
                        ("in", device["is_default_input"]),
                        ("out", device["is_default_output"]),
                    )
                    if is_default
                ),
            ]
            for device in devices
        ]
        console.say(render_table(["index", "name", "api", "in", "out", "Hz", "default"], rows))
    console.say(
        "pick one with --audio-in/--audio-out INDEX, NAME or pulse:NAME (PulseAudio's, listed"
        " live); without a device: --audio-in tone:440, silence or a WAV file; --audio-out"
        " null or a WAV file"
    )
    return runtime.EXIT_OK


PULSE_API = "PulseAudio"
"""The ``api`` of a PulseAudio sink or source in ``pqcall audio-devices``."""


def _device_fields(device: DeviceInfo) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(device)
