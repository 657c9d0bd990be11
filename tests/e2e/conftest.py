"""Fixtures for the two-host tests: a network of namespaces, processes in it, a server.

- ``make_network(topology)``: builds a :class:`tests.netns.Network` for the
  test and tears it down after it (stopping every process started in it). It
  skips the test with the reason where namespaces cannot be made (not root, no
  ``ip``), and fails it instead where they must work: ``PQCALL_TEST_NETNS=1``
  (set by ``.ci/run``) or ``CI=true``.
- ``processes``: starts commands on a host with their output in files, and
  :meth:`Processes.report` puts all of it into an assertion message.
- :func:`start_server`: ``pqcall server`` on the network's server host.

Timeouts are multiplied by ``PQCALL_TEST_TIMEOUT_SCALE`` (default 1).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.harness import TIMEOUT_SCALE, scaled
from tests.netns import Host, Network, Unavailable, is_required

START_TIMEOUT_S = scaled(20.0)  # a server process starts (imports, migrations)
SERVER_PORT = 5001  # each network has its own ports: a fixed number never clashes
SERVER_NAME = "twohost.test"
PYTHON = sys.executable  # the test's interpreter, so the namespaces run this pqcall
POLL_INTERVAL_S = 0.1  # of wait_until
REPORT_TAIL_CHARS = 6000  # of each process's stdout and stderr in a report


def network_or_skip(topology: str) -> Network:
    """Build ``topology``, or skip (fail, where the rig is required) if namespaces cannot be made.

    Raises:
        pytest.skip.Exception: namespaces unavailable here.
        pytest.fail.Exception: namespaces unavailable where they are required.
    """
    try:
        return Network.create(topology)
    except Unavailable as exc:
        if is_required():
            pytest.fail(
                f"{exc}: the two-host tests need root and ip netns, and are required here"
                " (PQCALL_TEST_NETNS=1 or CI=true)"
            )
        pytest.skip(f"{exc}: needs root and ip netns")


@pytest.fixture
def make_network() -> Iterator[Callable[[str], Network]]:
    """``make_network("lan")``: a network for this test, torn down after it."""
    networks: list[Network] = []

    def make(topology: str) -> Network:
        network = network_or_skip(topology)
        networks.append(network)
        return network

    yield make
    for network in networks:
        network.close()


@dataclass
class _Logged:
    """One process's command and where its output went."""

    label: str
    host: Host
    args: list[str]
    stdout: Path
    stderr: Path
    process: subprocess.Popen[bytes] | None = None  # None for a run() already finished
    returncode: int | None = None  # of a run()


@dataclass
class Processes:
    """Commands on the rig's hosts, with their output kept for assertion messages."""

    log_dir: Path
    """Where each process's ``LABEL.out`` and ``LABEL.err`` go."""
    logged: list[_Logged] = field(default_factory=list)
    """Everything started, in order."""

    def _files(self, label: str) -> tuple[Path, Path]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{label}.out", self.log_dir / f"{label}.err"

    def start(
        self,
        host: Host,
        label: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        stdin: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` on ``host`` in the background; its output goes to files.

        Args:
            stdin: ``subprocess.DEVNULL`` (end of input at once), or
                ``subprocess.PIPE`` for input that stays open until the test
                writes to or closes ``process.stdin``.
        """
        out, err = self._files(label)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = host.popen(list(args), stdout=stdout, stderr=stderr, stdin=stdin, env=env)
        self.logged.append(_Logged(label, host, list(args), out, err, process=process))
        return process

    def run(
        self,
        host: Host,
        label: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` on ``host`` to the end (killed after ``timeout_s``); keep its output."""
        out, err = self._files(label)
        entry = _Logged(label, host, list(args), out, err)
        self.logged.append(entry)
        try:
            done = host.run(
                list(args),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=timeout_s * TIMEOUT_SCALE,
            )
        except subprocess.TimeoutExpired as exc:
            out.write_bytes(_as_bytes(exc.stdout))
            err.write_bytes(_as_bytes(exc.stderr) + f"\n[killed after {timeout_s} s]".encode())
            entry.returncode = -9
            raise
        out.write_text(done.stdout)
        err.write_text(done.stderr)
        entry.returncode = done.returncode
        return done

    def output(self, label: str) -> str:
        """The stdout so far of the process labelled ``label``."""
        return (self.log_dir / f"{label}.out").read_text(errors="replace")

    def errors(self, label: str) -> str:
        """The stderr so far of the process labelled ``label``."""
        return (self.log_dir / f"{label}.err").read_text(errors="replace")

    def report(self) -> str:
        """Every process's command, exit status, stdout and stderr (their tails)."""
        parts = []
        for entry in self.logged:
            if entry.process is not None:
                code = entry.process.poll()
                status = "still running" if code is None else f"exit {code}"
            else:
                status = f"exit {entry.returncode}"
            parts.append(f"===== {entry.label} on {entry.host.name}: {' '.join(entry.args)}")
            parts.append(f"----- {status}")
            for name, path in (("stdout", entry.stdout), ("stderr", entry.stderr)):
                text = path.read_text(errors="replace") if path.exists() else ""
                if len(text) > REPORT_TAIL_CHARS:
                    text = "[...]\n" + text[-REPORT_TAIL_CHARS:]
                parts.append(f"----- {name}:\n{text.rstrip()}")
        return "\n".join(parts)


def _as_bytes(data: str | bytes | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else data


@pytest.fixture
def processes(tmp_path: Path) -> Processes:
    """The test's processes; their output lands under ``tmp_path/logs``."""
    return Processes(tmp_path / "logs")


def http_get(host: Host, address: str, port: int, path: str, timeout_s: float = 5.0) -> str:
    """GET ``path`` from ``address:port`` over a socket in ``host``'s namespace; the body.

    Plain HTTP/1.0, enough for the server's ``/health`` and ``/metrics``.

    Raises:
        OSError: no connection, or a status other than 200.
    """
    with host.socket() as sock:
        sock.settimeout(timeout_s)
        sock.connect((address, port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}:{port}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.split(" ")[1:2] != ["200"]:
        raise OSError(f"GET {path}: {status}")
    return body.decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as ``{"name{labels}": value}`` (comments dropped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@dataclass
class PqcallServer:
    """``pqcall server`` running on the network's server host."""

    network: Network
    """The network it runs in."""
    process: subprocess.Popen[bytes]
    """The server process."""
    port: int
    """Its TCP port (and the relay's UDP port)."""

    def url_for(self, host: Host) -> str:
        """The server's URL as ``host`` reaches it."""
        return f"http://{self.network.address_of(self.network.server, host)}:{self.port}"

    def metrics(self) -> dict[str, float]:
        """The server's ``/metrics``, read from inside its own host."""
        return parse_metrics(http_get(self.network.server, "127.0.0.1", self.port, "/metrics"))

    def metric(self, name: str) -> float:
        """The sum of a metric over all its label values (0 when absent)."""
        return sum(
            value
            for key, value in self.metrics().items()
            if key == name or key.startswith(name + "{")
        )


def start_server(
    network: Network, processes: Processes, data_dir: Path, *options: str, label: str = "server"
) -> PqcallServer:
    """Start ``pqcall server`` on all addresses of the server host and wait for it.

    Args:
        network: where it runs (on ``network.server``).
        processes: where its output is kept, as ``label``.
        data_dir: its ``--data-dir`` (the SQLite database lives there).
        options: more command-line options.
        label: the name of its output files (another one to restart a server).

    Raises:
        AssertionError: it did not start (with its output).
    """
    args = [PYTHON, "-m", "pqcall", "server", "--host", "0.0.0.0", "--port", str(SERVER_PORT)]
    args += ["--data-dir", str(data_dir), "--name", SERVER_NAME, "--no-mdns", *options]
    process = processes.start(network.server, label, args)
    try:
        network.server.wait_for_port(
            SERVER_PORT, "127.0.0.1", timeout_s=START_TIMEOUT_S, process=process
        )
    except TimeoutError as exc:
        raise AssertionError(f"pqcall server did not start: {exc}\n{processes.report()}") from None
    return PqcallServer(network, process, SERVER_PORT)


def wait_until(
    condition: Callable[[], Any], timeout_s: float, what: str, report: Callable[[], str]
) -> Any:
    """Poll ``condition`` until it returns something true; that value.

    Raises:
        AssertionError: ``timeout_s`` (scaled) passed; the message says ``what``
            and has ``report()``.
    """
    return harness.wait_until(
        condition, what, timeout_s=scaled(timeout_s), interval_s=POLL_INTERVAL_S, report=report
    )
