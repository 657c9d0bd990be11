"""Who is online: the accounts with a live push connection to this process.

The WebSocket handler calls :meth:`PresenceRegistry.connect` when a phone's
socket is authenticated and :meth:`PresenceRegistry.disconnect` when it
closes; a phone may hold several sockets, so an account is online while it has
at least one. The registry is per process: with several server processes the
shared event bus carries presence (see ``docs/server.md``). The durable part,
``last_seen``, is in the database (:meth:`AccountStore.touch_last_seen`), and
is shown to others only rounded (:func:`rounded_last_seen`).

Who may see whose presence (``docs/server.md#presence``): an account sees its
own, and that of the accounts that have called it or answered its call
(:meth:`CallStore.presence_granted`, :meth:`CallStore.list_presence_watchers`).
"""

from __future__ import annotations

import math

LAST_SEEN_ROUNDING_S = 300.0
"""``last_seen`` is shown rounded down to this (5 minutes), never to the second."""


def rounded_last_seen(last_seen: float | None) -> float | None:
    """``last_seen`` as others may see it: rounded down to :data:`LAST_SEEN_ROUNDING_S`."""
    if last_seen is None:
        return None
    return math.floor(last_seen / LAST_SEEN_ROUNDING_S) * LAST_SEEN_ROUNDING_S


class PresenceRegistry:
    """Counts live push connections per account id. Not thread-safe; one event loop."""

    def __init__(self) -> None:
        self._connections: dict[int, int] = {}  # account id -> open sockets

    def connect(self, account_id: int) -> bool:
        """Count one more connection; whether the account just came online."""
        count = self._connections.get(account_id, 0) + 1
        self._connections[account_id] = count
        return count == 1

    def disconnect(self, account_id: int) -> bool:
        """Count one connection less; whether the account just went offline."""
        count = self._connections.get(account_id, 0) - 1
        if count > 0:
            self._connections[account_id] = count
            return False
        was_online = account_id in self._connections
        self._connections.pop(account_id, None)
        return was_online

    def is_online(self, account_id: int) -> bool:
        """Whether the account has at least one live connection."""
        return account_id in self._connections

    def online(self) -> frozenset[int]:
        """The ids of every online account."""
        return frozenset(self._connections)

    def __len__(self) -> int:
        return len(self._connections)
