"""A peer that goes silent is shown, not hidden: "reconnecting", honest loss, then the end.

Virtual time (the :class:`~tests.media.test_pipeline.VirtualCall` of two media
engines over an in-memory link, and :class:`PeerLiveness` alone): after
``PEER_SILENT_AFTER_S`` without a packet the protocol says :class:`PeerSilent`
and the snapshot ``reconnecting``; packets again give :class:`PeerBack`; the
loss counts the frames that did not come; a muted peer is none of this; the
media timeout ends the call with "peer unreachable" (``docs/protocol.md#liveness``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeVar

import pytest

from pqcall.cli.output import call_outcome, status_text
from pqcall.exceptions import LocalProtocolError
from pqcall.media.audio import NullSink, ToneSource
from pqcall.media.stats import CallStats
from pqcall.transport.liveness import PEER_SILENT_AFTER_S, PeerLiveness
from pqcall.transport.media_config import MEDIA_TIMEOUT_S
from pqcall.transport.media_engine import MediaSettings
from pqcall.transport.media_events import MediaTimedOut, PeerBack, PeerSilent
from pqcall.transport.session import EndReason, MediaSession
from tests.harness import run_async, scaled
from tests.media.test_pipeline import FRAME_S, VirtualCall
from tests.utils import DatagramPair, handshake_pair

FRAMES_PER_S = round(1 / FRAME_S)
E = TypeVar("E")


class Outage:
    """A loss rule for :class:`DatagramPair`: drops everything while ``on``."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, index: int) -> bool:
        return self.on


def of_type(events: Sequence[object], kind: type[E]) -> list[E]:
    return [event for event in events if isinstance(event, kind)]


# the state machine alone


def test_liveness_turns_silent_then_back_then_unreachable():
    liveness = PeerLiveness(timeout_s=10.0)
    liveness.start(100.0)
    assert liveness.get_timer() == 100.0 + PEER_SILENT_AFTER_S
    assert liveness.handle_timer(100.5) is None
    assert liveness.heard(100.9) is None  # heard while not silent: nothing to say
    assert liveness.handle_timer(101.8) is None  # 0.9 s since
    silent = liveness.handle_timer(101.9)
    assert isinstance(silent, PeerSilent) and silent.idle_s == pytest.approx(1.0)
    assert liveness.is_silent and liveness.get_timer() == pytest.approx(110.9)
    assert liveness.handle_timer(105.0) is None  # said once
    back = liveness.heard(106.9)
    assert isinstance(back, PeerBack) and back.silent_s == pytest.approx(6.0)
    assert not liveness.is_silent and liveness.idle_s(107.4) == pytest.approx(0.5)
    timed_out = liveness.handle_timer(116.9)
    assert isinstance(timed_out, MediaTimedOut) and timed_out.idle_s == pytest.approx(10.0)


def test_a_timeout_shorter_than_the_silence_limit_ends_without_reconnecting():
    liveness = PeerLiveness(timeout_s=0.4)
    liveness.start(0.0)
    assert liveness.get_timer() == 0.4
    assert liveness.handle_timer(0.4) == MediaTimedOut(0.4)
    with pytest.raises(LocalProtocolError, match="positive"):
        PeerLiveness(timeout_s=0.0)


# two engines in virtual time


def test_silent_peer_is_reconnecting_after_a_second_and_back_when_packets_resume():
    outage = Outage()
    call = VirtualCall(link=DatagramPair(b_to_a_loss=outage))
    call.run(2.0)
    assert not of_type(call.a.events, PeerSilent)
    assert not call.a.engine.snapshot(call.clock.now).reconnecting
    outage.on = True
    cut_at = call.clock.now
    call.run(PEER_SILENT_AFTER_S - 0.05)
    assert not of_type(call.a.events, PeerSilent)
    call.run(0.1)
    (silent,) = of_type(call.a.events, PeerSilent)
    assert PEER_SILENT_AFTER_S <= silent.idle_s < PEER_SILENT_AFTER_S + FRAME_S
    snapshot = call.a.engine.snapshot(call.clock.now)
    assert snapshot.reconnecting and snapshot.peer_silent_s >= PEER_SILENT_AFTER_S
    assert call.a.engine.protocol.liveness.is_silent
    assert not of_type(call.b.events, PeerSilent)  # b still hears a
    call.run(1.0)
    outage.on = False
    call.run(0.1)
    (back,) = of_type(call.a.events, PeerBack)
    assert back.silent_s == pytest.approx(call.clock.now - cut_at, abs=0.1)
    assert not call.a.engine.snapshot(call.clock.now).reconnecting
    assert not call.a.engine.is_ended


def test_lost_count_grows_with_time_while_the_peer_is_silent():
    outage = Outage()
    call = VirtualCall(link=DatagramPair(b_to_a_loss=outage))
    call.run(2.0)
    before = call.a.engine.snapshot(call.clock.now)
    assert before.packets_lost == 0 and before.loss_percent == 0.0
    outage.on = True
    call.run(0.5)
    assert call.a.engine.snapshot(call.clock.now).packets_lost == 0  # late, not lost yet
    lost = []
    for _ in range(8):
        call.run(1.0)
        lost.append(call.a.engine.snapshot(call.clock.now).packets_lost)
    assert lost == sorted(lost) and len(set(lost)) == len(lost)  # grows every second
    # 8.5 s of total loss at 20 ms frames: ~425 lost (the last packet left one way ago)
    assert lost[-1] == pytest.approx(8.5 * FRAMES_PER_S, abs=3)
    during = call.a.engine.snapshot(call.clock.now)
    assert during.loss_percent > 70  # 8.5 s lost of 10.5 s
    assert during.mos < 2.0 < before.mos
    assert during.effective_loss_percent > 70
    # when packets come again, their sequence numbers tell the same story
    outage.on = False
    call.run(1.0)
    after = call.a.engine.snapshot(call.clock.now)
    assert not after.reconnecting
    assert after.packets_lost == pytest.approx(lost[-1], abs=3)
    assert after.mos < before.mos  # the silence was heard, and stays in the rating


def test_ten_seconds_of_total_loss_read_about_500_lost_then_end_as_unreachable():
    outage = Outage()
    call = VirtualCall(link=DatagramPair(b_to_a_loss=outage))
    call.run(1.0)
    outage.on = True
    call.run(MEDIA_TIMEOUT_S - 0.1)
    assert call.a.ended_by() is None
    snapshot = call.a.engine.snapshot(call.clock.now)
    assert snapshot.packets_lost == pytest.approx(500, abs=8)
    call.run(0.2)
    assert call.a.ended_by() is MediaTimedOut
    kinds = [type(e) for e in call.a.events if isinstance(e, PeerSilent | MediaTimedOut)]
    assert kinds == [PeerSilent, MediaTimedOut]


def test_muted_peer_is_neither_reconnecting_nor_lost():
    call = VirtualCall()
    call.run(0.5)
    call.b.engine.set_muted(True, call.clock.now)
    call.run(5.0)
    assert call.a.engine.protocol.is_peer_muted
    assert not of_type(call.a.events, PeerSilent)
    snapshot = call.a.engine.snapshot(call.clock.now)
    assert not snapshot.reconnecting and snapshot.peer_silent_s == 0.0
    assert snapshot.packets_lost == 0 and snapshot.loss_percent == 0.0
    assert snapshot.packets_received > 5 * FRAMES_PER_S  # a muted peer still sends frames
    assert snapshot.mos > 4.0


def test_time_based_loss_needs_a_first_packet_and_a_second_of_silence():
    stats = CallStats(frame_ms=20)
    assert stats.snapshot(30.0).packets_lost == 0  # never heard: nothing expected
    for seq in range(50):
        stats.record_received(seq, seq * 960, 100, seq * FRAME_S)
    last = 49 * FRAME_S
    assert stats.overdue_frames(last + 0.99) == 0
    assert stats.overdue_frames(last + 1.0) == FRAMES_PER_S
    assert stats.snapshot(last + 3.0).packets_lost == 3 * FRAMES_PER_S


# the pump: the end reason


@run_async
async def test_session_is_reconnecting_then_ends_with_peer_unreachable():
    run = handshake_pair()
    settings = MediaSettings(media_timeout_s=1.5)
    session = MediaSession(run.caller.keys, ToneSource(440), NullSink(), settings=settings)
    await session.open(("127.0.0.1", 0))
    async with session:
        session.connect(("127.0.0.1", 9))  # nobody answers there
        assert not session.is_reconnecting
        await asyncio.sleep(1.2)
        assert session.is_reconnecting and session.snapshot().reconnecting
        reason = await asyncio.wait_for(session.wait_ended(), scaled(5.0))
    assert reason == EndReason.PEER_UNREACHABLE == "peer unreachable"


# what people read


def test_status_line_and_end_line_say_what_happened():
    stats = {"reconnecting": True, "peer_silent_s": 3.2, "loss_percent": 60.0, "mos": 1.3}
    line = status_text(12.0, "direct", stats, peer="alice")
    assert "00:12  direct  no audio from alice \N{EN DASH} reconnecting… 3 s  " in line
    assert "loss 60.0%" in line
    assert "reconnecting" not in status_text(12.0, "direct", {"reconnecting": False}, peer="a")
    record = {"peer": "alice", "result": "failed", "duration_s": 21.0}
    for reason in ("peer unreachable", "media timeout"):  # the latter: older history
        assert call_outcome({**record, "reason": reason}) == (
            "connection to alice lost after 00:21 (peer unreachable)"
        )
