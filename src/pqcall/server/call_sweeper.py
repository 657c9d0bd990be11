"""The call sweeper: ends the calls nobody will end, and bounds pending events.

A :class:`~pqcall.server.context.Component` (:class:`CallSweeper`). Each change
it makes goes through :func:`pqcall.server.call_service.apply` with the server
as the acting party, so it is pushed and judged by the state table like a
request; with several processes the compare-and-set lets exactly one of them
end each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from fastapi import HTTPException

from pqcall.server.background import BackgroundTask
from pqcall.server.bus import leads_sweeps
from pqcall.server.call_service import apply
from pqcall.server.context import AppContext
from pqcall.server.storage import CallRecord
from pqcall.signaling.callstate import Action, IllegalTransition, Party, State

logger = logging.getLogger(__name__)

VANISH_GRACE_S = 60.0  # an active call ends when both parties were offline this long
EVENT_RETENTION_S = 7 * 24 * 3600.0  # unacknowledged events older than this are dropped
MAX_PENDING_EVENTS = 1000  # unacknowledged events kept per account (the newest)
RETENTION_INTERVAL_S = 60.0  # how often (app clock) the sweeper applies the two limits
SWEEP_BATCH = 500  # calls handled per sweep and kind


class CallSweeper:
    """Ends calls nobody will end: ringing too long, or both parties gone.

    A :class:`~pqcall.server.context.Component`. Every
    ``settings.sweep_interval_s`` it

    - times out calls ringing longer than ``settings.ring_timeout_s`` (missed,
      reason ``timeout``, pushed to both parties);
    - ends active calls whose parties have both been offline (no push
      connection, ``last_seen`` older) for :data:`VANISH_GRACE_S` (ended,
      reason ``lost``);
    - every :data:`RETENTION_INTERVAL_S`, drops unacknowledged events older
      than :data:`EVENT_RETENTION_S` and all but the newest
      :data:`MAX_PENDING_EVENTS` of each account.

    Times are the app clock (``context.now()``), so tests move a fake clock;
    the pause between passes is real time. With several nodes on PostgreSQL
    only the sweep leader runs it (:func:`pqcall.server.bus.leads_sweeps`);
    the compare-and-set would let exactly one end each call anyway.
    """

    def __init__(self) -> None:
        self._context: AppContext | None = None  # set by start
        self._task = BackgroundTask("pqcall-call-sweeper")  # the sweep loop while running
        self._retained_at = -math.inf  # app time of the last retention pass

    async def start(self, context: AppContext) -> None:
        self._context = context
        self._task.start(self._run(context))

    async def stop(self) -> None:
        await self._task.stop()
        self._context = None

    async def _run(self, context: AppContext) -> None:
        while True:
            try:
                if await leads_sweeps(context):  # one node of several (server/bus.py)
                    await self.sweep(context)
            except Exception:
                logger.exception("call sweep failed")
            await asyncio.sleep(context.settings.sweep_interval_s)

    async def sweep(self, context: AppContext) -> None:
        """One pass: ring timeouts, vanished parties, event retention."""
        storage = context.storage
        now = context.now()
        ringing = await storage.calls.list_calls_in_state(
            State.RINGING, created_before=now - context.settings.ring_timeout_s, limit=SWEEP_BATCH
        )
        for call in ringing:
            await self._end(context, call, Action.TIMEOUT)
        for call in await storage.calls.list_vanished_calls(now - VANISH_GRACE_S, SWEEP_BATCH):
            presence = context.presence
            if presence.is_online(call.caller_id) or presence.is_online(call.callee_id):
                continue
            await self._end(context, call, Action.VANISH)
        if now - self._retained_at >= RETENTION_INTERVAL_S:
            self._retained_at = now
            expired = await storage.events.delete_events_before(now - EVENT_RETENTION_S)
            trimmed = await storage.events.trim_events(MAX_PENDING_EVENTS)
            if expired or trimmed:
                logger.info("dropped %d unacknowledged events", expired + trimmed)

    @staticmethod
    async def _end(context: AppContext, call: CallRecord, action: Action) -> None:
        # a party or another process got there first
        with contextlib.suppress(IllegalTransition, HTTPException):
            await apply(context, call, Party.SYSTEM, action)
