"""``pqcall server`` in a child process, for the attack tests of its start-up and transport.

:func:`running_server` starts it on 127.0.0.1 and a free port, waits until it
answers ``/health`` (over TLS without checking the certificate when asked),
and stops it with SIGTERM; the log it wrote is kept on the object.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.harness import EVENT_TIMEOUT_S, free_port, scaled

START_TIMEOUT_S = scaled(30.0)  # imports and migrations on a busy two-core machine


@dataclass
class ServerProcess:
    """A running ``pqcall server``."""

    url: str
    """``http://127.0.0.1:PORT`` or ``https://...``."""
    process: subprocess.Popen[bytes]
    """The child process."""
    log: str = field(default="")
    """What it wrote to stderr, once it stopped."""


def start_server(
    data_dir: Path, *options: str, port: int | None = None, tls: bool = False
) -> ServerProcess:
    """Start ``pqcall server --data-dir DATA_DIR OPTIONS`` and wait until it answers."""
    port = port or free_port()
    command = [sys.executable, "-m", "pqcall", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--name", "security.test", "--no-mdns"]
    command += ["--data-dir", str(data_dir), *options]
    env = dict(os.environ, PQCALL_HOME=str(data_dir.parent))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{url}/health", timeout=1, verify=False)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return ServerProcess(url, process)
    server = ServerProcess(url, process)
    stop_server(server)
    raise AssertionError(f"server did not start:\n{server.log}")


def stop_server(server: ServerProcess) -> str:
    """Stop it with SIGTERM (kill if it hangs); its stderr."""
    process = server.process
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=EVENT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    server.log = err.decode(errors="replace") if err else ""
    return server.log


@contextlib.contextmanager
def running_server(data_dir: Path, *options: str, **kwargs: bool | int) -> Iterator[ServerProcess]:
    """:func:`start_server` until the block ends."""
    server = start_server(data_dir, *options, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_server(server)
