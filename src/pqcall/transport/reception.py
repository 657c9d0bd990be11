"""How the peer's audio arrives, as our receiver reports tell it (RFC 3550 section 6.4.1).

Scope: :class:`ReceptionReporter` follows the sequence numbers and arrival
times of the peer's audio packets and makes each
:class:`~pqcall.transport.media_packets.ReceiverReport`: cumulative loss
(appendix A.3), the extended highest sequence number, interarrival jitter,
and the fraction lost since the previous report. Pure: numbers and ``now`` in.
"""

from __future__ import annotations

from pqcall.media.stats import InterarrivalJitter, SequenceTracker
from pqcall.transport.media_packets import (
    FRACTION_LOST_SCALE,
    SAMPLE_RATE_HZ,
    SEQUENCE_MODULUS,
    U32_MAX,
    ReceiverReport,
    serial_delta,
)

__all__ = ["ReceptionReporter"]


class ReceptionReporter:
    """The receiving side of the reports: one :meth:`update` per audio packet."""

    __slots__ = ("_highest_seq", "_jitter", "_reported_expected", "_reported_received", "_sequence")

    def __init__(self) -> None:
        self._sequence = SequenceTracker()
        self._jitter = InterarrivalJitter()
        self._highest_seq: int | None = None  # extended
        self._reported_expected = 0  # at the previous report
        self._reported_received = 0

    def update(self, seq: int, timestamp: int, now: float) -> None:
        """Count an authenticated audio packet that arrived at ``now``."""
        if self._sequence.update(seq):
            self._jitter.update(timestamp, now)
        if self._highest_seq is None:
            self._highest_seq = seq
        else:
            delta = serial_delta(seq - self._highest_seq, SEQUENCE_MODULUS)
            if delta > 0:
                self._highest_seq += delta

    def report(self) -> ReceiverReport:
        """The report to send now; the next one's fraction lost counts from here."""
        expected, received = self._sequence.expected, self._sequence.received
        interval_expected = expected - self._reported_expected
        interval_lost = interval_expected - (received - self._reported_received)
        self._reported_expected, self._reported_received = expected, received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(
                FRACTION_LOST_SCALE - 1, interval_lost * FRACTION_LOST_SCALE // interval_expected
            )
        jitter_units = round(self._jitter.jitter_ms * SAMPLE_RATE_HZ / 1000)
        return ReceiverReport(
            cumulative_lost=min(self._sequence.lost, U32_MAX),
            highest_seq=(self._highest_seq or 0) & U32_MAX,
            jitter=min(jitter_units, U32_MAX),
            fraction_lost=fraction,
        )
