"""Seeded network impairment: loss, bursty loss, delay, jitter, duplication, reordering.

The sans-I/O core of the UDP impairment relay (:mod:`pqcall.netem.relay`), a
user-space stand-in for Linux netem(8). It never touches a socket or the clock: the caller
passes ``now`` (seconds, any monotonic origin) and gets back delivery times on that clock.

Randomness comes from a :class:`RandomSource` the caller creates and passes in, so this module
imports no ``random``: any object whose ``random()`` returns floats uniform in [0, 1) will do.
The relay uses ``random.Random(impairment.seed)``; ``numpy.random.default_rng(seed)`` works
too. Every datagram consumes exactly ``DRAWS_PER_DATAGRAM`` draws whatever the settings, so the
same seed and datagram sequence give the same decisions, and a seed's loss pattern stays the
same when jitter, duplication or reordering are switched on or off.

The models, per datagram and in this order:

- Loss: independent (Bernoulli) with probability ``Impairment.loss``, or bursty with the
  Gilbert-Elliott two-state Markov chain ``Impairment.burst`` (:class:`GilbertElliott`). A
  dropped datagram is gone; it is neither duplicated nor delayed.
- Delay: ``delay_ms`` plus a jitter term of standard deviation ``jitter_ms`` drawn from
  ``jitter_distribution`` (:class:`JitterDistribution`), never below zero.
- Duplication: with probability ``duplicate`` a second copy is sent, with its own independently
  drawn delay (so it may overtake the original).
- Reordering comes two ways. Jitter reorders on its own: delivery times are not forced into
  FIFO order (as netem with jitter), so datagrams closer together than the jitter swap places;
  ``keep_order=True`` forbids that by delaying each datagram until the one before it has left.
  And with probability ``reorder`` a datagram is held back ``reorder_ms`` longer, so the ones
  sent in that time overtake it (held datagrams are exempt from ``keep_order``).
- Bottleneck (:class:`ImpairedLink` only; it needs the datagram's size): with ``rate_kbps``
  set, a datagram that survived the loss model waits behind the ones before it and leaves
  after its own serialisation time (its bytes plus :data:`IP_UDP_OVERHEAD_BYTES` at the rate:
  the rate is the wire's); if more than ``queue_ms`` of backlog is already waiting it is
  dropped (drop-tail, as a router's bounded queue). Delay and jitter come after the queue.
  It draws nothing: a seed's loss pattern is the same with or without a bottleneck.
"""

from __future__ import annotations

import enum
import heapq
import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Protocol

from pqcall.exceptions import LocalProtocolError

MS_PER_SECOND = 1000.0
DRAWS_PER_DATAGRAM = 6  # loss, state transition, duplicate, reorder, jitter, duplicate's jitter
DEFAULT_REORDER_MS = 40.0  # extra hold of a reordered datagram: two 20 ms frames overtake it
DEFAULT_QUEUE_MS = 200.0  # a bottleneck's queue: the backlog, in ms at its rate, it holds
IP_UDP_OVERHEAD_BYTES = 28  # IPv4 and UDP headers: a bottleneck's rate counts them
QUEUE_LIMIT_DATAGRAMS = 10_000  # copies in flight per direction (netem's default limit is 1000)
UNIFORM_CLAMP = 1e-12  # keeps a draw of exactly 0.0 away from the normal quantile's pole
UNIFORM_HALF_WIDTH_PER_SD = math.sqrt(3.0)  # U(-a, a) has standard deviation a / sqrt(3)

_STANDARD_NORMAL = NormalDist()


class RandomSource(Protocol):
    """A seeded source of uniform draws, created by the caller (``random.Random(seed)``)."""

    def random(self) -> float:
        """A float uniform in [0, 1)."""
        ...


class JitterDistribution(enum.Enum):
    """Shape of the jitter term; ``Impairment.jitter_ms`` is its standard deviation in each."""

    NORMAL = "normal"
    """``delay_ms + N(0, jitter_ms)``, clipped at zero (raises the mean if jitter ~ delay)."""
    EXPONENTIAL = "exponential"
    """``delay_ms + Exp(mean=jitter_ms)``: never early, long tail, mean ``delay_ms + jitter_ms``."""
    UNIFORM = "uniform"
    """``delay_ms + U(-sqrt(3) * jitter_ms, +sqrt(3) * jitter_ms)``, clipped at zero (netem's)."""


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise LocalProtocolError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Parameters of the Gilbert-Elliott bursty loss model (per datagram).

    A two-state Markov chain, GOOD and BAD, starting in GOOD. Each datagram is lost with the
    loss probability of the current state, then the chain moves: GOOD to BAD with probability
    ``p``, BAD to GOOD with probability ``r``. With ``loss_good = 0`` and ``loss_bad = 1``
    (Gilbert's model) a loss burst is exactly a stay in BAD, of mean length ``1 / r`` datagrams.
    """

    p: float
    """Probability of moving from GOOD to BAD after a datagram."""
    r: float
    """Probability of moving from BAD to GOOD after a datagram."""
    loss_good: float = 0.0
    """Loss probability in GOOD (``1 - k`` in the literature)."""
    loss_bad: float = 1.0
    """Loss probability in BAD (``1 - h`` in the literature)."""

    def __post_init__(self) -> None:
        for name in ("p", "r", "loss_good", "loss_bad"):
            _check_probability(name, getattr(self, name))
        if self.p + self.r == 0.0:
            raise LocalProtocolError("p and r cannot both be zero")

    @classmethod
    def from_mean_loss(cls, mean_loss: float, mean_burst: float) -> GilbertElliott:
        """Gilbert's model (loss 0 in GOOD, 1 in BAD) with a target loss rate and burst length.

        Args:
            mean_loss: long-run fraction of datagrams lost, in (0, 1).
            mean_burst: mean number of consecutive datagrams lost, at least 1.

        Raises:
            LocalProtocolError: if the targets are out of range or cannot both be met (a high
                loss rate with short bursts needs ``p > 1``).
        """
        if not 0.0 < mean_loss < 1.0:
            raise LocalProtocolError(f"mean_loss must be in (0, 1), got {mean_loss!r}")
        if not mean_burst >= 1.0:
            raise LocalProtocolError(f"mean_burst must be at least 1 datagram, got {mean_burst!r}")
        r = 1.0 / mean_burst
        p = mean_loss * r / (1.0 - mean_loss)  # stationary P(BAD) = p / (p + r) = mean_loss
        if p > 1.0:
            raise LocalProtocolError(
                f"a mean loss of {mean_loss} needs bursts longer than {mean_burst} datagrams"
            )
        return cls(p=p, r=r)

    @property
    def bad_fraction(self) -> float:
        """Long-run fraction of datagrams sent in the BAD state, ``p / (p + r)``."""
        return self.p / (self.p + self.r)

    @property
    def mean_loss(self) -> float:
        """Long-run fraction of datagrams lost."""
        bad = self.bad_fraction
        return (1.0 - bad) * self.loss_good + bad * self.loss_bad


@dataclass(frozen=True, slots=True)
class Impairment:
    """What happens to the datagrams of one direction. The default changes nothing.

    Raises:
        LocalProtocolError: on a probability outside [0, 1], a negative time, or both
            ``loss`` and ``burst`` set.
    """

    loss: float = 0.0
    """Independent loss probability per datagram; 0 when ``burst`` is set."""
    burst: GilbertElliott | None = None
    """Bursty loss model; replaces ``loss`` when set."""
    delay_ms: float = 0.0
    """Base one-way delay added to every datagram, in milliseconds."""
    jitter_ms: float = 0.0
    """Standard deviation of the delay around ``delay_ms``, in milliseconds."""
    jitter_distribution: JitterDistribution = JitterDistribution.NORMAL
    """Shape of the jitter term."""
    duplicate: float = 0.0
    """Probability that a delivered datagram is sent twice."""
    reorder: float = 0.0
    """Probability that a datagram is held back ``reorder_ms`` so later ones overtake it."""
    reorder_ms: float = DEFAULT_REORDER_MS
    """Extra delay of a held-back datagram, in milliseconds."""
    keep_order: bool = False
    """Whether jitter may not reorder (each datagram waits for the one before it)."""
    rate_kbps: float = 0.0
    """Bottleneck rate in kbit/s on the wire (IPv4 and UDP headers counted); 0: none."""
    queue_ms: float = DEFAULT_QUEUE_MS
    """The bottleneck's queue: a datagram finding more backlog than this (in ms) is dropped."""
    seed: int = 0
    """Seed of this direction's random source (the relay's ``random.Random(seed)``)."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            _check_probability(name, getattr(self, name))
        for name in ("delay_ms", "jitter_ms", "reorder_ms", "rate_kbps", "queue_ms"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise LocalProtocolError(f"{name} must be a finite time >= 0, got {value!r}")
        if self.burst is not None and self.loss > 0.0:
            raise LocalProtocolError("set either loss or burst, not both")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The model's decision for one datagram."""

    is_dropped: bool
    """Whether the datagram is lost (then ``deliver_at`` is empty)."""
    deliver_at: tuple[float, ...]
    """When each copy leaves, on the caller's clock: the original first, then any duplicate."""
    is_duplicated: bool
    """Whether a second copy is sent."""
    is_held: bool
    """Whether the original is held back ``reorder_ms`` for reordering."""


class ImpairmentModel:
    """Per-datagram decisions for one direction, from settings and a seeded random source.

    Stateful: it remembers the Gilbert-Elliott state and, with ``keep_order``, the last
    delivery time. Feed datagrams in arrival order; equal seeds and sequences of calls give
    equal verdicts.
    """

    def __init__(self, impairment: Impairment, rng: RandomSource) -> None:
        self._impairment = impairment  # settings, immutable
        self._rng = rng  # the caller's seeded source; DRAWS_PER_DATAGRAM draws per datagram
        self._is_bad = False  # Gilbert-Elliott state; every chain starts in GOOD
        self._last_in_order = -math.inf  # latest non-held delivery time, for keep_order

    @property
    def impairment(self) -> Impairment:
        """The settings this model applies."""
        return self._impairment

    @property
    def is_bad(self) -> bool:
        """Whether the Gilbert-Elliott chain is in its BAD state (always False without burst)."""
        return self._is_bad

    def decide(self, now: float) -> Verdict:
        """Decide the fate of a datagram arriving at ``now`` (seconds).

        Consumes exactly ``DRAWS_PER_DATAGRAM`` draws from the random source.
        """
        imp = self._impairment
        u_loss, u_move, u_duplicate, u_reorder, u_jitter, u_copy_jitter = (
            self._rng.random() for _ in range(DRAWS_PER_DATAGRAM)
        )

        # loss: in the current state, then the Gilbert-Elliott chain moves
        if imp.burst is None:
            is_dropped = u_loss < imp.loss
        else:
            ge = imp.burst
            is_dropped = u_loss < (ge.loss_bad if self._is_bad else ge.loss_good)
            self._is_bad = u_move >= ge.r if self._is_bad else u_move < ge.p
        if is_dropped:
            return Verdict(is_dropped=True, deliver_at=(), is_duplicated=False, is_held=False)

        # delay, the reorder hold, and a duplicate with a delay of its own
        is_duplicated = u_duplicate < imp.duplicate
        is_held = u_reorder < imp.reorder
        first = now + self._delay(u_jitter)
        if is_held:
            first += imp.reorder_ms / MS_PER_SECOND
        else:
            first = self._in_order(first)
        times = [first]
        if is_duplicated:
            times.append(self._in_order(now + self._delay(u_copy_jitter)))
        return Verdict(
            is_dropped=False,
            deliver_at=tuple(times),
            is_duplicated=is_duplicated,
            is_held=is_held,
        )

    def _delay(self, u: float) -> float:
        """Base delay plus jitter for the uniform draw ``u``, in seconds, never negative."""
        imp = self._impairment
        u = min(max(u, UNIFORM_CLAMP), 1.0 - UNIFORM_CLAMP)
        sd = imp.jitter_ms
        match imp.jitter_distribution:
            case JitterDistribution.NORMAL:
                jitter = sd * _STANDARD_NORMAL.inv_cdf(u)
            case JitterDistribution.EXPONENTIAL:
                jitter = -sd * math.log1p(-u)
            case JitterDistribution.UNIFORM:
                jitter = sd * UNIFORM_HALF_WIDTH_PER_SD * (2.0 * u - 1.0)
        return max(0.0, imp.delay_ms + jitter) / MS_PER_SECOND

    def _in_order(self, deliver_at: float) -> float:
        if self._impairment.keep_order:
            deliver_at = max(deliver_at, self._last_in_order)
            self._last_in_order = deliver_at
        return deliver_at


@dataclass(slots=True)
class LinkStats:
    """Counters of one direction. ``delivered + queued + overflowed`` always equals
    ``received - dropped + duplicated``."""

    received: int = 0
    """Datagrams that entered the link."""
    dropped: int = 0
    """Datagrams the loss model dropped."""
    duplicated: int = 0
    """Datagrams sent twice."""
    held: int = 0
    """Datagrams held back ``reorder_ms`` by the reorder probability."""
    delivered: int = 0
    """Copies that left the link, duplicates included."""
    reordered: int = 0
    """Copies that left after a datagram that entered the link later than them."""
    overflowed: int = 0
    """Copies discarded because ``queue_limit`` copies were already waiting."""
    queue_dropped: int = 0
    """Of ``dropped``, datagrams the bottleneck's full queue dropped (not the loss model)."""
    queue_delay_ms: float = 0.0
    """The bottleneck's backlog (ms at its rate) the last datagram found (0 once it drained)."""


@dataclass(order=True, slots=True)
class _Pending:
    deliver_at: float
    order: int  # insertion order: equal times leave first in, first out
    number: int = field(compare=False)  # arrival number of the datagram, for reordered
    data: bytes = field(compare=False)


class ImpairedLink:
    """One direction of an impaired path: datagrams in, the same datagrams out, later or never.

    The calling contract, as aioquic's: after :meth:`receive_datagram` and when the time of
    :meth:`get_timer` comes, call :meth:`datagrams_to_send` with the current time and send
    what it returns, in order; then re-arm the timer from :meth:`get_timer`.
    """

    def __init__(
        self,
        impairment: Impairment,
        rng: RandomSource,
        *,
        queue_limit: int = QUEUE_LIMIT_DATAGRAMS,
    ) -> None:
        if queue_limit < 1:
            raise LocalProtocolError(f"queue_limit must be at least 1, got {queue_limit}")
        self._model = ImpairmentModel(impairment, rng)  # decides each datagram's fate
        self._queue_limit = queue_limit  # most copies waiting at once
        self._queue: list[_Pending] = []  # heap ordered by (deliver_at, order)
        self._order = 0  # copies queued so far; ties in deliver_at leave in this order
        self._arrivals = 0  # datagrams received so far; numbers them for reordered
        self._highest_sent = -1  # highest arrival number delivered so far
        self._busy_until = -math.inf  # when the bottleneck has sent everything queued
        self._stats = LinkStats()  # counters, copied out by stats

    @property
    def impairment(self) -> Impairment:
        """The settings applied to datagrams received from now on."""
        return self._model.impairment

    @property
    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    @property
    def queued(self) -> int:
        """Copies waiting for their delivery time."""
        return len(self._queue)

    def reconfigure(self, impairment: Impairment, rng: RandomSource) -> None:
        """Apply new settings, with a new random source, to datagrams received from now on.

        Datagrams already queued keep their delivery times; counters go on.
        """
        self._model = ImpairmentModel(impairment, rng)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Take a datagram arriving at ``now`` (seconds); then call :meth:`datagrams_to_send`."""
        number = self._arrivals
        self._arrivals += 1
        self._stats.received += 1
        verdict = self._model.decide(now)
        if verdict.is_dropped:
            self._stats.dropped += 1
            return
        deliver_times = verdict.deliver_at
        self._stats.queue_delay_ms = max(0.0, self._busy_until - now) * MS_PER_SECOND
        if self.impairment.rate_kbps:
            deliver_times = self._bottleneck(len(data), now, deliver_times)
            if not deliver_times:
                self._stats.dropped += 1
                self._stats.queue_dropped += 1
                return
        self._stats.duplicated += verdict.is_duplicated
        self._stats.held += verdict.is_held
        for deliver_at in deliver_times:
            if len(self._queue) >= self._queue_limit:
                self._stats.overflowed += 1
                continue
            heapq.heappush(self._queue, _Pending(deliver_at, self._order, number, data))
            self._order += 1

    def _bottleneck(
        self, size: int, now: float, deliver_at: tuple[float, ...]
    ) -> tuple[float, ...]:
        """``deliver_at`` after the bottleneck's queue (each copy in turn); () if it is full."""
        imp = self.impairment
        if self._busy_until - now > imp.queue_ms / MS_PER_SECOND:
            return ()
        serialise = (size + IP_UDP_OVERHEAD_BYTES) * 8 / (imp.rate_kbps * MS_PER_SECOND)
        times = []
        for at in deliver_at:
            self._busy_until = max(now, self._busy_until) + serialise
            times.append(self._busy_until + (at - now))  # delay and jitter after the queue
        return tuple(times)

    def get_timer(self) -> float | None:
        """When the next copy is due (seconds, the caller's clock), or None if none waits."""
        return self._queue[0].deliver_at if self._queue else None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Pop the copies due at or before ``now``, in delivery order. The caller sends them."""
        due: list[bytes] = []
        while self._queue and self._queue[0].deliver_at <= now:
            pending = heapq.heappop(self._queue)
            if pending.number < self._highest_sent:
                self._stats.reordered += 1
            else:
                self._highest_sent = pending.number
            due.append(pending.data)
        self._stats.delivered += len(due)
        return due
