"""What each listener of a group call hears: one talker's PESQ-WB, everyone at once, time to audio.

:func:`measure` runs one group call of ``n`` phones, each in a process of its own
(:mod:`pqcall.bench.group_member`, steered through a pipe), against a real
``pqcall server`` child process (:class:`~pqcall.bench.server_process.ServerProcess`),
and measures, through the whole product path (Opus, SFrame under sender keys,
the server's forwarder, one jitter buffer per sender, the mix):

- **accept to first audio**: each invitee's phone rings (``next_group_invite``)
  and accepts at once, taking the time; the figure is the time from then to the
  first frame of another member played (the call's ``first_playout_unix``): the
  join, the pairwise hybrid handshakes, the sealed sender keys and the jitter
  buffer's start. Baseline: a 1:1 call between two in-process phones on the same
  server, accept to the first frame played, in the same run.
- **one talker, PESQ-WB per listener**: once every phone holds every key (and
  the new keys are in use), the first phone plays one voice of the speech
  corpus (or the shipped sample) while everyone else sends digital silence;
  each listener's speaker output (the mix of every stream) is recorded and
  scored against the speech (aligned, :mod:`pqcall.bench.quality`). Baseline:
  the same speech encoded and decoded with the call's Opus settings and no
  network (what the codec alone gives). With it, per listener, the talker's
  packets lost, late and the audio concealed during the speech, and the frames
  the talker sent per second (50: its tick kept), to tell the network from the
  machine's load.
- **everyone talks at once**: each phone then plays a different voice at the
  same moment; each listener's mix is checked for its peak (dBFS) and the
  samples at full scale (clipped). Baselines: the loudest single voice's peak
  as played, and the samples of the mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import tempfile
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np

from pqcall.bench.group_member import PASSPHRASE, member_main
from pqcall.bench.quality import REFERENCE_RATE_HZ, align, pesq_wb, resample
from pqcall.bench.server_process import ServerProcess, say
from pqcall.bench.speech import Talker, select_speech
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusDecoder, OpusEncoder, OpusSettings, Pcm

START_TIMEOUT_S = 120.0  # a member process starts, registers and connects
JOIN_TIMEOUT_S = 300.0  # every member holds every key (the members' own limit is 240 s)
REPLY_TIMEOUT_S = 30.0  # one command to a member
STOP_TIMEOUT_S = 30.0
INVITE_TIMEOUT_S = 60.0
SETTLE_S = 6.0  # after every key is held: the senders' switch to the new keys (fallback 5 s)
SPEECH_S = 8.0  # of the talker's voice scored
LEAD_S = 1.0  # silence around the speech in the 1:1 call's file
TAIL_S = 1.5  # recorded after the speech ends (the jitter buffer's delay)
TOGETHER_S = 4.0  # everyone talking at once
FULL_SCALE = 32_767


@dataclass(frozen=True, slots=True)
class Heard:
    """One group call's measurements (lists: one entry per listener)."""

    size: int
    talker: str
    accept_to_audio_s: list[float]
    one_to_one_accept_to_audio_s: float
    pesq: list[float]
    codec_pesq: float
    one_to_one_pesq: float
    """The talker's speech as the callee of a 1:1 call heard it (two in-process phones)."""
    together_peak_dbfs: list[float]
    loudest_voice_peak_dbfs: float
    together_clipped: list[int]
    together_samples: list[int]
    lost: list[int] = field(default_factory=list)
    """Of the talker's packets during its speech, per listener: lost (never arrived)."""
    late: list[int] = field(default_factory=list)
    """... arrived too late to play."""
    concealed_ms: list[float] = field(default_factory=list)
    """... audio the listener's jitter buffer concealed (made up)."""
    talker_sent_per_s: float = 0.0
    """Frames the talker sent per second during its speech (50: its 20 ms tick kept)."""
    socket_drops: list[int] = field(default_factory=list)
    """Datagrams the kernel dropped at each listener's socket during the speech (all senders')."""
    forwarder_drops: int = 0
    """... and at the server's forwarder socket."""


def measure(n: int, talkers: Sequence[Talker] | None = None) -> Heard:
    """One call of ``n`` phones, a process each (see the module docstring)."""
    voices = tuple(talkers or select_speech(None, quick=False))
    return asyncio.run(_measure(n, voices))


async def _measure(n: int, voices: Sequence[Talker]) -> Heard:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        talker = voices[0]
        reference = talker.speech[: round(SPEECH_S * REFERENCE_RATE_HZ)]
        speech_file, heard_file = base / "speech.wav", base / "heard.wav"
        lead = np.zeros(round(LEAD_S * SAMPLE_RATE_HZ), np.int16)
        _write_wav(speech_file, np.concatenate([lead, _speech_48k(talker, SPEECH_S), lead]))
        with ServerProcess.start(base, None) as server:
            solo = []
            try:
                for name, media in (
                    ("solo0", MediaOptions(str(speech_file), "null")),
                    ("solo1", MediaOptions("silence", str(heard_file))),
                ):
                    home = Home(base / name)
                    await register(
                        home, name, server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
                    )
                    solo.append(Phone(home, passphrase=PASSPHRASE, media=media))
                    await solo[-1].start()
                    await solo[-1].wait_connected(30.0)
                one_to_one = await _one_to_one(solo[0], solo[1])
            finally:
                for phone in solo:
                    await phone.close()
            one_to_one_pesq = _score(_read_wav(heard_file), reference)
            members = _Members(base, server.base_url, n)
            try:
                return await _group(members, voices, one_to_one, one_to_one_pesq)
            finally:
                members.close()


async def _one_to_one(caller: Phone, callee: Phone) -> float:
    """A 1:1 call of the speech file: accept to the callee's first frame played (the baseline)."""
    call = await caller.call(callee.username)
    incoming = await asyncio.wait_for(callee.next_incoming(), INVITE_TIMEOUT_S)
    accepted = time.time()
    await incoming.accept()
    deadline = time.monotonic() + INVITE_TIMEOUT_S
    while incoming.summary().get("first_playout_unix") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the 1:1 call played nothing")
        await asyncio.sleep(0.01)
    played = float(incoming.summary()["first_playout_unix"])
    await asyncio.sleep(SPEECH_S + 2 * LEAD_S)  # the speech file, played through
    await call.hangup()
    await incoming.wait_ended()
    await asyncio.sleep(0.5)
    return played - accepted


def _write_wav(path: Path, pcm: Pcm) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE_HZ)
        wav.writeframes(pcm.astype("<i2").tobytes())


def _read_wav(path: Path) -> Pcm:
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        pcm: Pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int16)
    return resample(pcm, rate, SAMPLE_RATE_HZ) if rate != SAMPLE_RATE_HZ else pcm


class _Members:
    """The member processes, started at once; their pipes."""

    def __init__(self, base: Path, server_url: str, n: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.names = [f"member{i}" for i in range(n)]
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for name in self.names:
            ours, theirs = context.Pipe()
            process = context.Process(
                target=member_main, args=(theirs, str(base), name, server_url), daemon=True
            )
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    async def reply(self, index: int, timeout_s: float = REPLY_TIMEOUT_S) -> tuple[Any, ...]:
        pipe = self.pipes[index]
        deadline = time.monotonic() + timeout_s
        while not pipe.poll():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.names[index]} did not answer in {timeout_s:g} s")
            await asyncio.sleep(0.02)
        message: tuple[Any, ...] = pipe.recv()
        if message[0] == "error":
            raise RuntimeError(message[1])
        return message

    async def ask(self, index: int, *command: Any) -> tuple[Any, ...]:
        self.pipes[index].send(command)
        return await self.reply(index)

    async def ask_all(self, indices: Sequence[int], *command: Any) -> list[tuple[Any, ...]]:
        for index in indices:
            self.pipes[index].send(command)
        return [await self.reply(index) for index in indices]

    def close(self) -> None:
        for process in self.processes:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in self.pipes:
            pipe.close()


async def _group(
    members: _Members, voices: Sequence[Talker], one_to_one: float, one_to_one_pesq: float
) -> Heard:
    n = len(members.names)
    everyone, listeners = range(n), range(1, n)
    for index in everyone:
        await members.reply(index, START_TIMEOUT_S)  # ("ready",)
    for index in listeners:
        members.pipes[index].send(("answer", None, n - 1))
    members.pipes[0].send(("create", members.names[1:], n - 1))
    joined = [await members.reply(index, JOIN_TIMEOUT_S) for index in everyone]
    first_audio = [float(joined[i][2]) - float(joined[i][1]) for i in listeners]
    await asyncio.sleep(SETTLE_S)
    try:
        talker = voices[0]
        speech = _speech_48k(talker, SPEECH_S)
        reference = talker.speech[: round(SPEECH_S * REFERENCE_RATE_HZ)]
        talker_id = (await members.ask(0, "sender_id"))[1]
        await members.ask_all(listeners, "record", True)
        before = await members.ask_all(listeners, "stats", talker_id)
        drops0 = await members.ask_all(everyone, "drops")
        sent0, wall0 = (await members.ask(0, "sent"))[1], time.monotonic()
        await members.ask(0, "play", speech.tobytes())
        await asyncio.sleep(len(speech) / SAMPLE_RATE_HZ + TAIL_S)
        sent_per_s = ((await members.ask(0, "sent"))[1] - sent0) / (time.monotonic() - wall0)
        after = await members.ask_all(listeners, "stats", talker_id)
        drops1 = await members.ask_all(everyone, "drops")
        recorded = await members.ask_all(listeners, "take")
        await members.ask_all(listeners, "record", False)
        pesq = [_score(np.frombuffer(r[1], np.int16), reference) for r in recorded]
        # everyone at once, each a different voice (the list of voices again if too short)
        together = [_speech_48k(voices[i % len(voices)], TOGETHER_S) for i in everyone]
        await members.ask_all(everyone, "record", True)
        for index in everyone:
            members.pipes[index].send(("play", together[index].tobytes()))
        for index in everyone:
            await members.reply(index)
        await asyncio.sleep(TOGETHER_S + TAIL_S)
        mixes = [np.frombuffer(r[1], np.int16) for r in await members.ask_all(everyone, "take")]
    finally:
        for index in everyone:
            members.pipes[index].send(("leave",))
        for index in everyone:
            with contextlib.suppress(RuntimeError, EOFError, OSError):
                await members.reply(index)
    loudest = max(int(np.max(np.abs(s.astype(np.int32)))) for s in together)
    heard = Heard(
        size=n,
        talker=talker.name,
        accept_to_audio_s=first_audio,
        one_to_one_accept_to_audio_s=one_to_one,
        pesq=pesq,
        codec_pesq=_codec_pesq(reference),
        one_to_one_pesq=one_to_one_pesq,
        together_peak_dbfs=[_dbfs(int(np.max(np.abs(m.astype(np.int32))))) for m in mixes],
        loudest_voice_peak_dbfs=_dbfs(loudest),
        together_clipped=[int(np.count_nonzero(np.abs(m.astype(np.int32)) >= FULL_SCALE))
                          for m in mixes],
        together_samples=[len(m) for m in mixes],
        lost=[int(b[1] - a[1]) for a, b in zip(before, after, strict=True)],
        late=[int(b[2] - a[2]) for a, b in zip(before, after, strict=True)],
        concealed_ms=[float(b[3] - a[3]) for a, b in zip(before, after, strict=True)],
        talker_sent_per_s=sent_per_s,
        socket_drops=[int(b[1] - a[1]) for a, b in zip(drops0[1:], drops1[1:], strict=True)],
        forwarder_drops=int(drops1[0][2] - drops0[0][2]),
    )  # fmt: skip
    say(
        f"{n} phones (a process each): PESQ-WB {min(pesq):.2f}-{max(pesq):.2f}"
        f" (codec {heard.codec_pesq:.2f}, 1:1 {one_to_one_pesq:.2f}),"
        f" accept to audio {min(first_audio):.2f}-"
        f"{max(first_audio):.2f} s (1:1 {one_to_one:.2f}), all at once: peak"
        f" {max(heard.together_peak_dbfs):.1f} dBFS, {sum(heard.together_clipped)} clipped"
        f" samples; talker sent {sent_per_s:.1f}/s, listeners lost {heard.lost} late"
        f" {heard.late} concealed {[round(ms) for ms in heard.concealed_ms]} ms; kernel drops"
        f" at the listeners {heard.socket_drops}, at the forwarder {heard.forwarder_drops}"
    )
    return heard


def _speech_48k(talker: Talker, seconds: float) -> Pcm:
    speech = talker.speech[: round(seconds * REFERENCE_RATE_HZ)]
    out: Pcm = resample(speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)
    return out


def _score(received_48k: Pcm, reference: Pcm) -> float:
    received = resample(received_48k, SAMPLE_RATE_HZ, REFERENCE_RATE_HZ)
    aligned, _ = align(received, reference)
    return pesq_wb(reference, aligned)


def _codec_pesq(reference: Pcm) -> float:
    """The speech through the call's Opus settings alone: no network, no loss."""
    settings = OpusSettings()
    encoder, decoder = OpusEncoder(settings), OpusDecoder(settings.frame_ms)
    pcm = resample(reference, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)
    step = settings.frame_samples
    decoded = [
        decoder.decode(encoder.encode(pcm[i : i + step]))
        for i in range(0, len(pcm) - step + 1, step)
    ]
    return _score(np.concatenate(decoded), reference)


def _dbfs(peak: int) -> float:
    return 20 * math.log10(max(peak, 1) / FULL_SCALE)
