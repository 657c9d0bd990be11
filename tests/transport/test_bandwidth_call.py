"""A call through a bottleneck in virtual time: two media engines and the netem model.

The caller and callee are real :class:`~pqcall.transport.media_engine.MediaEngine` objects
(Opus, SFrame, jitter buffer), each direction a :class:`~pqcall.netem.ImpairedLink`
(the relay's sans-I/O core) with a bottleneck switched on and off; the clock is virtual,
so the figures do not depend on the machine's load.
"""

from __future__ import annotations

import random
from dataclasses import replace

from pqcall.media.audio import ToneSource
from pqcall.netem import ImpairedLink, Impairment
from pqcall.transport.media_engine import MediaEngine
from tests.utils import handshake_pair

RUN = handshake_pair()
FRAME_S = 0.02
WIRE_S = 0.005  # propagation after the bottleneck, each way
FULL_FRAME_BYTES = 99


class NetemCall:
    """Caller ("a") and callee ("b") over two impaired links, in virtual time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.engines = {"a": MediaEngine(RUN.caller.keys), "b": MediaEngine(RUN.callee.keys)}
        self.sources = {"a": ToneSource(440.0), "b": ToneSource(1000.0)}
        # links[x]: the direction *into* x
        self.links = {
            "b": ImpairedLink(Impairment(), random.Random(1)),
            "a": ImpairedLink(Impairment(), random.Random(2)),
        }
        self.next_tick = {"a": 0.0, "b": FRAME_S / 2}
        self.samples: list[tuple[float, float, int]] = []  # (now, a->b queue ms, a's frame bytes)
        for engine in self.engines.values():
            engine.start(0.0)
        self._flush()

    def set_link(self, impairment: Impairment) -> None:
        """Both directions from now on (the reverse with the next seed)."""
        self.links["b"].reconfigure(impairment, random.Random(impairment.seed))
        reverse = replace(impairment, seed=impairment.seed + 1)
        self.links["a"].reconfigure(reverse, random.Random(reverse.seed))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = list(self.next_tick.values())
            due += [t for e in self.engines.values() if (t := e.get_timer()) is not None]
            due += [t + WIRE_S for link in self.links.values() if (t := link.get_timer())]
            now = max(self.now, min(due))
            if now > end:
                self.now = end
                return
            self.now = now
            for name, link in self.links.items():
                while (t := link.get_timer()) is not None and t + WIRE_S <= now:
                    for datagram in link.datagrams_to_send(t):
                        self.engines[name].receive_datagram(datagram, now)
            for name, engine in self.engines.items():
                timer = engine.get_timer()
                if timer is not None and timer <= now:
                    engine.handle_timer(now)
                if self.next_tick[name] <= now:
                    engine.tick(self.sources[name].read_frame(), now)
                    self.next_tick[name] += FRAME_S
                    if name == "a" and round(now / FRAME_S) % 5 == 0:
                        self.samples.append(
                            (
                                now,
                                self.links["b"].stats.queue_delay_ms,
                                engine.adaptation.frame_bytes,
                            )
                        )
            self._flush()

    def _flush(self) -> None:
        for name, other in (("a", "b"), ("b", "a")):
            engine = self.engines[name]
            for datagram in engine.datagrams_to_send(self.now):
                self.links[other].receive_datagram(datagram, self.now)
            while engine.next_event() is not None:
                pass


def _after(samples: list[tuple[float, float, int]], start: float) -> list[tuple[float, float, int]]:
    return [s for s in samples if s[0] >= start]


def test_a_bottleneck_lowers_the_bitrate_drains_the_queue_and_the_rate_comes_back():
    call = NetemCall()
    call.run(3.0)
    assert call.engines["a"].adaptation.frame_bytes == FULL_FRAME_BYTES
    onset = call.now
    call.set_link(Impairment(rate_kbps=48.0, queue_ms=200.0, seed=3))
    call.run(5.0)
    # the bitrate went down to a rung that fits 48 kbit/s on the wire: two frames a packet
    limited = call.engines["a"].adaptation
    assert limited.frame_bytes < FULL_FRAME_BYTES
    assert limited.frames_per_packet == 2
    assert limited.packet_bytes == 7 + 4 + 2 * limited.frame_bytes
    assert limited.bitrate_bps(20) <= 32_000
    # the call's statistics show the rung the encoder is on
    stats = call.engines["a"].snapshot(call.now)
    assert stats.encoder_kbps == limited.bitrate_bps(20) / 1000
    assert stats.frames_per_packet == 2
    call.run(5.0)
    during = _after(call.samples, onset)
    # the queue filled (the call sends 62 kbit/s), then drained under 100 ms within 5 s;
    # after that only a failed probe up (a rung too many) may raise it, for 2 s at most
    assert max(q for _, q, _ in during) > 100.0
    assert any(q < 100.0 for t, q, _ in during if t <= onset + 5.0)
    settled = [q for t, q, _ in during if t >= onset + 5.0]
    assert sum(q >= 100.0 for q in settled) <= 0.2 * len(settled)
    assert sum(settled) / len(settled) < 50.0
    rungs = [frame_bytes for t, _, frame_bytes in during if t >= onset + 5.0]
    assert sum(rung < FULL_FRAME_BYTES for rung in rungs) >= 0.8 * len(rungs)
    # the link widens: probing brings the full rate back
    call.set_link(Impairment(seed=4))
    call.run(25.0)
    assert call.engines["a"].adaptation.frame_bytes == FULL_FRAME_BYTES
    assert call.engines["a"].adaptation.packet_bytes == 0
    stats = call.engines["a"].snapshot(call.now)
    assert (stats.encoder_kbps, stats.frames_per_packet) == (39.6, 1)


def test_every_audio_packet_of_a_rung_has_one_size_on_the_wire():
    call = NetemCall()
    call.run(2.0)
    call.set_link(Impairment(rate_kbps=48.0, queue_ms=200.0, seed=3))
    call.run(6.0)
    engine = call.engines["a"]
    rung = engine.adaptation.frame_bytes
    assert rung < FULL_FRAME_BYTES
    sizes = set()
    for _ in range(100):
        engine.tick(call.sources["a"].read_frame(), call.now)
        sizes |= {len(d) for d in engine.datagrams_to_send(call.now)}
        call.now += FRAME_S
    assert len(sizes) == 1
    (size,) = sizes
    # two frames a packet, 25 a second: the rung fits the link on the wire
    assert engine.adaptation.frames_per_packet == 2
    assert (size + 28) * 8 * 25 < 48_000
