"""The ``pqcall server`` child process the server benchmark drives, and its databases.

:meth:`ServerProcess.start` runs a real server on 127.0.0.1 (free ports, mDNS off,
optionally on a message bus with other nodes, request limits raised
:data:`RATE_LIMIT_SCALE`-fold so one benchmark client is not refused) until its
``/health`` answers, reads its memory and CPU time from ``/proc``, and stops it
(reporting tracebacks in its log).
:func:`scratch_database` makes an empty PostgreSQL database for one run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
SERVER_NAME = "bench.pqcall"
RATE_LIMIT_SCALE = 1000.0  # the server's request limits, raised for one busy client
START_TIMEOUT_S = 60.0  # server start, migrations included
STOP_TIMEOUT_S = 30.0  # server stop (it closes every WebSocket first)


@dataclass
class ServerProcess:
    """A ``pqcall server`` child process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/events"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        data_dir: Path,
        db_url: str | None,
        bus_url: str | None = None,
        max_connections: int | None = None,
    ) -> Iterator[ServerProcess]:
        """A server on ``db_url`` (SQLite in ``data_dir`` if None), on ``bus_url`` if given.

        ``max_connections``: the server's ``--max-connections`` (its default, 4096,
        would close the benchmark's 5,000 phones' sockets beyond it).
        """
        port, relay_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        command = [
            *(sys.executable, "-m", "pqcall", "server", "--host", HOST, "--port", str(port)),
            *("--relay-port", str(relay_port), "--data-dir", str(data_dir), "--no-mdns"),
            *("--name", SERVER_NAME, "--log-level", "warning"),
            *("--rate-limit-scale", str(RATE_LIMIT_SCALE)),
        ]
        if db_url is not None:
            command += ["--db", db_url]
        if bus_url is not None:
            command += ["--bus", bus_url]
        if max_connections is not None:
            command += ["--max-connections", str(max_connections)]
        log_path = data_dir / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, port, log_path)
        try:
            server._wait_until_up()
            yield server
        finally:
            server._stop()

    def _wait_until_up(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start in {START_TIMEOUT_S:g} s")

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        errors = [line for line in self.log_tail(200).splitlines() if "Traceback" in line]
        if errors:
            say(f"the server logged {len(errors)} tracebacks; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc; 0 elsewhere)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc; 0 elsewhere)."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def scratch_database(base_url: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the server of ``base_url``; dropped afterwards."""
    from sqlalchemy import make_url, text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"pqcall_bench_{os.getpid()}_{secrets.token_hex(4)}"

    async def execute(statement: str) -> None:
        engine = create_async_engine(base_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    await execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    """One progress line on stderr."""
    print(f"pqcall bench server: {message}", file=sys.stderr, flush=True)
