"""Whether the peer is still there: heard, silent ("reconnecting"), or unreachable.

Scope: :class:`PeerLiveness` follows the arrival times of the peer's
authenticated packets, of any kind (audio, pings, pongs, reports, mute), and
says when the call turns silent (nothing for :data:`PEER_SILENT_AFTER_S`: the
call shows "reconnecting"), when the peer is back, and when the peer is
unreachable (nothing for the media timeout: the call ends). A muted peer is
never silent: it still sends one frame of silence per tick, and pings and
reports (``docs/protocol.md#liveness``). Pure: ``now`` in, events out.

Calling contract (the media protocol's)::

    liveness = PeerLiveness(timeout_s=10.0)
    liveness.start(now)
    event = liveness.heard(now)          # every authenticated packet: PeerBack or None
    event = liveness.handle_timer(now)   # at get_timer(): PeerSilent, MediaTimedOut or None
"""

from __future__ import annotations

from typing import Final

from pqcall.exceptions import LocalProtocolError
from pqcall.transport.media_events import MediaTimedOut, PeerBack, PeerSilent

__all__ = ["PEER_SILENT_AFTER_S", "PeerLiveness"]

PEER_SILENT_AFTER_S: Final = 1.0
"""Nothing from the peer this long and the call shows "reconnecting".

Fifty 20 ms frames, and longer than the ping and report intervals (1 s), so a
peer that sends anything at all is never silent; short enough that a dead peer
shows within two status-line refreshes of 0.5 s.
"""


class PeerLiveness:
    """When the peer was last heard, and what that means now.

    Args:
        timeout_s: silence that ends the call (the media timeout).
        silent_after_s: silence that makes the call "reconnecting"; at or above
            ``timeout_s``, the call ends without turning silent first.

    Raises:
        LocalProtocolError: a duration is not positive.
    """

    __slots__ = ("_heard_at", "_is_silent", "_silent_after", "_timeout")

    def __init__(self, timeout_s: float, silent_after_s: float = PEER_SILENT_AFTER_S) -> None:
        if timeout_s <= 0 or silent_after_s <= 0:
            raise LocalProtocolError("the media timeout and the silence limit must be positive")
        self._timeout = timeout_s
        self._silent_after = silent_after_s
        self._heard_at = 0.0  # `now` of the last authenticated packet (or the start)
        self._is_silent = False

    @property
    def is_silent(self) -> bool:
        """Whether the peer has been silent for ``silent_after_s`` (the call is reconnecting)."""
        return self._is_silent

    def idle_s(self, now: float) -> float:
        """Seconds since the peer was last heard (or the start)."""
        return max(0.0, now - self._heard_at)

    def start(self, now: float) -> None:
        """The call starts: the silence counts from ``now``."""
        self._heard_at = now
        self._is_silent = False

    def heard(self, now: float) -> PeerBack | None:
        """An authenticated packet arrived; a :class:`PeerBack` if the peer was silent."""
        previous, self._heard_at = self._heard_at, now
        if not self._is_silent:
            return None
        self._is_silent = False
        return PeerBack(now - previous)

    def get_timer(self) -> float:
        """When :meth:`handle_timer` has something to check."""
        if self._is_silent or self._silent_after >= self._timeout:
            return self._heard_at + self._timeout
        return self._heard_at + self._silent_after

    def handle_timer(self, now: float) -> PeerSilent | MediaTimedOut | None:
        """What ``now`` means: the call turned silent, the peer is unreachable, or nothing new.

        After a :class:`MediaTimedOut` the caller ends the call.
        """
        idle = now - self._heard_at
        if idle >= self._timeout:
            return MediaTimedOut(idle)
        if not self._is_silent and idle >= self._silent_after:
            self._is_silent = True
            return PeerSilent(idle)
        return None
