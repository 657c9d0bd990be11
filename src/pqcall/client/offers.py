"""The call offers this phone has seen recently, so a replayed one does not ring.

The handshake refuses an offer older than
:data:`~pqcall.crypto.handshake.OFFER_MAX_AGE_S`; within that window a server
could still replay an offer the phone already rang for. This file remembers
the call id of every offer the phone rang for (or refused) until its window
closes, in ``HOME/seen-offers.json`` (0600, atomic writes under the home's
lock, shared by every process on the home), at most :data:`MAX_SEEN_OFFERS`.

A damaged file is treated as empty and overwritten: losing it only reopens the
replay window of the last few minutes, and must not stop calls.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pqcall.client.privatefile import LOCK_NAME, FileLock, read_bounded, write_atomic
from pqcall.crypto.handshake import MS_PER_S, OFFER_MAX_AGE_S
from pqcall.exceptions import KeystoreError

logger = logging.getLogger(__name__)

SEEN_OFFERS_NAME = "seen-offers.json"
"""The file in the home."""
MAX_SEEN_OFFERS = 1000
"""Call ids kept at most; past it the oldest offers are forgotten first."""
MAX_FILE_BYTES = 256 * 1024
"""A larger file is not read (about 150 bytes an entry)."""


class SeenOffers:
    """Call ids of recent offers, each with the time the caller stamped it.

    Args:
        path: the JSON file (``HOME/seen-offers.json``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)  # the JSON file: {"call id hex": offered_at_ms, ...}
        self._lock = FileLock(self.path.parent / LOCK_NAME)  # shared with the home's files

    def check_and_add(self, call_id: str, offered_at_ms: int, *, now: float) -> bool:
        """Remember ``call_id``; False when it was seen before (a replay: do not ring).

        Entries whose offer is older than ``OFFER_MAX_AGE_S`` at ``now`` (Unix
        seconds) are dropped: the handshake refuses those offers by their age.

        Raises:
            KeystoreError: the file cannot be written.
        """
        with self._lock.held():
            seen = self._load()
            if call_id in seen:
                return False
            oldest_ms = (now - OFFER_MAX_AGE_S) * MS_PER_S
            kept = {key: at for key, at in seen.items() if at >= oldest_ms}
            kept[call_id] = offered_at_ms
            newest = sorted(kept.items(), key=lambda item: item[1])[-MAX_SEEN_OFFERS:]
            data = json.dumps(dict(newest), separators=(",", ":")).encode("utf-8")
            write_atomic(self.path, data, "seen offers file")
            return True

    def _load(self) -> dict[str, int]:
        try:
            data = read_bounded(self.path, "seen offers file", MAX_FILE_BYTES)
        except KeystoreError as exc:
            logger.warning("%s; starting it anew", exc)
            return {}
        if data is None:
            return {}
        try:
            value = json.loads(data)
        except ValueError:
            logger.warning("seen offers file %s is not JSON; starting it anew", self.path)
            return {}
        if not isinstance(value, dict):
            return {}
        return {
            key: at
            for key, at in value.items()
            if isinstance(key, str) and isinstance(at, int) and not isinstance(at, bool)
        }
