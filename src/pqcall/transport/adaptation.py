"""The sender's adaptation policy: how our encoder answers the loss the peer reports.

Scope: :class:`AdaptationPolicy` turns the peer's receiver reports and ``now``
into a :class:`SenderAdaptation` (in-band FEC planned for some loss,
RFC 2198-style redundancy, Opus bytes per frame, encoder complexity). Pure:
no socket, clock or codec; :class:`~pqcall.transport.media_protocol.MediaProtocol`
feeds it and announces each change as an event.

The rules (``docs/protocol.md#media-packets``, "Adaptation"; the measurements
behind them in ``docs/decisions/0120-media-adaptation-fec-over-redundancy.md`` and
``docs/decisions/0121-media-calm-complexity.md``):

* the packet size never changes with the mode: one frame, or two frames of
  half the size each, fill the same padded packet;
* automatic mode (``redundancy=None``) raises the encoder's expected loss
  (FEC) to the mean loss of the last :data:`LOSS_WINDOW_REPORTS` reports, and
  turns redundancy on instead only when the encoder has no FEC; True / False
  force redundancy on / off;
* until the first report FEC is planned for :data:`STARTUP_EXPECTED_LOSS_PERCENT`;
* while no loss is planned for, complexity is at most :data:`CALM_COMPLEXITY`;
* bursts (the peer's :class:`~pqcall.transport.media_packets.BurstReport`,
  mean run of lost packets over the same window at least
  :data:`BURSTY_MEAN_PACKETS`) call for copies of earlier frames, which FEC's one
  frame cannot replace: with ``backup_bytes`` set (the sender can carry them),
  the backup mode adds :data:`BACKUP_COPIES` low-rate copies of frames n-1..n-3
  to each packet, a mode of its own, larger packet size, and drops FEC (the
  copies repair a single loss too, and FEC at the same bytes costs the main
  frame 0.6 PESQ-WB on the worst voice; ``docs/decisions/0220-bursts.md``);
  it is left only when the window's bursts fall below :data:`UNBURSTY_MEAN_PACKETS`
  or the hold ends;
* a link narrower than the call (:mod:`~pqcall.transport.bandwidth`: queueing
  delay in the round trips, the delivered rate in the reports) lowers the
  Opus bytes per frame to a rung of a short ladder, two frames a packet, and
  the packet size with them (``packet_bytes``: each rung its own constant
  size; ``frames_per_packet``); while limited, no
  redundancy or backup copies (they add bits the link does not have);
* :data:`ADAPTATION_HOLD_S` after the last report with loss, back to the
  configured state (the clean mode, unless configured otherwise); the loss
  planned for is the peer's reports of packets that never arrived
  (:mod:`~pqcall.transport.reception` does not count a packet late by less
  than its grace as lost), never our own concealment or late packets.

A tried and shelved mode (backup copies of frame n-2, for bursty loss) is
recorded in ``docs/decisions/0122-media-backup-copies.md``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pqcall.exceptions import LocalProtocolError
from pqcall.transport.bandwidth import BandwidthController
from pqcall.transport.media_packets import (
    AUDIO_HEADER_LENGTH,
    BACKUP_HEADER_LENGTH,
    REDUNDANCY_HEADER_LENGTH,
    BurstReport,
    ControlPacket,
    ReceiverReport,
)

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs from Python 3.13; only for mypy

__all__ = [
    "ADAPTATION_HOLD_S",
    "BACKUP_COPIES",
    "BACKUP_PACKET_MULTIPLE",
    "BURSTY_MEAN_PACKETS",
    "CALM_COMPLEXITY",
    "LOSS_WINDOW_REPORTS",
    "MAX_COMPLEXITY",
    "MIN_REDUNDANT_FRAME_BYTES",
    "STARTUP_EXPECTED_LOSS_PERCENT",
    "UNBURSTY_MEAN_PACKETS",
    "AdaptationPolicy",
    "EncoderMode",
    "SenderAdaptation",
]

LOSS_WINDOW_REPORTS: Final = 4
"""The loss the adaptation plans for is the mean over this many recent reports."""
ADAPTATION_HOLD_S: Final = 3.0
"""Loss-free time after which the adaptation returns to the configured state.

Three reports at the default interval: one loss-free report is not proof the loss
stopped, but a lossy mode must not outlive the loss by long (it costs up to
0.7 PESQ-WB on some voices; ``docs/decisions/0210-clean-path.md``). Was 10 s."""
STARTUP_EXPECTED_LOSS_PERCENT: Final = 10
"""Loss the encoder plans FEC for until the peer's first report says what the path does."""
CALM_COMPLEXITY: Final = 6
"""Encoder complexity while no loss is planned for (at most; never above the configured one).

Measured in ``docs/decisions/0121-media-calm-complexity.md``: 6 and 7 make the same
packets at the default capped bitrate, 6 is cheaper, and the full complexity
is worth its cost only under loss.
"""
MAX_COMPLEXITY: Final = 10
"""Opus's highest complexity (``media.codec`` has it too; this pure module cannot import
the codec, which loads libopus)."""
MIN_REDUNDANT_FRAME_BYTES: Final = 8
"""Smallest Opus frame worth sending twice."""
BACKUP_COPIES: Final = 3
"""Earlier frames (n-1, n-2, n-3) a packet carries again in the backup mode: a burst of
three lost packets is repaired from the fourth (offline, 10 % loss in bursts of 3 on
the worst voice: PESQ-WB 2.2 with FEC, 2.9 with three 30-byte copies, 3.1 with 40-byte
ones; decision 0220)."""
BACKUP_PACKET_MULTIPLE: Final = 3
"""The backup mode's packet is this many constant packet sizes (padding multiples): the copies
grow to fill it (67 bytes each at the default 99-byte frames), as the padding would cost the
same wire bytes anyway."""
BURSTY_MEAN_PACKETS: Final = 1.8
"""Mean run of lost packets from which the backup mode is chosen (random 10 % loss: 1.1)."""
UNBURSTY_MEAN_PACKETS: Final = 1.4
"""Below this mean run the backup mode ends (hysteresis: decision 0122's mode flapped)."""


class EncoderMode(enum.StrEnum):
    """The sender's mode, as the call's statistics show it."""

    CLEAN = "clean"
    """No loss planned for: no FEC, no redundancy."""
    FEC = "fec"
    """In-band FEC planned for some loss."""
    REDUNDANCY = "redundancy"
    """The previous frame again in each packet."""
    BACKUP = "backup"
    """Low-rate copies of the :data:`BACKUP_COPIES` previous frames in each (larger) packet."""


@dataclass(frozen=True, slots=True)
class SenderAdaptation:
    """How the wrapper should run its encoder now."""

    redundancy: bool
    """Whether audio packets carry the previous frame again."""
    expected_loss_percent: int
    """Loss the encoder should plan in-band FEC for (``set_expected_loss_percent``)."""
    frame_bytes: int
    """Opus bytes per frame that fit the constant packet size (the encoder's cap)."""
    complexity: int
    """Encoder effort, 0-10 (``set_complexity``): the configured one while loss is
    planned for, at most :data:`CALM_COMPLEXITY` on a clean path."""
    backup_copies: int = 0
    """Earlier frames each packet carries again as low-rate copies (0 outside the backup mode)."""
    backup_bytes: int = 0
    """Opus bytes of each backup copy (the backup encoder's cap; 0 outside the backup mode)."""
    packet_bytes: int = 0
    """The constant packet size of a bandwidth-limited rung (header and its frames);
    0: the configured size."""
    frames_per_packet: int = 1
    """2 on a bandwidth-limited rung: two frames a packet (AUDIO_PAIR, 40 ms packets)."""

    @property
    def mode(self) -> EncoderMode:
        """The mode in one word: backup, redundancy, FEC planned for loss, or clean."""
        if self.backup_copies:
            return EncoderMode.BACKUP
        if self.redundancy:
            return EncoderMode.REDUNDANCY
        return EncoderMode.FEC if self.expected_loss_percent else EncoderMode.CLEAN

    def bitrate_bps(self, frame_ms: int) -> int:
        """The Opus bitrate whose share of a frame is ``frame_bytes`` (the encoder's cap)."""
        return self.frame_bytes * 8 * 1000 // frame_ms


class AdaptationPolicy:
    """Chooses the encoder settings from the peer's receiver reports (pure).

    Args:
        frame_bytes: the largest Opus frame at the configured bitrate.
        packet_bytes: the constant size of an audio packet (before SFrame).
        redundancy: None for automatic, True to always send the previous
            frame again, False never to.
        fec: whether the encoder has in-band FEC.
        base_expected_loss_percent: the encoder's configured expected loss;
            never planned below.
        complexity: the encoder's configured complexity, used whenever loss
            is planned for.
        backup_bytes: the least Opus bytes of each backup copy when bursts are
            reported (they grow to fill :data:`BACKUP_PACKET_MULTIPLE` packets);
            0 (the default) never to enter the backup mode.
        frame_ms: the frame duration (the bandwidth ladder's packet rate).

    Raises:
        LocalProtocolError: complexity out of range, or redundancy forced on
            while two frames cannot fit the packet size.
    """

    __slots__ = (
        "_adaptation",
        "_backup_bytes",
        "_bandwidth",
        "_base_loss",
        "_calm_complexity",
        "_complexity",
        "_fec",
        "_is_bursty",
        "_last_loss_at",
        "_recent_bursts",
        "_recent_loss",
        "_redundancy_setting",
        "_redundant_frame_bytes",
        "_single_frame_bytes",
    )

    def __init__(
        self,
        *,
        frame_bytes: int,
        packet_bytes: int,
        redundancy: bool | None,
        fec: bool,
        base_expected_loss_percent: int,
        complexity: int,
        backup_bytes: int = 0,
        frame_ms: int = 20,
    ) -> None:
        if not 0 <= base_expected_loss_percent <= 100:
            raise LocalProtocolError("expected loss must be 0-100 %")
        if not 0 <= complexity <= MAX_COMPLEXITY:
            raise LocalProtocolError(f"complexity must be 0-{MAX_COMPLEXITY}")
        self._single_frame_bytes = min(frame_bytes, packet_bytes - AUDIO_HEADER_LENGTH)
        room = packet_bytes - AUDIO_HEADER_LENGTH - REDUNDANCY_HEADER_LENGTH
        self._redundant_frame_bytes = room // 2  # each of two frames in redundancy mode
        if redundancy is True and self._redundant_frame_bytes < MIN_REDUNDANT_FRAME_BYTES:
            raise LocalProtocolError(f"two audio frames do not fit in {packet_bytes} bytes")
        self._redundancy_setting = redundancy  # None: automatic
        self._fec = fec  # the encoder has in-band FEC
        self._base_loss = base_expected_loss_percent  # configured expected loss
        self._complexity = complexity  # configured encoder complexity
        self._calm_complexity = min(complexity, CALM_COMPLEXITY)  # while no loss is planned
        self._recent_loss: deque[float] = deque(maxlen=LOSS_WINDOW_REPORTS)
        self._last_loss_at: float | None = None  # `now` of the last report showing loss
        room = BACKUP_PACKET_MULTIPLE * packet_bytes - AUDIO_HEADER_LENGTH - BACKUP_HEADER_LENGTH
        fill = (room - self._single_frame_bytes) // BACKUP_COPIES - 2  # 2: its length field
        self._backup_bytes = max(backup_bytes, fill) if backup_bytes else 0  # 0: no backup
        self._recent_bursts: deque[BurstReport] = deque(maxlen=LOSS_WINDOW_REPORTS)
        self._is_bursty = False  # the backup mode's hysteresis state
        self._bandwidth = BandwidthController(self._single_frame_bytes, frame_ms)
        self._adaptation = self._startup_adaptation()

    @property
    def adaptation(self) -> SenderAdaptation:
        """How the encoder should run now."""
        return self._adaptation

    @property
    def bandwidth(self) -> BandwidthController:
        """The bandwidth estimate (read it; feed it through this policy)."""
        return self._bandwidth

    @property
    def mean_burst_packets(self) -> float:
        """Mean run of lost packets over the recent burst reports (0 without loss)."""
        bursts = sum(report.bursts for report in self._recent_bursts)
        return sum(report.lost for report in self._recent_bursts) / bursts if bursts else 0.0

    def take_bursts(self, packet: ControlPacket) -> TypeIs[BurstReport]:
        """Keep ``packet`` if it is a burst report (acted on with the receiver report after it).

        Returns:
            Whether it was one (the protocol's control loop skips it then).
        """
        if not isinstance(packet, BurstReport):
            return False
        self._recent_bursts.append(packet)
        return True

    def report_received(self, report: ReceiverReport, now: float) -> bool:
        """Take one receiver report from the peer; whether :attr:`adaptation` changed."""
        mean_burst = self.mean_burst_packets
        if mean_burst >= BURSTY_MEAN_PACKETS:
            self._is_bursty = True
        elif mean_burst < UNBURSTY_MEAN_PACKETS:
            self._is_bursty = False
        self._recent_loss.append(report.loss_fraction)
        if report.fraction_lost > 0:
            self._last_loss_at = now
        self._bandwidth.report_received(report, now)
        return self._set(self._current())  # the first report ends the startup plan

    def audio_sent(self, seq: int, now: float) -> None:
        """Our audio packet ``seq`` left at ``now`` (the bandwidth estimate's report round trip)."""
        self._bandwidth.audio_sent(seq, now)

    def rtt_measured(self, rtt_s: float, now: float) -> bool:
        """Take one round trip (queueing delay); whether :attr:`adaptation` changed."""
        return self._bandwidth.rtt_measured(rtt_s, now) and self._set(self._current())

    def _current(self) -> SenderAdaptation:
        """The encoder settings for the loss and bandwidth known now."""
        if self._last_loss_at is None:
            return self._compute(loss_percent=0.0, lossy=False)
        loss_percent = 100.0 * sum(self._recent_loss) / len(self._recent_loss)
        return self._compute(loss_percent, lossy=True)

    def get_timer(self) -> float | None:
        """When the hold after the last loss ends (call :meth:`handle_timer`), or None."""
        if self._last_loss_at is None:
            return None
        return self._last_loss_at + ADAPTATION_HOLD_S

    def handle_timer(self, now: float) -> bool:
        """Return to the configured state once the hold is over; whether that changed it."""
        if self._last_loss_at is None or now < self._last_loss_at + ADAPTATION_HOLD_S:
            return False
        self._last_loss_at = None
        self._recent_loss.clear()
        self._recent_bursts.clear()
        self._is_bursty = False
        return self._set(self._compute(loss_percent=0.0, lossy=False))

    def _startup_adaptation(self) -> SenderAdaptation:
        """The encoder settings before any report: FEC planned for some loss.

        Before the peer's first report nothing is known about the path, and
        a frame lost then is concealed unless its FEC rides in the next
        packet; the first report (a second in) puts the plan on measurement.
        Redundancy (encoders without FEC) is not started blind: it halves the
        bitrate of every frame.
        """
        calm = self._compute(loss_percent=0.0, lossy=False)
        if not self._fec or calm.redundancy:
            return calm
        planned = max(calm.expected_loss_percent, STARTUP_EXPECTED_LOSS_PERCENT)
        return SenderAdaptation(False, planned, calm.frame_bytes, self._complexity)

    def _compute(self, loss_percent: float, lossy: bool) -> SenderAdaptation:
        """The encoder settings for a recent loss (``lossy``: loss within the hold time)."""
        if self._bandwidth.is_limited:
            bandwidth = self._bandwidth
            planned = max(1, math.ceil(loss_percent)) if lossy and self._fec else 0
            expected_loss = min(100, max(self._base_loss, planned))
            return SenderAdaptation(
                False,
                expected_loss,
                bandwidth.frame_bytes,
                self._complexity,
                packet_bytes=bandwidth.packet_bytes,
                frames_per_packet=bandwidth.frames_per_packet,
            )
        if self._redundancy_setting is None:
            redundancy = lossy and not self._fec
            redundancy = redundancy and self._redundant_frame_bytes >= MIN_REDUNDANT_FRAME_BYTES
        else:
            redundancy = self._redundancy_setting
        if lossy and self._is_bursty and self._backup_bytes and self._redundancy_setting is None:
            return SenderAdaptation(
                False,
                self._base_loss,
                self._single_frame_bytes,
                self._complexity,
                BACKUP_COPIES,
                self._backup_bytes,
            )
        if redundancy:
            return SenderAdaptation(
                True, self._base_loss, self._redundant_frame_bytes, self._complexity
            )
        planned = max(1, math.ceil(loss_percent)) if lossy and self._fec else 0
        expected_loss = min(100, max(self._base_loss, planned))
        complexity = self._complexity if lossy or expected_loss else self._calm_complexity
        return SenderAdaptation(False, expected_loss, self._single_frame_bytes, complexity)

    def _set(self, adaptation: SenderAdaptation) -> bool:
        if adaptation == self._adaptation:
            return False
        self._adaptation = adaptation
        return True
