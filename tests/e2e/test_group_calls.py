"""Group calls between real ``pqcall`` processes on loopback: a server, four phones.

``pqcall server`` and each phone run as child processes (no network namespaces:
the group forwarder is what is tested, on 127.0.0.1). bob, carol and dave run
``pqcall listen --auto-answer --once --json``; alice runs ``pqcall call bob carol
dave --duration S --json``. Each plays a different voice of the speech corpus
and records what it hears. Checked: every phone prints one JSON object with
``group: true``, the same group code, every other participant with packets
received and its key held; and each recording follows each of the three other
voices (level envelope correlation, as in the two-host tests) clearly better
than a voice nobody sent.

The second test kills one phone mid-call: the others show it ``gone`` within a
few seconds, and the remaining two keep hearing each other.
"""

from __future__ import annotations

import json
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

from pqcall.bench.corpus import build_corpus
from pqcall.bench.quality import REFERENCE_RATE_HZ, resample
from tests.cli.helpers import COMMAND_TIMEOUT_S, child_env, pqcall_command
from tests.harness import TIMEOUT_SCALE
from tests.server.test_runner import _free_port, _start, _stop, _wait_for_health

from .test_two_hosts import active_seconds, read_wav, speech_similarity


def best_similarity(received: Any, reference: Any, offset: float) -> float:
    """The best :func:`speech_similarity` of windows near ``offset`` s (the jitter
    buffers may have moved the turn by up to ``WINDOW_SLACK_S``)."""
    scores = []
    for start in np.arange(offset - WINDOW_SLACK_S, offset + WINDOW_SLACK_S, SEARCH_STEP_S):
        low = max(0, int((start - 0.5) * REFERENCE_RATE_HZ))
        high = int((start + SPEECH_S + 0.5) * REFERENCE_RATE_HZ)
        scores.append(speech_similarity(received[low:high], reference))
    return max(scores)


def write_wav(path: Path, samples: Any, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


NAMES = ("alice", "bob", "carol", "dave")
# each phone speaks in its turn: LEAD_S of silence (joins and key rotations settle),
# then its SPEECH_S of speech in slot k (k: its place in NAMES), silence around it
LEAD_S = 8.0
SPEECH_S = 3.0
SLOT_S = 5.5
CALL_S = int(LEAD_S + SLOT_S * len(NAMES) + 4)  # alice's --duration
KILL_CALL_S = 30  # long enough for the killed phone to come back
WINDOW_SLACK_S = 2.0  # where a turn is looked for: its expected place, give or take this
READY_TIMEOUT_S = 30.0 * TIMEOUT_SCALE
END_TIMEOUT_S = 60.0 * TIMEOUT_SCALE
GONE_WITHIN_S = 8.0  # the forwarder's 5 s of silence, then the roster push
MIN_SIMILARITY = 0.8  # envelope correlation with the voice of that turn (0.94-1.00 seen)
MIN_MARGIN = 0.1  # ... above a voice nobody sent (0.53-0.70 seen)
MIN_SPEECH_S = 2.0  # of the SPEECH_S a turn has
ENERGY_SLACK_S = 1.0  # speech counted this far around a turn (the next starts 2.5 s after)
SEARCH_STEP_S = 0.25  # where a turn is looked for, in steps of this
RATE_HZ = 48_000  # of the input files


@dataclass
class World:
    url: str
    homes: dict[str, Path]
    env: dict[str, str]
    voices: dict[str, Path]
    references: dict[str, Any]  # each voice at 16 kHz, and "stranger": one nobody sends


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("group")
    corpus = build_corpus()
    utterances = corpus.utterances
    references: dict[str, Any] = {}
    references["stranger"] = utterances[len(NAMES)].samples(REFERENCE_RATE_HZ)
    voices = {}
    for turn, (name, utterance) in enumerate(zip(NAMES, utterances, strict=False)):
        speech = utterance.samples(RATE_HZ)[: int(SPEECH_S * RATE_HZ)]
        references[name] = utterance.samples(REFERENCE_RATE_HZ)[: int(SPEECH_S * REFERENCE_RATE_HZ)]
        before = np.zeros(int((LEAD_S + turn * SLOT_S) * RATE_HZ), np.int16)
        after = np.zeros(int(CALL_S * RATE_HZ), np.int16)
        voices[name] = base / f"{name}-turn.wav"
        write_wav(voices[name], np.concatenate([before, speech, after]), RATE_HZ)
    port = _free_port()
    server = _start(base, port, "--no-mdns", "--relay-port", str(_free_port()))
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
        yield World(url, homes, env, voices, references)
    finally:
        _stop(server)


class Member:
    """One ``pqcall`` phone process, its output in files."""

    def __init__(
        self, world: World, name: str, tmp_path: Path, *args: str, label: str = ""
    ) -> None:
        self.name = name
        label = label or name
        self.received = tmp_path / f"{label}-received.wav"
        self.out = tmp_path / f"{label}.out"
        self.err = tmp_path / f"{label}.err"
        media = ("--audio-in", str(world.voices[name]), "--audio-out", str(self.received))
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                pqcall_command(world.homes[name], *args, *media, "--json", "-v"),
                env=world.env,
                stdin=subprocess.DEVNULL,
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


def listeners(world: World, tmp_path: Path, names: tuple[str, ...]) -> list[Member]:
    started = [Member(world, name, tmp_path, "listen", "--auto-answer", "--once") for name in names]
    for member in started:
        member.wait_for("listening as")
    return started


def report(members: list[Member]) -> str:
    return "\n".join(f"===== {m.name}\n{m.text()[-3000:]}" for m in members)


@pytest.mark.e2e
@pytest.mark.slow
def test_four_people_hear_each_other(world: World, tmp_path: Path) -> None:
    others = listeners(world, tmp_path, ("bob", "carol", "dave"))
    alice = Member(
        world, "alice", tmp_path, "call", "bob", "carol", "dave", "--duration", str(CALL_S)
    )
    members = [alice, *others]
    try:
        alice.process.wait(timeout=CALL_S + END_TIMEOUT_S)
        for member in others:  # they would stay with each other: each leaves
            member.stop()
    finally:
        for member in members:
            member.stop(signal.SIGKILL)
    records = {m.name: m.record() for m in members}
    text = report(members)
    full = [
        {entry["code"] for entry in record["group_codes"] if len(entry["members"]) == len(NAMES)}
        for record in records.values()
    ]
    assert all(len(codes) == 1 for codes in full), f"no single code for all four: {full}\n{text}"
    assert len(set.union(*full)) == 1, f"the phones showed different codes: {full}\n{text}"
    for name, record in records.items():
        assert record["group"] is True and record["call_id"] == records["alice"]["call_id"]
        assert record["path"].startswith("forwarder"), record
        assert record["first_capture_unix"] and record["first_playout_unix"], record
        heard = {p["name"]: p for p in record["participants"]}
        assert set(heard) == set(NAMES) - {name}, record
        for peer in heard.values():
            assert peer["packets_received"] > 100, f"{name} heard little of {peer}\n{text}"
            assert peer["fingerprint"] and peer["trust"] in ("new", "pinned", "verified"), peer
    summary = []
    for name in NAMES:
        samples, rate = read_wav(tmp_path / f"{name}-received.wav")
        received = resample(samples, rate, REFERENCE_RATE_HZ)
        start = records[name]["first_capture_unix"]  # the recording's first frame, near enough
        for turn, other in enumerate(NAMES):
            if other == name:
                continue
            offset = records[other]["first_capture_unix"] - start + LEAD_S + turn * SLOT_S
            # only `other` speaks in its turn: speech there came through its stream
            low = max(0, int((offset - ENERGY_SLACK_S) * REFERENCE_RATE_HZ))
            high = int((offset + SPEECH_S + ENERGY_SLACK_S) * REFERENCE_RATE_HZ)
            speech = active_seconds(received[low:high])
            score = best_similarity(received, world.references[other], offset)
            floor = best_similarity(received, world.references["stranger"], offset)
            summary.append(
                f"{name} hears {other}: {speech:.1f} s of speech in its turn, similarity"
                f" {score:.2f} (a voice not sent: {floor:.2f})"
            )
            assert speech >= MIN_SPEECH_S, "\n".join(summary)
            assert score >= MIN_SIMILARITY and score >= floor + MIN_MARGIN, "\n".join(summary)
    print(  # noqa: T201
        "\n".join(summary)
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_killed_member_is_gone_and_the_call_goes_on(world: World, tmp_path: Path) -> None:
    others = listeners(world, tmp_path, ("bob", "carol"))
    alice = Member(world, "alice", tmp_path, "call", "bob", "carol", "--duration", str(KILL_CALL_S))
    members = [alice, *others]
    try:
        alice.wait_for("group code")
        others[0].wait_for("group code")
        time.sleep(2.0)
        killed_at = time.time()
        others[1].process.kill()  # carol vanishes: no leave, no goodbye
        alice.wait_for("carol: gone", timeout_s=GONE_WITHIN_S * TIMEOUT_SCALE)
        others[0].wait_for("carol: gone", timeout_s=GONE_WITHIN_S * TIMEOUT_SCALE)
        noticed = time.time() - killed_at
        # carol's phone starts again: it finds itself gone and comes back into the call
        again = Member(
            world, "carol", tmp_path, "listen", "--auto-answer", "--once", label="carol2"
        )
        members.append(again)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all("carol: joined" in m.text().split("carol: gone")[-1] for m in members[:2]):
            assert time.monotonic() < deadline, f"carol did not come back\n{report(members)}"
            time.sleep(0.2)
        alice.process.wait(timeout=KILL_CALL_S + END_TIMEOUT_S)
        others[0].stop()
        again.stop()
    finally:
        for member in members:
            member.stop(signal.SIGKILL)
    text = report(members)
    for member in (alice, others[0]):
        record = member.record()
        carol = next(p for p in record["participants"] if p["name"] == "carol")
        assert carol["state"] == "joined" and len(carol["sender_ids"]) == 2, f"{carol}\n{text}"
        assert "carol: gone" in member.text()
        peer = "bob" if member is alice else "alice"
        heard = next(p for p in record["participants"] if p["name"] == peer)
        assert heard["packets_received"] > 200, f"{member.name} stopped hearing {peer}\n{text}"
    print(  # noqa: T201
        f"carol shown gone {noticed:.1f} s after she was killed"
    )
