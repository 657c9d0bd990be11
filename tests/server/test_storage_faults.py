"""Storage failures found by fault injection, each reproduced for real (issue 18, part 4).

- PostgreSQL cut off (a TCP proxy between server and database that the test
  closes): 503 with ``Retry-After`` and the reason; ``/health`` 503; the log says
  ``database unreachable: ...`` once and ``database reachable again`` once, no
  traceback; the server works again when the proxy is back.
- A SQLite file that cannot be opened mid-run (its directory moved away, the
  pool's connections closed as a recycle would): 503, then back.
- A full data disk (a 2 MiB tmpfs, root only): 507 with the reason; ``/health`` 503.
- ``pqcall server`` refuses a damaged SQLite file, a 0-byte one, and a data
  directory another server uses, each in one line with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url

from pqcall.cli import main
from pqcall.client.http import HttpSession
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.context import AppContext
from pqcall.server.faults import DISK_FULL, UNREACHABLE
from tests.harness import free_port, scaled
from tests.server.conftest import (
    copy_database,
    make_settings,
    registration,
    reset_postgresql,
    run_server,
)
from tests.server.test_runner import _start, _stop

UNREACHABLE_LINE = "the server cannot reach its database, try again shortly"
WAIT_S = scaled(10.0)
START_S = scaled(60.0)  # a first start migrates a new database: >10 s on a busy 2-core machine


def _register(client: httpx.Client, username: str, server_name: str) -> httpx.Response:
    body = registration(IdentityPrivateKey.generate(), username, server_name=server_name)
    return client.post("/register", json=body)


def _wait_for_health(url: str) -> httpx.Response:
    deadline = time.monotonic() + START_S
    while True:
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wait_for_status(client: httpx.Client, path: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = client.get(path)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


# ---------------------------------------------------------------- PostgreSQL cut off


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to ``target``; :meth:`cut` closes it, :meth:`restore` reopens it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target  # where connections go
        self.port = free_port()  # where the proxy listens
        self._sockets: list[socket.socket] = []  # every open connection, both sides
        self._listener: socket.socket | None = None  # None while cut
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones, as a database that went away."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.mark.postgres
def test_postgresql_cut_off_is_503_and_one_log_line_each_way(tmp_path, pg_session_url):
    if pg_session_url is None:
        pytest.skip("PQCALL_TEST_DATABASE_URL not set")
    reset_postgresql(pg_session_url)
    target = make_url(pg_session_url)
    proxy = CuttableProxy((target.host or "127.0.0.1", target.port or 5432))
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    port = free_port()
    process = _start(tmp_path, port, "--db", url, "--no-mdns")
    base = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for_health(f"{base}/health").status_code == 200
        with httpx.Client(base_url=base, timeout=WAIT_S) as client:
            assert _register(client, "alice", "runner.test").status_code == 201
            proxy.cut()
            refused = _register(client, "bob", "runner.test")
            assert refused.status_code == 503
            assert refused.json() == {"error": UNREACHABLE_LINE}
            assert refused.headers["retry-after"] == str(UNREACHABLE.retry_after_s)
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["error"].startswith("database unreachable: ")
            for _ in range(5):  # requests and sweeps keep failing for a while
                answer = client.post("/auth/challenge", json={"username": "alice"})
                assert answer.status_code == 503
                time.sleep(0.5)
            proxy.restore()
            assert _wait_for_status(client, "/health", 200).status_code == 200
            assert _register(client, "bob", "runner.test").status_code == 201
            time.sleep(1.5)
    finally:
        err = _stop(process).decode()
        proxy.cut()
    assert "Traceback" not in err, err
    assert err.count("database unreachable: ") == 1, err
    assert err.count("database reachable again") == 1, err


# ---------------------------------------------------------------- SQLite unreadable mid-run


class LoopProbe:
    """A component that remembers the server's event loop and context."""

    loop: asyncio.AbstractEventLoop
    context: AppContext

    async def start(self, context: AppContext) -> None:
        self.loop, self.context = asyncio.get_running_loop(), context

    async def stop(self) -> None:
        pass

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(WAIT_S)


def test_sqlite_file_unreadable_mid_run_is_503(tmp_path, migrated_sqlite):
    url = copy_database(migrated_sqlite, tmp_path / "db")
    probe = LoopProbe()
    with (
        run_server(make_settings(url, tmp_path / "data"), components=(probe,)) as server,
        server.client() as client,
    ):
        assert _register(client, "alice", "test.pqcall").status_code == 201
        (tmp_path / "db").rename(tmp_path / "moved")
        probe.run(probe.context.storage.engine.dispose())  # as a pool recycle would
        refused = _register(client, "bob", "test.pqcall")
        assert refused.status_code == 503
        assert refused.json() == {"error": UNREACHABLE_LINE}
        assert client.get("/health").json()["error"] == (
            "database unreachable: unable to open database file"
        )
        (tmp_path / "moved").rename(tmp_path / "db")
        assert _wait_for_status(client, "/health", 200).status_code == 200
        assert probe.context.storage_status.fault is None  # the watch saw it come back
        assert _register(client, "bob", "test.pqcall").status_code == 201


# ---------------------------------------------------------------- a full data disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(path: Path) -> None:
    with contextlib.suppress(OSError), path.open("wb", buffering=0) as filler:
        while True:
            filler.write(b"\0" * 4096)


def test_full_data_disk_is_507_and_health_says_so(tiny_disk, migrated_sqlite):
    url = copy_database(migrated_sqlite, tiny_disk / "db")
    with (
        run_server(make_settings(url, tiny_disk / "data")) as server,
        server.client() as client,
    ):
        assert client.get("/health").status_code == 200
        assert _register(client, "alice", "test.pqcall").status_code == 201
        _fill(tiny_disk / "filler")
        for number in range(50):  # the write-ahead log may still hold a few
            refused = _register(client, f"user{number}", "test.pqcall")
            if refused.status_code != 201:
                break
        assert refused.status_code == 507, refused.text
        assert refused.json() == {"error": DISK_FULL.message}
        assert refused.headers["retry-after"] == str(DISK_FULL.retry_after_s)
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["error"].startswith("data disk full: ")
        (tiny_disk / "filler").unlink()
        assert _wait_for_status(client, "/health", 200).status_code == 200


# ---------------------------------------------------------------- refused at start


def _server_data(tmp_path: Path, migrated_sqlite: Path) -> Path:
    data_dir = tmp_path / "home" / "server"
    data_dir.mkdir(parents=True, mode=0o700)
    shutil.copyfile(migrated_sqlite, data_dir / "pqcall.db")
    return data_dir


def _refused(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    port = str(free_port())
    code = main(["server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", port])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def test_damaged_sqlite_file_is_refused(tmp_path, migrated_sqlite, capsys):
    data_dir = _server_data(tmp_path, migrated_sqlite)
    database = data_dir / "pqcall.db"
    size = database.stat().st_size
    with database.open("r+b") as damaged:  # random bytes inside, the header left alone
        damaged.seek(4096)
        damaged.write(os.urandom(size - 4096))
    err = _refused(data_dir, capsys)
    assert err.startswith(f"pqcall: database file {database} is damaged (PRAGMA quick_check: ")
    assert err.endswith("); restore it from a backup")


def test_empty_sqlite_file_is_refused(tmp_path, migrated_sqlite, capsys):
    data_dir = _server_data(tmp_path, migrated_sqlite)
    database = data_dir / "pqcall.db"
    database.write_bytes(b"")
    assert _refused(data_dir, capsys) == (
        f"pqcall: database file {database} is empty (0 bytes): its accounts are gone or it was"
        " truncated; restore it from a backup, or delete it to start a new empty database"
    )
    assert database.stat().st_size == 0  # left as it was


def test_second_server_on_one_data_dir_is_refused(tmp_path, capsys):
    port = free_port()
    first = _start(tmp_path, port, "--no-mdns")
    try:
        assert _wait_for_health(f"http://127.0.0.1:{port}/health").status_code == 200
        database = tmp_path / "server" / "pqcall.db"
        assert _refused(tmp_path / "server", capsys) == (
            f"pqcall: another pqcall server (pid {first.pid}) is using the database {database};"
            " stop it first, or give this one its own --data-dir"
        )
    finally:
        _stop(first)


# ---------------------------------------------------------------- what a phone prints


@pytest.mark.parametrize(
    ("status", "body", "line"),
    [
        pytest.param(
            503, b'{"error": "' + UNREACHABLE_LINE.encode() + b'"}', UNREACHABLE_LINE, id="503"
        ),
        pytest.param(
            507, b'{"error": "' + DISK_FULL.message.encode() + b'"}', DISK_FULL.message, id="507"
        ),
        pytest.param(
            503,
            b"<html>Bad Gateway</html>",
            "the server is unavailable, try again shortly",
            id="proxy-503",
        ),
        pytest.param(507, b"", "the server's disk is full, try again later", id="proxy-507"),
    ],
)
def test_phone_says_one_clear_line(status: int, body: bytes, line: str) -> None:
    session = HttpSession("http://127.0.0.1:1")
    try:
        error = session.error(httpx.Response(status, content=body))
    finally:
        asyncio.run(session.close())
    assert (error.status, str(error)) == (status, line)
