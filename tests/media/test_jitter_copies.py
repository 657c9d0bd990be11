"""The jitter buffer repairs a burst of three lost frames from the backup mode's copies.

Virtual time: packets every 20 ms, pops every 20 ms, as ``test_jitter.py``. In the
backup mode (decision 0220) packet n carries a copy of n-1 (``redundant``) and
copies of n-2 and n-3 (``older``), so a burst of three is repaired from the
three packets after it.
"""

import pytest

from pqcall.exceptions import LocalProtocolError
from pqcall.media.jitter import JitterBuffer, PlayoutAction, PlayoutDecision

FRAME_S = 0.020
FRAME_SAMPLES = 960


def main(seq: int) -> bytes:
    return b"main-%d" % seq


def copy(seq: int) -> bytes:
    return b"copy-%d" % seq


def play(buffer: JitterBuffer, count: int, lost: set[int], *, depth: int) -> list[PlayoutDecision]:
    """Push ``count`` packets (but ``lost``) with ``depth`` older copies; pop at every tick."""
    decisions = []
    for seq in range(count + 8):
        now = seq * FRAME_S
        if seq < count and seq not in lost:
            older = tuple(copy(seq - k) for k in range(2, depth + 2) if seq - k >= 0)
            buffer.push(
                seq,
                seq * FRAME_SAMPLES,
                main(seq),
                now + 0.005,
                redundant=copy(seq - 1) if seq else None,
                older=older,
            )
        decisions.append(buffer.pop(now + 0.010))
    return decisions


def by_seq(decisions: list[PlayoutDecision]) -> dict[int | None, PlayoutDecision]:
    return {d.seq: d for d in decisions if d.seq is not None}


def test_a_burst_of_three_is_repaired_from_the_following_packets():
    buffer = JitterBuffer(use_fec=False)
    decisions = play(buffer, 150, {20, 60, 61, 62, 100, 101, 102}, depth=2)
    played = by_seq(decisions)
    for lost in (20, 60, 61, 62, 100, 101, 102):
        assert played[lost] == PlayoutDecision(PlayoutAction.REDUNDANT, copy(lost), lost)
    # the first burst is found while waiting: three frames concealed grow the buffer
    # to four frames; the second is repaired in its own slots, nothing concealed
    assert [d.action for d in decisions[61:64]] == [PlayoutAction.CONCEAL] * 3
    assert [d.seq for d in decisions[100:106]] == [97, 98, 99, 100, 101, 102]
    assert PlayoutAction.CONCEAL not in [d.action for d in decisions[70:150]]
    stats = buffer.snapshot()
    assert (stats.redundancy_recovered, stats.skipped) == (7, 0)
    assert stats.target_delay_ms == 80.0  # four frames: n and the three that carry its copies


def test_without_older_copies_a_burst_of_three_is_mostly_concealed():
    buffer = JitterBuffer(use_fec=False)
    decisions = play(buffer, 150, {20, 60, 61, 62}, depth=0)
    played = by_seq(decisions)
    assert played[62].action is PlayoutAction.REDUNDANT  # from packet 63
    assert 60 not in played and 61 not in played  # passed over, their slots concealed
    assert buffer.snapshot().concealed >= 2


def test_an_empty_older_copy_is_refused():
    buffer = JitterBuffer()
    with pytest.raises(LocalProtocolError, match=r"^redundant data must be None or non-empty$"):
        buffer.push(0, 0, b"x", 0.0, older=(b"",))
