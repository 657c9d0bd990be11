"""Operations: the media relay and mDNS as components, rate limits, metrics, access logs.

:func:`pqcall.server.app.create_app` installs all of it by default:

- :class:`RelayComponent` runs the UDP :class:`~pqcall.server.relay.MediaRelay` on
  ``settings.relay_port`` (default: the HTTP port's number) and publishes it as
  ``context.extras["relay"]``; :func:`relay_endpoint` is the address to give phones.
- :class:`AnnouncerComponent` (only with ``settings.announce_mdns``) announces the
  server on the LAN; if mDNS cannot run, it logs one warning and the server runs on.
- :class:`RateLimitMiddleware`: per client IP on every request, per account on
  requests with a bearer token, per username on ``POST /auth/login``; a refusal is
  429 with ``Retry-After`` and ``{"error": "too many requests, retry in N s"}``.
- :class:`~pqcall.server.metrics.RequestMetricsMiddleware` and ``GET /metrics``
  (:data:`router`); the :class:`~pqcall.server.metrics.ServerMetrics` object is
  ``context.extras["metrics"]``.
- :class:`AccessLogMiddleware`: one INFO line per request (method, route template,
  status, latency, client address); never paths, query strings, headers or bodies,
  so no token, challenge or signature reaches a log.

For the call and event code (the hooks this module offers):

- relay: ``context.extras["relay"]`` is the running ``MediaRelay`` (absent if it is not
  running); ``relay.allocate(call_id)`` when a call needs relaying, ``relay.release``
  at hang-up, and :func:`relay_endpoint` for the ``(host, port)`` to send each party.
- connected phones: ``with metrics.connected_phones.track_inprogress():`` around the
  life of an authenticated WebSocket.
- calls by state: ``/metrics`` refreshes the counts from storage at most every
  :data:`CALL_COUNTS_MAX_AGE_S`; the calls code may also call
  ``metrics.set_calls_by_state`` with fresher counts, but need not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response, status
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pqcall.exceptions import LocalProtocolError, ServerError
from pqcall.server.context import AppContext, Component, get_context
from pqcall.server.metrics import RequestMetricsMiddleware, ServerMetrics, render, route_template
from pqcall.server.ratelimit import (
    LOGIN_PER_USERNAME_LIMIT,
    PER_ACCOUNT_LIMIT,
    PER_IP_LIMIT,
    RateLimit,
    RateLimiter,
    client_key,
    retry_after_header,
)
from pqcall.server.relay import MediaRelay
from pqcall.server.settings import ServerSettings
from pqcall.signaling import usernames
from pqcall.signaling.callstate import State
from pqcall.signaling.messages import b64decode

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("pqcall.server.access")

CALL_COUNTS_MAX_AGE_S = 5.0  # /metrics reads calls by state from storage at most this often
MAX_CACHED_TOKENS = 100_000  # bearer token -> account id entries kept for the account limit
LOGIN_PATH = "/auth/login"
UNKNOWN_CLIENT = "unknown"  # the rate-limit key of a request without a peer address
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})

RELAY_EXTRA = "relay"  # context.extras key of the running MediaRelay
METRICS_EXTRA = "metrics"  # context.extras key of the ServerMetrics


# ---------------------------------------------------------------- media relay


class RelayComponent:
    """Runs the media relay for as long as the server runs.

    Binds UDP ``settings.relay_bind`` (default ``settings.host``) on
    ``settings.relay_udp_port``; port 0 lets the kernel choose (tests). Publishes the
    relay as ``context.extras["relay"]`` and its counters to the metrics.

    Raises (from :meth:`start`):
        ServerError: the UDP port cannot be bound (the server does not start).
    """

    def __init__(self) -> None:
        self._relay: MediaRelay | None = None  # running between start and stop
        self._context: AppContext | None = None  # where it is published

    async def start(self, context: AppContext) -> None:
        settings = context.settings
        host = settings.relay_bind if settings.relay_bind is not None else settings.host
        relay = MediaRelay(host, settings.relay_udp_port)
        try:
            await relay.start()
        except OSError as exc:
            raise ServerError(
                f"cannot open the media relay on UDP {host}:{settings.relay_udp_port}:"
                f" {exc.strerror or exc}"
            ) from None
        self._relay = relay
        self._context = context
        context.extras[RELAY_EXTRA] = relay
        metrics = context.extras.get(METRICS_EXTRA)
        if isinstance(metrics, ServerMetrics):
            metrics.watch_relay(relay.stats)

    async def stop(self) -> None:
        if self._context is not None:
            self._context.extras.pop(RELAY_EXTRA, None)
            metrics = self._context.extras.get(METRICS_EXTRA)
            if isinstance(metrics, ServerMetrics):
                metrics.watch_relay(None)
        if self._relay is not None:
            await self._relay.close()
        self._relay = None
        self._context = None


def relay_endpoint(context: AppContext, request_host: str | None) -> tuple[str, int] | None:
    """Where a phone sends relayed media: ``(host, UDP port)``, or None without a relay.

    Args:
        context: the server's context.
        request_host: the host name the phone reached the API at
            (``request.url.hostname``); used unless ``--relay-host`` was given.
    """
    relay = context.extras.get(RELAY_EXTRA)
    if not isinstance(relay, MediaRelay):
        return None
    bound_host, port = relay.address
    host = context.settings.relay_host or request_host
    if not host:
        host = None if bound_host in ANY_ADDRESS else bound_host
    return None if host is None else (host, port)


# ---------------------------------------------------------------- mDNS


def instance_name(server_name: str) -> str:
    """The mDNS instance name for a server name: one DNS label (no dots, at most 63 bytes)."""
    name = "pqcall on " + server_name.replace(".", "-")
    encoded = name.encode()[:63]
    return encoded.decode(errors="ignore")


class AnnouncerComponent:
    """Announces the server on the LAN with mDNS while it runs.

    Announcing is best effort: if mDNS cannot run here (no multicast, sockets
    refused) one warning is logged and the server runs on without it. Nothing is
    announced when the server listens on loopback only, or on a kernel-chosen port.
    """

    def __init__(self) -> None:
        self._announcer: Any = None  # a ServerAnnouncer while announcing

    async def start(self, context: AppContext) -> None:
        # zeroconf is imported here, so servers without mDNS never load it
        from pqcall.server.discovery import ServerAnnouncer

        settings = context.settings
        if settings.host in ("127.0.0.1", "::1", "localhost") or settings.port == 0:
            logger.info("not announcing on the LAN (mDNS): the server is not reachable there")
            return
        relay = context.extras.get(RELAY_EXTRA)
        relay_port = relay.address[1] if isinstance(relay, MediaRelay) else None
        addresses = None if settings.host in ANY_ADDRESS else [settings.host]
        try:
            announcer = ServerAnnouncer(
                instance_name(settings.server_name),
                settings.port,
                addresses,
                relay_port=relay_port,
                is_tls=settings.uses_tls,
            )
            await announcer.start(wait=False)
        except (ServerError, LocalProtocolError, OSError) as exc:
            # DiscoveryUnavailable is a ServerError
            logger.warning("not announcing the server on the LAN (mDNS): %s", exc)
            return
        self._announcer = announcer

    async def stop(self) -> None:
        announcer, self._announcer = self._announcer, None
        if announcer is not None:
            await announcer.close()


def default_components(settings: ServerSettings) -> list[Component]:
    """The operations components of a server: the relay, then mDNS if enabled."""
    components: list[Component] = [RelayComponent()]
    if settings.announce_mdns:
        components.append(AnnouncerComponent())
    return components


# ---------------------------------------------------------------- rate limits


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The request rate limits of one server (None: that limit is off)."""

    per_ip: RateLimit | None = PER_IP_LIMIT
    """Every request and WebSocket handshake, by client address (IPv6 by /64)."""
    per_account: RateLimit | None = PER_ACCOUNT_LIMIT
    """Every request with a valid bearer token, by account."""
    login: RateLimit | None = LOGIN_PER_USERNAME_LIMIT
    """``POST /auth/login`` attempts by username; a successful login refills the bucket."""

    @classmethod
    def scaled(cls, scale: float) -> RequestLimits:
        """The default limits with rate and burst multiplied by ``scale`` (0: all off)."""
        if scale == 0:
            return cls(None, None, None)

        def times(limit: RateLimit) -> RateLimit:
            return RateLimit(limit.rate_per_s * scale, max(1.0, limit.burst * scale))

        return cls(times(PER_IP_LIMIT), times(PER_ACCOUNT_LIMIT), times(LOGIN_PER_USERNAME_LIMIT))

    @property
    def is_off(self) -> bool:
        """Whether no limit is set."""
        return self.per_ip is None and self.per_account is None and self.login is None


def too_many_requests(retry_after_s: float) -> JSONResponse:
    """The 429 reply: ``Retry-After`` in whole seconds and the same number in the message."""
    seconds = retry_after_header(retry_after_s)
    return JSONResponse(
        {"error": f"too many requests, retry in {seconds} s"},
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": seconds},
    )


class RateLimitMiddleware:
    """ASGI middleware enforcing :class:`RequestLimits`.

    Order of checks: client address (every HTTP request and WebSocket handshake),
    then account (HTTP requests with ``Authorization: Bearer``; the token is mapped
    to its account once, with one storage lookup, and cached), then username (``POST
    /auth/login``, read from the body). A request refused by one limit takes nothing
    from the later ones. A refused WebSocket handshake gets an HTTP 429 if the server
    supports the ASGI denial response, else a close with code 1013 (try again later).

    Args:
        app: the wrapped application.
        context: the server's context (storage for token lookups, metrics).
        limits: what to enforce.
        clock: seconds (default: the context's clock, so tests can move it; a clock
            that steps back refills nothing).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        context: AppContext,
        limits: RequestLimits,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = app  # the wrapped application
        self.context = context  # storage and metrics
        self.clock = context.now if clock is None else clock  # seconds
        self.per_ip = None if limits.per_ip is None else RateLimiter(limits.per_ip)
        self.per_account = None if limits.per_account is None else RateLimiter(limits.per_account)
        self.login = None if limits.login is None else RateLimiter(limits.login)
        self._accounts: OrderedDict[bytes, int] = OrderedDict()  # token hash -> account id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        now = self.clock()
        # per client address
        if self.per_ip is not None:
            client = scope.get("client")
            key = client_key(client[0]) if client else UNKNOWN_CLIENT
            decision = self.per_ip.check(key, now)
            if not decision.allowed:
                await self._refuse(scope, receive, send, "ip", decision.retry_after_s)
                return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        # per account
        if self.per_account is not None:
            account_id = await self._account_of(scope)
            if account_id is not None:
                decision = self.per_account.check(f"account:{account_id}", now)
                if not decision.allowed:
                    await self._refuse(scope, receive, send, "account", decision.retry_after_s)
                    return
        # per username, for login attempts
        if self.login is not None and scope["method"] == "POST" and scope["path"] == LOGIN_PATH:
            await self._login(scope, receive, send, now)
            return
        await self.app(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send, now: float) -> None:
        assert self.login is not None
        try:
            body = await _read_body(receive)
        except StarletteHTTPException as exc:  # the body limit, raised by BodyLimit's receive
            reply = JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
            await reply(scope, receive, send)
            return
        username = _username_in(body)
        if username is not None:
            decision = self.login.check(f"login:{username}", now)
            if not decision.allowed:
                await self._refuse(scope, receive, send, "login", decision.retry_after_s)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status_code = 0

        async def note_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        await self.app(scope, replay, note_status)
        if username is not None and status_code == status.HTTP_200_OK:
            self.login.reset(f"login:{username}")

    async def _account_of(self, scope: Scope) -> int | None:
        token = _bearer_token(scope)
        if token is None:
            return None
        token_hash = hashlib.sha256(token).digest()
        account_id = self._accounts.get(token_hash)
        if account_id is not None:
            self._accounts.move_to_end(token_hash)
            return account_id
        try:
            found = await self.context.storage.logins.account_for_token(token_hash)
        except RuntimeError:  # storage not open: the route will answer
            return None
        if found is None:
            return None  # not a token: the route answers 401, the address limit applies
        account_id = found[0].id
        self._accounts[token_hash] = account_id
        while len(self._accounts) > MAX_CACHED_TOKENS:
            self._accounts.popitem(last=False)
        return account_id

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, limit: str, retry_after_s: float
    ) -> None:
        metrics = self.context.extras.get(METRICS_EXTRA)
        if isinstance(metrics, ServerMetrics):
            metrics.rate_limited.labels(limit=limit).inc()
        reply = too_many_requests(retry_after_s)
        if scope["type"] == "http":
            await reply(scope, receive, send)
            return
        # a WebSocket handshake: receive its connect message, then deny it
        await receive()
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": reply.status_code,
                    "headers": reply.raw_headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": reply.body})
        else:
            await send({"type": "websocket.close", "code": 1013})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _username_in(body: bytes) -> str | None:
    """The normalized ``username`` of a JSON login body, or None (the route will refuse it)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    name = document.get("username") if isinstance(document, dict) else None
    if not isinstance(name, str):
        return None
    try:
        return usernames.normalize(name)
    except usernames.InvalidUsername:
        return None


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            try:
                return b64decode(token.strip())
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- secrets in logs

SECRET_QUERY_PATTERN = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']+")
REDACTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class RedactSecretsFilter(logging.Filter):
    """Replaces bearer tokens in query strings with ``[redacted]`` in a log line.

    uvicorn logs each accepted WebSocket with its full path, and a browser
    passes its token as ``?token=``; that line must not carry the token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place when its message holds a token; never drop it."""
        message = record.getMessage()
        redacted = SECRET_QUERY_PATTERN.sub(r"\1[redacted]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactSecretsFilter` to uvicorn's loggers (after uvicorn set them up)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecretsFilter) for f in logger.filters):
            logger.addFilter(RedactSecretsFilter())


# ---------------------------------------------------------------- access log


class AccessLogMiddleware:
    """ASGI middleware: one INFO line per HTTP request or WebSocket session.

    ``method=GET route=/users/{name} status=200 duration_ms=1.9 client=192.0.2.7``:
    the route *template*, never the raw path or query string (a WebSocket token in a
    query string must not reach the log), and no headers or bodies. The same fields
    are attached to the record as ``extra={"http": {...}}`` for a JSON formatter.
    """

    def __init__(self, app: ASGIApp, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app  # the wrapped application
        self.clock = clock  # monotonic seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or not access_logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = self.clock()
        status_code = 500

        async def note_status(message: Message) -> None:
            nonlocal status_code
            match message["type"]:
                case "http.response.start" | "websocket.http.response.start":
                    status_code = int(message["status"])
                case "websocket.accept":
                    status_code = 101
                case "websocket.close" if status_code == 500:
                    status_code = 403  # closed before accepting: the server answers 403
            await send(message)

        try:
            await self.app(scope, receive, note_status)
        finally:
            client = scope.get("client")
            fields = {
                "method": "WS" if kind == "websocket" else str(scope.get("method", "")),
                "route": route_template(scope),
                "status": status_code,
                "duration_ms": round((self.clock() - start) * 1000, 1),
                "client": client[0] if client else UNKNOWN_CLIENT,
            }
            access_logger.info(
                " ".join(f"{key}={value}" for key, value in fields.items()),
                extra={"http": fields},
            )


# ---------------------------------------------------------------- metrics


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
    context.extras["call_counts"] = _CallCounts()
    return metrics


def default_middleware(
    context: AppContext, metrics: ServerMetrics
) -> list[tuple[Callable[..., ASGIApp], dict[str, Any]]]:
    """Access log, request metrics and rate limits, outermost first."""
    middleware: list[tuple[Callable[..., ASGIApp], dict[str, Any]]] = [
        (AccessLogMiddleware, {}),
        (RequestMetricsMiddleware, {"metrics": metrics}),
    ]
    limits = RequestLimits.scaled(context.settings.rate_limit_scale)
    if not limits.is_off:
        middleware.append((RateLimitMiddleware, {"context": context, "limits": limits}))
    return middleware


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics (text format; OpenMetrics if the ``Accept`` header asks for it)."""
    context = get_context(request)
    metrics: ServerMetrics = context.extras[METRICS_EXTRA]
    call_counts: _CallCounts = context.extras["call_counts"]
    await call_counts.refresh(context, metrics)
    body, content_type = render(metrics.registry, request.headers.get("accept"))
    return Response(body, media_type=content_type)
