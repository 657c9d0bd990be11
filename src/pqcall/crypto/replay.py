"""Anti-replay window over 64-bit packet counters (RFC 6479).

The bitmap is a ring of ``RING_BLOCKS`` blocks of ``BLOCK_BITS`` bits. A
counter's bit never moves, and sliding the window forward only clears whole
blocks; one block of the ring is the redundant block of RFC 6479 section 2,
so the window remembers ``WINDOW_SIZE`` counters below the highest one seen.
"""

from __future__ import annotations

BLOCK_BITS = 64  # bits per ring block
RING_BLOCKS = 17  # blocks in the ring, one of them redundant
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 1024 counters below the highest
MAX_COUNTER = 2**64 - 1  # counters are unsigned 64-bit integers


class ReplayWindow:
    """Accepts each counter at most once, and none far below the highest seen.

    A fresh window accepts every counter from 0 to ``MAX_COUNTER`` once. After
    it has accepted counter ``h`` (the highest so far) it accepts a counter ``c``
    if ``c > h``, or if ``h - c <= WINDOW_SIZE`` and ``c`` was not accepted
    before. Counters outside 0..``MAX_COUNTER`` are never accepted.
    """

    def __init__(self) -> None:
        self._highest = 0  # highest counter accepted (0 when fresh, as RFC 6479)
        self._ring = [0] * RING_BLOCKS  # bitmap; counter c is bit c % 64 of block c // 64

    @property
    def highest(self) -> int:
        """The highest counter accepted so far (0 for a fresh window)."""
        return self._highest

    def is_too_old(self, counter: int) -> bool:
        """Whether ``counter`` fell out of the window (and would be refused for that)."""
        return self._highest - counter > WINDOW_SIZE

    def check(self, counter: int) -> bool:
        """Whether :meth:`update` would accept ``counter``. Changes nothing."""
        if not 0 <= counter <= MAX_COUNTER:
            return False
        if counter > self._highest:
            return True
        if self.is_too_old(counter):
            return False
        block = self._ring[(counter // BLOCK_BITS) % RING_BLOCKS]
        return not block & (1 << (counter % BLOCK_BITS))

    def update(self, counter: int) -> bool:
        """Accept ``counter`` and remember it; False if replayed, too old or out of range."""
        if not 0 <= counter <= MAX_COUNTER:
            return False
        index = counter // BLOCK_BITS
        if counter > self._highest:
            # slide forward: clear the blocks between the old and the new highest
            current = self._highest // BLOCK_BITS
            for i in range(current + 1, current + 1 + min(index - current, RING_BLOCKS)):
                self._ring[i % RING_BLOCKS] = 0
            self._highest = counter
        elif self.is_too_old(counter):
            return False
        bit = 1 << (counter % BLOCK_BITS)
        slot = index % RING_BLOCKS
        if self._ring[slot] & bit:
            return False
        self._ring[slot] |= bit
        return True
