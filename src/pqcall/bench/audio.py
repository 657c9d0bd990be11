"""``pqcall bench audio``: the audio processing stage measured (echo, noise, CPU, latency).

Scope: the send side of one phone (bob) run in-process, frame by frame, in
the session's order (capture → ``MediaPipeline.capture`` → Opus, then the
played frame → ``observe_playout``), and what alice decodes:

- echo: alice's speech played in bob's room (:class:`~pqcall.bench.audio_scenes.Room`:
  80 ms, -10 dB, RT60 50 ms; from 22 s: 130 ms, -8 dB, RT60 80 ms) with bob
  talking 12-18 s (double talk). ERLE = echo power at bob's microphone over
  power at alice, in the windows where only the echo is there; the same run
  with cancellation off is the baseline. Bob's level during double talk is
  compared with the same stage fed bob alone (no echo). Convergence: the
  first 0.5 s window, from the start or the echo-path change, with ERLE >= 20 dB;
  sustained convergence: the first of three such windows in a row.
- noise: alice's speech plus white, babble and fan noise at 0, 5 and 10 dB
  SNR, suppression on against off in the same run, PESQ-WB and STOI.
- CPU of the stage (default: echo + noise + gain) per call side, % of one
  core; latency it adds, by two methods: cross-correlation of its output with
  its input (speech in noise), and the position of clicks (short bursts,
  gain control off) in its output.
- noise suppression level 3 against the default level 2 (PESQ-WB at 5 dB SNR).

``--quick`` shortens the echo run and scores one noise at one SNR.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import numpy as np

from pqcall.bench.audio_scenes import NOISES, EchoScene, Room, echo_scene, mix_at_snr, noise, speech
from pqcall.bench.quality import REFERENCE_RATE_HZ, align, pesq_wb, resample
from pqcall.bench.report import Figure
from pqcall.exceptions import PqcallError
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusDecoder, OpusSettings, Pcm, samples_per_frame
from pqcall.media.pipeline import AudioProcessing, MediaPipeline
from pqcall.media.processing import ProcessingOptions, WebRtcProcessing

__all__ = ["EchoFigures", "measure_echo", "run"]

FRAME_MS: Final = 20
ERLE_WINDOW_S: Final = 0.5
CONVERGED_DB: Final = 20.0
SUSTAINED_WINDOWS: Final = 3
"""Echo windows in a row at :data:`CONVERGED_DB` for the "sustained" convergence figures."""
ECHO_ACTIVE_DB: Final = 30.0
"""A window counts for ERLE when its echo is this far above the sensor noise."""
FULL: Final = ProcessingOptions()
NOISE_ONLY: Final = ProcessingOptions(echo_cancel=False, auto_gain=False)
NOISE_LEVEL_3: Final = ProcessingOptions(echo_cancel=False, auto_gain=False, ns_level=3)
NO_GAIN: Final = ProcessingOptions(auto_gain=False)
OFF: Final = ProcessingOptions(
    echo_cancel=False, noise_suppression=False, auto_gain=False, high_pass=False
)
ROOMS: Final = (Room(), Room(delay_ms=130.0, gain=0.4, rt60_ms=80.0, seed=2))
LEAD_IN_S: Final = 1.0
"""Noise alone before the speech, as a call has before anyone talks."""

EchoFigures = dict[str, float]


def run(*, quick: bool = False) -> list[Figure]:
    """Every figure of the benchmark."""
    figures = echo_figures(quick)
    figures += noise_figures(quick)
    figures += cost_figures(quick)
    return figures


# ---------------------------------------------------------------- echo


def _stage(options: ProcessingOptions) -> WebRtcProcessing | None:
    if not options.any:
        return None
    try:
        return WebRtcProcessing(options)
    except ImportError:
        raise PqcallError(
            "the audio benchmark needs pywebrtc-audio: pip install pywebrtc-audio"
        ) from None


def run_side(
    mic: np.ndarray, far: np.ndarray | None, processing: AudioProcessing | None
) -> np.ndarray:
    """Bob's send side over whole signals: what alice decodes, aligned with ``mic``.

    Each tick captures one frame of ``mic`` through the pipeline (processing,
    Opus) and then plays one frame of ``far`` (shown to the processing stage),
    as the session does. The decoder's delay is taken off by cross-correlation.
    """
    frame = samples_per_frame(FRAME_MS)
    pipeline = MediaPipeline(OpusSettings(frame_ms=FRAME_MS), processing=processing)
    decoder = OpusDecoder(FRAME_MS)
    mic16 = _int16(mic)
    far16 = None if far is None else _int16(far)
    frames = len(mic16) // frame
    out = np.zeros(frames * frame, dtype=np.int16)
    for index in range(frames):
        span = slice(index * frame, (index + 1) * frame)
        out[span] = decoder.decode(pipeline.capture(mic16[span], index * FRAME_MS / 1000))
        if processing is not None and far16 is not None:
            processing.observe_playout(far16[span])
    return out.astype(np.float64)


def measure_echo(scene: EchoScene, options: ProcessingOptions) -> EchoFigures:
    """ERLE (steady, after double talk, after the path change), bob's level, convergence."""
    out = _decoded(run_side(scene.mic, scene.far, _stage(options)), scene.mic)
    alone = _decoded(run_side(scene.near + scene.sensor, None, _stage(options)), scene.mic)
    start, end = scene.double_talk_s
    rate = SAMPLE_RATE_HZ
    window = round(ERLE_WINDOW_S * rate)
    noise_power = float(np.mean(scene.sensor**2))
    erle: list[tuple[float, float]] = []  # (window start s, ERLE dB) where only echo is there
    for first in range(0, len(out) - window + 1, window):
        span = slice(first, first + window)
        echo_power = float(np.mean(scene.echo[span] ** 2))
        if np.any(scene.near[span]) or echo_power < noise_power * 10 ** (ECHO_ACTIVE_DB / 10):
            continue
        erle.append((first / rate, _db(echo_power / float(np.mean(out[span] ** 2) + 1e-9))))
    during = slice(round((start + 0.5) * rate), round(end * rate))
    return {
        "erle_steady_db": _erle_between(erle, 4.0, start),
        "erle_after_double_talk_db": _erle_between(erle, end + 1.0, scene.change_s),
        "erle_after_change_db": _erle_between(erle, scene.change_s + 2.0, len(out) / rate),
        "near_level_change_db": _db(
            float(np.mean(out[during] ** 2)) / float(np.mean(alone[during] ** 2) + 1e-9)
        ),
        "converge_s": _converged(erle, 0.0),
        "reconverge_s": _converged(erle, scene.change_s),
        "reconverge_double_talk_s": _converged(erle, end),
        "converge_sustained_s": _converged(erle, 0.0, SUSTAINED_WINDOWS),
        "reconverge_sustained_s": _converged(erle, scene.change_s, SUSTAINED_WINDOWS),
        "reconverge_double_talk_sustained_s": _converged(erle, end, SUSTAINED_WINDOWS),
    }


def echo_figures(quick: bool) -> list[Figure]:
    """The echo test, cancellation on (default stage) against off."""
    seconds = 30.0
    scene = echo_scene(seconds, ROOMS, double_talk_s=(12.0, 18.0), change_s=22.0)
    on = measure_echo(scene, FULL)
    off = measure_echo(scene, NOISE_ONLY) if not quick else {k: 0.0 for k in on}
    off_name = "cancellation off (NS on)" if not quick else "not run (--quick)"
    return [
        Figure("ERLE steady (4-12 s)", on["erle_steady_db"], "dB", off_name, off["erle_steady_db"]),
        Figure(
            "ERLE after double talk (19-22 s)",
            on["erle_after_double_talk_db"],
            "dB",
            off_name,
            off["erle_after_double_talk_db"],
        ),
        Figure(
            "ERLE after echo-path change (24-30 s)",
            on["erle_after_change_db"],
            "dB",
            off_name,
            off["erle_after_change_db"],
        ),
        Figure(
            "bob's level in double talk vs alone",
            on["near_level_change_db"],
            "dB",
            off_name,
            off["near_level_change_db"],
        ),
        Figure("convergence from call start", on["converge_s"], "s", "goal", 2.0),
        Figure("convergence after path change", on["reconverge_s"], "s", "goal", 2.0),
        Figure("convergence after double talk", on["reconverge_double_talk_s"], "s", "goal", 2.0),
        Figure("sustained convergence from start", on["converge_sustained_s"], "s", "goal", 2.0),
        Figure(
            "sustained convergence after path change",
            on["reconverge_sustained_s"],
            "s",
            "goal",
            2.0,
        ),
        Figure(
            "sustained convergence after double talk",
            on["reconverge_double_talk_sustained_s"],
            "s",
            "goal",
            2.0,
        ),
    ]


def _erle_between(erle: list[tuple[float, float]], first_s: float, last_s: float) -> float:
    """The median ERLE of the windows starting in [first_s, last_s - window)."""
    values = [db for at, db in erle if first_s <= at <= last_s - ERLE_WINDOW_S]
    return float(np.median(values)) if values else float("nan")


def _converged(erle: list[tuple[float, float]], since_s: float, in_a_row: int = 1) -> float:
    """Seconds from ``since_s`` to the end of the first window reaching :data:`CONVERGED_DB`.

    With ``in_a_row`` > 1 that window and the next echo windows up to
    ``in_a_row`` must all reach it (one good window that falls back again is
    not convergence: the "sustained" figures).
    """
    after = [(at, db) for at, db in erle if at >= since_s]
    for index, (at, _) in enumerate(after):
        run = after[index : index + in_a_row]
        if len(run) == in_a_row and all(db >= CONVERGED_DB for _, db in run):
            return at + ERLE_WINDOW_S - since_s
    return float("inf")


# ---------------------------------------------------------------- noise


def noise_figures(quick: bool) -> list[Figure]:
    """PESQ-WB and STOI with suppression on against off, per noise and SNR."""
    from pystoi import stoi  # type: ignore[import-untyped]  # the test extra; on use

    seconds = 6.0 if quick else 10.0
    clean = speech("alice", seconds)
    lead = np.zeros(round(LEAD_IN_S * SAMPLE_RATE_HZ))
    reference = resample(_int16(clean), SAMPLE_RATE_HZ, REFERENCE_RATE_HZ)
    figures = []
    for kind in ("babble",) if quick else NOISES:
        interference = noise(kind, len(lead) + len(clean))
        for snr in (5,) if quick else (0, 5, 10):
            noisy = mix_at_snr(np.concatenate((lead, clean)), interference, snr)
            scores = {}
            levels: tuple[tuple[str, ProcessingOptions], ...] = (("on", NOISE_ONLY), ("off", OFF))
            if snr == 5 and not quick:
                levels += (("level 3", NOISE_LEVEL_3),)
            for label, options in levels:
                out = run_side(noisy, None, _stage(options))
                degraded16 = resample(_int16(out), SAMPLE_RATE_HZ, REFERENCE_RATE_HZ)
                degraded16 = degraded16[round(LEAD_IN_S * REFERENCE_RATE_HZ) :]
                aligned, _ = align(degraded16, reference)
                scores[label] = (
                    pesq_wb(reference, aligned),
                    float(stoi(reference.astype(float), aligned.astype(float), REFERENCE_RATE_HZ)),
                )
            base = f"suppression off, {kind} {snr} dB SNR"
            figures.append(
                Figure(f"PESQ-WB {kind} {snr} dB", scores["on"][0], "MOS", base, scores["off"][0])
            )
            figures.append(
                Figure(f"STOI {kind} {snr} dB", scores["on"][1], "", base, scores["off"][1])
            )
            if "level 3" in scores:
                level2 = f"NS level 2, {kind} {snr} dB SNR"
                figures.append(
                    Figure(
                        f"PESQ-WB {kind} {snr} dB NS level 3",
                        scores["level 3"][0],
                        "MOS",
                        level2,
                        scores["on"][0],
                    )
                )
                figures.append(
                    Figure(
                        f"STOI {kind} {snr} dB NS level 3",
                        scores["level 3"][1],
                        "",
                        level2,
                        scores["on"][1],
                    )
                )
    return figures


# ---------------------------------------------------------------- cost


def cost_figures(quick: bool) -> list[Figure]:
    """CPU of the default stage per call side, and the latency it adds."""
    seconds = 5.0 if quick else 20.0
    scene = echo_scene(seconds, ROOMS, double_talk_s=(1.0, 3.0), change_s=seconds)
    mic, far = _int16(scene.mic), _int16(scene.far)
    frame = samples_per_frame(FRAME_MS)
    frames = len(mic) // frame
    stage = _stage(FULL)
    assert stage is not None

    def work() -> None:
        for index in range(frames):
            span = slice(index * frame, (index + 1) * frame)
            stage.process_capture(mic[span])
            stage.observe_playout(far[span])

    cpu_percent = 100 * _cpu_seconds(work) / (frames * FRAME_MS / 1000)
    encoder = MediaPipeline(OpusSettings(frame_ms=FRAME_MS))

    def encode() -> None:
        for index in range(frames):
            encoder.capture(mic[index * frame : (index + 1) * frame], 0.0)

    opus_percent = 100 * _cpu_seconds(encode) / (frames * FRAME_MS / 1000)
    return [
        Figure("CPU of the stage (AEC+NS+AGC)", cpu_percent, "% core", "Opus encode", opus_percent),
        Figure("latency added (NS)", _latency_ms(NOISE_ONLY), "ms", "goal", 10.0),
        Figure("latency added (AEC+NS+AGC)", _latency_ms(FULL), "ms", "goal", 10.0),
        Figure("latency added, clicks (AEC+NS)", _click_latency_ms(NO_GAIN), "ms", "goal", 10.0),
        Figure("latency added, clicks (NS)", _click_latency_ms(NOISE_ONLY), "ms", "goal", 10.0),
    ]


CLICK_EVERY_S: Final = 0.5
CLICK_SAMPLES: Final = 240
"""A click: 5 ms of Hann-windowed noise, -12 dBFS peak, over a -60 dBFS floor."""


def _click_latency_ms(options: ProcessingOptions) -> float:
    """The median delay of clicks through the stage (a second method; no far end played)."""
    rng = np.random.default_rng(11)
    total = round(4.0 * SAMPLE_RATE_HZ)
    signal = rng.standard_normal(total) * 30.0
    click = np.hanning(CLICK_SAMPLES) * rng.standard_normal(CLICK_SAMPLES) * 8_000
    starts = [round(k * CLICK_EVERY_S * SAMPLE_RATE_HZ) for k in range(2, 8)]
    for start in starts:
        signal[start : start + CLICK_SAMPLES] += click
    stage = _stage(options)
    assert stage is not None
    pcm, frame = _int16(signal), samples_per_frame(FRAME_MS)
    out = np.concatenate(
        [stage.process_capture(pcm[i : i + frame]) for i in range(0, total, frame)]
    ).astype(np.float64)
    lags = []
    reach = round(0.1 * SAMPLE_RATE_HZ)  # look up to 100 ms later
    for start in starts:
        correlation = np.correlate(out[start : start + reach + CLICK_SAMPLES], click, "valid")
        lags.append(int(np.argmax(np.abs(correlation))))
    return 1000 * float(np.median(lags)) / SAMPLE_RATE_HZ


def _latency_ms(options: ProcessingOptions) -> float:
    """The lag of the stage's output behind its input (speech in noise, no echo)."""
    clean = speech("alice", 4.0)
    noisy = _int16(mix_at_snr(clean, noise("white", len(clean)), 20))
    stage = _stage(options)
    assert stage is not None
    frame = samples_per_frame(FRAME_MS)
    out = np.concatenate(
        [stage.process_capture(noisy[i : i + frame]) for i in range(0, len(noisy), frame)]
    )
    half = len(out) // 2  # after the stage settled
    _, lag = align(out[half:], noisy[half:])
    lag = lag if lag < len(out) // 4 else 0  # a wrap-around peak means no lag
    return 1000 * lag / SAMPLE_RATE_HZ


def _cpu_seconds(work: Callable[[], None]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


# ---------------------------------------------------------------- helpers


def _decoded(out: np.ndarray, mic: np.ndarray) -> np.ndarray:
    """``out`` moved back by the codec's delay (found against the ``mic`` it came from)."""
    delay = OPUS_DELAY_SAMPLES
    shifted = np.zeros(len(mic))
    shifted[: len(out) - delay] = out[delay:]
    return shifted


OPUS_DELAY_SAMPLES: Final = 312
"""libopus's decoder output lags its encoder input by 6.5 ms at 48 kHz (RFC 6716 lookahead)."""


def _int16(signal: np.ndarray) -> Pcm:
    clipped: Pcm = np.clip(np.round(signal), -32_768, 32_767).astype(np.int16)
    return clipped


def _db(ratio: float) -> float:
    return 10 * float(np.log10(max(ratio, 1e-12)))
