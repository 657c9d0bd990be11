"""A real coturn (Debian's ``turnserver``) for tests: temp config, random ports, REST secret.

``Coturn.start(tmp_path)`` writes a configuration that listens on 127.0.0.1 (or
``listen``) on a free port for UDP and TCP (and TLS on another with ``tls=True``,
with a self-signed certificate for 127.0.0.1), relays on a random port range,
accepts coturn's ``use-auth-secret`` credentials for :attr:`Coturn.secret`, and
allows loopback peers (everything here is on one machine). ``popen`` runs it
elsewhere (a network namespace's ``Host.popen``). Stop it with :meth:`Coturn.stop`
(or ``with``).

Missing ``turnserver``: the test is skipped, or fails where coturn is required
(``CI`` set, as the netns rig decides: tests/netns.is_required).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.harness import TIMEOUT_SCALE, free_port
from tests.netns import is_required
from tests.server.certs import self_signed

START_TIMEOUT_S = 10.0 * TIMEOUT_SCALE


def turnserver_path() -> str:
    """Where ``turnserver`` is; skips the test (fails it where required) if nowhere."""
    found = shutil.which("turnserver") or (
        "/usr/bin/turnserver" if os.path.exists("/usr/bin/turnserver") else None
    )
    if found is None:
        message = "coturn (turnserver) is not installed (apt-get install coturn)"
        if is_required():
            pytest.fail(message)
        pytest.skip(message)
    return found


class Coturn:
    """A running coturn; see the module docstring."""

    def __init__(
        self, process: subprocess.Popen[bytes], host: str, port: int, tls_port: int | None
    ) -> None:
        self.process = process
        self.host = host
        """Where it listens."""
        self.port = port
        """UDP and TCP port."""
        self.tls_port = tls_port
        """TLS port, if started with TLS."""
        self.secret = b""
        """The ``static-auth-secret`` (set by :meth:`start`)."""
        self.cafile: Path | None = None
        """The self-signed certificate to trust for TLS."""
        self.log: Path | None = None

    @classmethod
    def start(
        cls,
        directory: Path,
        *,
        listen: str = "127.0.0.1",
        relay_ip: str | None = None,
        tls: bool = False,
        port: int | None = None,
        popen: Callable[[Sequence[str]], subprocess.Popen[bytes]] | None = None,
        also_listen: Sequence[str] = (),
        wait: Callable[[int], object] | None = None,
    ) -> Self:
        """Start coturn; ``also_listen``: more listening addresses; ``wait(port)``: until
        ``port`` accepts TCP (default: connect to it from here)."""
        binary = turnserver_path()
        secret = secrets.token_hex(16).encode()
        port = port or free_port()
        tls_port = free_port() if tls else None
        low = random.randrange(20000, 60000, 200)
        lines = [
            f"listening-ip={listen}",
            *(f"listening-ip={address}" for address in also_listen),
            f"listening-port={port}",
            f"relay-ip={relay_ip or listen}",
            f"min-port={low}",
            f"max-port={low + 199}",
            "use-auth-secret",
            f"static-auth-secret={secret.decode()}",
            "realm=pqcall.test",
            "no-dtls",
            "allow-loopback-peers",
            "no-cli",
            "no-stun-backward-compatibility",
            "simple-log",
            f"log-file={directory / 'turn.log'}",
            f"pidfile={directory / 'turn.pid'}",
            f"userdb={directory / 'turndb'}",
        ]
        cafile = None
        if tls_port is not None:
            cafile, key = self_signed(directory)
            lines += [f"tls-listening-port={tls_port}", f"cert={cafile}", f"pkey={key}"]
        else:
            lines.append("no-tls")
        config = directory / "turnserver.conf"
        config.write_text("\n".join(lines) + "\n")
        command = [binary, "-c", str(config)]
        run = popen or (
            lambda args: subprocess.Popen(
                list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        server = cls(run(command), listen, port, tls_port)
        server.secret, server.cafile = secret, cafile
        server.log = directory / "turn.log"
        if wait is None:
            server._wait_ready()
        else:
            wait(port)
        return server

    def _wait_ready(self) -> None:
        """Until its TCP port accepts (it opens UDP and TCP together)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.process.returncode}")
            try:
                for port in ports:
                    socket.create_connection((self.host, port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("turnserver did not start listening") from None
                time.sleep(0.05)

    def url(self, transport: str) -> str:
        """The ``turn:``/``turns:`` URL for ``transport`` (udp, tcp, tls)."""
        if transport == "tls":
            return f"turns:{self.host}:{self.tls_port}"
        return f"turn:{self.host}:{self.port}?transport={transport}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["Coturn", "turnserver_path"]
