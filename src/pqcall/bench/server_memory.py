"""Memory per connected phone: ``python -m pqcall.bench.server_memory [N]``.

Starts a real ``pqcall server`` (SQLite, a temporary data directory, loopback),
registers and logs in N accounts (default 1000), reads the server process's
resident memory, opens N push WebSockets as phones do (the ``websockets``
client, which offers permessage-deflate), waits for them to settle, and reads
it again: the difference over N is the memory per connected phone. It prints
one line. All traffic stays on 127.0.0.1; every phase is bounded in time.
Run it with another ``pqcall`` first on ``PYTHONPATH`` to compare two versions
in one sitting (docs/decisions/0900-lean-call-path.md).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from pqcall.bench.server_load import (
    Phone,
    bounded,
    close_all,
    connect_all,
    create_accounts,
    crypto_pool,
)
from pqcall.bench.server_process import ServerProcess

DEFAULT_PHONES = 1000
SETTLE_S = 2.0  # after the last phone connected, before memory is read


async def measure(phones: int) -> tuple[int, float]:
    """How many phones stayed connected, and the server's RSS growth per phone in KiB."""
    import httpx

    with (
        crypto_pool() as pool,
        tempfile.TemporaryDirectory(prefix="pqcall-memory-") as data_dir,
        ServerProcess.start(Path(data_dir), None) as server,
    ):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30.0) as http:
            accounts = await bounded(create_accounts(http, phones, pool), "registering")
        clients = [Phone(username, token) for username, token in accounts]
        await asyncio.sleep(SETTLE_S)
        before = server.rss_bytes()
        try:
            connected = await bounded(connect_all(server.ws_url, clients), "connecting")
            await asyncio.sleep(SETTLE_S)
            after = server.rss_bytes()
            open_now = sum(phone.is_open for phone in connected)
        finally:
            await close_all(clients)
    return open_now, (after - before) / 1024 / max(1, open_now)


def main(argv: list[str]) -> int:
    phones = int(argv[0]) if argv else DEFAULT_PHONES
    connected, per_phone = asyncio.run(measure(phones))
    print(f"{connected} of {phones} phones connected: {per_phone:.1f} KiB server RSS per phone")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
