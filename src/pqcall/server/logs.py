"""What the server writes to its logs, and what it never writes.

- :class:`AccessLogMiddleware`: one INFO line per request (method, route template,
  status, latency, client address) on the ``pqcall.server.access`` logger; never
  paths, query strings, headers or bodies, so no token, challenge or signature
  reaches a log.
- :class:`RedactSecretsFilter` on uvicorn's own loggers
  (:func:`install_log_redaction`): a ``?token=`` in a logged WebSocket path shows
  as ``[redacted]``.
- :func:`quiet_access_log`: without ``pqcall server --access-log``, neither the
  access lines nor uvicorn's per-WebSocket chatter are written.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pqcall.server.metrics import route_template
from pqcall.server.ratelimit import UNKNOWN_CLIENT

access_logger = logging.getLogger("pqcall.server.access")

SECRET_QUERY_PATTERN = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']+")
REDACTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# what uvicorn logs at INFO for every WebSocket: per-connection chatter, like an access log
WEBSOCKET_CHATTER = re.compile(r'"WebSocket .*" \[accepted\]|^connection (?:open|closed)$')


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


class DropWebSocketChatter(logging.Filter):
    """Drops uvicorn's ``"WebSocket /events" [accepted]`` and ``connection open/closed`` lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a per-connection line, True for everything else."""
        return WEBSOCKET_CHATTER.search(record.getMessage()) is None


def quiet_access_log() -> None:
    """No access lines and no per-WebSocket lines; warnings and errors still show."""
    access_logger.setLevel(logging.WARNING)
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropWebSocketChatter) for f in logger.filters):
        logger.addFilter(DropWebSocketChatter())


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
