"""The pairwise messages of one group call on their way to the server: batched, retried.

:class:`Outbox` carries each opaque message (handshake, sealed sender key, ack,
roster signature) to one other joined member. :meth:`Outbox.post` only queues
it; one task sends what has queued (after :data:`FLUSH_DELAY_S`, so a key sent
to every member, or the offers of a join, travel together) in as few
``POST /group/messages`` requests as the caps allow
(:data:`~pqcall.signaling.group_messages.MAX_GROUP_BATCH_MESSAGES` messages,
:data:`~pqcall.signaling.group_messages.MAX_GROUP_BATCH_BYTES` bytes), one
request at a time, so messages to one member arrive in the order posted. A join
at 20 members used to cost each member ~57 requests against the server's
per-account and per-address rate limits; now a few.

A batch the server rate-limited (429) or could not take (a network error) is
sent again after a growing, spread wait, up to :data:`SEND_ATTEMPTS` times; one
refused otherwise (the call is over for us) is dropped with a log line, as is a
message whose recipient is no longer joined (the server lists it as refused).
Messages carry no secrets in the clear, and nothing of them is logged.
"""

from __future__ import annotations

import asyncio
import logging
import random

from pqcall.client.group_api import GroupApi
from pqcall.exceptions import ApiError, PqcallError
from pqcall.signaling.group_messages import MAX_GROUP_BATCH_BYTES, MAX_GROUP_BATCH_MESSAGES

logger = logging.getLogger(__name__)

SEND_ATTEMPTS = 8  # a batch the server did not take (or rate-limited) is sent again
HTTP_TOO_MANY_REQUESTS = 429
SEND_RETRY_S = 0.5
FLUSH_DELAY_S = 0.02  # how long messages posted together wait for each other


def batches(items: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """``items`` split, in order, into batches within the server's caps."""
    result: list[list[tuple[str, bytes]]] = []
    size = 0
    for item in items:
        if not result or len(result[-1]) >= MAX_GROUP_BATCH_MESSAGES:
            result.append([])
            size = 0
        elif size + len(item[1]) > MAX_GROUP_BATCH_BYTES:
            result.append([])
            size = 0
        result[-1].append(item)
        size += len(item[1])
    return result


class Outbox:
    """Messages of call ``call_id`` to other members, through ``api``."""

    def __init__(self, api: GroupApi, call_id: str) -> None:
        self._api = api
        self._call_id = call_id
        self._queue: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self.requests = 0  # POST /group/messages made (retries included)
        self.messages = 0  # messages the server took

    def post(self, name: str, body: bytes) -> None:
        """Queue ``body`` for ``name`` (sent soon, with whatever else is queued)."""
        self._queue.append((name, body))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="group outbox")

    async def close(self) -> None:
        """Stop sending (what is still queued is dropped)."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _flush(self) -> None:
        while self._queue:
            await asyncio.sleep(FLUSH_DELAY_S)
            items, self._queue = self._queue, []
            for batch in batches(items):
                await self._send(batch)

    async def _send(self, batch: list[tuple[str, bytes]]) -> None:
        for attempt in range(SEND_ATTEMPTS):
            self.requests += 1
            try:
                sent = await self._api.messages(self._call_id, batch)
            except ApiError as exc:
                if exc.status != HTTP_TOO_MANY_REQUESTS or attempt == SEND_ATTEMPTS - 1:
                    logger.warning(
                        "group call %s: %d message(s) refused: %s", self._call_id, len(batch), exc
                    )
                    return  # refused (we are no longer joined): no point repeating
                # the server's rate limit: wait (growing, spread) and send it again
                await asyncio.sleep(SEND_RETRY_S * (attempt + 1) * (1 + random.random()))
                continue
            except PqcallError as exc:
                if attempt == SEND_ATTEMPTS - 1:
                    logger.warning(
                        "group call %s: %d message(s) lost: %s", self._call_id, len(batch), exc
                    )
                    return
                await asyncio.sleep(SEND_RETRY_S * (attempt + 1))
                continue
            self.messages += sent.delivered
            for refused in sent.refused:
                logger.info(
                    "group call %s: message to %s: %s", self._call_id, refused.to, refused.reason
                )
            return
