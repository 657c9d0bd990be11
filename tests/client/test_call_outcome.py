"""The failure detail a phone sends its peer crosses the server in clear: no folders in it."""

from __future__ import annotations

import pytest

from pqcall.client.call_outcome import AudioOpenFailed, failure_detail
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
