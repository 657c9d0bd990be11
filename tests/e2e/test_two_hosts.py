"""Two hosts: a call between two ``pqcall`` phones on separate machines, through the CLI.

The server and each phone run in their own network namespace (see
:mod:`tests.netns`), as on three machines: ``lan`` is one WiFi, where the
media path must be direct; ``isolated`` lets each phone reach only the
server, so the media must go through the server's relay; ``nat`` puts each
phone behind its own masquerading router, where either path may win but the
call must work.

Each phone has its own home directory. Bob listens (``--auto-answer
--once``), Alice calls him for a few seconds; both play a speech file and
write what they receive to a WAV file. Checked: both exit 0 with one JSON
record each, the same SAS, the expected path (also from the server's relay
counters), and the received audio is speech that matches what the other side
sent (energy, and envelope correlation against the sent file, better than
against the other speaker's file).
"""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, load_reference, resample
from tests.harness import TIMEOUT_SCALE

from .helpers import TwoPhones, call_record, listen_once, two_phones

CALL_DURATION_S = 6
ONLINE_TIMEOUT_S = 30.0  # until the listening phone is connected to the server
LISTEN_EXIT_TIMEOUT_S = 30.0  # the callee's exit after the caller hung up

# audio checks (envelope frames of 20 ms at 16 kHz; see speech_similarity)
FRAME_SAMPLES = REFERENCE_RATE_HZ // 50
ACTIVE_DBFS = -45.0  # a frame louder than this has speech in it
MIN_ACTIVE_S = 2.0  # speech received, at least
MIN_SIMILARITY = 0.75  # envelope correlation with the sent speech
MIN_MARGIN = 0.1  # ... above the correlation with the other speaker's speech
CHUNK_FRAMES = 50  # compared one second at a time (the jitter buffer may shift them)
CHUNK_SLACK_FRAMES = 15  # how far each second may move from the overall alignment

Samples = npt.NDArray[np.int16]

# ---------------------------------------------------------------- audio


def read_wav(path: Path) -> tuple[Samples, int]:
    """A 16-bit WAV file's first channel and its rate."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2, f"{path}: not 16-bit PCM"
        channels, rate = wav.getnchannels(), wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    return samples[::channels].astype(np.int16), rate


def envelope_db(samples: Samples) -> npt.NDArray[np.float64]:
    """Level of each 20 ms frame in dBFS (floored at -70)."""
    frames = len(samples) // FRAME_SAMPLES
    pcm = samples[: frames * FRAME_SAMPLES].astype(np.float64).reshape(frames, FRAME_SAMPLES)
    power = np.mean((pcm / 32768.0) ** 2, axis=1)
    levels: npt.NDArray[np.float64] = 10 * np.log10(power + 1e-7)
    return levels


def _correlations(
    piece: npt.NDArray[np.float64], track: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Pearson correlation of ``piece`` with every same-length window of ``track``."""
    windows = np.lib.stride_tricks.sliding_window_view(track, len(piece))
    mean = windows.mean(axis=1, keepdims=True)
    spread = windows.std(axis=1, keepdims=True) + 1e-12
    normal = (piece - piece.mean()) / (piece.std() + 1e-12)
    result: npt.NDArray[np.float64] = ((windows - mean) / spread * normal).mean(axis=1)
    return result


def active_seconds(samples: Samples) -> float:
    """Seconds of 16 kHz audio with speech in them."""
    return (
        float(np.count_nonzero(envelope_db(samples) > ACTIVE_DBFS))
        * FRAME_SAMPLES
        / (REFERENCE_RATE_HZ)
    )


def speech_similarity(received: Samples, reference: Samples) -> float:
    """How well received audio follows a reference speech file, -1 to 1 (both 16 kHz).

    The received signal starts and ends at unknown points of the reference
    (call setup, the file playing from when capture started) and the jitter
    buffer may shift it by tens of milliseconds as it adapts. So the level
    envelopes are compared, not the waveforms: the received speech (trimmed
    to its first and last loud frame) is aligned to the reference where their
    envelopes correlate best, then each second of it is re-aligned within
    :data:`CHUNK_SLACK_FRAMES` of that; the median correlation of the seconds
    is the result. Same speech through Opus scores above 0.9, a different
    speaker around 0.5, noise or a tone near 0.
    """
    ours, theirs = envelope_db(received), envelope_db(reference)
    loud = np.flatnonzero(ours > ACTIVE_DBFS)
    if len(loud) < CHUNK_FRAMES:
        return 0.0
    ours = ours[loud[0] : loud[-1] + 1][: len(theirs)]
    lag = int(np.argmax(_correlations(ours, theirs)))
    scores = []
    for start in range(0, len(ours) - CHUNK_FRAMES + 1, CHUNK_FRAMES):
        low = max(0, lag + start - CHUNK_SLACK_FRAMES)
        high = min(len(theirs), lag + start + CHUNK_FRAMES + CHUNK_SLACK_FRAMES)
        piece = ours[start : start + CHUNK_FRAMES]
        if high - low >= CHUNK_FRAMES:
            scores.append(float(_correlations(piece, theirs[low:high]).max()))
    return float(np.median(scores)) if scores else 0.0


def check_received(path: Path, sent: Path, other: Path) -> str:
    """Assert ``path`` holds speech that matches ``sent`` (and not ``other``); a summary."""
    assert path.is_file(), f"no received audio at {path}"
    samples, rate = read_wav(path)
    received = resample(samples, rate, REFERENCE_RATE_HZ)
    speech = active_seconds(received)
    summary = f"{path.name}: {len(received) / REFERENCE_RATE_HZ:.1f} s, {speech:.1f} s of speech"
    assert speech >= MIN_ACTIVE_S, f"too little audio arrived: {summary}"
    same = speech_similarity(received, load_reference(sent))
    different = speech_similarity(received, load_reference(other))
    summary += f", similarity {same:.2f} to {sent.name}, {different:.2f} to {other.name}"
    assert same >= MIN_SIMILARITY, f"received audio does not follow what was sent: {summary}"
    assert same >= different + MIN_MARGIN, f"received audio is not clearly {sent.name}: {summary}"
    return summary


def test_similarity_tells_speakers_apart():
    """The audio check itself, on the sample files (no network)."""
    alice = load_reference(SAMPLES_DIR / "alice.wav")
    bob = load_reference(SAMPLES_DIR / "bob.wav")
    delayed = np.concatenate([np.zeros(REFERENCE_RATE_HZ, np.int16), alice[: 5 * 16_000]])
    assert speech_similarity(delayed, alice) > 0.99
    assert speech_similarity(delayed, bob) < MIN_SIMILARITY
    assert speech_similarity(np.zeros(80_000, np.int16), alice) == 0.0
    assert active_seconds(delayed) > MIN_ACTIVE_S


# ---------------------------------------------------------------- phones


@dataclass
class SpeechCall:
    """A finished call alice -> bob with a speech file each way: files, and both processes."""

    alice_wav: Path  # what alice sent
    bob_wav: Path  # what bob sent
    out_a: Path  # what alice received
    out_b: Path  # what bob received
    call: subprocess.CompletedProcess[str]  # alice's ``call``, ended
    listen: subprocess.Popen[bytes]  # bob's ``listen --once``, ended

    def check_both_ways(self) -> None:
        """Assert each side received the other's speech (:func:`check_received`)."""
        check_received(self.out_b, sent=self.alice_wav, other=self.bob_wav)
        check_received(self.out_a, sent=self.bob_wav, other=self.alice_wav)


def speech_call(phones: TwoPhones, tmp_path: Path, duration_s: int) -> SpeechCall:
    """Bob listens once, alice calls him for ``duration_s`` s, each playing a speech file.

    Raises:
        AssertionError: alice's call failed, or a phone did not exit in time
            (with every process's output).
    """
    alice, processes = phones.alice, phones.processes
    alice_wav, bob_wav = SAMPLES_DIR / "alice.wav", SAMPLES_DIR / "bob.wav"
    out_a, out_b = tmp_path / "out_a.wav", tmp_path / "out_b.wav"
    listen = listen_once(phones, "--audio-in", str(bob_wav), "--audio-out", str(out_b))
    try:
        call = processes.run(
            alice.host,
            "alice-call",
            alice.command(
                *("call", "bob", "--audio-in", str(alice_wav), "--audio-out", str(out_a)),
                *("--duration", str(duration_s), "--json"),
            ),
            alice.env,
            60.0 + duration_s,
        )
        assert call.returncode == 0, f"alice's call failed\n{processes.report()}"
        listen.wait(timeout=LISTEN_EXIT_TIMEOUT_S * TIMEOUT_SCALE)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    return SpeechCall(alice_wav, bob_wav, out_a, out_b, call, listen)


def path_host(record: dict[str, Any]) -> str | None:
    """The host part of the record's ``path_address`` (``HOST:PORT``), if it has one."""
    address = record.get("path_address")
    return address.rsplit(":", 1)[0].strip("[]") if isinstance(address, str) else None


# ---------------------------------------------------------------- the call


@pytest.mark.parametrize(
    ("topology", "expected_path"),
    [
        pytest.param("lan", "direct", id="lan-direct"),
        pytest.param("isolated", "relay", id="isolated-relay"),
        pytest.param("nat", None, id="nat"),
    ],
)
def test_call_between_two_hosts(make_network, processes, tmp_path, topology, expected_path):
    net = make_network(topology)
    phones = two_phones(net, processes, tmp_path)
    server, alice, bob = phones.server, phones.alice, phones.bob
    spoken = speech_call(phones, tmp_path, CALL_DURATION_S)
    listen = spoken.listen
    forwarded = server.metric("pqcall_relay_forwarded_packets_total")

    try:
        assert listen.returncode == 0, "bob's listen failed"
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")

        # one call, seen from both ends
        assert ours["call_id"] == theirs["call_id"]
        assert (ours["peer"], ours["direction"]) == ("bob", "outgoing")
        assert (theirs["peer"], theirs["direction"]) == ("alice", "incoming")
        assert ours["result"] == theirs["result"] == "ended"
        assert ours["sas"], "no SAS"
        assert ours["sas"] == theirs["sas"], "the two sides show different SAS"
        assert ours["codec"] == theirs["codec"] == "opus"
        for record in (ours, theirs):
            assert CALL_DURATION_S / 2 <= record["duration_s"] <= CALL_DURATION_S + 5
            assert record["packets_received"] >= 50, "less than a second of media arrived"
            assert record["first_playout_unix"] is not None

        # the path: what the phones say, and what the server's relay did
        assert ours["path"] == theirs["path"], "the two sides use different paths"
        if expected_path is not None:
            assert ours["path"] == expected_path
        else:
            assert ours["path"] in ("direct", "relay")
        media = ours["packets_received"] + theirs["packets_received"]
        if ours["path"] == "relay":
            assert forwarded >= 0.9 * media, f"relay forwarded {forwarded} of {media} packets"
            for phone, record in ((alice, ours), (bob, theirs)):
                if path_host(record) is not None:
                    assert path_host(record) == net.address_of(net.server, phone.host)
        else:
            assert forwarded < 0.1 * media, f"relay forwarded {forwarded} of {media} packets"
            if topology == "lan":
                assert path_host(ours) in (None, net.bob.address)
                assert path_host(theirs) in (None, net.alice.address)

        # audio, both ways
        spoken.check_both_ways()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
