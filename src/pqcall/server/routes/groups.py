"""The group call routes: ``/group/create|invite|accept|decline|leave|message|messages``.

Thin: each route authenticates (401), validates its body (422) and hands over
to :mod:`pqcall.server.group_service`, which answers 403 (not a member, not
invited, not joined), 404 (no such call, user or joined recipient), 409 (the
state forbids it) or 400 (too many people), and pushes the ``group.*`` events.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from pqcall.server import group_service
from pqcall.server.auth import CurrentAccount
from pqcall.server.context import Context
from pqcall.signaling.group_messages import (
    CreateGroup,
    DeclineGroup,
    GroupAction,
    GroupDetail,
    GroupMessagesSent,
    GroupView,
    InviteToGroup,
    SendGroupMessage,
    SendGroupMessages,
)
from pqcall.signaling.messages import CALL_ID_PATTERN, ErrorResponse

router = APIRouter(
    tags=["groups"],
    responses={403: {"model": ErrorResponse, "description": "not a member of this group call"}},
)


@router.post("/group/create", status_code=status.HTTP_201_CREATED)
async def create(
    body: CreateGroup, request: Request, account: CurrentAccount, context: Context
) -> GroupDetail:
    """Start a group call: the creator joined (with its forwarding grant), the others invited."""
    group = await group_service.create(context, account, body)
    member = group.members[account.id]
    return group_service.detail(context, group, member, request.url.hostname)


@router.post("/group/invite")
async def invite(body: InviteToGroup, account: CurrentAccount, context: Context) -> GroupView:
    """A joined member invites one more person (``group.invite`` to them)."""
    return (await group_service.invite(context, account, body)).view()


@router.post("/group/accept")
async def accept(
    body: GroupAction, request: Request, account: CurrentAccount, context: Context
) -> GroupDetail:
    """Join a group call one was invited to (or come back after being gone)."""
    group, member = await group_service.accept(context, account, body.call_id)
    return group_service.detail(context, group, member, request.url.hostname)


@router.post("/group/decline")
async def decline(body: DeclineGroup, account: CurrentAccount, context: Context) -> GroupView:
    """Say no to an invitation (or busy)."""
    return (await group_service.decline(context, account, body)).view()


@router.post("/group/leave")
async def leave(body: GroupAction, account: CurrentAccount, context: Context) -> GroupView:
    """Leave a group call; the last one out ends it."""
    return (await group_service.leave(context, account, body.call_id)).view()


@router.post("/group/message", status_code=status.HTTP_204_NO_CONTENT)
async def message(body: SendGroupMessage, account: CurrentAccount, context: Context) -> None:
    """Carry an opaque message to one other joined member (``group.message``)."""
    await group_service.message(context, account, body)


@router.post("/group/messages")
async def messages(
    body: SendGroupMessages, account: CurrentAccount, context: Context
) -> GroupMessagesSent:
    """Carry several opaque messages, each to another joined member, in one request."""
    return await group_service.messages(context, account, body)


@router.get("/group/status/{call_id}")
async def group_status(
    call_id: Annotated[str, Path(pattern=CALL_ID_PATTERN)],
    request: Request,
    account: CurrentAccount,
    context: Context,
) -> GroupDetail:
    """The roster of a live group call, for one of its members (with its own grant)."""
    group, member = group_service.status_of(context, account, call_id)
    return group_service.detail(context, group, member, request.url.hostname)
