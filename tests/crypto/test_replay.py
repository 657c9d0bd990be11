"""Anti-replay window (RFC 6479, https://www.rfc-editor.org/rfc/rfc6479)."""

from hypothesis import given
from hypothesis import strategies as st

from pqcall.crypto.replay import BLOCK_BITS, MAX_COUNTER, RING_BLOCKS, WINDOW_SIZE, ReplayWindow


def test_window_is_at_least_1024_counters():
    assert WINDOW_SIZE >= 1024


def test_fresh_window_accepts_any_counter_once():
    for counter in (0, 1, 5000, MAX_COUNTER):
        window = ReplayWindow()
        assert window.check(counter)
        assert window.update(counter)
        assert not window.check(counter)
        assert not window.update(counter)


def test_check_does_not_mutate():
    window = ReplayWindow()
    assert window.check(7)
    assert window.check(7)
    assert window.highest == 0
    assert window.update(7)
    assert window.highest == 7


def test_in_order_counters_are_accepted_and_replays_refused():
    window = ReplayWindow()
    assert all(window.update(counter) for counter in range(3000))
    assert not any(window.update(counter) for counter in range(3000 - WINDOW_SIZE - 1, 3000))


def test_reordering_within_the_window_is_accepted():
    window = ReplayWindow()
    assert window.update(2000)
    assert all(window.update(counter) for counter in range(1999, 2000 - WINDOW_SIZE - 1, -1))


def test_counter_below_the_window_is_too_old():
    window = ReplayWindow()
    assert window.update(2000)
    assert not window.is_too_old(2000 - WINDOW_SIZE)
    assert window.check(2000 - WINDOW_SIZE)
    assert window.is_too_old(2000 - WINDOW_SIZE - 1)
    assert not window.check(2000 - WINDOW_SIZE - 1)
    assert not window.update(2000 - WINDOW_SIZE - 1)


def test_big_jump_clears_every_block():
    window = ReplayWindow()
    assert all(window.update(counter) for counter in range(WINDOW_SIZE + 1))
    # same ring slots and bits as counters already seen; none may look replayed
    highest = WINDOW_SIZE + 3 * RING_BLOCKS * BLOCK_BITS
    assert window.update(highest)
    assert all(window.update(counter) for counter in range(highest - WINDOW_SIZE, highest))


def test_counters_outside_64_bits_are_refused():
    window = ReplayWindow()
    for counter in (-1, MAX_COUNTER + 1):
        assert not window.check(counter)
        assert not window.update(counter)


def test_top_of_the_counter_space():
    window = ReplayWindow()
    assert window.update(MAX_COUNTER)
    assert window.update(MAX_COUNTER - WINDOW_SIZE)
    assert not window.update(MAX_COUNTER - WINDOW_SIZE - 1)


@given(
    st.lists(
        st.one_of(st.integers(0, 4 * WINDOW_SIZE), st.integers(-2, MAX_COUNTER + 2)),
        max_size=300,
    )
)
def test_matches_a_set_based_model(counters):
    window = ReplayWindow()
    seen: set[int] = set()
    highest = 0
    for counter in counters:
        expected = (
            0 <= counter <= MAX_COUNTER
            and counter not in seen
            and (counter > highest or highest - counter <= WINDOW_SIZE)
        )
        assert window.check(counter) == expected
        assert window.update(counter) == expected
        if expected:
            seen.add(counter)
            highest = max(highest, counter)
