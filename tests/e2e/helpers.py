"""Phones and their call records, shared by the two-host tests.

A :class:`Phone` is one account with its own home directory on one host of
the rig; its ``pqcall`` commands run through :class:`~tests.e2e.conftest.Processes`
so their output ends up in every failure message. :func:`call_record` reads
the one JSON object a ``call --json`` or ``listen --once --json`` printed.
:func:`two_phones` and :func:`listen_once` are the set-up the NAT, TURN, relay and
mobility tests repeat: a server, alice and bob registered, bob listening for one call.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cli.helpers import CALL_RECORD_FIELDS
from tests.netns import Host

from .conftest import PYTHON, PqcallServer, Processes, start_server, wait_until

PASSPHRASE = "two hosts, one call"
REGISTER_TIMEOUT_S = 60.0
ONLINE_TIMEOUT_S = 30.0  # until the listening phone is connected to the server

RECORD_FIELDS = CALL_RECORD_FIELDS
"""What the JSON of a finished call has at least (issue 5)."""
UNANSWERED_FIELDS = ("call_id", "peer", "direction", "result", "reason", "duration_s")
"""What the JSON of a call that was never answered has at least (no media figures)."""


class Phone:
    """One phone on its host: its home directory, and ``pqcall`` commands run there."""

    def __init__(self, name: str, host: Host, home: Path, processes: Processes) -> None:
        self.name = name  # account name
        self.host = host  # the machine it runs on
        self.home = home  # its --home directory
        self.processes = processes  # where its commands and their output are kept
        self.env = dict(os.environ, PQCALL_PASSPHRASE=PASSPHRASE, PQCALL_HOME=str(home))

    def command(self, *args: str) -> list[str]:
        """``pqcall --home HOME ARGS...`` with the test's interpreter."""
        return [PYTHON, "-m", "pqcall", "--home", str(self.home), *args]

    def register(self, server: PqcallServer) -> None:
        """``pqcall register NAME`` at ``server``, to the end.

        Raises:
            AssertionError: it failed (with every process's output).
        """
        label = f"{self.name}-register"
        args = self.command("register", self.name, "--server", server.url_for(self.host))
        done = self.processes.run(self.host, label, args, self.env, REGISTER_TIMEOUT_S)
        assert done.returncode == 0, f"{self.name} could not register\n{self.processes.report()}"


def json_records(processes: Processes, label: str) -> list[dict[str, Any]]:
    """Every JSON object a process printed on stdout (one per line), in order."""
    lines = processes.output(label).splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def call_record(
    processes: Processes, label: str, fields: tuple[str, ...] = RECORD_FIELDS
) -> dict[str, Any]:
    """The one JSON record a phone printed for its call, checked to have ``fields``.

    Raises:
        AssertionError: not exactly one record, or fields missing.
    """
    records = json_records(processes, label)
    assert len(records) == 1, f"{label}: expected one JSON call record, got {len(records)}"
    record = records[0]
    missing = [name for name in fields if name not in record]
    assert not missing, f"{label}: call record lacks {missing}"
    return record


@dataclass
class TwoPhones:
    """A ``pqcall server`` on the rig's server host, alice and bob registered at it."""

    server: PqcallServer
    alice: Phone
    bob: Phone
    processes: Processes


def two_phones(net: Any, processes: Processes, tmp_path: Path, *server_options: str) -> TwoPhones:
    """Start the server (with ``server_options``) and register alice and bob on ``net``.

    Raises:
        AssertionError: the server did not start or a phone could not register.
    """
    server = start_server(net, processes, tmp_path / "server", *server_options)
    alice = Phone("alice", net.alice, tmp_path / "alice", processes)
    bob = Phone("bob", net.bob, tmp_path / "bob", processes)
    alice.register(server)
    bob.register(server)
    return TwoPhones(server, alice, bob, processes)


def listen_once(
    phones: TwoPhones, *options: str, label: str = "bob-listen"
) -> subprocess.Popen[bytes]:
    """Bob's ``listen --auto-answer --once --json OPTIONS...``, once the server counts him online.

    Raises:
        AssertionError: his listen exited, or he was not online in time.
    """
    bob, processes = phones.bob, phones.processes
    args = bob.command("listen", "--auto-answer", "--once", "--json", *options)
    listen = processes.start(bob.host, label, args, bob.env)

    def online() -> bool:
        assert listen.poll() is None, f"bob's listen exited early\n{processes.report()}"
        return phones.server.metric("pqcall_connected_phones") >= 1

    wait_until(online, ONLINE_TIMEOUT_S, "bob to be online", processes.report)
    return listen
