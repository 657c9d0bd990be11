"""Consent freshness on the media path in use (RFC 7675 in spirit), sans-I/O.

Scope: whether we may still send media to the address the media session sends to.
Consent is a RESPONSE, from that address, to one of our path CHECKs (authenticated
under the call's path key, with a fresh random transaction id; :mod:`pqcall.transport.mobility`
sends and matches them). One check goes every :data:`CONSENT_INTERVAL_S`; when none was
answered for :data:`CONSENT_TIMEOUT_S`, consent is lost and the media session stops
sending media there (the checks go on, so a path that comes back is used again at
once, and mobility looks for another path meanwhile). Media from the peer does not
count as consent: it shows the peer sends from that address, not that the address
still takes our traffic (a NAT binding may be gone one way). Pure: ``now`` in, answers
out; no socket, no keys. Why these figures: ``docs/decisions/0720-mobility-and-consent.md``.

Calling contract (the path monitor's)::

    consent = ConsentFreshness()
    consent.start(peer, now)                 # the path was just validated
    if consent.check_due(now): send a CHECK to consent.address; consent.checked(now)
    consent.answered(address, now)           # a RESPONSE to one of those checks
    change = consent.update(now)             # True: lost now, False: back now, None: same
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pqcall.exceptions import LocalProtocolError
from pqcall.transport.path_messages import Address

__all__ = [
    "CONSENT_INTERVAL_S",
    "CONSENT_TIMEOUT_S",
    "ConsentFreshness",
    "ConsentLost",
    "ConsentRestored",
]

CONSENT_INTERVAL_S: Final = 1.0
"""Seconds between two consent checks on the path in use (RFC 7675: 5 s on average).
A 40-byte check a second (320 bit/s each way with its answer) is 0.5 % of the call's
63 kbit/s, and lets consent expire after five missed checks at :data:`CONSENT_TIMEOUT_S`."""
CONSENT_TIMEOUT_S: Final = 5.0
"""No answered check for this long and media stops going to that address (RFC 7675:
30 s). Five checks in a row and their answers must all be lost: about 1 in 165 at 20 %
random loss each way, and what that costs is a pause of up to a second, not the call."""


@dataclass(frozen=True, slots=True)
class ConsentLost:
    """``address`` answered no consent check for the timeout: stop sending media there."""

    address: Address


@dataclass(frozen=True, slots=True)
class ConsentRestored:
    """``address`` answers again: media may go there."""

    address: Address


class ConsentFreshness:
    """Whether the address media goes to still answers our checks.

    Args:
        interval_s: seconds between checks.
        timeout_s: seconds without an answer that withdraw consent.

    Raises:
        LocalProtocolError: a duration that is not positive, or a timeout not above the interval.
    """

    __slots__ = ("_address", "_answered_at", "_check_at", "_interval", "_lost", "_timeout")

    def __init__(
        self, interval_s: float = CONSENT_INTERVAL_S, timeout_s: float = CONSENT_TIMEOUT_S
    ) -> None:
        if interval_s <= 0 or timeout_s <= interval_s:
            raise LocalProtocolError("consent needs an interval > 0 and a timeout above it")
        self._interval = interval_s
        self._timeout = timeout_s
        self._address: Address | None = None  # where media goes
        self._answered_at = 0.0  # the last answer from it (or the validation)
        self._check_at: float | None = None  # the next check
        self._lost = False  # consent withdrawn (and not back yet)

    @property
    def address(self) -> Address | None:
        """The address whose consent is followed (None before :meth:`start`)."""
        return self._address

    @property
    def is_lost(self) -> bool:
        """Whether media must not go to :attr:`address` now."""
        return self._lost

    def start(self, address: Address, now: float) -> None:
        """Follow ``address``, validated at ``now`` (by path selection or a path switch)."""
        self._address = address
        self._answered_at = now
        self._check_at = now + self._interval
        self._lost = False

    def check_due(self, now: float) -> bool:
        """Whether a consent check to :attr:`address` is due."""
        return self._check_at is not None and now >= self._check_at

    def checked(self, now: float) -> None:
        """A consent check went out at ``now``."""
        self._check_at = now + self._interval

    def answered(self, address: Address, now: float) -> None:
        """``address`` answered one of our checks at ``now`` (ignored unless it is ours)."""
        if address == self._address:
            self._answered_at = max(self._answered_at, now)

    def update(self, now: float) -> bool | None:
        """Whether consent changed at ``now``: True lost, False back, None no change."""
        if self._address is None:
            return None
        lost = now - self._answered_at >= self._timeout
        if lost == self._lost:
            return None
        self._lost = lost
        return lost

    def get_timer(self) -> float | None:
        """When something is due: the next check, or the loss of consent."""
        if self._check_at is None:
            return None
        if self._lost:
            return self._check_at
        return min(self._check_at, self._answered_at + self._timeout)
