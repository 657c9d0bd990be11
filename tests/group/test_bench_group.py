"""``pqcall bench group``'s measurement on its smallest size: a server process, two phones."""

from __future__ import annotations

import asyncio

import pytest

from pqcall.bench import group


@pytest.mark.slow
def test_two_phones_measured() -> None:
    result = asyncio.run(group._measure(2, 2.0))
    # each phone sends 50 frames a second; the server forwards each once
    assert 80 <= result["forwarded_pps"] <= 110, result
    assert 30 <= result["rx_kbps"] <= 120, result  # one Opus stream with its overheads
    assert 0 < result["keys_s"] < 60, result
    assert result["cpu_per_phone"] > 0 and result["server_cpu"] > 0, result
