"""The ring limit (pure, in virtual time) and the screening file of a home."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pqcall.client.ringlimit import (
    MAX_TRACKED_CALLERS,
    RING_COOLDOWN_S,
    RING_LIMIT_UNANSWERED,
    RING_LIMIT_WINDOW_S,
    RingLimiter,
)
from pqcall.client.screening import CallScreen, Screening
from pqcall.exceptions import KeystoreError


def ring_unanswered(limiter: RingLimiter, caller: str, times: list[float]) -> None:
    for now in times:
        limiter.call_unanswered(caller, now)


def test_the_limit_starts_at_the_nth_unanswered_call_and_cools_down() -> None:
    limiter = RingLimiter()
    times = [100.0 + 45.0 * i for i in range(RING_LIMIT_UNANSWERED)]
    ring_unanswered(limiter, "mallory", times[:-1])
    assert not limiter.is_cooling_down("mallory", times[-1])
    limiter.call_unanswered("mallory", times[-1])
    assert limiter.is_cooling_down("mallory", times[-1] + 1.0)
    assert not limiter.is_cooling_down("alice", times[-1] + 1.0)
    assert limiter.is_cooling_down("mallory", times[-1] + RING_COOLDOWN_S - 1.0)
    assert not limiter.is_cooling_down("mallory", times[-1] + RING_COOLDOWN_S)


def test_calls_spread_wider_than_the_window_do_not_count() -> None:
    limiter = RingLimiter()
    step = RING_LIMIT_WINDOW_S / (RING_LIMIT_UNANSWERED - 1) + 1.0
    times = [step * i for i in range(RING_LIMIT_UNANSWERED)]
    ring_unanswered(limiter, "alice", times)
    assert not limiter.is_cooling_down("alice", times[-1] + 1.0)


def test_an_answered_call_forgets_the_count() -> None:
    limiter = RingLimiter()
    ring_unanswered(limiter, "bob", [1.0] * RING_LIMIT_UNANSWERED)
    limiter.call_answered("bob")
    assert not limiter.is_cooling_down("bob", 2.0)


def test_memory_is_bounded() -> None:
    limiter = RingLimiter()
    ring_unanswered(limiter, "first", [1.0] * RING_LIMIT_UNANSWERED)
    for i in range(MAX_TRACKED_CALLERS):
        limiter.call_unanswered(f"caller{i}", 2.0)
    assert not limiter.is_cooling_down("first", 3.0)  # forgotten first


def test_screening_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / "screening.json"
    screening = Screening(path, clock=lambda: 1234.0)
    assert not screening.is_blocked("mallory") and not screening.silence_strangers
    assert screening.block("Mallory") and not screening.block("mallory")
    assert screening.blocked() == {"mallory": 1234.0}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    screening.set_silence_strangers(True)
    again = Screening(path)  # another process on the same home sees it all
    assert again.is_blocked("MALLORY") and again.silence_strangers
    assert again.unblock("mallory") and not again.unblock("mallory")
    assert screening.blocked() == {} and screening.silence_strangers


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        '{"format": "pqcall screening", "version": 1, "blocked": {"m": "x"}}',
        '{"format": "other", "version": 1}',
    ],
)
def test_a_damaged_file_is_an_error_and_the_screen_rings(tmp_path: Path, content: str) -> None:
    path = tmp_path / "screening.json"
    path.write_text(content)
    with pytest.raises(KeystoreError):
        Screening(path).load()
    screen = CallScreen(Screening(path), RingLimiter())
    assert screen.before_offer("mallory", 1.0) is None  # ring rather than lose calls
    assert screen.for_stranger("mallory", is_contact=False) is None


def test_the_screen(tmp_path: Path) -> None:
    screening = Screening(tmp_path / "screening.json")
    limiter = RingLimiter()
    screen = CallScreen(screening, limiter)
    screening.block("mallory")
    blocked = screen.before_offer("mallory", 1.0)
    assert blocked is not None and blocked.result == "blocked" and not blocked.answer_busy
    ring_unanswered(limiter, "eve", [1.0] * RING_LIMIT_UNANSWERED)
    limited = screen.before_offer("eve", 2.0)
    assert limited is not None and limited.result == "busy" and limited.answer_busy
    assert screen.before_offer("alice", 2.0) is None
    assert screen.for_stranger("eve", is_contact=False) is None
    screen.silence_strangers = True
    silenced = screen.for_stranger("eve", is_contact=False)
    assert silenced is not None and silenced.result == "missed" and not silenced.answer_busy
    assert screen.for_stranger("alice", is_contact=True) is None
