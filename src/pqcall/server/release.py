"""``pqcall server release-user NAME``: an operator frees a name whose owner lost every device.

Issue 22. For a person without their recovery words, the operator deletes the
account's keys, devices, tokens and pending events
(:meth:`~pqcall.server.storage.device_store.DeviceStore.release_account`), so
the name can be registered again, by anyone: contacts who pinned the old key
then get the loud key-change warning, as after any takeover, because nobody can
tell a release from an attack without comparing safety numbers.

It runs against the database of ``pqcall server`` (the same ``--data-dir`` /
``--db`` options, given before ``release-user``), also while a server runs on
it. Running servers stop serving the old key within 10 s (their caches'
lifetime, ``NAME_CACHE_TTL_S``/``TOKEN_CACHE_TTL_S``), at once with ``--bus``
(the release is told to every node). A push socket the old owner still holds
stays open until its token expires but carries nothing: the released account
can no longer be found or called, and new events go to the new account.

Logged at WARNING (``released user NAME by operator``); prints one line; an
unknown name is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from pqcall.exceptions import ServerError


def add_parser(server_parser: argparse.ArgumentParser) -> None:
    """Add ``release-user NAME`` under ``pqcall server`` (whose options stay its own)."""
    commands = server_parser.add_subparsers(
        dest="server_command", required=False, metavar="{release-user}"
    )
    release = commands.add_parser(
        "release-user",
        help="free a username whose owner lost every device and the recovery words (logged)",
        description="Delete NAME's keys, devices, tokens and pending events so the name can be"
        " registered again; contacts then see a key-change warning. Database options of"
        " `pqcall server` (--data-dir, --db, --bus) go before release-user.",
    )
    # not dest "name": that is `pqcall server --name` (the server name, in the bus namespace)
    release.add_argument("username", metavar="NAME", help="the username to free")
    release.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Release ``args.username``; 0 and one line on stdout, or 1 and one line on stderr."""
    import asyncio
    import sys

    from pqcall.server.runner import settings_from_args
    from pqcall.signaling import usernames

    settings = settings_from_args(args)
    try:
        username = usernames.normalize(args.username)
    except usernames.InvalidUsername as exc:
        sys.stderr.write(f"pqcall: {exc}\n")
        return 1
    import logging  # here: `pqcall --help` must not load it (tests/cli/test_help.py)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    found = asyncio.run(release(settings.db_url, username, settings.bus_url, settings))
    if found is None:
        sys.stderr.write(f"pqcall: no user named {username!r}\n")
        return 1
    sys.stdout.write(
        f"released {username}: keys, devices, {found} tokens and pending events deleted;"
        " the name can be registered again\n"
    )
    return 0


async def release(
    db_url: str, username: str, bus_url: str = "", settings: Any = None
) -> int | None:
    """Release ``username`` in the database at ``db_url``; how many tokens went, or ``None``.

    With ``bus_url``, running nodes are told at once (sockets closed, caches dropped).

    Raises:
        ServerError: the database cannot be opened (one line).
    """
    import logging

    from pqcall.server.storage import Storage

    storage = await Storage.open(db_url)
    try:
        released = await storage.devices.release_account(username)
    finally:
        await storage.close()
    if released is None:
        return None
    account_id, tokens = released
    logging.getLogger("pqcall.server").warning(
        "released user %s by operator (%d tokens revoked)", username, len(tokens)
    )
    if bus_url:
        await _tell_nodes(bus_url, settings, account_id, tokens)
    return len(tokens)


async def _tell_nodes(bus_url: str, settings: Any, account_id: int, tokens: list[bytes]) -> None:
    """Send the release over the bus, as a node would: revoke the tokens, drop the caches."""
    from pqcall.server.bus import bus_namespace, open_bus

    bus = open_bus(bus_url, bus_namespace(settings))
    try:
        await bus.start(lambda topic, node, body: None)
        await bus.send("revoke", {"tokens": sorted(t.hex() for t in tokens), "account": account_id})
        await bus.send("account", {"account": account_id})
    except Exception as exc:
        raise ServerError(f"released, but the bus could not be told: {exc}") from None
    finally:
        await bus.close()
