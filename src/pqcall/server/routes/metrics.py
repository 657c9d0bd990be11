"""``GET /metrics`` (Prometheus) and the server's metrics object it serves.

:func:`install_metrics` creates the :class:`~pqcall.server.metrics.ServerMetrics`
and publishes it as ``context.extras["metrics"]``; for the call and event code:
``with metrics.connected_phones.track_inprogress():`` around the life of an
authenticated WebSocket. Calls by state and stored-file totals are read from
storage when ``/metrics`` is scraped, at most every :data:`CALL_COUNTS_MAX_AGE_S`;
the calls code may also call ``metrics.set_calls_by_state`` with fresher counts,
but need not.
"""

from __future__ import annotations

import asyncio
import math
import time

from fastapi import APIRouter, Request, Response

from pqcall.server.context import AppContext, get_context
from pqcall.server.metrics import METRICS_EXTRA, ServerMetrics, render
from pqcall.signaling.callstate import State

CALL_COUNTS_MAX_AGE_S = 5.0  # /metrics reads calls by state from storage at most this often
CALL_COUNTS_EXTRA = "call_counts"  # context.extras key of the _CallCounts

router = APIRouter(tags=["operations"])


class _CallCounts:
    """Calls by state and stored-file totals for ``/metrics``, read at most every ``max_age_s``."""

    def __init__(self, max_age_s: float = CALL_COUNTS_MAX_AGE_S) -> None:
        self._max_age_s = max_age_s  # how stale the counts may be
        self._read_at = -math.inf  # monotonic time of the last read
        self._lock = asyncio.Lock()  # one read at a time; the others wait for it

    async def refresh(self, context: AppContext, metrics: ServerMetrics) -> None:
        async with self._lock:
            now = time.monotonic()
            if now - self._read_at < self._max_age_s:
                return
            counts = await context.storage.calls.count_calls_by_state()
            metrics.set_calls_by_state({state.value: counts.get(state, 0) for state in State})
            metrics.set_file_totals(await context.storage.files.file_totals())
            self._read_at = now


def install_metrics(context: AppContext) -> ServerMetrics:
    """Create the server's metrics and publish them as ``context.extras["metrics"]``."""
    metrics = ServerMetrics()
    context.extras[METRICS_EXTRA] = metrics
    context.extras[CALL_COUNTS_EXTRA] = _CallCounts()
    return metrics


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics (text format; OpenMetrics if the ``Accept`` header asks for it)."""
    context = get_context(request)
    metrics: ServerMetrics = context.extras[METRICS_EXTRA]
    call_counts: _CallCounts = context.extras[CALL_COUNTS_EXTRA]
    await call_counts.refresh(context, metrics)
    body, content_type = render(metrics.registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)
