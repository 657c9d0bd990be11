"""The FastAPI application: ``create_app(settings)``.

Startup order (the lifespan): create the data directory, open storage and
migrate it, start each :class:`~pqcall.server.context.Component` in order.
Shutdown runs the same steps backwards. Hook points, for the parts that plug
in later:

- ``components``: more long-lived tasks; they get the :class:`AppContext` at start;
- ``routers``: more ``APIRouter`` objects;
- ``middleware``: ASGI middleware classes with keyword options, outermost first.

Always installed: the media relay and, if enabled, the mDNS announcer as the
first components (:mod:`pqcall.server.components`); ``GET /metrics``
(:mod:`pqcall.server.routes.metrics`); the access log, request metrics and rate
limits as the outermost middleware, inside the body limit
(:mod:`pqcall.server.middleware`). Also always installed: the call routes,
``GET /events`` and the file routes (:mod:`pqcall.server.routes.calls`,
:mod:`pqcall.server.routes.events`, :mod:`pqcall.server.routes.files`), with
the event hub, the call sweeper and the file sweeper as components after the
relay.

Every error the API returns is ``{"error": "<one sentence>"}`` with a 4xx
status for bad input (422 for a body or parameter that fails its schema, 413
for an oversized body), 503 or 507 with ``Retry-After`` when storage fails
(the database unreachable, the disk full: :mod:`pqcall.server.faults`, one
handler for every route), and 500 only for a bug in the server. ``GET /health``
answers 200 when the database answers and the data disk has room, else 503
with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pqcall import __version__
from pqcall.server import auth, faults
from pqcall.server.background import BackgroundTask
from pqcall.server.bus import NodeLink
from pqcall.server.call_sweeper import CallSweeper
from pqcall.server.components import default_components
from pqcall.server.context import AppContext, Clock, Component
from pqcall.server.file_sweeper import FileSweeper
from pqcall.server.group_service import GroupComponent
from pqcall.server.link_rendezvous import link_store
from pqcall.server.link_rendezvous import router as link_router
from pqcall.server.middleware import default_middleware
from pqcall.server.push import EventHub
from pqcall.server.routes import accounts, calls, devices, events, files, groups, metrics
from pqcall.server.settings import ServerSettings
from pqcall.server.storage import Storage
from pqcall.signaling.callstate import IllegalTransition
from pqcall.signaling.messages import ErrorResponse, HealthResponse
from pqcall.signaling.usernames import InvalidUsername

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 60.0

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in (
        (400, "bad request"),
        (401, "missing, invalid or expired credentials"),
        (404, "no such user"),
        (409, "conflict with the current state"),
        (413, "request body too large, or a file over its limit or quota"),
        (422, "the request does not match its schema"),
        (503, "the server cannot reach its database (or it is damaged); see Retry-After"),
        (507, "the server's disk is full; see Retry-After"),
    )
}

MiddlewareSpec = tuple[Callable[..., ASGIApp], dict[str, Any]]


def create_app(
    settings: ServerSettings,
    *,
    components: Iterable[Component] = (),
    routers: Iterable[APIRouter] = (),
    middleware: Sequence[MiddlewareSpec] = (),
    clock: Clock | None = None,
) -> FastAPI:
    """Build the server application.

    Args:
        settings: what to listen on, where the data lives, limits and timeouts.
        components: started after storage opens, stopped before it closes.
        routers: mounted after the built-in routes.
        middleware: ``(cls, options)`` pairs, outermost first, inside the body limit.
        clock: unix-seconds clock for every expiry and timestamp (tests move it).
    """
    context = AppContext(settings=settings)
    if clock is not None:
        context.clock = clock
    server_metrics = metrics.install_metrics(context)
    context.components.extend([faults.StorageWatch(), Housekeeper()])
    context.components.extend(default_components(settings))
    context.components.extend(
        [NodeLink(), EventHub(), CallSweeper(), FileSweeper(), GroupComponent()]
    )
    context.components.extend(components)

    app = FastAPI(
        title="pqcall signaling server",
        version=__version__,
        summary="Accounts, directory, calls and push events for pqcall softphones.",
        lifespan=_lifespan(context),
        responses=ERROR_RESPONSES,
    )
    app.state.context = context

    app.include_router(auth.router)
    app.include_router(accounts.router)
    app.include_router(devices.router)
    app.include_router(link_router)
    app.include_router(calls.router)
    app.include_router(events.router)
    app.include_router(files.router)
    app.include_router(groups.router)
    for router in routers:
        app.include_router(router)
    app.add_api_route(
        "/health", health, methods=["GET"], tags=["operations"], response_model=HealthResponse
    )
    app.include_router(metrics.router)

    _install_error_handlers(app)
    for cls, options in reversed([*default_middleware(context, server_metrics), *middleware]):
        app.add_middleware(cls, **options)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_request_bytes, streamed=files.STREAMED_PATHS
    )
    return app


def _lifespan(
    context: AppContext,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        settings = context.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage = await Storage.open(settings.db_url)
        context.attach_storage(storage)
        started: list[Component] = []
        try:
            for component in context.components:
                await component.start(context)
                started.append(component)
            logger.info("pqcall server %r ready", settings.server_name)
            yield
        finally:
            for component in reversed(started):
                try:
                    await component.stop()
                except Exception:
                    logger.exception("component %r failed to stop", component)
            context.attach_storage(None)
            await storage.close()
            logger.info("pqcall server stopped")

    return lifespan


async def health(request: Request) -> HealthResponse | JSONResponse:
    """200 when the database answers and the data disk has room; else 503 saying why."""
    context: AppContext = request.app.state.context
    problem = await faults.check_storage(context)
    if problem is not None:
        fault, detail = problem
        return error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"{fault.name}: {detail}",
            {"Retry-After": str(fault.retry_after_s)},
        )
    return HealthResponse(
        status="ok", version=__version__, server_name=context.settings.server_name
    )


class Housekeeper:
    """Deletes expired tokens, challenges and link requests every HOUSEKEEPING_INTERVAL_S."""

    def __init__(self, interval_s: float = HOUSEKEEPING_INTERVAL_S) -> None:
        self._interval_s = interval_s  # seconds between purges
        self._task = BackgroundTask("pqcall-housekeeper")  # the purge loop while running

    async def start(self, context: AppContext) -> None:
        self._task.start(self._run(context))

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self, context: AppContext) -> None:
        while True:
            try:
                await context.storage.logins.purge_expired(context.now())
                # link requests past their 10 minutes, sealed answers nobody collected included
                await link_store(context).purge_expired(context.now())
            except Exception:
                logger.exception("housekeeping failed")
            await asyncio.sleep(self._interval_s)


# ---------------------------------------------------------------- errors


def error_response(
    status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``{"error": message}`` with ``status_code``."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail)
        if exc.status_code == status.HTTP_404_NOT_FOUND and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif message == "There was an error parsing the body":
            message = "request body could not be parsed as JSON"
        elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT, describe_validation_error(exc.errors())
        )

    async def on_illegal_transition(request: Request, exc: Exception) -> JSONResponse:
        return error_response(status.HTTP_409_CONFLICT, str(exc))

    async def on_invalid_username(request: Request, exc: Exception) -> JSONResponse:
        return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        fault = faults.classify(exc)
        if fault is not None:  # storage failed: not a bug; one log line per change of state
            context: AppContext = request.app.state.context
            context.storage_status.failed(fault, faults.describe(exc))
            return faults.fault_response(fault)
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(IllegalTransition, on_illegal_transition)
    app.add_exception_handler(InvalidUsername, on_invalid_username)
    for storage_error in faults.STORAGE_ERRORS:  # handled here, not re-raised to uvicorn
        app.add_exception_handler(storage_error, on_bug)
    app.add_exception_handler(Exception, on_bug)


_WHERE = {"query": "query parameter ", "path": "path parameter ", "header": "header "}
_BODY_NOT_OBJECT = {"model_attributes_type", "dict_type", "model_type"}


def describe_validation_error(errors: Sequence[Any]) -> str:
    """One sentence for a list of pydantic/FastAPI validation errors (the first one)."""
    if not errors:
        return "request is not valid"
    first = errors[0]
    kind = first.get("type", "")
    loc = [str(part) for part in first.get("loc", ())]
    message = str(first.get("msg", "is not valid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message[:1].lower() + message[1:]
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        sentence = f"request body is not valid JSON: {reason}".rstrip(": ")
    elif loc == ["body"] and kind == "missing":
        sentence = "request body is missing"
    elif loc == ["body"] and isinstance(first.get("input"), bytes):
        sentence = "request body must be JSON (Content-Type: application/json)"
    elif loc == ["body"] and kind in _BODY_NOT_OBJECT:
        sentence = "request body must be a JSON object"
    else:
        prefix = _WHERE.get(loc[0], "") if loc else ""
        field = ".".join(loc[1:]) if loc and loc[0] in ("body", *_WHERE) else ".".join(loc)
        sentence = f"{prefix}{field}: {message}" if field else message
    more = len(errors) - 1
    if more:
        sentence += f" (and {more} more problem{'s' if more > 1 else ''})"
    return sentence


# ---------------------------------------------------------------- request size


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before reading; a
    chunked body is counted as it arrives and cut off at the limit. ``PUT``
    requests to a path that ``streamed`` matches in full pass untouched: their
    route streams the body to disk and enforces its own limit (file uploads).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: re.Pattern[str] | None = None):
        self.app = app  # the wrapped application
        self.max_bytes = max_bytes  # largest accepted body
        self.streamed = streamed  # PUT paths exempt from the limit

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.streamed is not None
            and scope["method"] == "PUT"
            and self.streamed.fullmatch(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                too_large = False  # the server refuses such a request itself
            if too_large:
                await error_response(status.HTTP_413_CONTENT_TOO_LARGE, self._too_large())(
                    scope, receive, send
                )
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, self._too_large()
                    )
            return message

        await self.app(scope, limited_receive, send)
