"""``pqcall bench privacy``'s own arithmetic (no model: the [privacy] extra is not in CI)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pqcall.bench.privacy import _encoder, cosine, eer_threshold
from pqcall.exceptions import PqcallError


def test_cosine():
    a = np.array([1.0, 0.0, 0.0])
    assert cosine(a, a * 3) == pytest.approx(1.0)
    assert cosine(a, np.array([0.0, 2.0, 0.0])) == pytest.approx(0.0)
    assert cosine(a, -a) == pytest.approx(-1.0)


def test_eer_threshold_separable():
    threshold, eer = eer_threshold([0.9, 0.95, 0.92], [0.3, 0.5, 0.6, 0.4])
    assert eer == 0.0
    assert 0.6 < threshold <= 0.9  # every genuine accepted, every impostor refused


def test_eer_threshold_overlapping():
    genuine = [0.9, 0.8, 0.7, 0.6]
    impostor = [0.75, 0.5, 0.4, 0.3]
    threshold, eer = eer_threshold(genuine, impostor)
    frr = np.mean(np.array(genuine) < threshold)
    far = np.mean(np.array(impostor) >= threshold)
    assert frr == far == eer == 0.25
    assert threshold == 0.7


def test_eer_needs_both_kinds():
    with pytest.raises(ValueError):
        eer_threshold([0.9], [])


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # import fails as without the extra
    with pytest.raises(PqcallError, match=r"pip install 'pqcall\[privacy\]'"):
        _encoder()
