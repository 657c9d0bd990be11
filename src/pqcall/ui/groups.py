"""The browser UI's group calls: start one with several contacts, invite, ring, roster, leave.

:class:`GroupControl` acts on the phone's group calls
(:class:`~pqcall.client.group_call.GroupCall`) for the page and builds
``State.group`` (:meth:`GroupControl.view`): the call shown (joined, joining, or
the first invitation ringing), each member with their state, trust badge, mute
state and speaking indicator, the group code, and the invitations ringing
besides. ``State.group_last`` is how the last group call ended here.
:func:`add_routes` adds the actions to the token-protected ``/api`` router, each
answering the new state:

- ``POST /api/group/call {"names": [...]}``: a group call with everyone named
  (at least two; one name is a 1:1 call, ``/api/call``);
- ``POST /api/group/invite {"name"}``: one more person, during the call;
- ``POST /api/group/accept {"call_id"?}``, ``/api/group/decline {"call_id"?}``:
  an invitation (the one shown when no id is given);
- ``POST /api/group/leave``, ``POST /api/group/mute {"muted"}``.

Speaking is measured on this phone from the decoded audio, mute is what each
member's phone said over its pairwise channel (:mod:`pqcall.client.group_speaking`).
While a group call is shown, the state is pushed every :data:`TICK_S` when who
speaks (or anything else in the roster) changed. Decision 0620 says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone
from pqcall.exceptions import (
    CallError,
    DeviceError,
    KeyChangedError,
    KeystoreError,
    PqcallError,
    ServerError,
    UnknownUser,
)
from pqcall.signaling import usernames
from pqcall.signaling.group_messages import MAX_GROUP_MEMBERS
from pqcall.ui.errors import UiError
from pqcall.ui.hub import Hub

if TYPE_CHECKING:
    from pqcall.client.group_call import GroupCall

TICK_S = 0.25
"""How often the roster is looked at for a change to push (speaking comes and goes)."""
LIVE = ("joining", "active")


class GroupControl:
    """The phone's group calls, as the page controls and shows them.

    Args:
        hub: the phone, notifications, background work.
        media: the media options of the next call (the controller's, which the page changes).
    """

    def __init__(self, hub: Hub, media: Callable[[], MediaOptions]) -> None:
        self._hub = hub
        self._media = media
        self.call: GroupCall | None = None  # the call we are in (joining or joined)
        self.invites: list[GroupCall] = []  # invitations ringing here, oldest first
        self.muted = False  # what the user wants in the current group call
        self.last: dict[str, Any] | None = None  # how the last group call ended here
        self._shown: object = None  # the roster's look at the last push

    @property
    def in_call(self) -> bool:
        """Whether we are in a group call (joining or joined)."""
        return self.call is not None and self.call.state in LIVE

    # ------------------------------------------------------------------ actions

    async def start(self, names: list[str]) -> None:
        """A group call with everyone in ``names`` invited (returns once we are joined).

        Raises:
            UiError: 400 fewer than two names or a bad name or device, 404 unknown
                user, 409 in a call already or a key changed (``key_changed``), 502 server.
        """
        phone = self._hub.require_phone()
        try:
            peers = list(dict.fromkeys(usernames.normalize(name) for name in names))
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        if len(peers) < 2:
            raise UiError(400, "choose at least two people for a group call (one: a call)")
        if len(peers) >= MAX_GROUP_MEMBERS:
            raise UiError(400, f"a group call has at most {MAX_GROUP_MEMBERS} people")
        if self.in_call or phone.current_call is not None:
            raise UiError(409, "already in a call")
        self.last = None
        self.muted = False
        with _errors(phone):
            call = await phone.group_call(peers, media=self._media())
        self._adopt(call)
        self._decline_ringing()

    async def invite(self, name: str) -> None:
        """Invite ``name`` into the current group call.

        Raises:
            UiError: 409 not in a group call or a key changed, 404 unknown user, 400 bad name.
        """
        phone = self._hub.require_phone()
        call = self._require_call()
        try:
            peer = usernames.normalize(name)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        if any(m.name == peer and m.state in ("invited", "joined") for m in call.view.members):
            raise UiError(409, f"{peer} is in the call already")
        with _errors(phone):
            await call.invite(peer)
        self._hub.notify()

    async def accept(self, call_id: str | None = None) -> None:
        """Join the invitation ``call_id`` (None: the one shown).

        Raises:
            UiError: 409 no such invitation, in a call already, or it could not be joined.
        """
        phone = self._hub.require_phone()
        invite = self._invite(call_id)
        if self.in_call or phone.current_call is not None:
            raise UiError(409, "already in a call: leave it first")
        self.invites.remove(invite)
        self._decline_ringing()
        self.last = None
        self.muted = False
        self.call = invite
        self._hub.notify()
        try:
            await invite.accept()
        except PqcallError as exc:
            self.call = None
            raise UiError(409, str(exc)) from None
        finally:
            self._hub.notify()
        self._hub.spawn(self._follow(invite), "ui group call")

    async def decline(self, call_id: str | None = None) -> None:
        """Decline the invitation ``call_id`` (None: the one shown).

        Raises:
            UiError: 409 no such invitation.
        """
        invite = self._invite(call_id)
        self.invites.remove(invite)
        try:
            await invite.decline()
        except PqcallError as exc:
            raise UiError(502, str(exc)) from None
        finally:
            self._hub.notify()

    async def leave(self) -> None:
        """Leave the current group call.

        Raises:
            UiError: 409 not in a group call.
        """
        call = self._require_call()
        await call.leave()
        self._ended(call)

    async def set_muted(self, muted: bool) -> None:
        """Send silence (and tell the others) until the call ends or the user unmutes.

        Raises:
            UiError: 409 not in a group call.
        """
        call = self._require_call()
        self.muted = muted
        call.set_muted(muted)
        self._hub.notify()

    # ------------------------------------------------------------------ background

    async def watch_invites(self, phone: Phone) -> None:
        """Ring for each group invitation, until cancelled."""
        while True:
            call = await phone.next_group_invite()
            if call.is_ended:
                continue
            self.invites.append(call)
            self._hub.spawn(self._ring_until_answered(call), "ui group invite")
            self._hub.notify()

    async def watch(self) -> None:
        """Push the state when the roster changes (who speaks, who joined), until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            call = self.call
            if call is not None and call.state == "active" and _everyone_else_gone(call):
                await call.leave()  # as the CLI does: nobody left to talk to
                self._ended(call, _why_alone(call))
            look = self._look()
            if look != self._shown:
                self._shown = look
                self._hub.notify()

    async def _ring_until_answered(self, call: GroupCall) -> None:
        await call.wait_ended()
        if call in self.invites:  # it rang out, or the call ended, before we answered
            self.invites.remove(call)
            self.last = _ending(call, call.reason)
            self._hub.notify()

    async def _follow(self, call: GroupCall) -> None:
        await call.wait_ended()
        self._ended(call)

    def _adopt(self, call: GroupCall) -> None:
        self.call = call
        self._hub.spawn(self._follow(call), "ui group call")
        self._hub.notify()

    def _ended(self, call: GroupCall, reason: str | None = None) -> None:
        if self.call is call:
            self.call = None
            self.muted = False
            self.last = _ending(call, reason or call.reason)
            self._hub.notify()

    def _decline_ringing(self) -> None:
        """We are in a group call now: the other invitations are answered busy."""
        ringing, self.invites = self.invites, []
        for invite in ringing:
            self._hub.spawn(invite.decline(busy=True), "ui group busy")

    def _require_call(self) -> GroupCall:
        self._hub.require_phone()
        if self.call is None or self.call.state not in LIVE:
            raise UiError(409, "not in a group call")
        return self.call

    def _invite(self, call_id: str | None) -> GroupCall:
        self._hub.require_phone()
        for invite in self.invites:
            if call_id is None or invite.call_id == call_id:
                return invite
        raise UiError(409, "no group call invitation rings")

    # ------------------------------------------------------------------ the view

    def view(self, phone: Phone | None) -> dict[str, Any] | None:
        """``State.group``: the call we are in, else the first invitation ringing, or None."""
        call = self.call if self.call is not None else (self.invites[0] if self.invites else None)
        if phone is None or call is None:
            return None
        return {
            **call_view(call, phone, muted=self.muted),
            "invites": [invite_view(invite) for invite in self.invites if invite is not call],
        }

    def _look(self) -> object:
        """What the roster shows, cheaply (no statistics): pushed when it changes."""
        call = self.call if self.call is not None else (self.invites[0] if self.invites else None)
        if call is None:
            return None
        media = call.media
        members = []
        for m in call.view.members:
            peer = call.peers.get(m.name)
            speaking = (
                media is not None and peer is not None and media.speaking.speaking(peer.sender_id)
            )
            muted = peer is not None and peer.muted
            members.append(
                (m.name, m.state, speaking, muted, peer is not None and peer.established)
            )
        keys = tuple(call.joined_names())
        return (
            call.call_id,
            call.state,
            call.group_code,
            members,
            keys,
            len(self.invites),
            self.muted,
        )


def invite_view(call: GroupCall) -> dict[str, Any]:
    """A ringing invitation: who invites, with whom."""
    me = call.context.username
    inviter = next((m.invited_by for m in call.view.members if m.name == me), None)
    return {
        "call_id": call.call_id,
        "creator": call.view.creator,
        "inviter": inviter or call.view.creator,
        "others": [m.name for m in call.view.members if m.name != me],
    }


def call_view(call: GroupCall, phone: Phone, *, muted: bool) -> dict[str, Any]:
    """The group call as the page shows it (``State.group`` without ``invites``)."""
    from pqcall.client.group_summary import group_summary

    summary = group_summary(call)
    media = call.media
    members: list[dict[str, Any]] = [
        {
            "name": call.context.username,
            "me": True,
            "state": "joined" if call.state == "active" else call.state,
            "trust": None,
            "verified": None,
            "vouched": True,
            "muted": muted,
            "speaking": None,
            "has_key": None,
            "loss_percent": None,
            "invited_by": None,
        }
    ]
    for entry in summary["participants"]:
        name = entry["name"]
        peer = call.peers.get(name)
        member = next((m for m in call.view.members if m.name == name), None)
        speaking = (
            media is not None
            and peer is not None
            and entry["state"] == "joined"
            and media.speaking.speaking(peer.sender_id)
        )
        members.append(
            {
                "name": name,
                "me": False,
                "state": entry["state"],
                "trust": _trust(phone, name, entry["trust"]),
                "verified": _verified(phone, name),
                "vouched": entry["vouched"],
                "muted": bool(peer is not None and peer.muted and entry["state"] == "joined"),
                "speaking": speaking,
                "has_key": entry["has_key"],
                "loss_percent": entry["loss_percent"],
                "invited_by": member.invited_by if member is not None else None,
            }
        )
    return {
        **invite_view(call),
        "state": call.state,
        "reason": call.reason,
        "incoming": call.incoming,
        "started": call.started,
        "joined": call.joined_at,
        "muted": muted,
        "members": members,
        "group_code": call.group_code,
        "roster_agreed": list(call.roster.agreed),
        "path": call.path,
    }


def _trust(phone: Phone, name: str, trust: str | None) -> str | None:
    """``verified``, ``key saved``, ``new key`` (first contact, this call), None (no channel)."""
    if _verified(phone, name):
        return "verified"
    if trust is None:
        return None
    return "new key" if trust == "new" else "key saved"


def _verified(phone: Phone, name: str) -> bool:
    try:
        contact = phone.contacts.get(name)
    except (KeystoreError, usernames.InvalidUsername):
        return False
    return contact is not None and contact.verified and contact.key_changed is None


def _everyone_else_gone(call: GroupCall) -> bool:
    others = [m for m in call.view.members if m.name != call.context.username]
    return bool(others) and not any(m.state in ("invited", "joined") for m in others)


def _why_alone(call: GroupCall) -> str:
    """Why nobody else is in the call: "everyone else left", or each one's state."""
    others = [m for m in call.view.members if m.name != call.context.username]
    if all(m.state in ("left", "gone") for m in others):
        return "everyone else left"
    return "; ".join(f"{m.name}: {m.state.replace('_', ' ')}" for m in others)


def _ending(call: GroupCall, reason: str | None) -> dict[str, Any]:
    """``State.group_last``: who invited, who else was in it, whether we joined, why it ended."""
    return {
        **invite_view(call),
        "reason": reason,
        "joined": call.joined_at,
        "ended": call.ended_at or time.time(),
    }


@contextlib.contextmanager
def _errors(phone: Phone) -> Iterator[None]:
    """The phone's refusals as the page's errors (status and one sentence)."""
    try:
        yield
    except KeyChangedError as exc:
        raise UiError(409, str(exc), key_changed=True) from None
    except UnknownUser as exc:
        raise UiError(404, str(exc)) from None
    except CallError as exc:
        raise UiError(409, str(exc)) from None
    except DeviceError as exc:
        raise UiError(400, str(exc)) from None
    except ServerError as exc:
        raise UiError(502, str(exc)) from None


# ---------------------------------------------------------------------- routes


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GroupCallBody(_Body):
    """``POST /api/group/call``."""

    names: list[str] = Field(min_length=1, max_length=MAX_GROUP_MEMBERS)


class GroupNameBody(_Body):
    """``POST /api/group/invite``."""

    name: str = Field(max_length=64)


class GroupIdBody(_Body):
    """``POST /api/group/accept`` and ``/api/group/decline`` (no id: the invitation shown)."""

    call_id: str | None = Field(default=None, max_length=64)


class GroupMuteBody(_Body):
    """``POST /api/group/mute``."""

    muted: bool


def add_routes(api: APIRouter, groups: GroupControl, state: Callable[[], dict[str, Any]]) -> None:
    """The group-call actions on ``api`` (token-protected); each answers ``state()``."""

    @api.post("/group/call")
    async def group_call(body: GroupCallBody) -> dict[str, Any]:
        await groups.start(body.names)
        return state()

    @api.post("/group/invite")
    async def group_invite(body: GroupNameBody) -> dict[str, Any]:
        await groups.invite(body.name)
        return state()

    @api.post("/group/accept")
    async def group_accept(body: GroupIdBody) -> dict[str, Any]:
        await groups.accept(body.call_id)
        return state()

    @api.post("/group/decline")
    async def group_decline(body: GroupIdBody) -> dict[str, Any]:
        await groups.decline(body.call_id)
        return state()

    @api.post("/group/leave")
    async def group_leave() -> dict[str, Any]:
        await groups.leave()
        return state()

    @api.post("/group/mute")
    async def group_mute(body: GroupMuteBody) -> dict[str, Any]:
        await groups.set_muted(body.muted)
        return state()


__all__ = ["GroupControl", "add_routes", "call_view", "invite_view"]
