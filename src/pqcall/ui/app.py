"""The browser UI's web app: ``/api`` over a :class:`~pqcall.ui.controller.Controller`, the page.

Every ``/api`` request carries the process's random token in the header
``X-Pqcall-Token`` (the WebSocket and the one-time download take it as
``?token=``); without it the answer is 401. The page itself (``static/``)
loads without a token. It gets the token by trading the single-use code of its
link (``#code=``, see :mod:`pqcall.ui.bootstrap`) at ``POST /api/session``, so
the token is never in a URL given to a browser. Every answer carries a strict
Content-Security-Policy (no inline script or style, nothing from elsewhere).
Errors are ``{"error": "one sentence"}``. The routes are listed in
``docs/cli.md#ui``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.websockets import WebSocketDisconnect

from pqcall.client.file_names import sanitize_name
from pqcall.crypto.keystore import WeakPassphrase, check_passphrase_strength
from pqcall.ui.bootstrap import BootstrapCodes
from pqcall.ui.controller import Controller, UiError
from pqcall.ui.groups import add_routes as add_group_routes
from pqcall.ui.linked_devices import add_routes as add_account_routes
from pqcall.ui.screening import add_routes as add_screening_routes

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
"""The page: index.html, app.js (and the modules it imports), style.css."""
TOKEN_HEADER = "X-Pqcall-Token"
"""The header every ``/api`` request carries the token in."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
"""Host headers accepted (a DNS-rebinding page names another host)."""
WS_POLICY_VIOLATION = 1008
"""WebSocket close code for a missing or wrong token (RFC 6455 section 7.4.1)."""
UPLOAD_COPY_BYTES = 1024 * 1024
"""Bytes copied per step from the browser's upload to the private folder."""
NO_STATIC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pqcall</title></head>
<body><main><h1>pqcall</h1>
<p role="alert">The page's files are missing from this installation;
the API at /api is running.</p></main></body></html>
"""
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",  # the page's own scripts: no inline script, no eval
        "style-src 'self'",  # style.css only: no inline style
        "img-src 'self' data:",  # the empty favicon is a data: URL
        "connect-src 'self'",  # fetch and the same-origin WebSocket
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
"""What the page may load and run (docs/threat-model.md): only its own files."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SessionBody(_Body):
    """``POST /api/session``: the code of a one-time link."""

    code: str = Field(max_length=128)


class UnlockBody(_Body):
    """``POST /api/unlock``."""

    passphrase: str = Field(max_length=1024)


class RegisterBody(_Body):
    """``POST /api/register``."""

    name: str = Field(max_length=64)
    server_url: str = Field(default="", max_length=2048)
    passphrase: str = Field(max_length=1024)
    weak_passphrase: bool = False
    """Keep a new passphrase that fails the strength check."""


class NameBody(_Body):
    """``POST /api/call`` and ``POST /api/contacts``."""

    name: str = Field(max_length=64)


class MuteBody(_Body):
    """``POST /api/call/mute``."""

    muted: bool


class SasBody(_Body):
    """``POST /api/call/sas``."""

    matches: bool


class DevicesBody(_Body):
    """``POST /api/devices``: None keeps the current one."""

    audio_in: str | None = Field(default=None, max_length=4096)
    audio_out: str | None = Field(default=None, max_length=4096)
    echo_cancel: bool | None = None
    noise_suppression: bool | None = None
    auto_gain: bool | None = None
    voice_disguise: str | None = Field(default=None, max_length=64)
    """A preset of :data:`pqcall.media.disguise.PRESETS`, or ``"off"``."""
    rescan: bool = False
    """List the devices again (a headset plugged in since)."""


def create_app(
    controller: Controller,
    token: str,
    *,
    bootstrap: BootstrapCodes | None = None,
    clock: Callable[[], float] = time.monotonic,
    static_dir: Path = STATIC_DIR,
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS,
) -> FastAPI:
    """The web app of ``pqcall ui`` for ``controller``, guarded by ``token``.

    Args:
        controller: the softphone (started by the caller).
        token: the secret the page must present.
        bootstrap: the codes of one-time links that ``POST /api/session``
            trades for ``token`` (None: no link works).
        clock: the clock ``bootstrap``'s codes were issued on.
        static_dir: where the page's files are.
        allowed_hosts: accepted ``Host`` headers (without port).
    """
    app = FastAPI(title="pqcall ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-store"
        return response

    # ---------------------------------------------------------------- errors

    @app.exception_handler(UiError)
    async def ui_error(request: Request, exc: UiError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    # ---------------------------------------------------------------- the token

    def is_token(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(
            candidate.encode("utf-8"), token.encode("utf-8")
        )

    def require_token(request: Request) -> None:
        if not is_token(request.headers.get(TOKEN_HEADER)):
            raise UiError(401, "missing or wrong token: open the link printed by pqcall ui")

    codes = bootstrap if bootstrap is not None else BootstrapCodes()

    @app.post("/api/session")
    async def session(body: SessionBody) -> dict[str, str]:
        # the one route without the token: a link's single-use code buys it
        if not codes.redeem(body.code, now=clock()):
            raise UiError(
                401, "this link was used already or has expired: get a new one from pqcall ui"
            )
        return {"token": token}

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])
    add_screening_routes(api, controller)  # waiting calls, block list, strangers
    add_group_routes(api, controller.groups, controller.state)  # group calls (ui/groups.py)
    add_account_routes(api, controller, controller.recovery_words)  # ui/linked_devices.py

    # ---------------------------------------------------------------- state and account

    @api.get("/state")
    async def get_state() -> dict[str, Any]:
        return controller.state()

    @api.post("/unlock")
    async def unlock(body: UnlockBody) -> dict[str, Any]:
        await controller.unlock(body.passphrase)
        return controller.state()

    @api.post("/register")
    async def register(body: RegisterBody) -> dict[str, Any]:
        if not body.weak_passphrase and not controller.home.has_account():
            try:
                check_passphrase_strength(
                    body.passphrase, user_inputs=(body.name,), override="tick 'keep it'"
                )
            except WeakPassphrase as exc:
                raise UiError(400, str(exc)) from None
        await controller.register(body.name, body.server_url, body.passphrase)
        return controller.state()

    # ---------------------------------------------------------------- calls

    @api.post("/call")
    async def call(body: NameBody) -> dict[str, Any]:
        await controller.call(body.name)
        return controller.state()

    @api.post("/call/accept")
    async def accept() -> dict[str, Any]:
        await controller.accept()
        return controller.state()

    @api.post("/call/reject")
    async def reject() -> dict[str, Any]:
        await controller.reject()
        return controller.state()

    @api.post("/call/hangup")
    async def hangup() -> dict[str, Any]:
        await controller.hangup()
        return controller.state()

    @api.post("/call/mute")
    async def mute(body: MuteBody) -> dict[str, Any]:
        await controller.set_muted(body.muted)
        return controller.state()

    @api.post("/call/sas")
    async def sas(body: SasBody) -> dict[str, Any]:
        await controller.confirm_sas(body.matches)
        return controller.state()

    @api.post("/history/seen")
    async def history_seen() -> dict[str, Any]:
        controller.mark_missed_seen()
        return controller.state()

    @api.post("/warnings/dismiss")
    async def dismiss_warnings() -> dict[str, Any]:
        controller.dismiss_warnings()
        return controller.state()

    # ---------------------------------------------------------------- contacts

    @api.post("/contacts")
    async def add_contact(body: NameBody) -> dict[str, Any]:
        await controller.add_contact(body.name)
        return controller.state()

    @api.get("/contacts/{name}/safety-number")
    async def safety_number(name: str) -> dict[str, Any]:
        return controller.safety_number(name)

    @api.post("/contacts/{name}/verify")
    async def verify(name: str) -> dict[str, Any]:
        await controller.verify_contact(name)
        return controller.state()

    @api.post("/contacts/{name}/accept-key")
    async def accept_key(name: str) -> dict[str, Any]:
        await controller.accept_key(name)
        return controller.state()

    # ---------------------------------------------------------------- devices

    @api.post("/devices")
    async def devices(body: DevicesBody) -> dict[str, Any]:
        if body.rescan:
            await controller.rescan_devices()
        await controller.set_devices(body.audio_in, body.audio_out)
        controller.set_processing(
            echo_cancel=body.echo_cancel,
            noise_suppression=body.noise_suppression,
            auto_gain=body.auto_gain,
            voice_disguise=body.voice_disguise,
        )
        return controller.state()

    # ---------------------------------------------------------------- files

    @api.post("/files/send", status_code=202)
    async def send_file(request: Request) -> dict[str, Any]:
        async with request.form(max_files=1, max_fields=4) as form:
            to, upload = form.get("to"), form.get("file")
            if not isinstance(to, str) or not to:
                raise UiError(400, "say who the file is for (field to)")
            if not isinstance(upload, UploadFile):
                raise UiError(400, "attach the file (field file)")
            if controller.phone is None:
                raise UiError(409, "unlock the account first")
            folder = controller.uploads_dir()
            path = folder / sanitize_name(upload.filename or "")
            try:
                await asyncio.to_thread(_copy, upload, path)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        transfer_id = await controller.send_file(to, path, cleanup=folder)
        return {"id": transfer_id}

    @api.post("/files/{file_id}/receive")
    async def receive_file(file_id: str) -> dict[str, Any]:
        return await controller.receive_file(file_id)

    app.include_router(api)

    @app.get("/api/files/{file_id}/download")
    async def download(request: Request, file_id: str) -> FileResponse:
        # a link cannot set a header: the token may come as ?token= here
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token")
        if not is_token(given):
            raise UiError(401, "missing or wrong token: open the link printed by pqcall ui")
        path, name = controller.take_download(file_id)
        return FileResponse(path, filename=name, media_type="application/octet-stream")

    # ---------------------------------------------------------------- live state

    @app.websocket("/api/ws")
    async def live_state(websocket: WebSocket) -> None:
        if not is_token(websocket.query_params.get("token")):
            await websocket.close(code=WS_POLICY_VIOLATION, reason="missing or wrong token")
            return
        await websocket.accept()
        async with controller.subscription() as subscription:

            async def push() -> None:
                while True:
                    await websocket.send_json({"type": "state", "state": controller.state()})
                    await subscription.wait()

            pusher = asyncio.create_task(push(), name="ui websocket")
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
            except WebSocketDisconnect:
                pass
            finally:
                pusher.cancel()
                await asyncio.gather(pusher, return_exceptions=True)

    # ---------------------------------------------------------------- the page

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = static_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(NO_STATIC_PAGE)

    if static_dir.is_dir():
        app.mount("/", StaticFiles(directory=static_dir), name="static")
    return app


def _copy(upload: UploadFile, path: Path) -> None:
    """Copy the browser's upload to ``path`` (0600, new), in a worker thread."""
    upload.file.seek(0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out, UPLOAD_COPY_BYTES)
