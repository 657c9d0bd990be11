"""The call screen in the terminal: a lasting ``MUTED`` marker in the status line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from pqcall.cli.calls import live_status


@dataclass
class MutedCall:
    """What :func:`live_status` reads of a call, before any statistics."""

    is_muted: bool
    is_peer_muted: bool = False
    peer: str = "bob"
    answered: float | None = None
    path: Any = None

    def stats(self) -> None:
        return None

    def processing_report(self) -> None:
        return None


def test_muted_marker_leads_the_status_line() -> None:
    assert live_status(cast(Any, MutedCall(is_muted=True))).startswith("MUTED  00:00")
    assert not live_status(cast(Any, MutedCall(is_muted=False))).startswith("MUTED")


def test_peer_muted_shows_in_the_status_line() -> None:
    line = live_status(cast(Any, MutedCall(is_muted=False, is_peer_muted=True)))
    assert line.startswith("bob MUTED  00:00")
