"""A real call with ``voice_disguise``: alice's tone reaches bob shifted by her call's ratio.

Bob's side is told alice's voice is disguised (the FLAGS control packet); alice's
side reports nothing of bob's.

Two phones, a real server and relay, loopback UDP, Opus, libsonic (issue 23).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pqcall.client.phone_callstate import CallState
from pqcall.media.disguise import PRESETS
from tests.harness import run_async

from ..server.conftest import RunningServer
from .test_phone import (  # noqa: F401 (server_with_relay is a fixture)
    STATE_TIMEOUT_S,
    phones,
    server_with_relay,
    wait_state,
    wav_dominant_hz,
)

pytestmark = pytest.mark.slow


@run_async
async def test_disguised_caller_is_heard_shifted(
    server_with_relay: RunningServer,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    async with phones(server_with_relay, tmp_path, "bob", audio_in="tone:440") as (bob,):
        async with phones(
            server_with_relay, tmp_path, "alice", audio_in="tone:200", voice_disguise="high"
        ) as (alice,):
            call = await alice.call("bob")
            incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
            await incoming.accept()
            assert await wait_state(call, CallState.ACTIVE) is CallState.ACTIVE
            await asyncio.sleep(1.5)
            # issue 23: bob is told (FLAGS in the media channel), alice is not told of bob
            assert incoming.is_peer_voice_disguised and not incoming.is_voice_disguised
            assert call.is_voice_disguised and not call.is_peer_voice_disguised
            await call.hangup()
            await wait_state(incoming, CallState.ENDED)
    bob_record, alice_record = incoming.summary(), call.summary()  # the --json objects
    assert (bob_record["peer_voice_disguised"], bob_record["voice_disguised"]) == (True, False)
    assert (alice_record["peer_voice_disguised"], alice_record["voice_disguised"]) == (False, True)
    high = PRESETS["high"]
    heard = wav_dominant_hz(tmp_path / "bob-received.wav")
    assert 200 * high.low - 5 <= heard <= 200 * high.high + 5  # alice's 200 Hz, disguised
    assert abs(wav_dominant_hz(tmp_path / "alice-received.wav") - 440) < 5  # bob's, untouched
