"""The impairment link's bottleneck: a wire rate and a bounded drop-tail queue (fake clock)."""

from __future__ import annotations

import random

import pytest

from pqcall.exceptions import LocalProtocolError
from pqcall.netem import ImpairedLink, Impairment
from pqcall.netem.model import IP_UDP_OVERHEAD_BYTES

PACKET = bytes(72)  # 100 bytes on the wire with IPv4 and UDP: 800 bits
FRAME_S = 0.02


def _link(**settings: float) -> ImpairedLink:
    impairment = Impairment(**settings)  # type: ignore[arg-type]
    return ImpairedLink(impairment, random.Random(1))


def _send(link: ImpairedLink, packets: int, interval_s: float, start: float = 0.0) -> list[float]:
    """Send ``packets`` every ``interval_s``; the delivery time of each (nan if dropped)."""
    out = []
    for i in range(packets):
        now = start + i * interval_s
        before = link.stats.delivered + link.queued
        link.receive_datagram(PACKET, now)
        if link.queued + link.stats.delivered > before:
            out.append(max(p.deliver_at for p in link._queue))
        else:
            out.append(float("nan"))
        link.datagrams_to_send(now)
    return out


def test_a_link_under_its_rate_adds_only_the_serialisation_time():
    # 800 bits at 80 kbit/s: 10 ms each, one every 20 ms: never a queue
    link = _link(rate_kbps=80.0)
    times = _send(link, 50, FRAME_S)
    delays = [t - i * FRAME_S for i, t in enumerate(times)]
    assert delays == pytest.approx([0.010] * 50)
    assert link.stats.queue_dropped == 0
    assert link.stats.queue_delay_ms == 0.0


def test_a_narrow_link_queues_then_drops_at_its_bound_and_drains_after():
    # 800 bits at 20 kbit/s: 40 ms each, sent every 20 ms: the queue grows 20 ms a packet
    link = _link(rate_kbps=20.0, queue_ms=200.0)
    times = _send(link, 100, FRAME_S)
    stats = link.stats
    delays = [t - i * FRAME_S for i, t in enumerate(times) if t == t]
    # the backlog never exceeds the bound: sojourn at most queue + one serialisation
    assert max(delays) <= 0.200 + 0.040 + 1e-9
    assert max(delays) > 0.200  # and it does fill
    # what leaves is the rate: about half the packets are dropped once the queue is full
    assert 40 <= stats.queue_dropped <= 55
    assert stats.dropped == stats.queue_dropped
    assert stats.queue_delay_ms > 150.0
    # the link widens (no bottleneck from now on): new packets pass at once, the queue drains
    link.reconfigure(Impairment(), random.Random(2))
    end = 100 * FRAME_S
    link.receive_datagram(PACKET, end)
    assert link.get_timer() is not None
    assert link.datagrams_to_send(end + 0.25)  # everything queued has left by then
    assert link.queued == 0


def test_the_rate_counts_ip_and_udp_headers():
    link = _link(rate_kbps=8.0)  # one byte a millisecond
    link.receive_datagram(bytes(100), 0.0)
    assert link.get_timer() == pytest.approx((100 + IP_UDP_OVERHEAD_BYTES) / 1000)


def test_the_bottleneck_draws_nothing_so_the_loss_pattern_stays():
    def dropped(impairment: Impairment) -> list[bool]:
        link = ImpairedLink(impairment, random.Random(5))
        result = []
        for i in range(300):
            before = link.stats.dropped - link.stats.queue_dropped
            link.receive_datagram(PACKET, i * FRAME_S)
            result.append(link.stats.dropped - link.stats.queue_dropped > before)
        return result

    assert dropped(Impairment(loss=0.1, seed=5)) == dropped(
        Impairment(loss=0.1, seed=5, rate_kbps=1000.0)
    )


@pytest.mark.parametrize("settings", [{"rate_kbps": -1.0}, {"queue_ms": float("inf")}])
def test_invalid_bottleneck(settings: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        Impairment(**settings)  # type: ignore[arg-type]
