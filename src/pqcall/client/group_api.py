"""The server's ``/group/*`` routes as one account uses them (a companion of ``ServerApi``).

Requests go through the same login and token handling as
:class:`~pqcall.client.api.ServerApi` (a refused token is replaced once); errors
raise the same :class:`~pqcall.exceptions.ServerError` subclasses.
"""

from __future__ import annotations

from pqcall.client.api import ServerApi
from pqcall.signaling.group_messages import (
    CreateGroup,
    DeclineGroup,
    GroupAction,
    GroupDetail,
    GroupMessageItem,
    GroupMessagesSent,
    GroupView,
    Invitation,
    InviteToGroup,
    SendGroupMessage,
    SendGroupMessages,
)


class GroupApi:
    """``/group/*`` for the account logged in by ``api``."""

    def __init__(self, api: ServerApi) -> None:
        self.api = api
        self._login = api._login  # same token, same re-login
        self._http = api._http

    async def create(self, call_id: str, invitees: list[Invitation]) -> GroupDetail:
        """Start a group call; we are joined (the answer has our grant)."""
        body = CreateGroup(call_id=call_id, invitees=invitees)
        response = await self._login.request("POST", "/group/create", body=body)
        return self._http.parse(GroupDetail, response, "POST /group/create")

    async def invite(self, call_id: str, invitee: Invitation) -> GroupView:
        """Invite one more person."""
        body = InviteToGroup(call_id=call_id, invitee=invitee)
        response = await self._login.request("POST", "/group/invite", body=body, user=invitee.name)
        return self._http.parse(GroupView, response, "POST /group/invite")

    async def accept(self, call_id: str) -> GroupDetail:
        """Join (the answer has our grant)."""
        response = await self._login.request(
            "POST", "/group/accept", body=GroupAction(call_id=call_id)
        )
        return self._http.parse(GroupDetail, response, "POST /group/accept")

    async def decline(self, call_id: str, *, busy: bool = False) -> GroupView:
        """Say no (or busy)."""
        body = DeclineGroup(call_id=call_id, reason="busy" if busy else "declined")
        response = await self._login.request("POST", "/group/decline", body=body)
        return self._http.parse(GroupView, response, "POST /group/decline")

    async def leave(self, call_id: str) -> GroupView:
        """Leave (the last one out ends the call)."""
        response = await self._login.request(
            "POST", "/group/leave", body=GroupAction(call_id=call_id)
        )
        return self._http.parse(GroupView, response, "POST /group/leave")

    async def message(self, call_id: str, to: str, body: bytes) -> None:
        """An opaque message for one other joined member."""
        message = SendGroupMessage(call_id=call_id, to=to, body=body)
        await self._login.request("POST", "/group/message", body=message)

    async def messages(self, call_id: str, items: list[tuple[str, bytes]]) -> GroupMessagesSent:
        """Opaque messages (recipient, body) for several other joined members, in one request."""
        batch = SendGroupMessages(
            call_id=call_id, messages=[GroupMessageItem(to=to, body=body) for to, body in items]
        )
        response = await self._login.request("POST", "/group/messages", body=batch)
        return self._http.parse(GroupMessagesSent, response, "POST /group/messages")

    async def status(self, call_id: str) -> GroupDetail:
        """The roster now."""
        response = await self._login.request("GET", f"/group/status/{call_id}")
        return self._http.parse(GroupDetail, response, "GET /group/status")
