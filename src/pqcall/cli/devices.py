"""``pqcall link``, ``devices``, ``unlink``, ``rotate-key``, ``recover``: an account's devices.

Thin: every command calls :mod:`pqcall.client.account_devices` or
:mod:`pqcall.client.account_setup` (docs/protocol.md "Accounts and devices").

- ``pqcall link NAME --server URL`` on the new device (an empty home) shows a
  code and waits; ``pqcall link --approve CODE`` on a device of the account
  adds it.
- ``pqcall devices [--json]``: the account's linked devices (the home's list,
  brought up to date with the server's). Sound devices are ``pqcall audio-devices``.
- ``pqcall unlink DEVICE`` (a name or the first digits of an id), ``pqcall
  rotate-key`` (a new key for this device).
- ``pqcall recover NAME --server URL``: the recovery words (read from stdin,
  or asked for) sign a new account key; contacts see a key change.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

from pqcall.cli import runtime
from pqcall.cli.options import add_json_option, add_passphrase_option, open_home, passphrase
from pqcall.cli.output import Console, to_json
from pqcall.exceptions import CallError, NoAccount

if TYPE_CHECKING:
    from pqcall.client.api import ServerApi
    from pqcall.client.home import AccountConfig, Home
    from pqcall.crypto.keystore import AccountSecrets


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``link``, ``devices``, ``unlink``, ``rotate-key`` and ``recover``."""
    link = commands.add_parser(
        "link",
        parents=[common],
        help="link this home as a new device of an account, or approve one (--approve)",
        description="On the new device: pqcall link NAME --server URL shows a code. On a device"
        " of the account: pqcall link --approve CODE adds the new device.",
    )
    link.add_argument("name", metavar="NAME", nargs="?", help="the account to join (new device)")
    link.add_argument("--server", metavar="URL", help="the account's server (new device)")
    link.add_argument("--approve", metavar="CODE", help="the code the new device shows")
    link.add_argument("--device-name", metavar="NAME", help="this device's name in the list")
    add_passphrase_option(link)
    link.set_defaults(handler=run_link)

    devices = commands.add_parser(
        "devices", parents=[common], help="list the account's linked devices"
    )
    add_passphrase_option(devices)
    add_json_option(devices, "one object per device")
    devices.set_defaults(handler=run_devices)

    unlink = commands.add_parser(
        "unlink", parents=[common], help="remove a device from the account's list"
    )
    unlink.add_argument("device", metavar="DEVICE", help="its name, or the first digits of its id")
    add_passphrase_option(unlink)
    unlink.set_defaults(handler=run_unlink)

    rotate = commands.add_parser(
        "rotate-key", parents=[common], help="give this device a new key (contacts follow quietly)"
    )
    add_passphrase_option(rotate)
    rotate.set_defaults(handler=run_rotate)

    recover = commands.add_parser(
        "recover",
        parents=[common],
        help="get an account back with its recovery words (a new key: contacts are warned)",
    )
    recover.add_argument("name", metavar="NAME", help="the account to recover")
    recover.add_argument("--server", metavar="URL", required=True, help="the account's server")
    recover.add_argument("--device-name", metavar="NAME", help="this device's name in the list")
    add_passphrase_option(recover)
    recover.set_defaults(handler=run_recover)


# ---------------------------------------------------------------- link


def run_link(args: argparse.Namespace) -> int:
    """``pqcall link NAME --server URL`` or ``pqcall link --approve CODE``."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    if args.approve is not None:
        if args.name is not None or args.server is not None:
            raise CallError("--approve takes only the code: pqcall link --approve CODE")
        return _with_account(args, home, _approve)
    if args.name is None or args.server is None:
        raise CallError(
            "on the new device: pqcall link NAME --server URL;"
            " on a device of the account: pqcall link --approve CODE"
        )
    return runtime.run(_link_new(args, home, Console()))


async def _link_new(args: argparse.Namespace, home: Home, console: Console) -> int:
    from pqcall.cli.account import server_url
    from pqcall.client.account_setup import link_home
    from pqcall.client.http import refuse_plain_http

    url = server_url(args.server)
    refuse_plain_http(url, insecure=False)
    secret = passphrase(args, confirm=True)

    def show(code: str) -> None:
        console.say(f"on a device of {args.name}, run:  pqcall link --approve {code}")
        console.say("waiting for it (10 minutes at most)…")

    secrets = await link_home(home, args.name, url, secret, show, device_name=args.device_name)
    assert secrets.device_key is not None
    console.say(f"linked: this home is now a device of {args.name} ({home.path})")
    console.say(f"account fingerprint: {secrets.identity.public_key().fingerprint_text()}")
    return runtime.EXIT_OK


async def _approve(
    args: argparse.Namespace,
    home: Home,
    config: AccountConfig,
    account: AccountSecrets,
    api: ServerApi,
) -> int:
    from pqcall.client.account_devices import approve_link

    device = await approve_link(api, home, account, config.username, args.approve)
    Console().say(f"linked {device.name} ({device.device_id_text[:8]}) to {config.username}")
    return runtime.EXIT_OK


# ---------------------------------------------------------------- devices, unlink, rotate


def run_devices(args: argparse.Namespace) -> int:
    """``pqcall devices [--json]``: the account's linked devices."""
    runtime.setup_logging(args.verbose)
    return _with_account(args, open_home(args), _devices)


async def _devices(
    args: argparse.Namespace,
    home: Home,
    config: AccountConfig,
    account: AccountSecrets,
    api: ServerApi,
) -> int:
    from pqcall.client.account_devices import sync_device_list

    signed = await sync_device_list(api, home, account, config.username)
    ours = account.device_identity.public_key()
    rows: list[dict[str, Any]] = [
        {
            "name": device.name,
            "device_id": device.device_id_text,
            "this_device": device.public == ours,
        }
        for device in signed.device_list.devices
    ]
    console = Console(json_mode=args.json)
    if args.json:
        print(to_json(rows), file=console.out)
        return runtime.EXIT_OK
    console.say(f"{config.username}'s devices (list version {signed.device_list.version}):")
    for row in rows:
        mark = "  (this device)" if row["this_device"] else ""
        console.say(f"  {row['device_id'][:8]}  {row['name']}{mark}")
    return runtime.EXIT_OK


def run_unlink(args: argparse.Namespace) -> int:
    """``pqcall unlink DEVICE``."""
    runtime.setup_logging(args.verbose)
    return _with_account(args, open_home(args), _unlink)


async def _unlink(
    args: argparse.Namespace,
    home: Home,
    config: AccountConfig,
    account: AccountSecrets,
    api: ServerApi,
) -> int:
    from pqcall.client.account_devices import unlink_device

    signed = await unlink_device(api, home, account, config.username, args.device)
    console = Console()
    console.say(f"unlinked {args.device}: list version {signed.device_list.version}")
    console.note(
        "it can no longer log in, but it still knows the account key: if it was stolen,"
        " recover the account instead (pqcall recover)"
    )
    return runtime.EXIT_OK


def run_rotate(args: argparse.Namespace) -> int:
    """``pqcall rotate-key``."""
    runtime.setup_logging(args.verbose)
    return _with_account(args, open_home(args), _rotate)


async def _rotate(
    args: argparse.Namespace,
    home: Home,
    config: AccountConfig,
    account: AccountSecrets,
    api: ServerApi,
) -> int:
    from pqcall.client.account_devices import rotate_device_key

    rotated = await rotate_device_key(api, home, account, config.username, args.secret)
    assert rotated.device_key is not None
    Console().say(
        f"this device has a new key ({rotated.device_key.public_key().fingerprint_text()});"
        " contacts follow without a warning"
    )
    return runtime.EXIT_OK


# ---------------------------------------------------------------- recover


def run_recover(args: argparse.Namespace) -> int:
    """``pqcall recover NAME --server URL`` (words on stdin or at a prompt)."""
    runtime.setup_logging(args.verbose)
    return runtime.run(_recover(args, open_home(args), Console()))


async def _recover(args: argparse.Namespace, home: Home, console: Console) -> int:
    from pqcall.cli.account import server_url
    from pqcall.client.account_setup import recover_home
    from pqcall.client.http import refuse_plain_http
    from pqcall.crypto.recovery import normalize_words

    url = server_url(args.server)
    refuse_plain_http(url, insecure=False)
    if sys.stdin.isatty():
        words = getpass.getpass("Recovery words: ")
    else:
        words = sys.stdin.readline()
    words = normalize_words(words)  # a typo is told before the passphrase is asked
    secret = passphrase(args, confirm=True)
    secrets = await recover_home(home, args.name, url, words, secret, device_name=args.device_name)
    console.say(f"recovered {args.name}: a new account key in {home.path}")
    console.say(f"account fingerprint: {secrets.identity.public_key().fingerprint_text()}")
    console.warn(
        "your contacts will see a key change: compare safety numbers with them"
        " (pqcall verify NAME). Other devices of the account were logged out."
    )
    return runtime.EXIT_OK


# ---------------------------------------------------------------- shared


def _with_account(args: argparse.Namespace, home: Home, command: Any) -> int:
    """Unlock the home, log in with this device's key, run ``command``."""
    config = home.load_config()
    if config is None:
        raise NoAccount(f"no registered account in {home.path}")
    args.secret = passphrase(args, home=home)
    account = home.unlock(args.secret)
    return runtime.run(_logged_in(args, home, config, account, command))


async def _logged_in(
    args: argparse.Namespace,
    home: Home,
    config: AccountConfig,
    account: AccountSecrets,
    command: Any,
) -> int:
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
        code: int = await command(args, home, config, account, api)
        return code
