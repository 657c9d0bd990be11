"""What the parts of the UI's softphone share: the phone, the subscribers, background work.

The :class:`~pqcall.ui.controller.Controller` owns one :class:`Hub` and hands
it to its parts (calls, trust, presence, transfers). :meth:`Hub.notify` wakes
every :class:`Subscription` (changes coalesce while a subscriber is busy) and
counts up the state's ``version``; :meth:`Hub.spawn` runs background work whose
failure is logged, never raised, and which :meth:`Hub.cancel_tasks` stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from pqcall.client.phone import Phone
from pqcall.ui.errors import UiError

logger = logging.getLogger(__name__)


class Subscription:
    """Wakes one subscriber when the state changed (changes coalesce while it is busy)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub  # whose changes
        self._dirty = asyncio.Event()  # something changed since the last wait

    def changed(self) -> None:
        """Note a change (the hub calls it)."""
        self._dirty.set()

    async def wait(self) -> None:
        """Return once something changed since the last return."""
        await self._dirty.wait()
        self._dirty.clear()

    def close(self) -> None:
        """Stop being woken."""
        self._hub.unsubscribe(self)


class Hub:
    """The phone once unlocked, who to wake on a change, and the background tasks."""

    def __init__(self) -> None:
        self.phone: Phone | None = None  # once unlocked
        self.version = 0  # counts notify(); a page keeps the newest state it got
        self._subscriptions: set[Subscription] = set()  # who to wake on a change
        self._tasks: set[asyncio.Task[Any]] = set()  # background work, cancelled at close
        self._loop: asyncio.AbstractEventLoop | None = None  # for thread-safe notifications

    def bind_loop(self) -> None:
        """Remember the running loop, for :meth:`notify_threadsafe`."""
        self._loop = asyncio.get_running_loop()

    def require_phone(self) -> Phone:
        """The phone.

        Raises:
            UiError: 409 the account is still locked.
        """
        if self.phone is None:
            raise UiError(409, "unlock the account first")
        return self.phone

    # ------------------------------------------------------------------ subscribers

    def subscribe(self) -> Subscription:
        """Be woken on every change (call :meth:`Subscription.close` when done)."""
        subscription = Subscription(self)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop waking ``subscription`` (no error if it was not subscribed)."""
        self._subscriptions.discard(subscription)

    def notify(self) -> None:
        """Wake every subscriber (the state changed): ``version`` goes up."""
        self.version += 1
        for subscription in list(self._subscriptions):
            subscription.changed()

    def notify_threadsafe(self) -> None:
        """:meth:`notify` from another thread (a no-op before :meth:`bind_loop`)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.notify)

    # ------------------------------------------------------------------ background work

    def spawn(self, work: Coroutine[Any, Any, object], name: str) -> None:
        """Run ``work`` in the background; a failure is logged with ``name``."""
        task = asyncio.create_task(self._guard(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_tasks(self) -> None:
        """Cancel the background work and wait until it stopped."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    @staticmethod
    async def _guard(work: Coroutine[Any, Any, object], name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed", name)


__all__ = ["Hub", "Subscription"]
