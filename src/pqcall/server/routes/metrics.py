"""``GET /metrics`` (Prometheus) and the server's metrics object it serves.

``/metrics`` answers only clients on loopback by default (anyone else gets the
404 of an unknown endpoint): it tells how many phones are connected, calls by
state and relay traffic, which is for the operator's monitoring, not the
public. ``PQCALL_METRICS_ALLOW`` widens that to a comma-separated list of
networks (``10.0.0.0/8,::1``), read once at start, like uvicorn's
``FORWARDED_ALLOW_IPS``; behind a proxy that sets ``X-Forwarded-For``, the
address checked is the client's, not the proxy's.

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
import ipaddress
import math
import os
import time
from collections.abc import Iterable

from fastapi import APIRouter, Request, Response, status

from pqcall.exceptions import ServerError
from pqcall.server.context import AppContext, api_error, context_of
from pqcall.server.metrics import METRICS_EXTRA, ServerMetrics, render
from pqcall.signaling.callstate import State

CALL_COUNTS_MAX_AGE_S = 5.0  # /metrics reads calls by state from storage at most this often
CALL_COUNTS_EXTRA = "call_counts"  # context.extras key of the _CallCounts
SCRAPERS_EXTRA = "metrics_scrapers"  # context.extras key of the networks allowed to scrape
METRICS_ALLOW_ENV = "PQCALL_METRICS_ALLOW"  # comma-separated networks allowed to scrape
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")  # who may scrape by default

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def scraper_networks(text: str | None) -> tuple[Network, ...]:
    """The networks allowed to scrape: ``text`` (comma-separated) or loopback when unset.

    Raises:
        ServerError: an entry is not an address or network (one line).
    """
    entries = LOOPBACK_NETWORKS if not text else [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError:
        raise ServerError(f"{METRICS_ALLOW_ENV}={text!r}: not a list of networks") from None


def may_scrape(host: str | None, networks: Iterable[Network]) -> bool:
    """Whether a client at ``host`` may read ``/metrics`` (an unknown peer may not)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def install_metrics(context: AppContext) -> ServerMetrics:
    """Create the server's metrics and publish them as ``context.extras["metrics"]``.

    Also reads who may scrape (``PQCALL_METRICS_ALLOW``, default loopback).

    Raises:
        ServerError: ``PQCALL_METRICS_ALLOW`` is not a list of networks.
    """
    metrics = ServerMetrics()
    context.extras[METRICS_EXTRA] = metrics
    context.extras[CALL_COUNTS_EXTRA] = _CallCounts()
    context.extras[SCRAPERS_EXTRA] = scraper_networks(os.environ.get(METRICS_ALLOW_ENV))
    return metrics


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics (text format; OpenMetrics if the ``Accept`` header asks for it).

    Only for the networks allowed to scrape (loopback by default); others get 404.
    """
    context = context_of(request)
    client = request.client
    if not may_scrape(None if client is None else client.host, context.extras[SCRAPERS_EXTRA]):
        raise api_error(status.HTTP_404_NOT_FOUND, "Not Found")  # as for an unknown endpoint
    metrics: ServerMetrics = context.extras[METRICS_EXTRA]
    call_counts: _CallCounts = context.extras[CALL_COUNTS_EXTRA]
    await call_counts.refresh(context, metrics)
    body, content_type = render(metrics.registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)
