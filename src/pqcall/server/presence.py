"""Who is online: the accounts with a live push connection to this process.

The WebSocket handler calls :meth:`PresenceRegistry.connect` when a phone's
socket is authenticated and :meth:`PresenceRegistry.disconnect` when it
closes; a phone may hold several sockets, so an account is online while it has
at least one. With several server nodes the bus (:mod:`pqcall.server.bus`)
tells each node which accounts the others hold (:meth:`PresenceRegistry.set_remote`,
:meth:`PresenceRegistry.remote_change`), and it learns this node's changes
through :attr:`PresenceRegistry.on_change`; :meth:`PresenceRegistry.is_online`
answers for every node. The durable part,
``last_seen``, is in the database (:meth:`AccountStore.touch_last_seen`), and
is shown to others only rounded (:func:`rounded_last_seen`).

Who may see whose presence (``docs/server.md#presence``): an account sees its
own, and that of the accounts that have called it or answered its call
(:meth:`CallStore.presence_granted`, :meth:`CallStore.list_presence_watchers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

LAST_SEEN_ROUNDING_S = 300.0
"""``last_seen`` is shown rounded down to this (5 minutes), never to the second."""


def rounded_last_seen(last_seen: float | None) -> float | None:
    """``last_seen`` as others may see it: rounded down to :data:`LAST_SEEN_ROUNDING_S`."""
    if last_seen is None:
        return None
    return math.floor(last_seen / LAST_SEEN_ROUNDING_S) * LAST_SEEN_ROUNDING_S


class PresenceRegistry:
    """Counts live push connections per account id, here and on other nodes. One event loop."""

    def __init__(self) -> None:
        self._connections: dict[int, int] = {}  # account id -> open sockets on this node
        self._remote: dict[str, set[int]] = {}  # other node's id -> accounts online there
        self.on_change: Callable[[int, bool], None] | None = None
        """Called with (account id, online here) when this node's first socket of an account
        opens or its last one closes (the bus tells the other nodes)."""

    def connect(self, account_id: int) -> bool:
        """Count one more connection; whether the account just came online (on any node)."""
        count = self._connections.get(account_id, 0) + 1
        self._connections[account_id] = count
        if count != 1:
            return False
        if self.on_change is not None:
            self.on_change(account_id, True)
        return not self._online_elsewhere(account_id)

    def disconnect(self, account_id: int) -> bool:
        """Count one connection less; whether the account just went offline (on every node)."""
        count = self._connections.get(account_id, 0) - 1
        if count > 0:
            self._connections[account_id] = count
            return False
        was_online = account_id in self._connections
        self._connections.pop(account_id, None)
        if was_online and self.on_change is not None:
            self.on_change(account_id, False)
        return was_online and not self._online_elsewhere(account_id)

    def is_online(self, account_id: int) -> bool:
        """Whether the account has at least one live connection, on this node or another."""
        return account_id in self._connections or self._online_elsewhere(account_id)

    def is_online_here(self, account_id: int) -> bool:
        """Whether the account has a live connection to this node."""
        return account_id in self._connections

    def online(self) -> frozenset[int]:
        """The ids of every online account (all nodes)."""
        return frozenset(self._connections).union(*self._remote.values())

    def online_here(self) -> frozenset[int]:
        """The ids of the accounts online on this node."""
        return frozenset(self._connections)

    def set_remote(self, node: str, account_ids: Iterable[int]) -> None:
        """Node ``node`` holds exactly these accounts now (its periodic snapshot)."""
        self._remote[node] = set(account_ids)

    def remote_change(self, node: str, account_id: int, online: bool) -> None:
        """Node ``node`` opened its first (``online``) or closed its last socket of an account."""
        held = self._remote.setdefault(node, set())
        if online:
            held.add(account_id)
        else:
            held.discard(account_id)

    def forget_node(self, node: str) -> None:
        """Node ``node`` stopped or went silent: its accounts count as offline."""
        self._remote.pop(node, None)

    def nodes(self) -> frozenset[str]:
        """The other nodes this registry has heard of."""
        return frozenset(self._remote)

    def _online_elsewhere(self, account_id: int) -> bool:
        return any(account_id in held for held in self._remote.values())

    def __len__(self) -> int:
        """Accounts online on this node."""
        return len(self._connections)
