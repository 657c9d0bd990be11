"""The impairment model and the sans-I/O link, with seeded and scripted draws and a fake clock.

Statistical bounds are a few standard deviations wide (each comment derives its own), so a
correct implementation fails them with negligible probability for any seed, while a wrong
one (loss not applied, applied twice, wrong burst length) is still caught.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterator
from itertools import groupby

import numpy as np
import pytest

from pqcall.exceptions import LocalProtocolError
from pqcall.netem import (
    GilbertElliott,
    ImpairedLink,
    Impairment,
    ImpairmentModel,
    JitterDistribution,
    Verdict,
)


class ScriptedRandom:
    """A RandomSource that replays given draws (six per datagram), for exact link tests."""

    def __init__(self, draws: list[float]) -> None:
        self._draws: Iterator[float] = iter(draws)

    def random(self) -> float:
        return next(self._draws)


# draw positions per datagram (see pqcall.netem.model.DRAWS_PER_DATAGRAM)
PASS = [0.99, 0.99, 0.99, 0.99, 0.5, 0.5]  # kept, not duplicated, not held, median jitter
HOLD = [0.99, 0.99, 0.99, 0.0, 0.5, 0.5]  # held back reorder_ms
DUPLICATE = [0.99, 0.99, 0.0, 0.99, 0.5, 0.5]


# --- the pure model -------------------------------------------------------------------------


EVERYTHING = Impairment(
    loss=0.1, delay_ms=30, jitter_ms=10, duplicate=0.05, reorder=0.05, keep_order=False, seed=1
)


def verdicts(impairment: Impairment, seed: int, count: int = 2000) -> list[Verdict]:
    model = ImpairmentModel(impairment, random.Random(seed))
    return [model.decide(now=0.02 * i) for i in range(count)]


def test_same_seed_same_decisions():
    assert verdicts(EVERYTHING, seed=7) == verdicts(EVERYTHING, seed=7)
    assert verdicts(EVERYTHING, seed=7) != verdicts(EVERYTHING, seed=8)


def test_numpy_generator_is_a_random_source():
    def run_numpy() -> list[Verdict]:
        model = ImpairmentModel(EVERYTHING, np.random.default_rng(7))
        return [model.decide(now=0.02 * i) for i in range(500)]

    assert run_numpy() == run_numpy()


def test_loss_pattern_does_not_depend_on_the_other_settings():
    plain = Impairment(loss=0.2)
    busy = Impairment(loss=0.2, delay_ms=50, jitter_ms=20, duplicate=0.3, reorder=0.3)
    for settings in (plain, busy):
        dropped = [v.is_dropped for v in verdicts(settings, 3)]
        assert dropped == [v.is_dropped for v in verdicts(plain, 3)]


def test_gilbert_elliott_from_mean_loss():
    ge = GilbertElliott.from_mean_loss(mean_loss=0.1, mean_burst=3)
    assert ge.r == pytest.approx(1 / 3)
    assert ge.p == pytest.approx(0.1 / 3 / 0.9)
    assert (ge.loss_good, ge.loss_bad) == (0.0, 1.0)
    assert ge.mean_loss == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("mean_loss", "mean_burst"),
    [
        pytest.param(0.10, 3.0, id="10%-burst-3"),
        pytest.param(0.05, 2.0, id="5%-burst-2"),
        pytest.param(0.20, 6.0, id="20%-burst-6"),
    ],
)
def test_gilbert_elliott_gives_the_target_loss_and_burst_length(mean_loss, mean_burst):
    n = 400_000
    model = ImpairmentModel(
        Impairment(burst=GilbertElliott.from_mean_loss(mean_loss, mean_burst)),
        random.Random(11),
    )
    lost = [model.decide(now=0.0).is_dropped for _ in range(n)]
    bursts = [sum(1 for _ in run) for is_lost, run in groupby(lost) if is_lost]

    # The loss indicator is a two-state Markov chain with second eigenvalue lam = 1 - p - r, so
    # the mean of n samples has variance pi (1 - pi) (1 + lam) / (1 - lam) / n (pi = mean
    # loss). At most 0.0023 for these targets; 0.015 is over 6 standard deviations.
    ge = GilbertElliott.from_mean_loss(mean_loss, mean_burst)
    lam = 1 - ge.p - ge.r
    sd = math.sqrt(mean_loss * (1 - mean_loss) * (1 + lam) / (1 - lam) / n)
    assert sd < 0.0025
    assert sum(lost) / n == pytest.approx(mean_loss, abs=0.015)

    # Bursts are geometric with mean 1/r and standard deviation sqrt(1 - r) / r; with about
    # n * loss / burst of them (>= 6600) the mean has sd <= 0.07 datagrams; 5 sd is 0.35.
    burst_sd = math.sqrt(1 - ge.r) / ge.r / math.sqrt(len(bursts))
    assert burst_sd < 0.07
    assert statistics.fmean(bursts) == pytest.approx(mean_burst, abs=0.35)


def test_gilbert_elliott_with_loss_in_both_states():
    ge = GilbertElliott(p=0.05, r=0.2, loss_good=0.01, loss_bad=0.6)
    assert ge.mean_loss == pytest.approx(0.8 * 0.01 + 0.2 * 0.6)
    model = ImpairmentModel(Impairment(burst=ge), random.Random(5))
    n = 200_000
    lost = sum(model.decide(now=0.0).is_dropped for _ in range(n))
    # the chain's variance bound as above (lam = 0.75, factor 7) gives sd < 0.0025; 0.012 is 5
    assert lost / n == pytest.approx(ge.mean_loss, abs=0.012)


@pytest.mark.parametrize(
    ("distribution", "delay_ms", "jitter_ms", "mean_ms"),
    [
        pytest.param(JitterDistribution.NORMAL, 50.0, 10.0, 50.0, id="normal"),
        pytest.param(JitterDistribution.EXPONENTIAL, 20.0, 10.0, 30.0, id="exponential"),
        pytest.param(JitterDistribution.UNIFORM, 50.0, 10.0, 50.0, id="uniform"),
    ],
)
def test_delay_distribution(distribution, delay_ms, jitter_ms, mean_ms):
    n = 40_000
    model = ImpairmentModel(
        Impairment(delay_ms=delay_ms, jitter_ms=jitter_ms, jitter_distribution=distribution),
        random.Random(2),
    )
    delays_ms = [model.decide(now=10.0).deliver_at[0] * 1000 - 10_000 for _ in range(n)]
    # sd of the sample mean is jitter / sqrt(n) = 0.05 ms; of the sample sd, below
    # jitter * sqrt(kurtosis - 1) / (2 sqrt(n)) <= 0.125 ms (exponential: kurtosis 9)
    assert statistics.fmean(delays_ms) == pytest.approx(mean_ms, abs=0.3)
    assert statistics.pstdev(delays_ms) == pytest.approx(jitter_ms, abs=0.6)
    assert min(delays_ms) >= (delay_ms if distribution is JitterDistribution.EXPONENTIAL else 0)
    if distribution is JitterDistribution.UNIFORM:
        half_width = math.sqrt(3) * jitter_ms
        assert delay_ms - half_width <= min(delays_ms) < max(delays_ms) <= delay_ms + half_width


def test_normal_jitter_is_clipped_at_zero():
    model = ImpairmentModel(Impairment(jitter_ms=10.0), random.Random(4))
    delays = [model.decide(now=1.0).deliver_at[0] - 1.0 for _ in range(10_000)]
    assert min(delays) == 0.0  # about half the draws are negative and clipped
    assert max(delays) > 0.02


def test_keep_order_never_reorders_jittered_datagrams():
    settings = Impairment(delay_ms=30, jitter_ms=20, keep_order=True)
    model = ImpairmentModel(settings, random.Random(9))
    times = [model.decide(now=0.005 * i).deliver_at[0] for i in range(2000)]
    assert times == sorted(times)
    unordered = ImpairmentModel(Impairment(delay_ms=30, jitter_ms=20), random.Random(9))
    times = [unordered.decide(now=0.005 * i).deliver_at[0] for i in range(2000)]
    assert times != sorted(times)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param(
            {"loss": 1.5}, "loss must be a probability in [0, 1], got 1.5", id="loss-range"
        ),
        pytest.param(
            {"loss": 0.1, "burst": GilbertElliott(p=0.1, r=0.5)},
            "set either loss or burst, not both",
            id="loss-and-burst",
        ),
        pytest.param(
            {"jitter_ms": -1.0}, "jitter_ms must be a finite time >= 0, got -1.0", id="jitter"
        ),
        pytest.param(
            {"delay_ms": math.nan}, "delay_ms must be a finite time >= 0, got nan", id="delay"
        ),
    ],
)
def test_invalid_impairment(settings, message):
    with pytest.raises(LocalProtocolError) as exc_info:
        Impairment(**settings)
    assert str(exc_info.value) == message


@pytest.mark.parametrize(
    ("mean_loss", "mean_burst", "message"),
    [
        pytest.param(0.0, 2.0, "mean_loss must be in (0, 1), got 0.0", id="no-loss"),
        pytest.param(0.1, 0.5, "mean_burst must be at least 1 datagram, got 0.5", id="burst"),
        pytest.param(
            0.6, 1.0, "a mean loss of 0.6 needs bursts longer than 1.0 datagrams", id="too-short"
        ),
    ],
)
def test_invalid_gilbert_elliott_targets(mean_loss, mean_burst, message):
    with pytest.raises(LocalProtocolError) as exc_info:
        GilbertElliott.from_mean_loss(mean_loss, mean_burst)
    assert str(exc_info.value) == message


def test_gilbert_elliott_cannot_be_stuck():
    with pytest.raises(LocalProtocolError, match=r"^p and r cannot both be zero$"):
        GilbertElliott(p=0.0, r=0.0)


# --- the sans-I/O link, with a fake clock ---------------------------------------------------


def test_link_without_impairment_forwards_at_once():
    link = ImpairedLink(Impairment(), random.Random(0))
    link.receive_datagram(b"one", now=1.0)
    link.receive_datagram(b"two", now=1.0)
    assert link.get_timer() == 1.0
    assert link.datagrams_to_send(now=1.0) == [b"one", b"two"]
    assert link.get_timer() is None
    assert link.stats.delivered == 2


def test_link_holds_delays_and_counts_reordering():
    settings = Impairment(delay_ms=10, reorder=0.5, reorder_ms=30)
    link = ImpairedLink(settings, ScriptedRandom(HOLD + PASS + PASS))
    for number, now in enumerate((0.0, 0.02, 0.04)):
        link.receive_datagram(bytes([number]), now=now)
    assert link.get_timer() == pytest.approx(0.03)  # datagram 1: 0.02 + 10 ms
    assert link.datagrams_to_send(now=0.029) == []
    assert link.datagrams_to_send(now=0.03) == [b"\x01"]
    assert link.get_timer() == pytest.approx(0.04)  # datagram 0: 0.0 + 10 ms + 30 ms held
    assert link.datagrams_to_send(now=0.06) == [b"\x00", b"\x02"]
    stats = link.stats
    assert (stats.received, stats.held, stats.delivered, stats.reordered) == (3, 1, 3, 1)


def test_link_duplicates_and_overflow():
    link = ImpairedLink(
        Impairment(delay_ms=5, duplicate=0.5), ScriptedRandom(DUPLICATE + PASS), queue_limit=2
    )
    link.receive_datagram(b"a", now=0.0)  # two copies fill the queue
    link.receive_datagram(b"b", now=0.0)  # no room
    assert link.datagrams_to_send(now=1.0) == [b"a", b"a"]
    stats = link.stats
    assert (stats.duplicated, stats.delivered, stats.overflowed, stats.reordered) == (1, 2, 1, 0)
    assert stats.delivered + link.queued + stats.overflowed == (
        stats.received - stats.dropped + stats.duplicated
    )


def test_link_reconfigure_applies_to_later_datagrams():
    link = ImpairedLink(Impairment(delay_ms=100), random.Random(0))
    link.receive_datagram(b"slow", now=0.0)
    link.reconfigure(Impairment(), random.Random(0))
    link.receive_datagram(b"fast", now=0.0)
    assert link.datagrams_to_send(now=0.0) == [b"fast"]
    assert link.datagrams_to_send(now=0.1) == [b"slow"]
    assert link.stats.reordered == 1
