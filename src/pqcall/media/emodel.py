"""ITU-T G.107 E-model: transmission rating R and estimated MOS for a call.

Scope: the narrowband E-model of ITU-T G.107 (06/2015), with every
parameter at its Table 1 default except the three a VoIP endpoint measures:
the one-way delay (``Ta``, taken also as the echo path delay ``T`` and half
the round trip ``Tr``, which the Recommendation allows when no better figure
is known), the packet loss ``Ppl`` with its burst ratio ``BurstR``, and the
codec's ``Ie``/``Bpl``. Pure arithmetic, no state.

The scale is G.107's narrowband one: R tops out at 93.2 with the default
parameters, which maps to MOS 4.41 (MOS is capped at 4.5). Opus is rated
with :data:`OPUS` (``Ie = 0``, ``Bpl = 25.1``, G.711-with-PLC values), an
assumption, since G.113 and G.107.1 publish none for Opus
(``docs/decisions/0104-emodel-opus-values.md``). Callers pass the residual
loss the listener hears, not the loss FEC or redundancy repaired
(``media/stats.py`` does).

Formulas: G.107 section 7 (7.1 R = Ro - Is - Id - Ie,eff + A, 7.2 Ro,
7.3 Is, 7.4 Id, 7.5 Ie,eff, 7.7 Table 1 defaults) and Annex B (R to MOS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

# G.107 section 7.7 Table 1 defaults (the parameters we do not measure)
SEND_LOUDNESS_RATING_DB: Final = 8.0  # SLR
RECEIVE_LOUDNESS_RATING_DB: Final = 2.0  # RLR
SIDETONE_MASKING_RATING_DB: Final = 15.0  # STMR
LISTENER_SIDETONE_RATING_DB: Final = 18.0  # LSTR
D_VALUE_SEND: Final = 3.0  # Ds
TALKER_ECHO_LOUDNESS_RATING_DB: Final = 65.0  # TELR
WEIGHTED_ECHO_PATH_LOSS_DB: Final = 110.0  # WEPL
QUANTIZING_DISTORTION_UNITS: Final = 1.0  # qdu
CIRCUIT_NOISE_DBM0P: Final = -70.0  # Nc
NOISE_FLOOR_DBMP: Final = -64.0  # Nfor
ROOM_NOISE_SEND_DBA: Final = 35.0  # Ps
ROOM_NOISE_RECEIVE_DBA: Final = 35.0  # Pr
ADVANTAGE_FACTOR: Final = 0.0  # A
MIN_PERCEIVABLE_DELAY_MS: Final = 100.0  # mT
DELAY_SENSITIVITY: Final = 1.0  # sT

MAX_MOS: Final = 4.5


@dataclass(frozen=True, slots=True)
class CodecImpairment:
    """A codec's E-model values (G.113 style)."""

    ie: float
    """Equipment impairment factor without loss."""
    bpl: float
    """Packet-loss robustness factor."""


OPUS: Final = CodecImpairment(ie=0.0, bpl=25.1)
"""Opus with PLC, on the narrowband scale: an assumption (docs/decisions/0104)."""

G711_PLC: Final = CodecImpairment(ie=0.0, bpl=25.1)
"""G.711 with Appendix I concealment, G.113 Appendix I Table I.3."""


def _smooth(x: float, n: float) -> float:
    """(1 + x^n)^(1/n), the smooth maximum of 1 and x that G.107 uses throughout."""
    return math.pow(1.0 + math.pow(x, n), 1.0 / n)


def _noise_and_basic_ratio() -> tuple[float, float]:
    """G.107 section 7.2: total noise No (dBm0p) and basic signal-to-noise ratio Ro."""
    slr, rlr = SEND_LOUDNESS_RATING_DB, RECEIVE_LOUDNESS_RATING_DB
    olr = slr + rlr
    nos = (
        ROOM_NOISE_SEND_DBA
        - slr
        - D_VALUE_SEND
        - 100.0
        + 0.004 * (ROOM_NOISE_SEND_DBA - olr - D_VALUE_SEND - 14.0) ** 2
    )
    pre = ROOM_NOISE_RECEIVE_DBA + 10.0 * math.log10(
        1.0 + 10.0 ** ((10.0 - LISTENER_SIDETONE_RATING_DB) / 10.0)
    )
    nor = rlr - 121.0 + pre + 0.008 * (pre - 35.0) ** 2
    nfo = NOISE_FLOOR_DBMP + rlr
    no = 10.0 * math.log10(
        sum(10.0 ** (level / 10.0) for level in (CIRCUIT_NOISE_DBM0P, nos, nor, nfo))
    )
    return no, 15.0 - 1.5 * (slr + no)


NOISE_DBM0P, BASIC_RATIO = _noise_and_basic_ratio()


def simultaneous_impairment(echo_delay_ms: float) -> float:
    """Is: loudness, sidetone and quantizing impairments (G.107 section 7.3)."""
    olr = SEND_LOUDNESS_RATING_DB + RECEIVE_LOUDNESS_RATING_DB
    x_olr = olr + 0.2 * (64.0 + NOISE_DBM0P - RECEIVE_LOUDNESS_RATING_DB)
    i_olr = 20.0 * (_smooth(x_olr / 8.0, 8) - x_olr / 8.0)
    stmr_o = -10.0 * math.log10(
        10.0 ** (-SIDETONE_MASKING_RATING_DB / 10.0)
        + math.exp(-echo_delay_ms / 4.0) * 10.0 ** (-TALKER_ECHO_LOUDNESS_RATING_DB / 10.0)
    )
    i_st = (
        12.0 * _smooth((stmr_o - 13.0) / 6.0, 8)
        - 28.0 * _smooth((stmr_o + 1.0) / 19.4, 35)
        - 13.0 * _smooth((stmr_o - 3.0) / 33.0, 13)
        + 29.0
    )
    q = 37.0 - 15.0 * math.log10(QUANTIZING_DISTORTION_UNITS)
    g = 1.07 + 0.258 * q + 0.0602 * q**2
    y = (BASIC_RATIO - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0
    z = 46.0 / 30.0 - g / 40.0
    i_q = 15.0 * math.log10(1.0 + 10.0**y + 10.0**z)
    return i_olr + i_st + i_q


def delay_impairment(one_way_delay_ms: float) -> float:
    """Id: talker echo, listener echo and pure delay impairments (G.107 section 7.4).

    Takes T = Ta = ``one_way_delay_ms`` and Tr = 2 Ta.
    """
    t = ta = max(0.0, one_way_delay_ms)
    tr = 2.0 * ta
    # talker echo, Idte
    roe = -1.5 * (NOISE_DBM0P - RECEIVE_LOUDNESS_RATING_DB)
    terv = (
        TALKER_ECHO_LOUDNESS_RATING_DB
        - 40.0 * math.log10((1.0 + t / 10.0) / (1.0 + t / 150.0))
        + 6.0 * math.exp(-0.3 * t**2)
    )
    re = 80.0 + 2.5 * (terv - 14.0)
    idte = ((roe - re) / 2.0 + math.sqrt((roe - re) ** 2 / 4.0 + 100.0) - 1.0) * (
        1.0 - math.exp(-t)
    )
    # listener echo, Idle
    rle = 10.5 * (WEIGHTED_ECHO_PATH_LOSS_DB + 7.0) * math.pow(tr + 1.0, -0.25)
    idle = (BASIC_RATIO - rle) / 2.0 + math.sqrt((BASIC_RATIO - rle) ** 2 / 4.0 + 169.0)
    # pure delay, Idd
    idd = 0.0
    if ta > MIN_PERCEIVABLE_DELAY_MS:
        x = math.log10(ta / MIN_PERCEIVABLE_DELAY_MS) / math.log10(2.0)
        power = 6.0 * DELAY_SENSITIVITY
        idd = 25.0 * (_smooth(x, power) - 3.0 * _smooth(x / 3.0, power) + 2.0)
    return idte + idle + idd


def effective_equipment_impairment(
    loss_percent: float, burst_ratio: float = 1.0, codec: CodecImpairment = OPUS
) -> float:
    """Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)  (G.107 section 7.5)."""
    ppl = min(100.0, max(0.0, loss_percent))
    burst = max(burst_ratio, 1e-9)
    return codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst + codec.bpl)


def r_factor(
    one_way_delay_ms: float,
    loss_percent: float,
    *,
    burst_ratio: float = 1.0,
    codec: CodecImpairment = OPUS,
) -> float:
    """Transmission rating R = Ro - Is - Id - Ie,eff + A (G.107 section 7.1).

    Args:
        one_way_delay_ms: mouth-to-ear delay Ta.
        loss_percent: packet loss the listener hears, Ppl, in percent.
        burst_ratio: BurstR (1 for random loss, above 1 for bursty loss).
        codec: the codec's Ie and Bpl.
    """
    return (
        BASIC_RATIO
        - simultaneous_impairment(one_way_delay_ms)
        - delay_impairment(one_way_delay_ms)
        - effective_equipment_impairment(loss_percent, burst_ratio, codec)
        + ADVANTAGE_FACTOR
    )


def mos_from_r(r: float) -> float:
    """Estimated conversational MOS from R (G.107 Annex B), 1 to 4.5."""
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return MAX_MOS
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def burst_ratio(frames: int, lost: int, loss_runs: int) -> float:
    """BurstR from a loss pattern, as G.107 section 7.5 defines it for a 2-state Markov model.

    With p = P(loss | previous received) = runs / received and q = P(received |
    previous lost) = runs / lost, BurstR = 1 / (p + q): 1 for random loss,
    above 1 when losses cluster. 1 when there is too little loss to tell.
    """
    received = frames - lost
    if loss_runs <= 0 or lost <= 0 or received <= 0:
        return 1.0
    p = loss_runs / received
    q = loss_runs / lost
    return 1.0 / (p + q)
