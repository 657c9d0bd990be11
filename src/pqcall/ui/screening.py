"""The page's call screening: waiting calls, the block list and "silence strangers".

:func:`screening_view` is ``State.screening``: the ringing calls besides the one
the page shows first (``waiting``), the blocked names, and the setting.
:func:`add_routes` adds the actions to the token-protected ``/api`` router:

- ``POST /api/call/answer {"call_id"}`` and ``/api/call/decline {"call_id"}``: a
  chosen ringing call (the page's Accept/Reject act on the first one);
- ``POST /api/block {"name"}``: block ``name`` and decline their ringing calls;
  ``POST /api/unblock {"name"}``;
- ``POST /api/silence-strangers {"on"}``: the home's setting.

Each answers the new state, as the other actions do. The rules themselves live
in :mod:`pqcall.client.phone` and :mod:`pqcall.client.screening`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from pqcall.client.call import Call
from pqcall.client.phone import Phone
from pqcall.exceptions import CallError, KeystoreError
from pqcall.signaling.usernames import InvalidUsername, normalize
from pqcall.ui.errors import UiError

logger = logging.getLogger(__name__)


class ScreeningHost(Protocol):
    """What the routes need from the controller."""

    @property
    def phone(self) -> Phone | None: ...
    def notify(self) -> None: ...
    def state(self) -> dict[str, Any]: ...


class CallIdBody(BaseModel):
    """``POST /api/call/answer`` and ``/api/call/decline``."""

    model_config = ConfigDict(extra="ignore")
    call_id: str = Field(max_length=64)


class BlockBody(BaseModel):
    """``POST /api/block`` and ``/api/unblock``."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(max_length=64)


class SilenceBody(BaseModel):
    """``POST /api/silence-strangers``."""

    model_config = ConfigDict(extra="ignore")
    on: bool


def screening_view(phone: Phone | None) -> dict[str, Any]:
    """``State.screening``: ``waiting`` calls, ``blocked`` names, ``silence_strangers``."""
    if phone is None:
        return {"waiting": [], "blocked": [], "silence_strangers": False}
    try:
        state = phone.screening.load()
        blocked, silence = sorted(state.blocked), state.silence_strangers
    except KeystoreError as exc:
        logger.warning("cannot read the screening settings: %s", exc)
        blocked, silence = [], False
    current = phone.current_call
    waiting = [
        {"call_id": call.call_id, "peer": call.peer, "peer_trust": str(call.peer_trust)}
        for call in phone.ringing_calls
        if call is not current
    ]
    return {"waiting": waiting, "blocked": blocked, "silence_strangers": silence}


def add_routes(api: APIRouter, host: ScreeningHost) -> None:
    """Add the screening actions to ``api`` (the ``/api`` router)."""

    @api.post("/call/answer")
    async def answer(body: CallIdBody) -> dict[str, Any]:
        call = _ringing(host, body.call_id)
        try:
            await call.accept()
        except CallError as exc:
            raise UiError(409, str(exc)) from None
        host.notify()
        return host.state()

    @api.post("/call/decline")
    async def decline(body: CallIdBody) -> dict[str, Any]:
        call = _ringing(host, body.call_id)
        try:
            await call.reject()
        except CallError as exc:
            raise UiError(409, str(exc)) from None
        return host.state()

    @api.post("/block")
    async def block(body: BlockBody) -> dict[str, Any]:
        phone, name = _phone(host), _name(body.name)
        _saved(lambda: phone.screening.block(name))
        for call in phone.ringing_calls:
            if call.peer == name:
                await call.reject()
        host.notify()
        return host.state()

    @api.post("/unblock")
    async def unblock(body: BlockBody) -> dict[str, Any]:
        phone, name = _phone(host), _name(body.name)
        _saved(lambda: phone.screening.unblock(name))
        host.notify()
        return host.state()

    @api.post("/silence-strangers")
    async def silence_strangers(body: SilenceBody) -> dict[str, Any]:
        phone = _phone(host)
        _saved(lambda: phone.screening.set_silence_strangers(body.on))
        host.notify()
        return host.state()


def _phone(host: ScreeningHost) -> Phone:
    phone = host.phone
    if phone is None:
        raise UiError(409, "the phone is locked")
    return phone


def _saved(change: Callable[[], object]) -> None:
    try:
        change()
    except KeystoreError as exc:
        raise UiError(409, str(exc)) from None


def _name(name: str) -> str:
    try:
        return normalize(name)
    except InvalidUsername as exc:
        raise UiError(400, str(exc)) from None


def _ringing(host: ScreeningHost, call_id: str) -> Call:
    for call in _phone(host).ringing_calls:
        if call.call_id == call_id:
            return call
    raise UiError(409, "that call no longer rings")
