"""Prometheus metrics of one signaling server, in a registry of their own.

Each :class:`ServerMetrics` owns a fresh ``CollectorRegistry`` (never the global one),
so several apps and tests in one process do not clash. What it exposes:

=========================================  =========  ===================================
name                                       type       labels
=========================================  =========  ===================================
``pqcall_connected_phones``                gauge      (WebSocket connections open)
``pqcall_calls``                           gauge      ``state``
``pqcall_stored_files``                    gauge      ``state`` (uploading, stored)
``pqcall_stored_file_bytes``               gauge      ``state`` (announced sizes)
``pqcall_http_request_duration_seconds``   histogram  ``method``, ``route``, ``status``
``pqcall_http_rate_limited_total``         counter    ``limit``
``pqcall_relay_allocations_active``        gauge
``pqcall_relay_allocations_total``         counter
``pqcall_relay_released_total``            counter    ``reason``
``pqcall_relay_binds_total``               counter
``pqcall_relay_challenges_total``          counter
``pqcall_relay_forwarded_packets_total``   counter
``pqcall_relay_forwarded_bytes_total``     counter
``pqcall_relay_dropped_packets_total``     counter    ``reason``
=========================================  =========  ===================================

The relay figures are read from ``MediaRelay.stats`` at scrape time (:meth:`watch_relay`),
calls by state from the calls code (:meth:`set_calls_by_state`, or a callback given to
:meth:`watch_calls`). Request latency is labelled by route *template*
(``/users/{name}``), never the raw path, so a scan of random URLs cannot grow the
series without bound: :class:`RequestMetricsMiddleware` records it for any ASGI app.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from pqcall.server.relay_table import DropReason, RelayStats, ReleaseReason

METRICS_EXTRA = "metrics"  # context.extras key of the ServerMetrics
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED_ROUTE = "<unmatched>"  # the route label of a request no route matched (404)
OTHER_METHOD = "OTHER"  # the method label of a method outside KNOWN_METHODS
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# minimal ASGI types (to stay independent of any one framework)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _CallsCollector:
    """``pqcall_calls{state}``: counts set by the calls code, or read from a callback."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # last counts set, by state
        self.source: Callable[[], Mapping[str, int]] | None = None  # read at scrape if set

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        counts = self.counts if self.source is None else self.source()
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("pqcall_calls", "Calls by state.", labels=["state"])


class _RelayCollector:
    """The relay's counters, read from its ``stats()`` at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], RelayStats] | None = None  # MediaRelay.stats, once watched

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return []
        return self._families(self.source())

    @staticmethod
    def _families(stats: RelayStats | None) -> list[Metric]:
        active = GaugeMetricFamily(
            "pqcall_relay_allocations_active", "Media relay allocations alive now."
        )
        total = CounterMetricFamily("pqcall_relay_allocations", "Media relay allocations made.")
        released = CounterMetricFamily(
            "pqcall_relay_released", "Media relay allocations ended, by reason.", labels=["reason"]
        )
        binds = CounterMetricFamily("pqcall_relay_binds", "Media relay binds accepted.")
        challenges = CounterMetricFamily(
            "pqcall_relay_challenges", "Media relay challenges sent to a party's new address."
        )
        packets = CounterMetricFamily(
            "pqcall_relay_forwarded_packets", "Datagrams forwarded by the media relay."
        )
        octets = CounterMetricFamily(
            "pqcall_relay_forwarded_bytes", "Payload bytes forwarded by the media relay."
        )
        dropped = CounterMetricFamily(
            "pqcall_relay_dropped_packets",
            "Datagrams the media relay did not forward, by reason.",
            labels=["reason"],
        )
        if stats is not None:
            active.add_metric([], stats.allocations_active)
            total.add_metric([], stats.allocations_total)
            for release_reason in ReleaseReason:
                released.add_metric([release_reason.value], stats.released.get(release_reason, 0))
            binds.add_metric([], stats.binds)
            challenges.add_metric([], stats.challenges)
            packets.add_metric([], stats.packets_forwarded)
            octets.add_metric([], stats.bytes_forwarded)
            for drop_reason in DropReason:
                dropped.add_metric([drop_reason.value], stats.dropped.get(drop_reason, 0))
        return [active, total, released, binds, challenges, packets, octets, dropped]


class ServerMetrics:
    """The server's metrics, in their own registry.

    Args:
        registry: where to register them (default: a new ``CollectorRegistry``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry  # for render()
        self.connected_phones = Gauge(  # inc/dec, or ``with ....track_inprogress():``
            "pqcall_connected_phones",
            "Phones with an open event WebSocket.",
            registry=self.registry,
        )
        self.request_duration = Histogram(  # use observe_request()
            "pqcall_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rate_limited = Counter(  # .labels(limit="ip" | "account" | "login").inc()
            "pqcall_http_rate_limited",
            "Requests refused with 429, by the limit that refused them.",
            ["limit"],
            registry=self.registry,
        )
        self.stored_files = Gauge(  # use set_file_totals()
            "pqcall_stored_files",
            "Encrypted files on the server, by state.",
            ["state"],
            registry=self.registry,
        )
        self.stored_file_bytes = Gauge(  # use set_file_totals()
            "pqcall_stored_file_bytes",
            "Announced ciphertext bytes of the files on the server, by state.",
            ["state"],
            registry=self.registry,
        )
        self._calls = _CallsCollector()  # pqcall_calls
        self._relay = _RelayCollector()  # pqcall_relay_*
        self.registry.register(self._calls)
        self.registry.register(self._relay)

    def set_calls_by_state(self, counts: Mapping[str, int]) -> None:
        """Replace the call counts (states missing from ``counts`` disappear)."""
        self._calls.counts = dict(counts)

    def set_file_totals(self, totals: Mapping[str, tuple[int, int]]) -> None:
        """Set the stored-file gauges from ``{state: (files, bytes)}``."""
        for state, (files, size) in totals.items():
            self.stored_files.labels(state=state).set(files)
            self.stored_file_bytes.labels(state=state).set(size)

    def watch_calls(self, source: Callable[[], Mapping[str, int]] | None) -> None:
        """Read call counts from ``source()`` at every scrape (None: back to the set counts).

        ``source`` runs in the scrape, synchronously: it must be cheap and not block
        (an in-memory count, not a database query).
        """
        self._calls.source = source

    def watch_relay(self, source: Callable[[], RelayStats] | None) -> None:
        """Read relay counters from ``source()`` (``MediaRelay.stats``) at every scrape."""
        self._relay.source = source

    def observe_request(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Record one request's latency; ``route`` must be a template, not a raw path."""
        method = method if method in KNOWN_METHODS else OTHER_METHOD
        self.request_duration.labels(method=method, route=route, status=str(status)).observe(
            duration_s
        )


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The body and ``Content-Type`` of a ``/metrics`` reply.

    Args:
        registry: what to expose (``ServerMetrics.registry``).
        accept: the request's ``Accept`` header; OpenMetrics if it asks for it,
            the Prometheus text format otherwise.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def route_template(scope: Scope) -> str:
    """The template of the route that served an ASGI request, or ``UNMATCHED_ROUTE``.

    Starlette and FastAPI put the matched route in ``scope["route"]`` while routing;
    its ``path_format`` is the template (``/users/{name}``). Read it after the app ran.
    A route inside a mounted sub-application is named by its path inside that app.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """ASGI middleware recording each HTTP request's latency by route template and status.

    With Starlette or FastAPI: ``app.add_middleware(RequestMetricsMiddleware,
    metrics=metrics)``. WebSocket and lifespan scopes pass through unrecorded. A request
    whose app raised before answering is recorded as status 500.

    Args:
        app: the ASGI app to wrap.
        metrics: where to record.
        clock: seconds from a monotonic clock (a fake one in tests).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app  # the wrapped app
        self.metrics = metrics  # where latencies go
        self.clock = clock  # seconds, monotonic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            self.metrics.observe_request(
                str(scope.get("method", "")), route_template(scope), status, self.clock() - start
            )
