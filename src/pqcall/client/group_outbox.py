"""The pairwise messages of one group call on their way to the server: retried when refused.

:class:`Outbox` sends each opaque message (handshake, sealed sender key, ack,
roster signature) to one other joined member through ``/group/message``. A
message the server rate-limited (429) or could not take (a network error) is
sent again after a growing, spread wait, up to :data:`SEND_ATTEMPTS` times; one
refused otherwise (the member left) is dropped with a log line. Messages carry
no secrets in the clear (they are sealed or public handshake halves), and
nothing of them is logged.
"""

from __future__ import annotations

import asyncio
import logging
import random

from pqcall.client.group_api import GroupApi
from pqcall.exceptions import ApiError, PqcallError

logger = logging.getLogger(__name__)

SEND_ATTEMPTS = 8  # a pairwise message the server did not take (or rate-limited) is sent again
HTTP_TOO_MANY_REQUESTS = 429
SEND_RETRY_S = 0.5


class Outbox:
    """Messages of call ``call_id`` to other members, through ``api``."""

    def __init__(self, api: GroupApi, call_id: str) -> None:
        self._api = api
        self._call_id = call_id

    async def send(self, name: str, body: bytes) -> None:
        """Send ``body`` to ``name`` (retried; never raises)."""
        for attempt in range(SEND_ATTEMPTS):
            try:
                await self._api.message(self._call_id, name, body)
                return
            except ApiError as exc:
                if exc.status != HTTP_TOO_MANY_REQUESTS or attempt == SEND_ATTEMPTS - 1:
                    logger.warning("group call %s: message to %s: %s", self._call_id, name, exc)
                    return  # refused (the member left): no point repeating
                # the server's rate limit: wait (growing, spread) and send it again
                await asyncio.sleep(SEND_RETRY_S * (attempt + 1) * (1 + random.random()))
            except PqcallError as exc:
                if attempt == SEND_ATTEMPTS - 1:
                    logger.warning(
                        "group call %s: message to %s lost: %s", self._call_id, name, exc
                    )
                else:
                    await asyncio.sleep(SEND_RETRY_S * (attempt + 1))
