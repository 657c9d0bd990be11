"""``pqcall register`` and ``pqcall whoami``: the account of a home directory."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pqcall.cli import runtime
from pqcall.cli.options import (
    add_json_option,
    add_passphrase_option,
    open_home,
    passphrase,
)
from pqcall.cli.output import Console
from pqcall.exceptions import NoAccount, ServerError

if TYPE_CHECKING:
    from pqcall.client.home import AccountConfig, Home

DEFAULT_SCHEME = "http://"


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``register`` and ``whoami``."""
    register = commands.add_parser(
        "register",
        parents=[common],
        help="create this home's identity if needed and register it on a server",
        description="Create the identity (if this home has none) and register it as NAME."
        " Without --server, look for a server on the LAN (mDNS).",
    )
    register.add_argument("name", metavar="NAME", help="the username to register")
    register.add_argument(
        "--server",
        metavar="URL",
        help="the signaling server, e.g. http://192.168.1.20:5001 (default: find one on the LAN)",
    )
    add_passphrase_option(register)
    register.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain http:// to a server beyond this machine and private networks"
        " (refused by default: logins and call metadata would travel unencrypted)",
    )
    register.add_argument(
        "--weak-passphrase",
        action="store_true",
        help="accept a new passphrase that is easy to guess (refused by default)",
    )
    register.set_defaults(handler=run_register)

    whoami = commands.add_parser(
        "whoami",
        parents=[common],
        help="show this home's username, server and identity fingerprint",
    )
    add_passphrase_option(whoami)
    add_json_option(whoami, "the account")
    whoami.set_defaults(handler=run_whoami)


def server_url(text: str) -> str:
    """A server URL as given, with ``http://`` added when no scheme is, no trailing ``/``.

    Raises:
        ServerError: not an http or https URL.
    """
    url = text.strip()
    if "://" not in url:
        url = DEFAULT_SCHEME + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https") or url.endswith("://"):
        raise ServerError(f"{text!r} is not a server URL: expected http://HOST:PORT or https://...")
    return url.rstrip("/")


def run_register(args: argparse.Namespace) -> int:
    """``pqcall register NAME [--server URL]``."""
    from pqcall.signaling.usernames import normalize

    runtime.setup_logging(args.verbose)
    name = normalize(args.name)
    home = open_home(args)
    url = server_url(args.server) if args.server else None
    if url is not None:
        from pqcall.client.http import refuse_plain_http

        refuse_plain_http(url, insecure=args.insecure)  # before any prompt or connection
    return runtime.run(_register(args, home, name, url, Console()))


async def _register(
    args: argparse.Namespace, home: Home, name: str, url: str | None, console: Console
) -> int:
    from pqcall.client.phone import register
    from pqcall.client.registration import check_server
    from pqcall.client.server_cert import pinned_fingerprint
    from pqcall.crypto.keystore import check_passphrase_strength

    if url is None:
        url = await discover_server(console)
    await check_server(home, url)  # before any passphrase or key: nothing to undo
    is_new = not home.has_account()
    secret = passphrase(args, confirm=is_new)
    if is_new:
        if not args.weak_passphrase:
            check_passphrase_strength(secret, user_inputs=(name,), override="--weak-passphrase")
        console.say(f"creating a new identity in {home.path}")
    registration = await register(home, name, url, secret, insecure=args.insecure)
    config, account = registration.config, registration.account
    console.say(
        f"registered {config.username} at {config.server_url} (server {config.server_name})"
    )
    console.say(f"identity fingerprint: {account.identity.public_key().fingerprint_text()}")
    if registration.recovery_words is not None:
        words = registration.recovery_words.split()
        console.say(
            "recovery words: write them down now, they are shown only this once and stored"
            " nowhere; with them, `pqcall recover` gets the account back after every device"
            " is lost (and anyone who has them can take it over):"
        )
        for row in range(0, len(words), 6):
            console.say(
                "  "
                + "  ".join(f"{row + i + 1:2}. {w}" for i, w in enumerate(words[row : row + 6]))
            )
    pinned = pinned_fingerprint(home)
    if pinned is not None:
        console.say(
            f"server certificate pinned, SHA-256 {pinned}: compare it with the server's log"
        )
    console.say(f"home: {home.path}")
    return runtime.EXIT_OK


async def discover_server(console: Console) -> str:
    """The URL of the one signaling server on the LAN (mDNS).

    Raises:
        ServerError: none found, several found (they are listed first), or
            mDNS cannot be used here.
    """
    from pqcall.client.discovery import DiscoveryUnavailable, find_servers

    console.say("looking for a pqcall server on the LAN (mDNS)…")
    try:
        found = await find_servers()
    except DiscoveryUnavailable as exc:
        raise ServerError(
            f"cannot look for a server on the LAN ({exc}); give one with --server URL"
        ) from None
    if not found:
        raise ServerError(
            "no pqcall server found on the LAN; start one (pqcall server) or give --server URL"
        )
    if len(found) > 1:
        for server in found:
            console.say(f"  {server.url}  {server.name}")
        raise ServerError(f"{len(found)} servers found on the LAN; choose one with --server URL")
    console.say(f"found {found[0].name} at {found[0].url}")
    return found[0].url


def run_whoami(args: argparse.Namespace) -> int:
    """``pqcall whoami [--json]``."""
    runtime.setup_logging(args.verbose)
    home = open_home(args)
    config = registered_config(home)
    account = home.unlock(passphrase(args))
    record: dict[str, Any] = {
        "username": config.username,
        "server_url": config.server_url,
        "server_name": config.server_name,
        "fingerprint": account.identity.public_key().fingerprint_text(),
        "home": str(home.path),
        "registered_unix": config.created,
    }
    console = Console(json_mode=args.json)
    if args.json:
        console.emit_json(record)
    else:
        console.say(f"{config.username} at {config.server_url} (server {config.server_name})")
        console.say(f"identity fingerprint: {record['fingerprint']}")
        console.say(f"home: {home.path}")
    return runtime.EXIT_OK


def registered_config(home: Home) -> AccountConfig:
    """The account configuration of ``home``.

    Raises:
        NoAccount: no account there, or one that was never registered.
    """
    config = home.load_config()
    if config is None:
        if home.has_account():
            raise NoAccount(
                f"the account in {home.path} is not registered yet: pqcall register NAME"
            )
        raise NoAccount(f"no account in {home.path}; create one with: pqcall register NAME")
    return config
