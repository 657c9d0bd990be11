"""Server metrics: exposition, the relay collector, and latency by route template."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pqcall.server.metrics import (
    UNMATCHED_ROUTE,
    RequestMetricsMiddleware,
    ServerMetrics,
    render,
)
from pqcall.server.relay import MediaRelay
from pqcall.server.relay_table import DropReason, RelayStats, ReleaseReason


def samples(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    body, _ = render(metrics.registry)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_render_gives_the_text_format_or_openmetrics_on_request():
    metrics = ServerMetrics()
    body, content_type = render(metrics.registry)
    assert content_type.startswith("text/plain; version=")
    assert b"# TYPE pqcall_connected_phones gauge" in body
    body, content_type = render(metrics.registry, accept="application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_each_instance_has_its_own_registry():
    first, second = ServerMetrics(), ServerMetrics()  # would clash in the global registry
    first.connected_phones.set(3)
    assert samples(first)[("pqcall_connected_phones", ())] == 3
    assert samples(second)[("pqcall_connected_phones", ())] == 0


def test_an_explicit_registry_is_used():
    registry = CollectorRegistry()
    ServerMetrics(registry).connected_phones.inc()
    assert registry.get_sample_value("pqcall_connected_phones") == 1


def test_connected_phones_and_calls_by_state():
    metrics = ServerMetrics()
    metrics.connected_phones.inc()
    metrics.connected_phones.inc()
    metrics.connected_phones.dec()
    metrics.set_calls_by_state({"ringing": 2, "active": 5})
    scraped = samples(metrics)
    assert scraped[("pqcall_connected_phones", ())] == 1
    assert scraped[("pqcall_calls", (("state", "ringing"),))] == 2
    assert scraped[("pqcall_calls", (("state", "active"),))] == 5
    metrics.set_calls_by_state({"active": 4})
    scraped = samples(metrics)
    assert ("pqcall_calls", (("state", "ringing"),)) not in scraped
    assert scraped[("pqcall_calls", (("state", "active"),))] == 4


def test_calls_can_be_read_from_a_callback_at_scrape_time():
    metrics = ServerMetrics()
    counter = itertools.count(1)
    metrics.watch_calls(lambda: {"active": next(counter)})
    assert samples(metrics)[("pqcall_calls", (("state", "active"),))] == 1
    assert samples(metrics)[("pqcall_calls", (("state", "active"),))] == 2


def relay_stats(forwarded: int) -> RelayStats:
    return RelayStats(
        allocations_active=2,
        allocations_total=7,
        released={ReleaseReason.RELEASED: 4, ReleaseReason.IDLE: 1},
        binds=14,
        rebinds=1,
        packets_forwarded=forwarded,
        bytes_forwarded=forwarded * 100,
        dropped={DropReason.UNKNOWN_ADDRESS: 3, DropReason.RATE_LIMITED: 9},
        challenges=5,
    )


def test_relay_counters_are_read_at_scrape_time():
    metrics = ServerMetrics()
    assert not any(name.startswith("pqcall_relay") for name, _ in samples(metrics))
    forwarded = iter([1000, 1500])
    metrics.watch_relay(lambda: relay_stats(next(forwarded)))
    scraped = samples(metrics)
    assert scraped[("pqcall_relay_forwarded_packets_total", ())] == 1000
    assert scraped[("pqcall_relay_forwarded_bytes_total", ())] == 100_000
    assert scraped[("pqcall_relay_allocations_active", ())] == 2
    assert scraped[("pqcall_relay_allocations_total", ())] == 7
    assert scraped[("pqcall_relay_binds_total", ())] == 14
    assert scraped[("pqcall_relay_challenges_total", ())] == 5
    assert scraped[("pqcall_relay_released_total", (("reason", "idle"),))] == 1
    assert scraped[("pqcall_relay_released_total", (("reason", "lifetime"),))] == 0
    dropped = "pqcall_relay_dropped_packets_total"
    assert scraped[(dropped, (("reason", "rate_limited"),))] == 9
    assert scraped[(dropped, (("reason", "unknown_address"),))] == 3
    assert scraped[(dropped, (("reason", "bad_bind"),))] == 0
    assert samples(metrics)[("pqcall_relay_forwarded_packets_total", ())] == 1500


def test_relay_metrics_from_a_real_relay():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            metrics = ServerMetrics()
            metrics.watch_relay(relay.stats)
            relay.allocate("c1")
            body, _ = render(metrics.registry)
            assert b"pqcall_relay_allocations_active 1.0" in body

    asyncio.run(main())


def test_rate_limited_requests_are_counted():
    metrics = ServerMetrics()
    metrics.rate_limited.labels(limit="ip").inc()
    assert samples(metrics)[("pqcall_http_rate_limited_total", (("limit", "ip"),))] == 1


def app_with_metrics(metrics: ServerMetrics) -> FastAPI:
    app = FastAPI()
    fake_clock = itertools.count(step=0.25)  # every request takes 0.25 s
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=metrics,
        clock=lambda: float(next(fake_clock)),
    )

    @app.get("/users/{name}")
    async def user(name: str) -> dict[str, str]:
        if name == "nobody":
            raise HTTPException(status_code=404, detail="no such user")
        return {"name": name}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    return app


def request_count(metrics: ServerMetrics, method: str, route: str, status: str) -> float:
    labels = (("method", method), ("route", route), ("status", status))
    return samples(metrics).get(("pqcall_http_request_duration_seconds_count", labels), 0.0)


def test_latency_is_recorded_by_route_template_not_raw_path():
    metrics = ServerMetrics()

    async def main() -> None:
        transport = httpx.ASGITransport(app=app_with_metrics(metrics), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for name in ("alice", "bob", "carol", "nobody"):
                await client.get(f"/users/{name}")
            for i in range(3):
                await client.get(f"/scan/{i}")
            assert (await client.post("/users/alice")).status_code == 405
            assert (await client.request("BREW", "/users/alice")).status_code == 405
            assert (await client.get("/boom")).status_code == 500

    asyncio.run(main())
    assert request_count(metrics, "GET", "/users/{name}", "200") == 3
    assert request_count(metrics, "GET", "/users/{name}", "404") == 1
    assert request_count(metrics, "GET", UNMATCHED_ROUTE, "404") == 3
    assert request_count(metrics, "POST", "/users/{name}", "405") == 1
    assert request_count(metrics, "OTHER", "/users/{name}", "405") == 1
    assert request_count(metrics, "GET", "/boom", "500") == 1
    routes = {dict(labels)["route"] for name, labels in samples(metrics) if "duration" in name}
    assert routes == {"/users/{name}", "/boom", UNMATCHED_ROUTE}
    labels = (("method", "GET"), ("route", "/users/{name}"), ("status", "200"))
    assert samples(metrics)[("pqcall_http_request_duration_seconds_sum", labels)] == 0.75


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
def test_non_http_scopes_pass_through_unrecorded(scope_type):
    metrics = ServerMetrics()
    seen: list[str] = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])

    async def receive():
        return {}

    async def send(message):
        pass

    middleware = RequestMetricsMiddleware(inner, metrics=metrics)
    asyncio.run(middleware({"type": scope_type}, receive, send))
    assert seen == [scope_type]
    assert not any("duration" in name for name, _ in samples(metrics))
