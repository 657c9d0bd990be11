"""How the peer's audio arrives, as our receiver reports tell it (RFC 3550 section 6.4.1).

Scope: :class:`ReceptionReporter` follows the sequence numbers and arrival
times of the peer's audio packets and makes each
:class:`~pqcall.transport.media_packets.ReceiverReport`: cumulative loss
(appendix A.3), the extended highest sequence number, interarrival jitter,
and the fraction lost since the previous report. Pure: numbers and ``now`` in.

The fraction lost counts only packets that did not arrive: a sequence number
is judged once a later packet has been here for :data:`LOSS_GRACE_S`, so a
packet reordered or late by less (a busy machine, a stalled process: the
adaptation must not plan FEC for them) is never counted; one later than that
is taken off the next report's count. The denominator is RFC 3550's, the
packets expected since the previous report.

:meth:`ReceptionReporter.reports` adds a
:class:`~pqcall.transport.media_packets.BurstReport` for the same interval,
when any loss was judged in it (none is sent for a loss-free one):
the runs of consecutive judged-lost packets and the packets in them (a run
that goes on across a report counts in the report where it began, its
packets where they were judged). A packet judged lost that comes after all
does not shorten a run already counted.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from pqcall.media.stats import InterarrivalJitter, SequenceTracker
from pqcall.transport.media_packets import (
    FRACTION_LOST_SCALE,
    SAMPLE_RATE_HZ,
    SEQUENCE_MODULUS,
    U16_MAX,
    U32_MAX,
    BurstReport,
    ReceiverReport,
    serial_delta,
)

__all__ = ["LOSS_GRACE_S", "MAX_JUDGED_GAP_PACKETS", "ReceptionReporter"]

LOSS_GRACE_S: Final = 0.1
"""A missing packet counts as lost once a later one has been here this long.

The frame clock's largest catch-up (five 20 ms frames): a packet that comes
within it was late, not lost."""
MAX_JUDGED_GAP_PACKETS: Final = 3000
"""A larger jump in sequence numbers is a sender restart, not loss (RFC 3550 A.1's dropout)."""


class ReceptionReporter:
    """The receiving side of the reports: one :meth:`update` per audio packet."""

    __slots__ = (
        "_arrivals",
        "_burst_lost",
        "_bursts",
        "_highest_seq",
        "_in_burst",
        "_jitter",
        "_late_found",
        "_received",
        "_reported_expected",
        "_sequence",
        "_settled",
        "_settled_lost",
    )

    def __init__(self) -> None:
        self._sequence = SequenceTracker()
        self._jitter = InterarrivalJitter()
        self._highest_seq: int | None = None  # extended
        self._reported_expected = 0  # at the previous report
        self._received: set[int] = set()  # extended seqs above ``_settled`` that arrived
        self._arrivals: deque[tuple[float, int]] = deque()  # (now, highest ext seq then)
        self._settled = 0  # extended seqs up to here are judged (arrived or lost)
        self._settled_lost = 0  # judged lost since the previous report
        self._late_found = 0  # judged lost before, arrived since the previous report
        self._bursts = 0  # runs of judged-lost packets begun since the previous report
        self._burst_lost = 0  # judged lost since the previous report, late ones not taken off
        self._in_burst = False  # the last judged sequence number was lost

    def update(self, seq: int, timestamp: int, now: float) -> None:
        """Count an authenticated audio packet that arrived at ``now``."""
        if self._sequence.update(seq):
            self._jitter.update(timestamp, now)
        if self._highest_seq is None:
            self._highest_seq = ext = seq
            self._settled = seq - 1
        else:
            ext = self._highest_seq + serial_delta(seq - self._highest_seq, SEQUENCE_MODULUS)
            if ext > self._highest_seq:
                if ext - self._highest_seq > MAX_JUDGED_GAP_PACKETS:
                    self._received.clear()  # a restart: judge from here
                    self._settled = ext - 1
                self._highest_seq = ext
        if ext > self._settled:
            self._received.add(ext)
        elif ext > self._settled - MAX_JUDGED_GAP_PACKETS:
            self._late_found += 1  # judged lost, came after all
        self._arrivals.append((now, self._highest_seq))

    def reports(self, now: float) -> list[BurstReport | ReceiverReport]:
        """The interval's burst report (only if a loss was judged) and receiver report, in order."""
        receiver = self.report(now)
        bursts, lost = min(self._bursts, U16_MAX), min(self._burst_lost, U16_MAX)
        self._bursts = self._burst_lost = 0
        return [BurstReport(bursts, lost), receiver] if bursts else [receiver]

    def report(self, now: float) -> ReceiverReport:
        """The report to send at ``now``; the next one's fraction lost counts from here."""
        self._judge(now)
        expected = self._sequence.expected
        interval_expected = expected - self._reported_expected
        interval_lost = self._settled_lost - self._late_found
        self._reported_expected = expected
        self._settled_lost = self._late_found = 0
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

    def _judge(self, now: float) -> None:
        """Count the gaps below the newest packet that has been here :data:`LOSS_GRACE_S`."""
        arrivals = self._arrivals
        boundary = None
        while arrivals and arrivals[0][0] <= now - LOSS_GRACE_S:
            boundary = arrivals.popleft()[1]
        if boundary is None or boundary <= self._settled:
            return
        received = self._received
        for ext in range(self._settled + 1, boundary + 1):
            if ext in received:
                received.discard(ext)
                self._in_burst = False
            else:
                self._settled_lost += 1
                self._burst_lost += 1
                self._bursts += not self._in_burst
                self._in_burst = True
        self._settled = boundary
