"""Two ``pqcall server`` processes on one PostgreSQL and one Redis bus, phones on each.

Issue 18 part 2, as an operator deploys it: node A and node B are separate
processes on two ports, started with the same ``--name``, ``--db`` (a
PostgreSQL database of the test's own) and ``--bus`` (Redis). alice registered
at A and talks only to A; bob registered at B and listens only on B. Checked:
bob's phone on B rings for alice's call made through A, the call is answered,
speech crosses both ways with the same SAS on both sides, both hang up with
their JSON records; and presence across nodes (two more accounts over HTTP): carol, asking A,
sees dave online while his push socket is open on B, and offline once it closed.
And node A killed (SIGKILL) mid-call: the direct-path call between alice on A
and bob on B runs its whole duration with speech in its last 2 s on both
sides, and node B takes the sweepers over (the advisory lock left with A).

Loopback only (no network namespaces; the place under tests/e2e marks it
netns like its neighbours). Needs ``PQCALL_TEST_DATABASE_URL`` and Redis
(``PQCALL_TEST_REDIS_URL``), both set by ``.ci/run``, where the test is
mandatory; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import make_url
from websockets.sync.client import connect

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.signaling.messages import b64encode
from tests.cli.helpers import COMMAND_TIMEOUT_S, child_env, one_json, pqcall_command
from tests.harness import scaled
from tests.server.conftest import PG_ENV, _pg_execute, bundle_for, login, registration
from tests.server.test_bus import redis_url  # noqa: F401 (the fixture)
from tests.server.test_runner import _free_port, _stop, _wait_for_health

SAMPLES = Path(__file__).parents[2] / "src" / "pqcall" / "media" / "samples"
NAME = "twonodes.test"  # the --name both nodes share
CALL_S = 4  # --duration of alice's call
MIN_RMS = 200.0  # of int16 samples: speech, not silence
READY_TIMEOUT_S = scaled(30.0)  # until bob's listener says it listens
KILL_CALL_S = 8  # --duration of the call whose caller's node is killed
LEADER_LINE = "this node runs the sweepers now"
PRESENCE_TIMEOUT_S = scaled(10.0)  # until A reports dave's presence right


@pytest.fixture
def database() -> Iterator[str]:
    """A PostgreSQL database of this test's own (dropped after it)."""
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PG_ENV} is required here")
        pytest.skip(f"{PG_ENV} not set")
    name = f"pqcall_nodes_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_pg_execute(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Node:
    """One ``pqcall server`` process, its output in files."""

    def __init__(self, label: str, base: Path, db: str, bus: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err_path = base / f"{label}.err"
        command = pqcall_command(
            None,
            *("server", "--host", "127.0.0.1", "--port", str(self.port), "--name", NAME),
            *("--data-dir", str(base / label), "--db", db, "--bus", bus),
            *("--relay-port", str(_free_port()), "--no-mdns", "--log-level", "info"),
        )
        with open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                command, env=child_env(), stdout=subprocess.DEVNULL, stderr=err
            )
        try:
            _wait_for_health(f"{self.url}/health")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{label} did not start:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.err_path.read_text()

    def stop(self) -> None:
        _stop(self.process)


def rms(path: Path, last_s: float | None = None) -> float:
    """Of the int16 samples in a WAV file (only its last ``last_s`` seconds if given)."""
    with wave.open(str(path), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if last_s is not None:
            samples = samples[-int(last_s * wav.getframerate()) :]
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pqcall_command(home, *args),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def http_account(node: Node, username: str) -> httpx.Client:
    """An account registered and logged in over HTTP at ``node``: a client with its token."""
    identity = IdentityPrivateKey.generate()
    client = httpx.Client(base_url=node.url, timeout=COMMAND_TIMEOUT_S)
    body = registration(identity, username, server_name=NAME)
    body["key_bundle"] = b64encode(bundle_for(identity, username))
    registered = client.post("/register", json=body)
    assert registered.status_code == 201, registered.text
    logged_in = login(client, identity, username, server_name=NAME)
    assert logged_in.status_code == 200, logged_in.text
    client.headers["Authorization"] = f"Bearer {logged_in.json()['token']}"
    return client


def dave_online(carol: httpx.Client) -> bool:
    """What carol's node says of dave's presence."""
    users = carol.get("/presence", params={"names": "dave"}).json()["users"]
    assert [user["username"] for user in users] == ["dave"], users
    return bool(users[0]["online"])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PRESENCE_TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_call_between_phones_on_two_nodes(database, redis_url, tmp_path):  # noqa: F811
    nodes: list[Node] = []
    listen: subprocess.Popen[str] | None = None
    try:
        for label in ("node-a", "node-b"):
            nodes.append(Node(label, tmp_path, database, redis_url))
        a, b = nodes
        homes = {name: tmp_path / name for name in ("alice", "bob")}
        for name, node in (("alice", a), ("bob", b)):
            done = run(homes[name], "register", name, "--server", node.url)
            assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"

        received = {name: tmp_path / f"{name}-received.wav" for name in homes}
        listen_out = tmp_path / "bob-listen.out"
        listen_err = tmp_path / "bob-listen.err"
        with open(listen_out, "w") as out, open(listen_err, "w") as err:
            listen = subprocess.Popen(
                pqcall_command(
                    homes["bob"],
                    *("listen", "--auto-answer", "--once", "--json"),
                    *("--audio-in", str(SAMPLES / "bob.wav"), "--audio-out", str(received["bob"])),
                ),
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "listening as " not in listen_err.read_text():
            assert listen.poll() is None, f"bob's listener exited: {listen_err.read_text()}"
            assert time.monotonic() < deadline, f"bob never listened: {listen_err.read_text()}"
            time.sleep(0.05)

        call = run(
            homes["alice"],
            *("call", "bob", "--duration", str(CALL_S), "--json"),
            *("--audio-in", str(SAMPLES / "alice.wav"), "--audio-out", str(received["alice"])),
        )
        bob_code = listen.wait(timeout=COMMAND_TIMEOUT_S)
        report = (
            f"alice:\n{call.stdout}{call.stderr}\nbob:\n{listen_out.read_text()}"
            f"{listen_err.read_text()}\nnode A:\n{a.log()[-3000:]}\nnode B:\n{b.log()[-3000:]}"
        )
        assert call.returncode == 0 and bob_code == 0, report
        ours, theirs = one_json(call.stdout), one_json(listen_out.read_text())
        assert ours["call_id"] == theirs["call_id"], report
        assert ours["result"] == theirs["result"] == "ended", report  # answered, then hung up
        assert (ours["peer"], theirs["peer"]) == ("bob", "alice"), report
        assert ours["packets_received"] > 50 and theirs["packets_received"] > 50, report
        assert ours["sas"] == theirs["sas"], report
        assert ours["duration_s"] >= CALL_S - 0.5, report
        for name, path in received.items():
            assert rms(path) > MIN_RMS, f"{name} received silence\n{report}"

        # presence across nodes, over HTTP: carol on A, dave's push socket on B
        carol = http_account(a, "carol")
        dave = http_account(b, "dave")
        call_id = secrets.token_hex(16)
        offer = {"call_id": call_id, "callee": "dave", "offer": b64encode(b"offer")}
        assert carol.post("/call/initiate", json=offer).status_code == 201
        answer = {"call_id": call_id, "answer": b64encode(b"answer")}
        assert dave.post("/call/accept", json=answer).status_code == 200  # dave shares presence
        assert carol.post("/call/hangup", json={"call_id": call_id}).status_code == 200
        assert dave_online(carol) is False
        socket_url = b.url.replace("http", "ws", 1) + "/events"
        with connect(
            socket_url,
            additional_headers={"Authorization": dave.headers["Authorization"]},
            proxy=None,
        ):
            wait_until(lambda: dave_online(carol) is True, "A to see dave online on B")
        wait_until(lambda: dave_online(carol) is False, "A to see dave gone from B")
    finally:
        if listen is not None and listen.poll() is None:
            listen.kill()
            listen.wait()
        for node in nodes:
            node.stop()


def test_a_call_goes_on_when_the_callers_node_dies(database, redis_url, tmp_path):  # noqa: F811
    """SIGKILL of node A mid-call: the direct-path call between a phone on A and one on B
    runs to its end with speech both ways, and node B takes over the sweepers."""
    nodes: list[Node] = []
    listen: subprocess.Popen[str] | None = None
    try:
        for label in ("node-a", "node-b"):
            nodes.append(Node(label, tmp_path, database, redis_url))
        a, b = nodes
        deadline = time.monotonic() + READY_TIMEOUT_S
        while LEADER_LINE not in a.log():  # A started first: it leads
            assert time.monotonic() < deadline, f"A never led the sweepers:\n{a.log()}"
            time.sleep(0.1)
        assert LEADER_LINE not in b.log()
        homes = {name: tmp_path / name for name in ("alice", "bob")}
        for name, node in (("alice", a), ("bob", b)):
            done = run(homes[name], "register", name, "--server", node.url)
            assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        received = {name: tmp_path / f"{name}-received.wav" for name in homes}
        listen_out, listen_err = tmp_path / "bob-listen.out", tmp_path / "bob-listen.err"
        with open(listen_out, "w") as out, open(listen_err, "w") as err:
            listen = subprocess.Popen(
                pqcall_command(
                    homes["bob"],
                    *("listen", "--auto-answer", "--once", "--json"),
                    *("--audio-in", str(SAMPLES / "bob.wav"), "--audio-out", str(received["bob"])),
                ),
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "listening as " not in listen_err.read_text():
            assert listen.poll() is None, f"bob's listener exited: {listen_err.read_text()}"
            assert time.monotonic() < deadline, f"bob never listened: {listen_err.read_text()}"
            time.sleep(0.05)
        call_out, call_err = tmp_path / "alice-call.out", tmp_path / "alice-call.err"
        with open(call_out, "w") as out, open(call_err, "w") as err:
            call = subprocess.Popen(
                pqcall_command(
                    homes["alice"],
                    *("call", "bob", "--duration", str(KILL_CALL_S), "--json"),
                    *("--audio-in", str(SAMPLES / "alice.wav")),
                    *("--audio-out", str(received["alice"])),
                ),
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "SAS: read this aloud" not in call_err.read_text():
            assert call.poll() is None, f"alice's call ended: {call_err.read_text()}"
            assert time.monotonic() < deadline, f"no SAS: {call_err.read_text()}"
            time.sleep(0.05)
        time.sleep(1.0)  # media flows
        a.process.kill()  # SIGKILL: no goodbye on the bus, the advisory lock goes with it
        a.process.wait()
        call.wait(timeout=COMMAND_TIMEOUT_S)
        bob_code = listen.wait(timeout=COMMAND_TIMEOUT_S)
        report = (
            f"alice:\n{call_out.read_text()}{call_err.read_text()}\nbob:\n"
            f"{listen_out.read_text()}{listen_err.read_text()}\nnode B:\n{b.log()[-3000:]}"
        )
        ours, theirs = one_json(call_out.read_text()), one_json(listen_out.read_text())
        assert ours["duration_s"] >= KILL_CALL_S - 0.5, report  # ran to its end
        assert ours["path"] == theirs["path"] == "direct", report
        for name, path in received.items():
            assert rms(path, last_s=2.0) > MIN_RMS, f"{name}: silence at the end\n{report}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while LEADER_LINE not in b.log():  # B took over the sweepers
            assert time.monotonic() < deadline, f"B never took over the sweepers\n{report}"
            time.sleep(0.1)
        print(  # noqa: T201
            f"\nnode A killed mid-call: exit codes alice {call.returncode} bob {bob_code},"
            f" alice's reason {ours.get('reason')!r}, bob's {theirs.get('reason')!r}"
        )
    finally:
        for process in (listen,):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for node in nodes:
            if node.process.poll() is None:
                node.stop()
