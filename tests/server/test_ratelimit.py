"""The keyed token-bucket limiter, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.exceptions import LocalProtocolError
from pqcall.server.ratelimit import (
    LOGIN_FAILURES_PER_ADDRESS_LIMIT,
    PER_ACCOUNT_LIMIT,
    PER_IP_LIMIT,
    RateDecision,
    RateLimit,
    RateLimiter,
    client_key,
    retry_after_header,
)

LIMIT = RateLimit(rate_per_s=4.0, burst=8.0)  # binary-exact numbers keep the arithmetic exact


def test_defaults_are_the_documented_ones():
    assert (PER_IP_LIMIT.rate_per_s, PER_IP_LIMIT.burst) == (20.0, 40.0)
    assert (PER_ACCOUNT_LIMIT.rate_per_s, PER_ACCOUNT_LIMIT.burst) == (10.0, 20.0)
    assert LOGIN_FAILURES_PER_ADDRESS_LIMIT.burst == 5
    assert LOGIN_FAILURES_PER_ADDRESS_LIMIT.rate_per_s * 60 == pytest.approx(5.0)


def test_a_new_key_gets_the_whole_burst_then_is_refused():
    limiter = RateLimiter(LIMIT)
    decisions = [limiter.check("1.2.3.4", now=10.0) for _ in range(9)]
    assert all(d == RateDecision(allowed=True, retry_after_s=0.0) for d in decisions[:8])
    assert decisions[8] == RateDecision(allowed=False, retry_after_s=0.25)


def test_retry_after_is_exact_and_enough():
    limiter = RateLimiter(LIMIT)
    for _ in range(8):
        limiter.check("k", now=0.0)
    refused = limiter.check("k", now=0.1)  # 0.4 tokens earned, 0.6 missing at 4/s
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.15)
    assert not limiter.check("k", now=0.1 + refused.retry_after_s * 0.99).allowed
    assert limiter.check("k", now=0.1 + refused.retry_after_s).allowed


def test_refusal_takes_nothing():
    limiter = RateLimiter(LIMIT)
    for _ in range(8):
        limiter.check("k", now=0.0)
    for _ in range(100):
        assert not limiter.check("k", now=0.0).allowed
    assert limiter.check("k", now=0.25).allowed


def test_refill_is_capped_at_the_burst():
    limiter = RateLimiter(LIMIT)
    limiter.check("k", now=0.0)
    allowed = sum(limiter.check("k", now=1000.0).allowed for _ in range(20))
    assert allowed == 8


def test_cost_counts_several_tokens():
    limiter = RateLimiter(LIMIT)
    assert limiter.check("k", now=0.0, cost=5).allowed
    refused = limiter.check("k", now=0.0, cost=5)
    assert refused == RateDecision(allowed=False, retry_after_s=0.5)  # 3 left, 2 missing


@pytest.mark.parametrize("cost", [0, -1, 9, math.inf, math.nan])
def test_impossible_cost_is_a_local_error(cost):
    with pytest.raises(LocalProtocolError, match=r"cost must be in \(0, 8.0\]"):
        RateLimiter(LIMIT).check("k", now=0.0, cost=cost)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        pytest.param(0.0, 1.0, "rate must be a positive number, not 0.0", id="zero-rate"),
        pytest.param(1.0, 0.5, "burst must be at least 1, not 0.5", id="small-burst"),
        pytest.param(math.inf, 1.0, "rate must be a positive number, not inf", id="inf-rate"),
    ],
)
def test_bad_limits_are_refused(rate, burst, message):
    with pytest.raises(LocalProtocolError, match=message):
        RateLimit(rate_per_s=rate, burst=burst)


def test_keys_are_independent():
    limiter = RateLimiter(LIMIT)
    for _ in range(8):
        limiter.check("a", now=0.0)
    assert not limiter.check("a", now=0.0).allowed
    assert limiter.check("b", now=0.0).allowed


def test_refilled_keys_are_forgotten():
    limiter = RateLimiter(LIMIT)
    for key in ("a", "b", "c"):
        limiter.check(key, now=0.0)
    assert len(limiter) == 3
    limiter.check("d", now=0.25)  # a, b, c needed 1 token at 4/s: full again
    assert len(limiter) == 1
    assert "d" in limiter


def test_sweep_forgets_every_refilled_key():
    limiter = RateLimiter(LIMIT)
    limiter.check("slow", now=0.0, cost=8)  # needs 2 s to refill
    limiter.check("fast", now=1.0)  # needs 0.25 s, but is behind "slow" in LRU order
    assert len(limiter) == 2
    assert limiter.sweep(now=1.5) == 1
    assert "slow" in limiter
    assert "fast" not in limiter
    assert limiter.sweep(now=2.0) == 1
    assert len(limiter) == 0


def test_the_key_cap_evicts_the_least_recently_used():
    limiter = RateLimiter(LIMIT, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.check(key, now=0.0, cost=8)
    assert not limiter.check("a", now=0.0).allowed  # touches "a": "b" is now the oldest
    limiter.check("d", now=0.0)
    assert [key for key in "abcd" if key in limiter] == ["a", "c", "d"]
    assert limiter.evicted_active == 1
    # the evicted key starts again with a full bucket (the documented leniency)
    assert limiter.check("b", now=0.0, cost=8).allowed


def test_memory_stays_bounded_under_a_flood_of_keys():
    limiter = RateLimiter(LIMIT, max_keys=100)
    for i in range(10_000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", now=0.0)
        assert len(limiter) <= 100


def test_reset_forgets_a_key():
    limiter = RateLimiter(LIMIT)
    for _ in range(8):
        limiter.check("k", now=0.0)
    limiter.reset("k")
    assert limiter.check("k", now=0.0).allowed


def test_a_clock_going_backwards_earns_nothing():
    limiter = RateLimiter(LIMIT)
    for _ in range(8):
        limiter.check("k", now=10.0)
    assert not limiter.check("k", now=5.0).allowed
    assert not limiter.check("k", now=10.0).allowed


@pytest.mark.parametrize(
    ("wait_s", "header"),
    [(0.0, "1"), (0.001, "1"), (0.999, "1"), (1.0, "1"), (1.0001, "2"), (59.5, "60")],
)
def test_retry_after_header_rounds_up_to_whole_seconds(wait_s, header):
    assert retry_after_header(wait_s) == header


def test_retry_after_header_refuses_infinity():
    with pytest.raises(LocalProtocolError, match="no Retry-After for a wait of inf"):
        retry_after_header(math.inf)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("testclient", "testclient"),
    ],
)
def test_client_key_groups_ipv6_by_prefix(host, key):
    assert client_key(host) == key


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 20.0, 100.0]),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.5, allow_nan=False),
            st.integers(min_value=1, max_value=10),
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_never_allows_more_than_burst_plus_rate_times_elapsed(rate, burst, steps):
    limiter = RateLimiter(RateLimit(rate_per_s=rate, burst=float(burst)))
    start = now = 100.0
    allowed = 0
    for gap_s, tries in steps:
        now += gap_s
        for _ in range(tries):
            decision = limiter.check("k", now=now)
            allowed += decision.allowed
            assert decision.allowed == (decision.retry_after_s == 0.0)
        assert allowed <= burst + rate * (now - start) + 1e-6


def test_peek_takes_nothing():
    limiter = RateLimiter(RateLimit(rate_per_s=1.0, burst=2.0))
    assert limiter.peek("a", now=0.0) == RateDecision(allowed=True, retry_after_s=0.0)
    assert "a" not in limiter  # a key never seen is not remembered by a peek
    limiter.check("a", now=0.0)
    limiter.check("a", now=0.0)
    assert limiter.peek("a", now=0.0) == RateDecision(allowed=False, retry_after_s=1.0)
    assert limiter.peek("a", now=0.5).retry_after_s == pytest.approx(0.5)
    assert limiter.peek("a", now=1.0).allowed
    assert limiter.check("a", now=1.0).allowed  # the peek took nothing
    with pytest.raises(LocalProtocolError):
        limiter.peek("a", now=1.0, cost=3.0)
