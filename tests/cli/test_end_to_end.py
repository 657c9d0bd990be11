"""Real processes: ``pqcall server`` and ``pqcall`` phones, as a person runs them.

One server (a child process on loopback, as in ``tests/server/test_runner.py``)
serves the module; alice, bob and carol register through the CLI into homes
of their own (with the real KDF, passphrase from ``PQCALL_PASSPHRASE``). Each
test then runs ``pqcall listen`` and ``pqcall call`` as child processes with
files for audio, and checks exit codes, the one JSON object each prints, and
the audio that arrived. Timeouts scale with ``PQCALL_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pqcall.media.audio_spec import open_source
from tests.cli.helpers import (
    CALL_RECORD_FIELDS,
    COMMAND_TIMEOUT_S,
    child_env,
    one_json,
    pqcall_command,
)
from tests.harness import TIMEOUT_SCALE
from tests.server.test_runner import _free_port, _start, _stop, _wait_for_health

READY_TIMEOUT_S = 20.0 * TIMEOUT_SCALE  # until a listener says it is listening
CALL_S = 3  # --duration of the calls
RING_TIMEOUT_S = 4.0 * TIMEOUT_SCALE  # the server's: an unanswered call is missed after it
SAMPLES = Path(__file__).parents[2] / "src" / "pqcall" / "media" / "samples"
QUIET = ("--audio-in", "silence", "--audio-out", "null")  # no sound card needed
MIN_RMS = 200.0  # of int16 samples: clearly more than silence (speech is ~2000)

JSON_FIELDS = CALL_RECORD_FIELDS


@dataclass
class World:
    url: str  # the server's base URL
    homes: dict[str, Path]  # each user's --home
    env: dict[str, str]  # PQCALL_PASSPHRASE set, PQCALL_HOME unset


def run_pqcall(
    world: World, home: Path | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pqcall_command(home, *args),
        env=env or world.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("e2e")
    port = _free_port()
    server = _start(
        base,
        port,
        *("--no-mdns", "--relay-port", str(_free_port()), "--log-level", "warning"),
        *("--ring-timeout", str(RING_TIMEOUT_S)),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(f"{url}/health")
        env = child_env()
        homes = {name: base / name for name in ("alice", "bob", "carol")}
        registering = {
            name: subprocess.Popen(
                pqcall_command(home, "register", name, "--server", url),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, home in homes.items()
        }
        for name, process in registering.items():
            out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
            assert process.returncode == 0, f"{name} did not register: {out}{err}"
            assert f"registered {name} at {url}" in out
            assert "identity fingerprint: " in out
        yield World(url, homes, env)
    finally:
        _stop(server)


def start_pqcall(
    world: World,
    home: Path,
    *args: str,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """``pqcall ARGS`` started in the background, stdin closed."""
    return subprocess.Popen(
        pqcall_command(home, *args),
        env=world.env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


class Listener:
    """``pqcall listen`` in the background, its output in files."""

    def __init__(
        self, world: World, name: str, tmp_path: Path, *args: str, answer: str | None = ""
    ):
        self.out_path = tmp_path / f"{name}-listen.out"  # its stdout
        self.err_path = tmp_path / f"{name}-listen.err"  # its stderr
        self.json_mode = "--json" in args  # human text on stderr then
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                pqcall_command(world.homes[name], "listen", *args),
                env=world.env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                text=True,
            )
        assert self.process.stdin is not None
        if answer is not None:  # None: stdin stays open, nobody answers
            # answers wait in the pipe until the listener asks
            self.process.stdin.write(answer)
            self.process.stdin.close()

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    @property
    def human(self) -> str:
        return self.err if self.json_mode else self.out

    def wait_ready(self) -> None:
        wait_for_text(self.process, lambda: self.human, "listening as ", self.report)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"listener did not exit\n{self.report()}") from None

    def report(self) -> str:
        return f"listener stdout:\n{self.out}\nlistener stderr:\n{self.err}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    started: list[Listener] = []
    yield started
    for listener in started:
        listener.stop()


def wait_for_text(process: subprocess.Popen[Any], read: Any, text: str, report: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while text not in read():
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before {text!r}\n{report()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in time\n{report()}")
        time.sleep(0.05)


def rms(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def check_answered(record: dict[str, Any], peer: str, direction: str) -> None:
    missing = [field for field in JSON_FIELDS if field not in record]
    assert not missing, f"missing fields {missing}"
    assert record["peer"] == peer
    assert record["direction"] == direction
    assert record["result"] == "ended"
    assert record["path"] == "direct"
    assert record["codec"] == "opus"
    assert record["frame_ms"] == 20
    assert CALL_S - 0.5 <= record["duration_s"] <= CALL_S + 5
    assert record["packets_sent"] > 50
    assert record["packets_received"] > 50
    assert record["packets_rejected"] == 0
    assert 1.0 <= record["mos"] <= 4.5
    for field in ("first_capture_unix", "first_playout_unix"):
        assert abs(record[field] - time.time()) < 120


def test_call_answered_with_files_both_ways(world, tmp_path, listeners):
    received = {name: tmp_path / f"{name}-received.wav" for name in ("alice", "bob")}
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--auto-answer", "--once", "--json"),
        *("--audio-in", str(SAMPLES / "bob.wav"), "--audio-out", str(received["bob"])),
    )
    listeners.append(bob)
    bob.wait_ready()
    alice = run_pqcall(
        world,
        world.homes["alice"],
        *("call", "bob", "--duration", str(CALL_S), "--json"),
        *("--audio-in", str(SAMPLES / "alice.wav"), "--audio-out", str(received["alice"])),
    )
    bob_code = bob.wait()
    report = f"caller stdout:\n{alice.stdout}\ncaller stderr:\n{alice.stderr}\n{bob.report()}"
    assert alice.returncode == 0, report
    assert bob_code == 0, report

    ours, theirs = one_json(alice.stdout), one_json(bob.out)
    check_answered(ours, "bob", "outgoing")
    check_answered(theirs, "alice", "incoming")
    assert ours["call_id"] == theirs["call_id"]
    assert ours["sas"] == theirs["sas"]
    assert len(ours["sas"].replace(" ", "")) == 6

    assert "ringing bob…" in alice.stderr
    assert f"SAS: read this aloud: {ours['sas']}" in alice.stderr
    assert f"SAS: read this aloud: {ours['sas']}" in bob.err
    assert "incoming call from alice (" in bob.err
    for name, path in received.items():
        assert rms(path) > MIN_RMS, f"{name} received silence"

    history = run_pqcall(world, world.homes["alice"], "history", "--json", "--limit", "1")
    assert one_json(history.stdout)["call_id"] == ours["call_id"]
    contacts = run_pqcall(world, world.homes["bob"], "contacts", "--json")
    names = [json.loads(line)["name"] for line in contacts.stdout.splitlines()]
    assert "alice" in names


def test_accept_on_stdin_with_tones(world, tmp_path, listeners):
    received = tmp_path / "alice-received.wav"
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--once", "--audio-in", "tone:660", "--audio-out", "null"),
        answer="y\n",
    )
    listeners.append(bob)
    bob.wait_ready()
    alice = run_pqcall(
        world,
        world.homes["alice"],
        *("call", "bob", "--duration", "2", "--audio-in", "tone:440"),
        *("--audio-out", str(received)),
    )
    bob_code = bob.wait()
    report = f"{alice.stdout}{alice.stderr}\n{bob.report()}"
    assert alice.returncode == 0, report
    assert bob_code == 0, report
    assert "accept? [y/N]" in bob.out
    assert "call with bob ended after" in alice.stdout
    assert "call with alice ended after" in bob.out
    assert rms(received) > MIN_RMS


def heard_tones(path: Path) -> list[str]:
    """What a WAV holds, 100 ms at a time, runs of at least 300 ms: "quiet" or "660" / "880" Hz."""
    with wave.open(str(path), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    window = 4_800
    kinds = []
    for start in range(0, len(samples) - window + 1, window):
        chunk = samples[start : start + window].astype(np.float64)
        if np.sqrt(np.mean(chunk**2)) < 100:
            kinds.append("quiet")
            continue
        peak_hz = np.argmax(np.abs(np.fft.rfft(chunk))) * 48_000 / window
        kinds.append(f"{round(peak_hz / 10) * 10}")
    runs: list[str] = []
    for index in range(len(kinds) - 2):
        if kinds[index] == kinds[index + 1] == kinds[index + 2]:
            if not runs or runs[-1] != kinds[index]:
                runs.append(kinds[index])
    return runs


def test_mute_switch_and_hang_up_typed_during_a_call(world, tmp_path, listeners):
    received = tmp_path / "alice-received.wav"
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--once", "--audio-in", "tone:660", "--audio-out", "null"),
        answer=None,
    )
    listeners.append(bob)
    bob.wait_ready()
    alice = start_pqcall(
        world,
        world.homes["alice"],
        *("call", "bob", "--duration", "30", "--audio-in", "silence"),
        *("--audio-out", str(received)),
    )
    typed = bob.process.stdin
    assert typed is not None

    def type_and_wait(line: str, answer: str, then_s: float = 0.0) -> None:
        typed.write(line + "\n")
        typed.flush()
        wait_for_text(bob.process, lambda: bob.out, answer, bob.report)
        time.sleep(then_s)

    try:
        wait_for_text(bob.process, lambda: bob.out, "accept? [y/N]", bob.report)
        type_and_wait("y", "SAS: read this aloud", then_s=1.0)
        type_and_wait("in tone:880", "microphone is now tone:880", then_s=1.0)
        type_and_wait("in missing.wav", "still using the same device")
        type_and_wait("volume up", "type m (mute/unmute)")
        type_and_wait("m", "muted: the peer hears silence", then_s=1.0)
        type_and_wait("h", "hanging up")
        bob_code = bob.wait()
        alice_out, alice_err = alice.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    report = f"{alice_out}{alice_err}\n{bob.report()}"
    assert bob_code == 0, report
    assert alice.returncode == 0, report
    assert "call with alice ended after" in bob.out
    assert "call with bob ended after" in alice_out, report
    # alice heard bob's 660 Hz, then 880 Hz after "in tone:880", then silence after "m"
    runs = heard_tones(received)
    assert runs[runs.index("660") :][:3] == ["660", "880", "quiet"], runs


def test_declined(world, tmp_path, listeners):
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--once", "--audio-in", "silence", "--audio-out", "null"),
        answer="n\n",
    )
    listeners.append(bob)
    bob.wait_ready()
    alice = run_pqcall(
        world, world.homes["alice"], "call", "bob", "--audio-in", "silence", "--audio-out", "null"
    )
    bob_code = bob.wait()
    report = f"{alice.stdout}{alice.stderr}\n{bob.report()}"
    assert alice.returncode == 1, report
    assert "bob declined the call" in alice.stderr, report
    assert "Traceback" not in alice.stderr
    assert bob_code == 1, report
    assert "declined the call from alice" in bob.out


def test_missed(world, tmp_path, listeners):
    bob = Listener(world, "bob", tmp_path, "--once", *QUIET, answer=None)
    listeners.append(bob)
    bob.wait_ready()
    alice = run_pqcall(world, world.homes["alice"], "call", "bob", "--json", *QUIET)
    bob_code = bob.wait()
    report = f"{alice.stdout}{alice.stderr}\n{bob.report()}"
    assert alice.returncode == 1, report
    assert "no answer from bob" in alice.stderr, report
    assert one_json(alice.stdout)["result"] == "missed"
    assert bob_code == 1, report
    assert "missed call from alice" in bob.out, report


def test_caller_hangs_up_with_ctrl_c(world, tmp_path, listeners):
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--auto-answer", "--once", "--json", "--audio-in", "silence", "--audio-out", "null"),
    )
    listeners.append(bob)
    bob.wait_ready()
    err_path = tmp_path / "alice.err"
    with open(err_path, "w") as err:
        alice = start_pqcall(
            world,
            world.homes["alice"],
            *("call", "bob", "--json", "--audio-in", "tone:440", "--audio-out", "null"),
            stderr=err,
        )
    try:
        wait_for_text(alice, err_path.read_text, "SAS: read this aloud", bob.report)
        time.sleep(1.0)
        alice.send_signal(signal.SIGINT)
        out, _ = alice.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    bob_code = bob.wait()
    report = f"{out}{err_path.read_text()}\n{bob.report()}"
    assert alice.returncode == 130, report
    assert one_json(out)["result"] == "ended"
    assert bob_code == 0, report  # the peer hung up: a normal end
    assert one_json(bob.out)["reason"] == "peer hung up"


def test_busy(world, tmp_path, listeners):
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--auto-answer", "--once", "--audio-in", "silence", "--audio-out", "null"),
    )
    listeners.append(bob)
    bob.wait_ready()
    out_path = tmp_path / "alice.out"
    call_args = ["call", "bob", "--duration", "30", "--audio-in", "silence", "--audio-out", "null"]
    with open(out_path, "w") as out:
        # people's text: stdout without --json
        alice = start_pqcall(
            world, world.homes["alice"], *call_args, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_text(alice, out_path.read_text, "SAS: read this aloud", bob.report)
        carol = run_pqcall(
            world,
            world.homes["carol"],
            "call",
            "bob",
            "--audio-in",
            "silence",
            "--audio-out",
            "null",
        )
        assert carol.returncode == 1, f"{carol.stdout}{carol.stderr}\n{bob.report()}"
        assert carol.stderr.endswith("bob is busy\n"), carol.stderr
        alice.send_signal(signal.SIGINT)
        assert alice.wait(timeout=COMMAND_TIMEOUT_S) == 130
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    assert bob.wait() == 0, bob.report()


def safety_number(output: str) -> str:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("safety number of"))
    return " ".join(line.strip() for line in lines[start + 1 : start + 4])


def test_safety_numbers_match(world):
    # neither may have pinned the other yet: verify then fetches the key from the server
    ours = run_pqcall(world, world.homes["alice"], "verify", "carol")
    theirs = run_pqcall(world, world.homes["carol"], "verify", "alice")
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    number = safety_number(ours.stdout)
    assert len(number.replace(" ", "")) == 60
    assert safety_number(theirs.stdout) == number

    confirmed = run_pqcall(world, world.homes["carol"], "verify", "alice", "--confirm")
    assert confirmed.returncode == 0
    contacts = run_pqcall(world, world.homes["carol"], "contacts", "--json")
    records = {json.loads(line)["name"]: json.loads(line) for line in contacts.stdout.splitlines()}
    assert records["alice"]["verified"] is True


def test_callee_offline(world):
    # issue 21: an offline callee is still called; the server rings out after its timeout
    result = run_pqcall(world, world.homes["alice"], "call", "carol", *QUIET)
    assert result.returncode == 1
    assert "no answer from carol" in result.stderr, result.stderr + result.stdout


def test_unknown_user(world):
    result = run_pqcall(world, world.homes["alice"], "call", "nobody", *QUIET)
    assert result.returncode == 1
    assert result.stderr == "pqcall: no user named nobody on this server\n"


def test_wrong_passphrase(world):
    env = dict(world.env, PQCALL_PASSPHRASE="not it")
    result = run_pqcall(world, world.homes["alice"], "call", "bob", *QUIET, env=env)
    assert result.returncode == 1
    assert result.stderr == (
        f"pqcall: wrong passphrase for the account in {world.homes['alice']}\n"
    )


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["SIGINT", "SIGTERM"],
)
def test_listen_stops_cleanly_on_a_signal(world, tmp_path, listeners, signum, code):
    bob = Listener(world, "bob", tmp_path, "--audio-in", "silence", "--audio-out", "null")
    listeners.append(bob)
    bob.wait_ready()
    bob.process.send_signal(signum)
    assert bob.wait() == code
    assert "Traceback" not in bob.err


def test_demo(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQCALL_")}
    result = subprocess.run(
        pqcall_command(None, "demo", "--duration", "3", "--out", str(tmp_path)),
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S * 2,
        stdin=subprocess.DEVNULL,
    )
    report = f"{result.stdout}{result.stderr}"
    assert result.returncode == 0, report
    assert "on both phones: they match" in result.stdout
    for name in ("alice", "bob"):
        path = tmp_path / f"{name}-received.wav"
        assert f"{name} heard: {path}" in result.stdout
        assert rms(path) > MIN_RMS, f"{name} received silence"
    for label in ("rtt", "loss", "jitter buffer", "FEC recovered", "MOS", "packets rejected"):
        assert label in result.stdout


def test_samples_are_speech():
    # the demo's and these tests' audio: make sure the files are what they claim
    for name in ("alice.wav", "bob.wav"):
        assert rms(SAMPLES / name) > MIN_RMS
        open_source(str(SAMPLES / name)).close()


def test_dead_peer_shows_reconnecting_then_connection_lost(world, tmp_path, listeners):
    bob = Listener(world, "bob", tmp_path, "--auto-answer", "--once", *QUIET)
    listeners.append(bob)
    bob.wait_ready()
    err_path = tmp_path / "alice.err"
    with open(err_path, "w") as err:
        alice = start_pqcall(
            world, world.homes["alice"], "call", "bob", "--duration", "60", "--json", *QUIET,
            stderr=err,
        )  # fmt: skip
    try:
        wait_for_text(alice, err_path.read_text, "SAS: read this aloud", bob.report)
        time.sleep(1.0)
        bob.process.kill()  # the peer's process dies: no hang-up, nothing more on the wire
        killed_at = time.monotonic()
        shown = "no audio from bob \N{EN DASH} reconnecting…"
        wait_for_text(alice, err_path.read_text, shown, bob.report)
        shown_s = time.monotonic() - killed_at
        out, _ = alice.communicate(timeout=COMMAND_TIMEOUT_S)
        ended_s = time.monotonic() - killed_at
    finally:
        if alice.poll() is None:
            alice.kill()
            alice.wait()
    report = f"{out}{err_path.read_text()}"
    assert shown_s <= 2.0 * TIMEOUT_SCALE, report
    assert alice.returncode == 1, report
    assert "connection to bob lost after" in err_path.read_text(), report
    record = one_json(out)
    assert (record["result"], record["reason"]) == ("failed", "peer unreachable"), report
    assert 9.0 <= ended_s <= 10.0 + 5.0 * TIMEOUT_SCALE, report  # the media timeout, 10 s
    assert record["packets_lost"] >= 400, report  # ~500 frames of 20 ms did not come
