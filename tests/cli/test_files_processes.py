"""A 200 MB file through real processes, with bounded memory at both ends and the server.

``pqcall server`` runs as a child process; alice and bob register in-process
(fast test KDF), then ``pqcall send-file`` and ``pqcall receive`` run as child
processes, as a person runs them. Bob's phone is never online: the file waits
on the server. While each process runs, ``/proc/<pid>/status`` is polled for
its peak resident set (``VmHWM``); a process that held the whole file in
memory would show at least its 200 MB. Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pqcall.client.home import Home
from pqcall.client.phone import register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from tests.cli.helpers import COMMAND_TIMEOUT_S, PASSPHRASE, child_env, one_json, pqcall_command
from tests.server.test_runner import _free_port, _start, _stop, _wait_for_health

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status"
)

MB = 1_000_000
FILE_BYTES = 200 * MB
WRITE_BLOCK_BYTES = 4 * 1024 * 1024  # random bytes written per step
MARKER = b"PQCALL-PLAINTEXT-MARKER-7f3a"  # placed in the file; must not reach the server
FILE_NAME = "secret-quarterly-report.bin"  # likewise
# measured on 2 cores: sender and receiver peak ~80 MB each, server growth ~5 MB;
# holding the 200 MB file in memory would exceed each bound
MAX_CLI_PEAK_BYTES = 150 * MB
MAX_SERVER_GROWTH_BYTES = 100 * MB
POLL_INTERVAL_S = 0.02


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = _free_port()
    data_dir = tmp_path / "server"
    process = _start(
        tmp_path,
        port,
        *("--data-dir", str(data_dir), "--no-mdns", "--relay-port", str(_free_port())),
        *("--log-level", "warning"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(f"{url}/health")
        yield Server(url, data_dir, process)
    finally:
        _stop(process)


def status_bytes(pid: int, field: str) -> int:
    """``field`` (``VmRSS``, ``VmHWM``) of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def run_measured(home: Path, *args: str) -> tuple[dict[str, object], int]:
    """Run ``pqcall --home HOME ARGS --json``; its one JSON object and its peak RSS."""
    process = subprocess.Popen(
        pqcall_command(home, *args, "--json"),
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak = 0
    deadline = time.monotonic() + COMMAND_TIMEOUT_S
    try:
        while process.poll() is None:
            # the process may exit between poll() and the read
            try:
                peak = max(peak, status_bytes(process.pid, "VmHWM"))
            except (FileNotFoundError, ProcessLookupError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"pqcall {args[0]} did not exit in time")
            time.sleep(POLL_INTERVAL_S)
        out, err = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, f"{out.decode()}{err.decode()}"
    assert peak > 0, "never read the process's memory"
    return one_json(out.decode()), peak


def write_random_file(path: Path) -> str:
    """Fill ``path`` with FILE_BYTES random bytes and MARKER near its start; its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        written = 0
        while written < FILE_BYTES:
            block = os.urandom(min(WRITE_BLOCK_BYTES, FILE_BYTES - written))
            if written == 0:
                block = MARKER + block[len(MARKER) :]
            file.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(WRITE_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def contains(path: Path, needle: bytes) -> bool:
    """Whether ``needle`` occurs in the file, read in blocks that overlap by its length."""
    tail = b""
    with open(path, "rb") as file:
        while block := file.read(WRITE_BLOCK_BYTES):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


def test_200_mb_to_an_offline_recipient_with_bounded_memory(server: Server, tmp_path: Path) -> None:
    homes = {name: tmp_path / name for name in ("alice", "bob")}
    for name, home in homes.items():
        asyncio.run(
            register(Home(home), name, server.url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
        )
    source = tmp_path / FILE_NAME
    sent_hash = write_random_file(source)
    server_before = status_bytes(server.process.pid, "VmRSS")

    # send while bob has never been online
    sent, sender_peak = run_measured(homes["alice"], "send-file", "bob", str(source))
    assert sent["size"] == FILE_BYTES

    # the server holds only ciphertext: no marker, no name, in the blob or the database
    blobs = [path for path in (server.data_dir / "files").iterdir() if path.is_file()]
    assert len(blobs) == 1, blobs
    (blob,) = blobs
    assert blob.stat().st_size == sent["ciphertext_size"]
    assert FILE_NAME not in blob.name
    assert not contains(blob, MARKER)
    assert not contains(blob, FILE_NAME.encode())
    for path in server.data_dir.rglob("*"):
        if path.is_file() and path != blob:
            assert not contains(path, FILE_NAME.encode()), path

    # bob comes online only to receive it
    out = tmp_path / "received"
    received, receiver_peak = run_measured(
        homes["bob"], "receive", str(sent["file_id"]), "--out", str(out)
    )
    assert received["sender"] == "alice" and received["size"] == FILE_BYTES
    assert sha256_of(out / FILE_NAME) == sent_hash
    assert not any((server.data_dir / "files").iterdir()), "the server kept the ciphertext"

    server_growth = status_bytes(server.process.pid, "VmHWM") - server_before
    report = (
        f"sender peak {sender_peak / MB:.0f} MB, receiver peak {receiver_peak / MB:.0f} MB,"
        f" server growth {server_growth / MB:.0f} MB"
    )
    print(report)  # noqa: T201  (pytest -s shows the measured figures)
    assert sender_peak < MAX_CLI_PEAK_BYTES, report
    assert receiver_peak < MAX_CLI_PEAK_BYTES, report
    assert server_growth < MAX_SERVER_GROWTH_BYTES, report
