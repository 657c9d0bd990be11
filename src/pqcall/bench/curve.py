"""Quality per wire bit: PESQ-WB against wire kbit/s, per Opus frame size, on the speech corpus.

``python -m pqcall.bench curve [--quick] [--corpus | --no-corpus]`` (or
``pqcall bench curve``; ``python -m pqcall.bench.curve --png PATH`` to choose
where the plot goes and the grid) encodes each voice of the benchmark's speech
(:mod:`pqcall.bench.speech`) with pqcall's own codec path
(:class:`~pqcall.media.codec.OpusEncoder` with the project's
:class:`~pqcall.media.codec.OpusSettings` at each frame size and bitrate, the
clean-path complexity a call runs at without loss,
:data:`~pqcall.transport.adaptation.CALM_COMPLEXITY`), decodes it with
:class:`~pqcall.media.codec.OpusDecoder` and scores it with PESQ-WB. No
network and no clock: every figure is deterministic and not hurt by load.

Wire bit rate of a grid point (:func:`wire_bps`), as a call sends it: one
datagram per frame, whose plaintext is the 7-byte media header and one frame
at the bitrate's cap (the padding rule: every audio packet is this size,
``docs/protocol.md``, "Constant size"), sealed by a real
:class:`~pqcall.crypto.sframe_context.SFrameSender` with the media cipher
suite at a steady-state counter (header, length prefix, tag), plus 28 bytes of
IPv4 and UDP headers, at the packet rate; plus :data:`CONTROL_WIRE_BPS` for
the one control datagram a second. At the defaults this is 63.2 kbit/s, the
figure ``pqcall bench media`` measures on the wire.

Output: a table (per grid point: wire kbit/s, mean and worst voice PESQ-WB and
which voice is worst), a PNG with one line per frame size (worst voice solid,
mean dotted), today's default and the peers issue 15 quotes marked, and
figures with today's default as the baseline. Runtime: about 1 s of CPU per
voice and grid point (the full grid on the ten corpus voices: a few minutes;
``--quick``: two voices, 5 s of speech each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np

from pqcall.bench.quality import REFERENCE_RATE_HZ, align, check_pesq, pesq_wb, resample
from pqcall.bench.report import Figure, render_columns, render_table
from pqcall.bench.speech import Talker, select_speech
from pqcall.crypto.sframe_context import SFrameSender
from pqcall.media.codec import (
    DEFAULT_BITRATE_BPS,
    DEFAULT_FRAME_MS,
    FRAME_DURATIONS_MS,
    SAMPLE_RATE_HZ,
    OpusDecoder,
    OpusEncoder,
    OpusSettings,
    Pcm,
    packet_bytes,
)
from pqcall.transport.adaptation import CALM_COMPLEXITY
from pqcall.transport.media_packets import AUDIO_HEADER_LENGTH
from pqcall.transport.media_protocol import MEDIA_CIPHER_SUITE

__all__ = [
    "BITRATES_BPS",
    "CONTROL_WIRE_BPS",
    "DEFAULT_PNG",
    "PEERS",
    "CurvePoint",
    "measure",
    "plot",
    "render",
    "run",
    "wire_bps",
]

BITRATES_BPS: Final = (
    12_000,
    16_000,
    20_000,
    24_000,
    28_000,
    32_000,
    36_000,
    39_600,
    44_000,
    48_000,
)
"""Opus bitrates of the grid (39.6 kbit/s is today's default)."""
QUICK_BITRATES_BPS: Final = (16_000, 24_000, 39_600)
QUICK_SPEECH_S: Final = 5.0
IPV4_UDP_BYTES: Final = 28
"""IPv4 (20) and UDP (8) headers of every datagram."""
CONTROL_WIRE_BPS: Final = 1_200
"""One control datagram (ping, pong and report bundled) a second on the wire: 63.2 kbit/s
measured in a call against 62.0 for the audio alone (``docs/protocol.md``)."""
STEADY_STATE_PACKETS: Final = 300
"""Packets sealed before one is measured: the SFrame counter past one byte, as in a call."""
QUALITY_GOAL: Final = 4.2
"""Issue 15's PESQ-WB goal with no loss, on the worst voice."""
WIRE_GOAL_KBPS: Final = 64.0
WIRE_STRETCH_KBPS: Final = 48.0
PEERS: Final = (("baresip", 46.0, 3.97), ("aiortc 1.16", 159.0, 4.54))
"""(name, wire kbit/s, PESQ-WB) the issue measured for other clients (held-out speech, CLI)."""
DEFAULT_PNG: Final = Path("pqcall-curve.png")
"""Where ``pqcall bench curve`` writes the plot (the current directory)."""
BASELINE: Final = f"today's default ({DEFAULT_FRAME_MS} ms, {DEFAULT_BITRATE_BPS / 1000:g} kbit/s)"


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """One grid point: a frame size and Opus bitrate, its wire rate and its scores."""

    frame_ms: int
    """Opus frame (and packet) duration."""
    bitrate_bps: int
    """Opus target bitrate (the packet cap follows it)."""
    wire_bps: float
    """Bits a second on the wire, audio and control (:func:`wire_bps`)."""
    pesq: dict[str, float]
    """Voice -> PESQ-WB of the decoded speech."""

    @property
    def worst(self) -> float:
        """The worst voice's PESQ-WB."""
        return min(self.pesq.values())

    @property
    def worst_voice(self) -> str:
        """Which voice is worst."""
        return min(self.pesq, key=lambda voice: self.pesq[voice])

    @property
    def mean(self) -> float:
        """PESQ-WB over all voices."""
        return statistics.fmean(self.pesq.values())

    @property
    def wire_kbps(self) -> float:
        """:attr:`wire_bps` in kbit/s."""
        return self.wire_bps / 1000


def datagram_bytes(frame_ms: int, bitrate_bps: int) -> int:
    """Bytes of one audio datagram on the wire (IP and UDP headers included).

    The plaintext is the padding rule's constant packet (media header and one
    frame at the cap); it is sealed by a real SFrame sender with the media
    cipher suite after :data:`STEADY_STATE_PACKETS` packets.
    """
    packet = AUDIO_HEADER_LENGTH + packet_bytes(bitrate_bps, frame_ms)
    sender = SFrameSender(MEDIA_CIPHER_SUITE, bytes(32), 0, pad_to=packet)
    sealed = b""
    for _ in range(STEADY_STATE_PACKETS):
        sealed = sender.protect(bytes(packet), now=0.0)
    return len(sealed) + IPV4_UDP_BYTES


def wire_bps(frame_ms: int, bitrate_bps: int) -> float:
    """Bits a second a call sends at this frame size and Opus bitrate (see the module doc)."""
    return datagram_bytes(frame_ms, bitrate_bps) * 8 * 1000 / frame_ms + CONTROL_WIRE_BPS


def _score(talker: Talker, frame_ms: int, bitrate_bps: int, speech48: Pcm) -> float:
    settings = OpusSettings(frame_ms=frame_ms, bitrate_bps=bitrate_bps, complexity=CALM_COMPLEXITY)
    encoder, decoder = OpusEncoder(settings), OpusDecoder(frame_ms)
    samples = settings.frame_samples
    decoded = np.concatenate(
        [
            decoder.decode(encoder.encode(speech48[i : i + samples]))
            for i in range(0, len(speech48) - samples + 1, samples)
        ]
    )
    aligned, _ = align(resample(decoded, SAMPLE_RATE_HZ, REFERENCE_RATE_HZ), talker.speech)
    return pesq_wb(talker.speech, aligned)


def measure(
    talkers: Sequence[Talker],
    frames_ms: Sequence[int] = FRAME_DURATIONS_MS,
    bitrates_bps: Sequence[int] = BITRATES_BPS,
    *,
    progress: bool = False,
) -> list[CurvePoint]:
    """Encode, decode and score every voice at every grid point.

    Each voice's speech is cut to a whole number of the longest frame, so all
    frame sizes code (and PESQ scores) the same samples.

    Raises:
        PqcallError: the ``pesq`` package is missing.
        CodecError: a grid value Opus refuses.
    """
    check_pesq()
    longest = max(frames_ms) * REFERENCE_RATE_HZ // 1000
    cut = [replace(t, speech=t.speech[: len(t.speech) // longest * longest]) for t in talkers]
    speech48 = {t.name: resample(t.speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ) for t in cut}
    points: list[CurvePoint] = []
    for frame_ms in frames_ms:
        for bitrate in bitrates_bps:
            scores = {t.name: _score(t, frame_ms, bitrate, speech48[t.name]) for t in cut}
            point = CurvePoint(frame_ms, bitrate, wire_bps(frame_ms, bitrate), scores)
            if progress:
                print(
                    f"  {frame_ms} ms, {bitrate / 1000:g} kbit/s:"
                    f" {point.wire_kbps:.1f} kbit/s wire,"
                    f" worst {point.worst:.2f}, mean {point.mean:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
            points.append(point)
    return points


def render(points: Sequence[CurvePoint]) -> str:
    """The table: one row per grid point, by frame size then bitrate."""
    header = ["frame ms", "Opus kbit/s", "wire kbit/s", "PESQ-WB worst", "mean", "worst voice"]
    rows = [
        [
            str(p.frame_ms),
            f"{p.bitrate_bps / 1000:g}",
            f"{p.wire_kbps:.1f}",
            f"{p.worst:.2f}",
            f"{p.mean:.2f}",
            p.worst_voice,
        ]
        for p in points
    ]
    return render_columns("pqcall bench curve: PESQ-WB against wire bit rate", header, rows)


def best_within(points: Sequence[CurvePoint], wire_kbps: float) -> CurvePoint | None:
    """The point with the best worst voice among those at most ``wire_kbps`` on the wire."""
    fitting = [p for p in points if p.wire_kbps <= wire_kbps]
    return max(fitting, key=lambda p: p.worst) if fitting else None


def plot(points: Sequence[CurvePoint], path: Path, *, title: str = "") -> Path:
    """Draw the curve to a PNG at ``path``: one line per frame size, default and peers marked.

    Raises:
        PqcallError: matplotlib is missing (it is in the ``test`` extra).
    """
    try:
        import matplotlib  # an optional dependency: imported on use

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from pqcall.exceptions import PqcallError

        raise PqcallError("the curve needs matplotlib: pip install 'pqcall[test]'") from None
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    for frame_ms in sorted({p.frame_ms for p in points}):
        line = sorted((p for p in points if p.frame_ms == frame_ms), key=lambda p: p.wire_bps)
        x = [p.wire_kbps for p in line]
        (drawn,) = axes.plot(x, [p.worst for p in line], "o-", label=f"{frame_ms} ms, worst voice")
        axes.plot(
            x, [p.mean for p in line], ":", color=drawn.get_color(), label=f"{frame_ms} ms, mean"
        )
    default = [
        p for p in points if (p.frame_ms, p.bitrate_bps) == (DEFAULT_FRAME_MS, DEFAULT_BITRATE_BPS)
    ]
    if default:
        d = default[0]
        axes.plot([d.wire_kbps], [d.worst], "k*", markersize=16, label="today's default (worst)")
    label_at = {"baresip": (4.0, 4.5)}  # text clear of the curves, arrow to the point
    for name, kbps, score in PEERS:
        axes.plot([kbps], [score], "kx", markersize=10)
        axes.annotate(
            f"{name}\n(CLI, held-out speech)",
            (kbps, score),
            xytext=label_at.get(name, (kbps - 35, score - 0.5)),
            arrowprops={"arrowstyle": "->", "color": "grey"},
            fontsize=8,
        )
    axes.axhline(QUALITY_GOAL, color="grey", linewidth=0.8, linestyle="--")
    axes.annotate(f"goal {QUALITY_GOAL}", (0.01, QUALITY_GOAL), xycoords=("axes fraction", "data"))
    axes.axvline(
        WIRE_GOAL_KBPS,
        color="grey",
        linewidth=0.8,
        linestyle="--",
        label=f"wire goal {WIRE_GOAL_KBPS:g} kbit/s",
    )
    axes.axvline(
        WIRE_STRETCH_KBPS,
        color="grey",
        linewidth=0.8,
        linestyle=":",
        label=f"stretch {WIRE_STRETCH_KBPS:g} kbit/s",
    )
    axes.set_xlabel("wire kbit/s (Opus + media header + SFrame + IPv4/UDP, + control)")
    axes.set_ylabel("PESQ-WB, decoded, no loss")
    axes.set_title(title or "pqcall: quality per wire bit, per frame size")
    axes.set_xlim(left=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right", ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def figures(points: Sequence[CurvePoint]) -> list[Figure]:
    """Worst-voice PESQ-WB and wire kbit/s of each point, today's default as the baseline."""
    default = next(
        (
            p
            for p in points
            if (p.frame_ms, p.bitrate_bps) == (DEFAULT_FRAME_MS, DEFAULT_BITRATE_BPS)
        ),
        None,
    )
    base_pesq = default.worst if default else float("nan")
    base_wire = (
        default.wire_kbps
        if default
        else float(wire_bps(DEFAULT_FRAME_MS, DEFAULT_BITRATE_BPS)) / 1000
    )
    out: list[Figure] = []
    for p in points:
        label = f"{p.frame_ms} ms at {p.bitrate_bps / 1000:g} kbit/s"
        out += [
            Figure(f"PESQ-WB worst voice, {label}", p.worst, "MOS", BASELINE, base_pesq),
            Figure(f"wire bit rate, {label}", p.wire_kbps, "kbit/s", BASELINE, base_wire),
        ]
    return out


def summary(points: Sequence[CurvePoint]) -> str:
    """Lines that answer the issue: the best worst voice within 64 and 48 kbit/s on the wire."""
    lines = []
    for budget in (WIRE_GOAL_KBPS, WIRE_STRETCH_KBPS):
        best = best_within(points, budget)
        if best is None:
            lines.append(f"within {budget:g} kbit/s on the wire: no grid point")
            continue
        verdict = "meets" if best.worst >= QUALITY_GOAL else "misses"
        lines.append(
            f"within {budget:g} kbit/s on the wire, best worst voice: {best.worst:.2f}"
            f" at {best.frame_ms} ms, {best.bitrate_bps / 1000:g} kbit/s Opus"
            f" ({best.wire_kbps:.1f} kbit/s wire; {verdict} the {QUALITY_GOAL} goal)"
        )
        at_default_frame = best_within(
            [p for p in points if p.frame_ms == DEFAULT_FRAME_MS], budget
        )
        if at_default_frame is not None and at_default_frame is not best:
            lines.append(
                f"  at {DEFAULT_FRAME_MS} ms frames: {at_default_frame.worst:.2f}"
                f" at {at_default_frame.bitrate_bps / 1000:g} kbit/s Opus"
                f" ({at_default_frame.wire_kbps:.1f} kbit/s wire)"
            )
    return "\n".join(lines)


def run(
    *,
    quick: bool = False,
    corpus: bool | None = None,
    png: Path = DEFAULT_PNG,
    frames_ms: Sequence[int] = FRAME_DURATIONS_MS,
    bitrates_bps: Sequence[int] | None = None,
) -> list[Figure]:
    """Measure the grid, print the table and summary, write the PNG; figures against the default.

    Raises:
        CorpusUnavailable: ``corpus`` is True and the corpus cannot be built.
        PqcallError: ``pesq`` or matplotlib is missing.
    """
    talkers = select_speech(corpus, quick=quick)
    if quick:
        limit = round(QUICK_SPEECH_S * REFERENCE_RATE_HZ)
        talkers = tuple(replace(t, speech=t.speech[:limit]) for t in talkers)
    if bitrates_bps is None:
        bitrates_bps = QUICK_BITRATES_BPS if quick else BITRATES_BPS
    points = measure(talkers, frames_ms, bitrates_bps, progress=True)
    print(render(points))
    print(f"voices: {', '.join(t.name for t in talkers)}")
    print(summary(points))
    plot(points, png, title=f"pqcall: PESQ-WB per wire bit ({len(talkers)} voices)")
    print(f"wrote {png}\n")
    return figures(points)


def main(argv: list[str] | None = None) -> int:
    """``python -m pqcall.bench.curve``: the curve with a chosen grid and PNG path."""
    parser = argparse.ArgumentParser(prog="python -m pqcall.bench.curve")
    parser.add_argument("--quick", action="store_true", help="two voices, 5 s, three bitrates")
    parser.add_argument("--corpus", action=argparse.BooleanOptionalAction)
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG, help="where the plot goes")
    parser.add_argument("--frames", default=None, metavar="MS,...", help="frame sizes in ms")
    parser.add_argument("--bitrates", default=None, metavar="BPS,...", help="Opus bitrates")
    args = parser.parse_args(argv)
    frames = tuple(int(v) for v in args.frames.split(",")) if args.frames else FRAME_DURATIONS_MS
    bitrates = tuple(int(v) for v in args.bitrates.split(",")) if args.bitrates else None
    results = run(
        quick=args.quick, corpus=args.corpus, png=args.png, frames_ms=frames, bitrates_bps=bitrates
    )
    print(render_table("pqcall bench curve", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
