"""Group invitations nobody answers, with real ``pqcall`` processes and a real server on loopback.

``pqcall server --ring-timeout`` short; alice runs ``pqcall call bob carol dave
erin --json``; bob answers (``listen --auto-answer``), so the call goes on; carol
has blocked alice and listens with ``--auto-answer`` (it must not ring, let alone
join); dave's phone is not running; erin's rings and nobody answers. Checked:

- on alice's side carol, dave and erin end ``no_answer`` (the roster line ``dave:
  no answer`` and the JSON), while bob was joined and heard;
- erin's phone rang, stopped with ``no answer``, and her history has it as missed;
- carol's phone never rang, and her ``pqcall history`` has the group invite
  with outcome ``blocked`` (the call screen dropped it, the user can see it);
- dave's next ``pqcall listen`` does not ring for the old invite: it says
  ``missed group call from alice`` and his history has it as missed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers import COMMAND_TIMEOUT_S, child_env, pqcall_command
from tests.harness import TIMEOUT_SCALE
from tests.server.test_runner import _free_port, _start, _stop, _wait_for_health

NAMES = ("alice", "bob", "carol", "dave", "erin")
RING_TIMEOUT_S = 6  # the server's: an invitation rings this long
CALL_S = int(RING_TIMEOUT_S + 12 * TIMEOUT_SCALE)  # alice's --duration: the ring-out and then some
READY_TIMEOUT_S = 30.0 * TIMEOUT_SCALE
END_TIMEOUT_S = 60.0 * TIMEOUT_SCALE


@dataclass
class World:
    url: str
    homes: dict[str, Path]
    env: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ringout")
    port = _free_port()
    server = _start(
        base,
        port,
        *("--no-mdns", "--relay-port", str(_free_port())),
        *("--ring-timeout", str(RING_TIMEOUT_S), "--log-level", "warning"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(f"{url}/health")
        env = child_env()
        homes = {name: base / name for name in NAMES}
        registering = [
            subprocess.Popen(
                pqcall_command(home, "register", name, "--server", url),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, home in homes.items()
        ]
        for process in registering:
            out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
            assert process.returncode == 0, out + err
        yield World(url, homes, env)
    finally:
        _stop(server)


class Phone:
    """One ``pqcall`` process, its output in files."""

    def __init__(
        self, world: World, name: str, tmp_path: Path, label: str, *args: str, typing: bool = False
    ) -> None:
        self.name = name
        self.out = tmp_path / f"{label}.out"
        self.err = tmp_path / f"{label}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                pqcall_command(world.homes[name], *args),
                env=world.env,
                stdin=subprocess.PIPE if typing else subprocess.DEVNULL,  # open: nobody typing
                stdout=out,
                stderr=err,
                text=True,
            )

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_for(self, words: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while words not in self.text():
            assert self.process.poll() is None, f"{self.name} exited:\n{self.text()}"
            assert time.monotonic() < deadline, f"{self.name}: no {words!r}:\n{self.text()}"
            time.sleep(0.1)

    def stop(self, signum: int = signal.SIGINT) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=END_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def record(self) -> dict[str, Any]:
        lines = [line for line in self.out.read_text().splitlines() if line.startswith("{")]
        assert len(lines) == 1, f"{self.name}: expected one JSON object:\n{self.text()}"
        record = json.loads(lines[0])
        assert isinstance(record, dict)
        return record


def run(world: World, name: str, *args: str) -> str:
    """``pqcall --home <name's> ARGS`` to the end; its stdout."""
    done = subprocess.run(
        pqcall_command(world.homes[name], *args),
        env=world.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def history(world: World, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run(world, name, "history", "--json").splitlines()]


@pytest.mark.e2e
@pytest.mark.slow
def test_unanswered_invites_ring_out_and_are_kept(world: World, tmp_path: Path) -> None:
    run(world, "carol", "block", "alice")
    media = ("--audio-in", "tone:440", "--audio-out", "null", "--json", "-v")
    bob = Phone(world, "bob", tmp_path, "bob", "listen", "--auto-answer", "--once", *media)
    carol = Phone(world, "carol", tmp_path, "carol", "listen", "--auto-answer", "--once", *media)
    erin = Phone(world, "erin", tmp_path, "erin", "listen", "--once", *media, typing=True)
    phones = [bob, carol, erin]
    try:
        for phone in phones:
            phone.wait_for("listening as")
        alice = Phone(
            world, "alice", tmp_path, "alice", "call", "bob", "carol", "dave", "erin",
            "--duration", str(CALL_S), *media,
        )  # fmt: skip
        phones.append(alice)
        erin.wait_for("group call from alice with")  # her phone rings; nobody answers
        alice.wait_for("dave: no answer", timeout_s=RING_TIMEOUT_S + READY_TIMEOUT_S)
        erin.wait_for("group call from alice: no answer")
        erin.process.wait(timeout=END_TIMEOUT_S)  # --once: done after the ring-out
        alice.process.wait(timeout=CALL_S + END_TIMEOUT_S)
        bob.stop()
        carol.stop()
    finally:
        for phone in phones:
            phone.stop(signal.SIGKILL)
    report = "\n".join(f"===== {p.name}\n{p.text()[-3000:]}" for p in phones)
    record = alice.record()
    states = {p["name"]: p["state"] for p in record["participants"]}
    assert states["carol"] == states["dave"] == states["erin"] == "no_answer", f"{states}\n{report}"
    assert "carol: no answer" in alice.text(), report
    bobs = next(p for p in record["participants"] if p["name"] == "bob")
    assert bobs["packets_received"] > 100, f"the call did not go on with bob\n{report}"
    # carol: the blocked inviter never rang, and the invite is in her history
    assert "group call from alice" not in carol.text(), report
    kept = [r for r in history(world, "carol") if r.get("call_id") == record["call_id"]]
    assert len(kept) == 1, history(world, "carol")
    assert kept[0]["group"] is True and kept[0]["result"] == "blocked", kept
    assert kept[0]["peer"] == "alice" and "dave" in kept[0]["members"], kept
    # erin's phone rang and rang out: a missed group call in her history
    rang = [r for r in history(world, "erin") if r.get("call_id") == record["call_id"]]
    assert len(rang) == 1 and rang[0]["result"] == "missed" and rang[0]["group"] is True, rang
    # dave comes online afterwards: no ringing for the old invite, a missed group call instead
    dave = Phone(world, "dave", tmp_path, "dave", "listen", *media)
    try:
        dave.wait_for("missed group call from alice")
        time.sleep(1.0)  # a ring for the old invite would show by now
    finally:
        dave.stop()
        dave.stop(signal.SIGKILL)
    assert "group call from alice with" not in dave.text(), dave.text()  # the ring line
    missed = [r for r in history(world, "dave") if r.get("call_id") == record["call_id"]]
    assert len(missed) == 1, history(world, "dave")
    assert missed[0]["group"] is True and missed[0]["result"] == "missed", missed
    assert missed[0]["reason"] == "no answer" and missed[0]["direction"] == "incoming", missed
