"""The failure detail a phone sends its peer crosses the server in clear: no folders in it."""

from __future__ import annotations

import pytest

from pqcall.client.call_outcome import AudioOpenFailed, failure_detail, outcome_word
from pqcall.signaling.messages import MAX_REASON_DETAIL_LENGTH


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            AudioOpenFailed("microphone", OSError("cannot open /home/bob/calls/in.wav")),
            "bob's phone could not open its microphone: cannot open in.wav",
            id="posix-path",
        ),
        pytest.param(
            "could not open C:\\Users\\bob\\in.wav",
            "bob's phone failed: could not open in.wav",
            id="windows-path",
        ),
        pytest.param(
            AudioOpenFailed("speaker", OSError("no audio device named 'usb'")),
            "bob's phone could not open its speaker: no audio device named 'usb'",
            id="no-path",
        ),
    ],
)
def test_failure_detail_drops_the_folders_of_paths(error: Exception | str, expected: str) -> None:
    assert failure_detail("bob", error) == expected


def test_failure_detail_is_one_short_printable_line() -> None:
    detail = failure_detail("bob", "line one\nline two\x00" + "x" * 500)
    assert detail.isprintable()
    assert len(detail) == MAX_REASON_DETAIL_LENGTH
    assert detail.endswith("…")


@pytest.mark.parametrize(
    ("record", "word"),
    [
        ({"result": "ended", "direction": "outgoing", "answered_unix": 5.0}, "answered"),
        ({"result": "ended", "direction": "incoming", "answered_unix": 5.0}, "answered"),
        ({"result": "ended", "direction": "outgoing", "answered_unix": None}, "cancelled"),
        ({"result": "ended", "direction": "incoming", "answered_unix": None}, "missed"),
        ({"result": "rejected", "direction": "outgoing", "reason": "declined"}, "declined"),
        ({"result": "rejected", "direction": "incoming", "reason": "declined"}, "declined"),
        (
            {"result": "missed", "direction": "outgoing", "reason": "no answer: bob was offline"},
            "no answer",
        ),
        ({"result": "missed", "direction": "outgoing", "reason": "cancelled"}, "cancelled"),
        ({"result": "missed", "direction": "incoming", "reason": "missed while offline"}, "missed"),
        ({"result": "busy", "direction": "outgoing", "reason": "busy"}, "busy"),
        ({"result": "blocked", "direction": "incoming"}, "blocked"),
        (
            {"result": "failed", "direction": "outgoing", "reason": "peer unreachable"},
            "failed: connection lost",
        ),
        (
            {"result": "failed", "reason": "bob's phone could not open its microphone: x"},
            "failed: bob's phone could not open its microphone: x",
        ),
        ({"result": "failed", "reason": ""}, "failed: unknown reason"),
    ],
)
def test_outcome_word_is_one_of_the_shared_words(record: dict[str, object], word: str) -> None:
    assert outcome_word(record) == word
