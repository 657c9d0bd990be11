"""Offline experiment: which redundancy repairs bursty loss best (issue 15 part 3).

``python -m pqcall.bench.bursts [--quick] [--seeds N]`` encodes each voice of
the speech corpus with each :data:`SCHEMES` entry, drops packets with
Gilbert-Elliott loss (10 %, mean burst 3, :mod:`pqcall.netem`'s model, seeds
shared by the schemes), decodes with ideal look-ahead (a lost frame uses the
best copy any later packet within the scheme's depth carries, else Opus
concealment) and prints PESQ-WB per voice, the mean and the worst voice.
No sockets, no clock: it measures the coding, not the timing; the record is
``docs/decisions/0220-bursts.md``.

Every scheme fills the same Opus budget per packet (:data:`PACKET_OPUS_BYTES`,
what the default packet holds after its 7-byte audio header), so the packet
size is the one the padding rule gives today; a redundant block costs its
4-byte header (``media_packets.REDUNDANCY_HEADER_LENGTH``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from pqcall.bench.quality import REFERENCE_RATE_HZ, Samples, pesq_wb, resample
from pqcall.bench.speech import Talker, select_speech
from pqcall.media.codec import (
    SAMPLE_RATE_HZ,
    Bandwidth,
    OpusDecoder,
    OpusEncoder,
    OpusSettings,
    Pcm,
    has_fec,
    silence,
)
from pqcall.netem import GilbertElliott, Impairment
from pqcall.netem.model import ImpairmentModel

__all__ = ["PACKET_OPUS_BYTES", "SCHEMES", "Scheme", "decode_lossy", "main"]

FRAME_MS: Final = 20
PACKET_OPUS_BYTES: Final = 99
"""Opus bytes in a default audio packet (the 99-byte cap of one frame)."""
BLOCK_HEADER_BYTES: Final = 4
"""Timestamp offset and length in front of each redundant copy."""
BURSTY: Final = GilbertElliott.from_mean_loss(0.10, 3.0)
PLANNED_LOSS_PERCENT: Final = 10


@dataclass(frozen=True, slots=True)
class Scheme:
    """One way to spend the packet on recovery."""

    name: str
    """Label in the table."""
    fec: bool
    """The main frame carries in-band FEC planned for :data:`PLANNED_LOSS_PERCENT`."""
    copies: int = 0
    """Earlier frames carried again (1: n-1; 2: n-1 and n-2)."""
    copy_bytes: int = 0
    """Opus bytes of each copy (0: the copies are the main frames again, as today's mode)."""
    grow: bool = False
    """The packet grows by the copies (a mode of its own size); else they share its bytes."""

    @property
    def main_bytes(self) -> int:
        """The main frame's cap."""
        if self.copies and not self.copy_bytes:  # today's redundancy: equal halves
            return (PACKET_OPUS_BYTES - BLOCK_HEADER_BYTES) // 2
        if self.grow:
            return PACKET_OPUS_BYTES
        return PACKET_OPUS_BYTES - self.copies * (self.copy_bytes + BLOCK_HEADER_BYTES)

    @property
    def packet_bytes(self) -> int:
        """Opus bytes and redundancy headers in a packet."""
        if self.copies and not self.copy_bytes:
            return PACKET_OPUS_BYTES
        return self.main_bytes + self.copies * (self.copy_bytes + BLOCK_HEADER_BYTES)


SCHEMES: Final = (
    Scheme("no recovery (clean mode)", fec=False),
    Scheme("FEC (today's lossy mode)", fec=True),
    Scheme("n-1 at half the bytes (today's redundancy)", fec=False, copies=1),
    Scheme("FEC + n-1, n-2 at 16 B", fec=True, copies=2, copy_bytes=16),
    Scheme("FEC + n-1, n-2 at 20 B", fec=True, copies=2, copy_bytes=20),
    Scheme("n-1, n-2 at 20 B, no FEC", fec=False, copies=2, copy_bytes=20),
    Scheme("FEC + n-1..n-3 at 16 B", fec=True, copies=3, copy_bytes=16),
    Scheme("FEC + n-1, n-2 at 20 B, packet grows", fec=True, copies=2, copy_bytes=20, grow=True),
    Scheme("n-1, n-2 at 20 B, packet grows", fec=False, copies=2, copy_bytes=20, grow=True),
    Scheme("n-1, n-2 at 30 B, packet grows", fec=False, copies=2, copy_bytes=30, grow=True),
    Scheme("n-1..n-3 at 20 B, packet grows", fec=False, copies=3, copy_bytes=20, grow=True),
    Scheme("n-1, n-2 at 40 B, packet grows", fec=False, copies=2, copy_bytes=40, grow=True),
    Scheme("n-1..n-3 at 30 B, packet grows", fec=False, copies=3, copy_bytes=30, grow=True),
    Scheme("n-1..n-3 at 40 B, packet grows", fec=False, copies=3, copy_bytes=40, grow=True),
    Scheme("n-1..n-3 at 65 B, packet grows", fec=False, copies=3, copy_bytes=65, grow=True),
)


def _encode(pcm: Pcm, scheme: Scheme) -> tuple[list[bytes], list[bytes]]:
    """(main frames, copy frames) of ``pcm``; copies are the main frames if not separate."""
    main = OpusEncoder(
        OpusSettings(
            bitrate_bps=scheme.main_bytes * 8 * 1000 // FRAME_MS,
            expected_loss_percent=PLANNED_LOSS_PERCENT if scheme.fec else 0,
            complexity=10,
        )
    )
    backup = None
    if scheme.copy_bytes:
        backup = OpusEncoder(
            OpusSettings(
                bitrate_bps=scheme.copy_bytes * 8 * 1000 // FRAME_MS,
                bandwidth=Bandwidth.WIDEBAND,
                fec=False,
                expected_loss_percent=0,
                complexity=10,
            )
        )
    size = main.frame_samples
    frames = [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]
    mains = [main.encode(frame) for frame in frames]
    copies = [backup.encode(frame) for frame in frames] if backup else mains
    return mains, copies


def decode_lossy(
    mains: Sequence[bytes], copies: Sequence[bytes], lost: Sequence[bool], scheme: Scheme
) -> Pcm:
    """What the receiver plays: each lost frame from the best later copy, else concealed.

    Order: FEC in packet n+1 (if that packet has any: libopus leaves it out when the
    bitrate is short), then a copy in n+1, n+2, ... (up to ``scheme.copies``).
    """
    decoder = OpusDecoder(FRAME_MS)
    out: list[Pcm] = []
    count = len(mains)
    for n in range(count):
        if not lost[n]:
            out.append(decoder.decode(mains[n]))
            continue
        if scheme.fec and n + 1 < count and not lost[n + 1] and has_fec(mains[n + 1]):
            out.append(decoder.decode_fec(mains[n + 1]))
            continue
        carrier = next(
            (k for k in range(n + 1, min(count, n + 1 + scheme.copies)) if not lost[k]), None
        )
        out.append(decoder.decode(copies[n]) if carrier is not None else decoder.conceal())
    return np.concatenate(out) if out else silence(0)


def _loss_pattern(count: int, seed: int) -> list[bool]:
    model = ImpairmentModel(Impairment(burst=BURSTY, seed=seed), random.Random(seed))
    return [model.decide(0.0).is_dropped for _ in range(count)]


def _score(talker: Talker, scheme: Scheme, seeds: Sequence[int | None]) -> float:
    """Mean PESQ-WB over the seeds (None: no loss)."""
    pcm = resample(talker.speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)
    mains, copies = _encode(pcm, scheme)
    scores = []
    for seed in seeds:
        count = len(mains)
        lost = [False] * count if seed is None else _loss_pattern(count, seed)
        played = decode_lossy(mains, copies, lost, scheme)
        heard: Samples = resample(played, SAMPLE_RATE_HZ, REFERENCE_RATE_HZ)
        reference = talker.speech[: len(heard)]
        scores.append(pesq_wb(reference, heard[: len(reference)]))
    return statistics.fmean(scores)


def main(argv: list[str] | None = None) -> int:
    """Print PESQ-WB per scheme and voice, the mean and the worst voice."""
    parser = argparse.ArgumentParser(prog="python -m pqcall.bench.bursts")
    parser.add_argument("--quick", action="store_true", help="two voices")
    parser.add_argument("--seeds", type=int, default=3, help="loss patterns per voice")
    parser.add_argument("--only", default="", metavar="TEXT", help="schemes whose name has TEXT")
    args = parser.parse_args(argv)
    talkers = select_speech(None, quick=args.quick)
    seeds: list[int | None] = [30 + 1000 * r for r in range(args.seeds)]
    realized = statistics.fmean(
        statistics.fmean(_loss_pattern(500, seed)) for seed in seeds if seed is not None
    )
    print(
        f"10 % bursty loss (mean burst 3), {len(seeds)} seeds (loss drawn: {100 * realized:.1f} %"
        " of 500 packets), PESQ-WB per voice; no-loss PESQ-WB of the worst voice last"
    )
    names = " ".join(t.name for t in talkers)
    print(f"{'scheme':45s} {'main/pkt':10s} {'mean':5s} {'worst':5s} voices: {names}")
    for scheme in (s for s in SCHEMES if args.only in s.name):
        per_voice = {t.name: _score(t, scheme, seeds) for t in talkers}
        worst = min(per_voice, key=lambda name: per_voice[name])
        clean = _score(next(t for t in talkers if t.name == worst), scheme, [None])
        cells = " ".join(f"{v:.2f}" for v in per_voice.values())
        mean = statistics.fmean(per_voice.values())
        print(
            f"{scheme.name:45s} {scheme.main_bytes:3d}/{scheme.packet_bytes:3d} B  {mean:.2f}"
            f"  {per_voice[worst]:.2f}  {cells}  | no loss {clean:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
