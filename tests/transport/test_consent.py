"""Consent freshness (transport/consent.py): checks every interval, lost after the timeout."""

from __future__ import annotations

import pytest

from pqcall.exceptions import LocalProtocolError
from pqcall.transport.consent import CONSENT_INTERVAL_S, CONSENT_TIMEOUT_S, ConsentFreshness

PEER = ("192.0.2.1", 4000)
OTHER = ("192.0.2.2", 4000)


def test_a_check_is_due_every_interval():
    consent = ConsentFreshness()
    consent.start(PEER, 100.0)
    assert consent.address == PEER
    assert not consent.check_due(100.0 + CONSENT_INTERVAL_S - 0.01)
    assert consent.check_due(100.0 + CONSENT_INTERVAL_S)
    consent.checked(101.0)
    assert not consent.check_due(101.5)
    assert consent.get_timer() == pytest.approx(101.0 + CONSENT_INTERVAL_S)


def test_consent_is_lost_after_the_timeout_without_an_answer_and_comes_back():
    consent = ConsentFreshness()
    consent.start(PEER, 0.0)
    assert consent.update(CONSENT_TIMEOUT_S - 0.01) is None
    assert not consent.is_lost
    consent.answered(OTHER, 4.0)  # not the address media goes to: no consent
    assert consent.get_timer() == pytest.approx(CONSENT_INTERVAL_S)
    assert consent.update(CONSENT_TIMEOUT_S) is True
    assert consent.is_lost
    assert consent.update(CONSENT_TIMEOUT_S + 1) is None  # told once
    consent.answered(PEER, 7.0)
    assert consent.update(7.0) is False
    assert not consent.is_lost
    assert consent.update(7.0 + CONSENT_TIMEOUT_S - 0.01) is None
    assert consent.update(7.0 + CONSENT_TIMEOUT_S) is True


def test_an_answer_keeps_consent_and_a_new_address_starts_fresh():
    consent = ConsentFreshness(interval_s=0.2, timeout_s=1.0)
    consent.start(PEER, 0.0)
    for at in (0.5, 1.2, 1.9):
        consent.answered(PEER, at)
        assert consent.update(at + 0.9) is None
    assert consent.update(2.9) is True
    consent.start(OTHER, 3.0)  # a path switch: the new address just answered
    assert not consent.is_lost
    assert consent.update(3.5) is None


def test_before_start_nothing_is_due():
    consent = ConsentFreshness()
    assert consent.address is None and consent.get_timer() is None
    assert not consent.check_due(1e9) and consent.update(1e9) is None


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 5.0), (1.0, 1.0), (2.0, 1.0)])
def test_bad_figures_are_refused(interval, timeout):
    with pytest.raises(LocalProtocolError):
        ConsentFreshness(interval_s=interval, timeout_s=timeout)
