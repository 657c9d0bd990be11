"""Waiting inside a call's flow, interrupted when the user hangs up or the server ends it.

Scope: the two ways a :class:`~pqcall.client.call.Call`'s flow is cut short while it
awaits something (a server event, the user's decision, path checks, the media
session): :class:`HungUp` (the user) and :class:`Ended` (the server's ending event),
raised by :func:`interruptible`; and :func:`server_ends_within`. The call's flows
catch them and end the call accordingly. No state of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from pqcall.signaling.messages import Event

__all__ = ["Ended", "HungUp", "interruptible", "server_ends_within"]

T = TypeVar("T")


class HungUp(Exception):
    """The user hung up (or rejected) while the call waited for something."""


class Ended(Exception):
    """The server says the call is over."""

    def __init__(self, event: Event) -> None:
        super().__init__(event.type)
        self.event = event  # the ending event


async def interruptible(
    awaitable: Awaitable[T], hangup: asyncio.Event, server_end: asyncio.Future[Event]
) -> T:
    """Await ``awaitable`` unless ``hangup`` is set or ``server_end`` is done first.

    Raises:
        HungUp: the user hung up first.
        Ended: the server ended the call first.
    """
    work = asyncio.ensure_future(awaitable)
    hung_up = asyncio.ensure_future(hangup.wait())
    shielded = asyncio.shield(server_end)
    try:
        done, _ = await asyncio.wait({work, hung_up, shielded}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        if hung_up in done:
            raise HungUp
        raise Ended(server_end.result())
    finally:
        for future in (work, hung_up, shielded):
            if not future.done():
                future.cancel()
        await asyncio.gather(work, hung_up, return_exceptions=True)


async def server_ends_within(server_end: asyncio.Future[Event], seconds: float) -> bool:
    """Whether the server ends the call (``server_end`` done) within ``seconds``."""
    try:
        await asyncio.wait_for(asyncio.shield(server_end), seconds)
    except TimeoutError:
        return False
    return True
