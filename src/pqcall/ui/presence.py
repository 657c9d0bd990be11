"""Who of the contacts is online, as the UI shows it.

The server is asked every :data:`PRESENCE_INTERVAL_S` seconds; changes it
pushes for call partners, and our own calls, update the view at once.
Failures to ask are logged and the last answer kept.
"""

from __future__ import annotations

import asyncio
import logging

from pqcall.exceptions import ServerError
from pqcall.signaling.messages import Presence
from pqcall.ui.hub import Hub

logger = logging.getLogger(__name__)

PRESENCE_INTERVAL_S = 5.0
"""How often the contacts' presence is asked of the server (call partners' changes are
also pushed by the server, and shown at once)."""
MAX_ASKED = 100
"""Contacts asked about at once."""


class PresenceTracker:
    """The contacts' presence: name -> (online, last seen in unix seconds)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub  # the phone, notify
        self.entries: dict[str, tuple[bool, float | None]] = {}  # name: (online, last seen)

    async def poll(self) -> None:
        """Refresh every :data:`PRESENCE_INTERVAL_S` seconds, until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(PRESENCE_INTERVAL_S)

    async def refresh(self) -> None:
        """Ask the server now (no-op while locked)."""
        phone = self._hub.phone
        if phone is None:
            return
        names = [contact.name for contact in phone.contacts.list()][:MAX_ASKED]
        try:
            entries = await phone.presence(names)
        except ServerError as exc:
            logger.info("presence: %s", exc)
            return
        presence = {entry.username: (entry.online, entry.last_seen) for entry in entries}
        if presence != self.entries:
            self.entries = presence
            self._hub.notify()

    def pushed(self, presence: Presence) -> None:
        """The server pushed a contact's presence."""
        entry = (presence.online, presence.last_seen)
        if self.entries.get(presence.username) != entry:
            self.entries[presence.username] = entry
            self._hub.notify()

    def mark_online(self, name: str, now: float) -> None:
        """``name`` calls or talks with us at ``now``: online, whatever the last poll said."""
        self.entries[name] = (True, now)


__all__ = ["PRESENCE_INTERVAL_S", "PresenceTracker"]
