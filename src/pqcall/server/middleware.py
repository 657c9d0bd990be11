"""The server's ASGI middleware stack, and the rate-limit middleware in it.

:func:`default_middleware` is what :func:`pqcall.server.app.create_app` installs,
outermost first: the access log (:class:`~pqcall.server.logs.AccessLogMiddleware`),
request metrics (:class:`~pqcall.server.metrics.RequestMetricsMiddleware`), then
:class:`RateLimitMiddleware`: per client IP on every request, per account on
requests with a bearer token, and failed ``POST /auth/login`` attempts per client
IP (with several nodes and a Redis bus, each of the three is one bucket in Redis for
every node: :meth:`pqcall.server.bus.NodeLink.rate_check`, one round trip to Redis
per bucket asked; while Redis is away each node uses its own); a refusal is 429 with
``Retry-After`` and ``{"error": "too many requests, retry in N s"}``.
Nothing is counted per username: a login cannot be guessed (it
is a signature over a single-use challenge), so a flood of bad logins naming an
account slows only the addresses it comes from, never the account's owner.
The token buckets themselves are :mod:`pqcall.server.ratelimit` (sans-I/O).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import status
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pqcall.server.bus import node_link
from pqcall.server.context import AppContext
from pqcall.server.logs import AccessLogMiddleware
from pqcall.server.metrics import METRICS_EXTRA, RequestMetricsMiddleware, ServerMetrics
from pqcall.server.ratelimit import (
    LOGIN_FAILURES_PER_ADDRESS_LIMIT,
    PER_ACCOUNT_LIMIT,
    PER_IP_LIMIT,
    UNKNOWN_CLIENT,
    RateDecision,
    RateLimit,
    RateLimiter,
    client_key,
    retry_after_header,
)
from pqcall.signaling.messages import b64decode

logger = logging.getLogger(__name__)

MAX_CACHED_TOKENS = 100_000  # bearer token -> account id entries kept for the account limit
LOGIN_PATH = "/auth/login"


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


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The request rate limits of one server (None: that limit is off)."""

    per_ip: RateLimit | None = PER_IP_LIMIT
    """Every request and WebSocket handshake, by client address (IPv6 by /64)."""
    per_account: RateLimit | None = PER_ACCOUNT_LIMIT
    """Every request with a valid bearer token, by account."""
    login: RateLimit | None = LOGIN_FAILURES_PER_ADDRESS_LIMIT
    """Failed ``POST /auth/login`` attempts by client address (a login answered 200 is free)."""

    @classmethod
    def scaled(cls, scale: float) -> RequestLimits:
        """The default limits with rate and burst multiplied by ``scale`` (0: all off)."""
        if scale == 0:
            return cls(None, None, None)

        def times(limit: RateLimit) -> RateLimit:
            return RateLimit(limit.rate_per_s * scale, max(1.0, limit.burst * scale))

        return cls(
            times(PER_IP_LIMIT), times(PER_ACCOUNT_LIMIT), times(LOGIN_FAILURES_PER_ADDRESS_LIMIT)
        )

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
    to its account once, with one storage lookup, and cached), then failed logins
    (``POST /auth/login``: refused while the address's failure bucket is empty; a
    login not answered 200 takes one token from it). A request refused by one limit
    takes nothing from the later ones. A refused WebSocket handshake gets an HTTP 429 if the server
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
        client = scope.get("client")
        address = client_key(client[0]) if client else UNKNOWN_CLIENT
        # per client address
        if self.per_ip is not None:
            decision = await self._bucket(self.per_ip, address, now)
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
                decision = await self._bucket(self.per_account, f"account:{account_id}", now)
                if not decision.allowed:
                    await self._refuse(scope, receive, send, "account", decision.retry_after_s)
                    return
        # failed logins, per client address
        if self.login is not None and scope["method"] == "POST" and scope["path"] == LOGIN_PATH:
            await self._login(scope, receive, send, address, now)
            return
        await self.app(scope, receive, send)

    async def _login(
        self, scope: Scope, receive: Receive, send: Send, address: str, now: float
    ) -> None:
        """Run a login; refuse it first if its address has failed too often, charge a failure."""
        assert self.login is not None
        key = f"login-failures:{address}"
        decision = await self._login_bucket(key, now, peek=True)
        if not decision.allowed:
            await self._refuse(scope, receive, send, "login", decision.retry_after_s)
            return
        status_code = 0

        async def note_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, note_status)
        finally:
            if status_code != status.HTTP_200_OK:  # junk, a bad signature, a used challenge
                await self._login_bucket(key, self.clock(), peek=False)

    async def _bucket(self, limiter: RateLimiter, key: str, now: float) -> RateDecision:
        """A request bucket: shared by every node through the bus (Redis), else ours."""
        link = node_link(self.context)
        if link is not None:
            shared = await link.rate_check(f"requests:{key}", limiter.limit, now, peek=False)
            if shared is not None:
                return shared
        return limiter.check(key, now)

    async def _login_bucket(self, key: str, now: float, *, peek: bool) -> RateDecision:
        """The failed-login bucket: shared by every node through the bus (Redis), else ours."""
        assert self.login is not None
        link = node_link(self.context)
        if link is not None:
            shared = await link.rate_check(key, self.login.limit, now, peek=peek)
            if shared is not None:
                return shared
        return self.login.peek(key, now) if peek else self.login.check(key, now)

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
