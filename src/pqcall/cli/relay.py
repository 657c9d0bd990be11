"""``pqcall relay``: the 1:1 media relay as its own process, beside the server.

Runs one UDP :class:`~pqcall.server.relay.MediaRelay` on ``--host``/``--port`` that
reads its allocations from the server's database (``--db``, the same URL as the
server's; :mod:`pqcall.server.relay_store`). Start the server with ``--relay-url
udp://HOST:PORT`` naming each relay process: the server makes the grants and writes
them to the database, the relay finds a grant when the first bind names it, and drops
it when the server deletes the row (hang-up). Killed and started again, the relay
restores every live allocation with the addresses the phones proved, and relayed
calls go on. SIGTERM or Ctrl-C stop it (exit 0 / 130). See docs/server.md.
"""

from __future__ import annotations

import argparse

from pqcall.exceptions import PqcallError

STATS_INTERVAL_S = 60.0  # a counters line in the log this often
FIRST_FORWARD_POLL_S = 0.02  # until the first datagram is forwarded (then one line)


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add ``relay``."""
    relay = commands.add_parser(
        "relay",
        parents=[common],
        help="run a media relay process on the server's database (beside `pqcall server`)",
        description="Relay media for calls whose phones cannot reach each other directly,"
        " as its own process. The server hands this relay out when started with"
        " --relay-url udp://HOST:PORT; both use the same database (--db).",
    )
    relay.add_argument("--host", default="0.0.0.0", help="address to bind (default: 0.0.0.0)")
    relay.add_argument("--port", type=int, required=True, help="UDP port to bind")
    relay.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="the server's database: sqlite+aiosqlite:///DATA_DIR/pqcall.db or"
        " postgresql+asyncpg://USER@HOST/DB",
    )
    relay.set_defaults(handler=run_relay)


def run_relay(args: argparse.Namespace) -> int:
    """``pqcall relay --port P --db URL``."""
    import asyncio  # here, not at import: `pqcall --help` stays light
    import logging

    if not 0 < args.port < 65536:
        raise PqcallError(f"relay port {args.port} is out of range")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return asyncio.run(_serve(args.host, args.port, args.db))
    except KeyboardInterrupt:
        return 130


async def _serve(host: str, port: int, url: str) -> int:
    import asyncio
    import logging
    import signal

    from pqcall.server.relay import MediaRelay
    from pqcall.server.relay_store import RelayStore

    store = await RelayStore.open(url)
    relay = MediaRelay(host, port, store=store, follow_store=True)
    try:
        try:
            await relay.start()
        except OSError as exc:
            raise PqcallError(
                f"cannot open the media relay on UDP {host}:{port}: {exc.strerror or exc}"
            ) from None
        print(  # the line scripts wait for
            f"pqcall relay on UDP {relay.address[0]}:{relay.address[1]},"
            f" {relay.restored} allocations restored",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        started = loop.time()
        while not stop.is_set() and not relay.stats().packets_forwarded:
            await asyncio.sleep(FIRST_FORWARD_POLL_S)
        if not stop.is_set():  # how long a restart interrupted relayed calls, for tests
            print(f"forwarding {loop.time() - started:.2f} s after start", flush=True)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), STATS_INTERVAL_S)
            except TimeoutError:
                stats = relay.stats()
                logging.getLogger(__name__).info(
                    "relay: %d allocations, %d packets forwarded, %d dropped",
                    stats.allocations_active,
                    stats.packets_forwarded,
                    stats.packets_dropped,
                )
    finally:
        await relay.close()
        await store.close()
    return 0
