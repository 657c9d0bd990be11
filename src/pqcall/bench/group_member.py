"""One phone of the group quality benchmark, in a process of its own, steered through a pipe.

:func:`member_main` is the child's entry point (``multiprocessing``, spawn): it
registers its account (the test KDF) on the benchmark's server, starts a
:class:`~pqcall.client.phone.Phone`, says ``("ready",)``, and then either
creates the group call (``("create", names)``) or waits for the invite and
accepts it at once, taking the time. Once joined, its source is a
:class:`GatedSpeech` (digital silence until told to play) and its sink a
:class:`Recorder`. It reports ``("joined", accepted_unix, first_playout_unix)``
when it holds a key from every other member and has played a frame, then serves
commands until ``("leave",)``:

=============================  ==================================================
``("play", pcm bytes)``        play this 48 kHz speech from the next frame
``("record", on)``             start or stop keeping what the speaker plays
``("take",)``                  -> the recording (int16 bytes), emptied
``("sent",)``                  -> frames sent so far
``("stats", sender_id)``       -> (lost, late, concealed ms) of that sender's stream
``("sender_id",)``             -> our sender id
``("drops",)``                 -> datagrams the kernel dropped so far at our media socket
                               and at the server's forwarder socket (``/proc/net/udp``)
``("leave",)``                 leave the call, close the phone, exit
=============================  ==================================================

A process per phone, as a real deployment has: no phone waits for another's
turn on one interpreter.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from pqcall.client.group_call import GroupCall
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.media.codec import Pcm, silence

PASSPHRASE = "bench group quality passphrase"
JOIN_TIMEOUT_S = 240.0


class GatedSpeech:
    """Digital silence until :meth:`play`, then the speech once, then silence again."""

    def __init__(self, frame_samples: int) -> None:
        self._frame_samples = frame_samples
        self._speech: Pcm | None = None
        self._position = 0

    @property
    def frame_samples(self) -> int:
        return self._frame_samples

    def play(self, speech_48k: Pcm) -> None:
        """Start playing ``speech_48k`` (48 kHz) from the next frame."""
        self._speech, self._position = speech_48k, 0

    def read_frame(self) -> Pcm:
        speech = self._speech
        if speech is None or self._position >= len(speech):
            return silence(self._frame_samples)
        frame = speech[self._position : self._position + self._frame_samples]
        self._position += self._frame_samples
        if len(frame) < self._frame_samples:
            frame = np.concatenate([frame, silence(self._frame_samples - len(frame))])
        return frame

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class Recorder:
    """Keeps the frames written while :attr:`is_recording`."""

    is_recording: bool = False
    frames: list[Pcm] = field(default_factory=list)

    def write_frame(self, pcm: Pcm) -> None:
        if self.is_recording:
            self.frames.append(pcm.copy())

    def take(self) -> Pcm:
        """What was recorded (and start again empty)."""
        frames, self.frames = self.frames, []
        return np.concatenate(frames) if frames else np.zeros(0, np.int16)

    def close(self) -> None:
        """Nothing to release."""


def member_main(conn: Connection, base: str, name: str, server_url: str) -> None:
    """The child process: one phone (see the module docstring)."""
    try:
        asyncio.run(_member(conn, Path(base), name, server_url))
    except Exception as exc:  # told to the parent, which fails the benchmark with it
        conn.send(("error", f"{name}: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def _member(conn: Connection, base: Path, name: str, server_url: str) -> None:
    home = Home(base / name)
    await register(home, name, server_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    phone = Phone(home, passphrase=PASSPHRASE, media=MediaOptions("silence", "null"))
    try:
        await phone.start()
        await phone.wait_connected(60.0)
        conn.send(("ready",))
        command = await _receive(conn)
        accepted = time.time()
        if command[0] == "create":
            call = await phone.group_call(command[1])
        else:  # "answer"
            call = await asyncio.wait_for(phone.next_group_invite(), JOIN_TIMEOUT_S)
            accepted = time.time()
            await call.accept()
        assert call.media is not None
        source, sink = GatedSpeech(call.media.pipeline.frame_samples), Recorder()
        call.media.source, call.media.sink = source, sink
        await _joined(call, command[2])
        conn.send(("joined", accepted, call.trace.first_playout_unix))
        while True:
            command = await _receive(conn)
            if command[0] == "leave":
                await call.leave()
                conn.send(("left",))
                return
            conn.send(_serve(call, source, sink, command))
    finally:
        await phone.close()


async def _joined(call: GroupCall, others: int) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while len(call.joined_names()) < others or call.trace.first_playout_unix is None:
        if call.is_ended or time.monotonic() > deadline:
            raise RuntimeError(f"not joined with {others} others ({call.reason})")
        await asyncio.sleep(0.05)


def _serve(call: GroupCall, source: GatedSpeech, sink: Recorder, command: tuple[Any, ...]) -> Any:
    media = call.media
    assert media is not None and call.keyring is not None
    match command:
        case ("play", pcm):
            source.play(np.frombuffer(pcm, np.int16))
            return ("ok",)
        case ("record", on):
            sink.is_recording = bool(on)
            return ("ok",)
        case ("take",):
            return ("pcm", sink.take().tobytes())
        case ("sent",):
            return ("sent", media.packets_sent)
        case ("sender_id",):
            return ("sender_id", call.keyring.our_sender_id)
        case ("drops",):
            transport = getattr(media, "_transport", None)  # our socket: its port, for /proc
            ours = transport.get_extra_info("sockname")[1] if transport is not None else 0
            forwarder = int((call.path or ":0").rsplit(":", 1)[1])
            return ("drops", udp_drops(ours), udp_drops(forwarder))
        case ("stats", sender_id):
            stats = media.stats(sender_id)
            if stats is None:
                return ("stats", 0, 0, 0.0)
            return ("stats", stats.packets_lost, stats.packets_late, stats.concealed_ms)
    return ("error", f"unknown command {command[0]!r}")


async def _receive(conn: Connection) -> tuple[Any, ...]:
    """The next command, without blocking the phone's event loop."""
    while not conn.poll():
        await asyncio.sleep(0.02)
    message: tuple[Any, ...] = conn.recv()
    return message


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the IPv4 UDP socket on ``port`` (Linux; else 0)."""
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) > 12 and int(fields[1].rsplit(":", 1)[1], 16) == port:
            return int(fields[12])
    return 0
