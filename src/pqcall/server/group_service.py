"""The group call service: what each group action does, between the routes and the table.

:class:`GroupComponent` runs for as long as the server: the roster table
(:class:`~pqcall.server.group_table.GroupTable`) and the UDP forwarder
(:class:`~pqcall.server.group_relay.GroupRelay`), published as
``context.extras["groups"]``. Each action below checks the account with the table
(4xx with a reason, see its docstring), keeps the forwarder's tokens in step
(a member's token is live exactly while it is joined), and pushes:

=====================  ==================================  =========================
change                 to                                  event, payload
=====================  ==================================  =========================
create / invite        each new invitee                    ``group.invite``, roster
any roster change      every invited and joined member     ``group.roster``, roster
last one out           everyone still invited or joined    ``group.ended``, roster
message                its one recipient                   ``group.message``
messages (a batch)     each message's recipient, in order  ``group.message``
=====================  ==================================  =========================

A member the forwarder hears nothing from for a few seconds is marked ``gone``
(it may accept again and come back); an invitee who answers neither way within
``settings.ring_timeout_s`` (the 1:1 ring timeout) is marked ``no_answer`` by a
once-a-second sweep, and is sent the roster too, so its phone stops ringing.
The rest of the call goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pqcall.server.auth import account_named
from pqcall.server.components import ANY_ADDRESS
from pqcall.server.context import AppContext, api_error
from pqcall.server.group_relay import GroupRelay
from pqcall.server.group_table import Group, GroupRefused, GroupTable, Member
from pqcall.server.push import event_hub
from pqcall.server.storage import AccountRecord
from pqcall.signaling.group_messages import (
    EVENT_GROUP_ENDED,
    EVENT_GROUP_INVITE,
    EVENT_GROUP_MESSAGE,
    EVENT_GROUP_ROSTER,
    MAX_GROUP_BATCH_BYTES,
    CreateGroup,
    DeclineGroup,
    GroupDetail,
    GroupMessageEvent,
    GroupMessagesSent,
    InviteToGroup,
    RefusedMessage,
    SendGroupMessage,
    SendGroupMessages,
)
from pqcall.signaling.messages import RelayGrant

logger = logging.getLogger(__name__)

GROUPS_EXTRA = "groups"
RING_OUT_CHECK_S = 1.0  # how often unanswered invitations are looked for


class GroupComponent:
    """The group rosters and the group forwarder of this process."""

    def __init__(self) -> None:
        self.table = GroupTable()
        self.relay: GroupRelay | None = None
        self._context: AppContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()  # one roster change at a time, pushes in order

    async def start(self, context: AppContext) -> None:
        settings = context.settings
        host = settings.relay_bind if settings.relay_bind is not None else settings.host
        relay = GroupRelay(host, 0, on_gone=self._gone)
        await relay.start()
        self.relay = relay
        self._context = context
        context.extras[GROUPS_EXTRA] = self
        task = asyncio.create_task(self._ring_out_loop(context), name="group ring-out")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ring_out_loop(self, context: AppContext) -> None:
        while True:
            await asyncio.sleep(min(RING_OUT_CHECK_S, context.settings.ring_timeout_s / 4))
            try:
                await ring_out(context)
            except Exception:
                logger.exception("group calls: ring-out sweep failed")

    async def stop(self) -> None:
        if self._context is not None:
            self._context.extras.pop(GROUPS_EXTRA, None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.relay is not None:
            await self.relay.close()
        self.relay = None
        self._context = None

    def _gone(self, call_id: str, token: bytes) -> None:
        context = self._context
        if context is None:
            return
        task = asyncio.create_task(member_gone(context, call_id, token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def groups(context: AppContext) -> GroupComponent:
    """The running :class:`GroupComponent`.

    Raises:
        HTTPException: 503 when group calls are not running in this server.
    """
    component = context.extras.get(GROUPS_EXTRA)
    if not isinstance(component, GroupComponent):
        raise api_error(503, "group calls are not running on this server")
    return component


def detail(
    context: AppContext, group: Group, member: Member | None, request_host: str | None
) -> GroupDetail:
    """The roster, with ``member``'s own forwarding grant while it is joined."""
    grant = None
    component = groups(context)
    if member is not None and member.token is not None and component.relay is not None:
        bound_host, port = component.relay.address
        host = context.settings.relay_host or request_host
        if not host and bound_host not in ANY_ADDRESS:
            host = bound_host
        grant = RelayGrant(host=host or None, port=port, token=member.token)
    return GroupDetail(**group.view().model_dump(), relay=grant)


def _refused(exc: GroupRefused) -> Exception:
    return api_error(exc.status, exc.reason)


async def _push(
    context: AppContext,
    group: Group,
    *,
    invited: Sequence[Member] = (),
    also: Sequence[Member] = (),
) -> None:
    hub = event_hub(context)
    payload = group.view().model_dump(mode="json")
    if group.ended is not None:
        for member in group.members.values():
            if member.state in ("invited", "joined", "left", "gone"):
                await hub.publish(member.account_id, EVENT_GROUP_ENDED, payload)
        return
    new = {member.account_id for member in invited}
    for member in group.audience():
        kind = EVENT_GROUP_INVITE if member.account_id in new else EVENT_GROUP_ROSTER
        await hub.publish(member.account_id, kind, payload)
    for member in group.members.values():  # the one who just left or went gets the roster too
        if member.state in ("left", "gone") and member.left is not None:
            if member.left >= context.now() - 1.0:
                await hub.publish(member.account_id, EVENT_GROUP_ROSTER, payload)
    for member in also:  # e.g. invitees who rang out: their phones stop ringing
        await hub.publish(member.account_id, EVENT_GROUP_ROSTER, payload)


def _sync_forwarder(component: GroupComponent, group: Group) -> None:
    relay = component.relay
    if relay is None:
        return
    for member in group.members.values():
        if member.token is not None:
            relay.table.add(group.call_id, member.token)


async def create(context: AppContext, account: AccountRecord, body: CreateGroup) -> Group:
    """A new group call; the invitees get ``group.invite``."""
    component = groups(context)
    invitees = []
    for invitation in body.invitees:
        invitee = await account_named(context, invitation.name)
        invitees.append((invitee.username, invitee.id, invitation.signature))
    async with component.lock:
        try:
            group = component.table.create(
                body.call_id, (account.username, account.id), invitees, context.now()
            )
        except GroupRefused as exc:
            raise _refused(exc) from None
        _sync_forwarder(component, group)
        logger.info("group call %s: %s invites %d", group.call_id, account.username, len(invitees))
        invited = [m for m in group.members.values() if m.state == "invited"]
        await _push(context, group, invited=invited)
    return group


async def invite(context: AppContext, account: AccountRecord, body: InviteToGroup) -> Group:
    """A joined member invites one more; the invitee gets ``group.invite``, the rest the roster."""
    component = groups(context)
    invitee = await account_named(context, body.invitee.name)
    async with component.lock:
        try:
            group = component.table.invite(
                body.call_id,
                account.id,
                (invitee.username, invitee.id, body.invitee.signature),
                context.now(),
            )
        except GroupRefused as exc:
            raise _refused(exc) from None
        await _push(context, group, invited=[group.members[invitee.id]])
    return group


async def accept(context: AppContext, account: AccountRecord, call_id: str) -> tuple[Group, Member]:
    """An invitee joins (or a gone member comes back): everyone gets the roster."""
    component = groups(context)
    async with component.lock:
        try:
            group, member = component.table.accept(call_id, account.id, context.now())
        except GroupRefused as exc:
            raise _refused(exc) from None
        _sync_forwarder(component, group)
        logger.info("group call %s: %s joined", call_id, account.username)
        await _push(context, group)
    return group, member


async def decline(context: AppContext, account: AccountRecord, body: DeclineGroup) -> Group:
    """An invitee says no or is busy: the members see it in the roster."""
    component = groups(context)
    async with component.lock:
        try:
            group = component.table.decline(body.call_id, account.id, body.reason == "busy")
        except GroupRefused as exc:
            raise _refused(exc) from None
        await _push(context, group)
    return group


async def ring_out(context: AppContext) -> int:
    """Mark invitations older than the ring timeout ``no_answer``; returns how many rang out."""
    component = groups(context)
    count = 0
    async with component.lock:
        before = context.now() - context.settings.ring_timeout_s
        for group, lapsed in component.table.ring_out(before):
            count += len(lapsed)
            logger.info("group call %s: %d invitation(s) rang out", group.call_id, len(lapsed))
            await _push(context, group, also=lapsed)
    return count


async def leave(context: AppContext, account: AccountRecord, call_id: str) -> Group:
    """A member leaves; the last one out ends the call."""
    return await _leave(context, call_id, account.id, gone=False)


async def member_gone(context: AppContext, call_id: str, token: bytes) -> None:
    """The forwarder heard nothing from a member for a while: it is gone."""
    component = context.extras.get(GROUPS_EXTRA)
    if not isinstance(component, GroupComponent):
        return
    found = component.table.by_token(token)
    if found is None or found[0].call_id != call_id:
        return
    try:
        await _leave(context, call_id, found[1].account_id, gone=True)
    except Exception as exc:  # raced with a leave: nothing to do
        logger.info("group call %s: gone member already out (%s)", call_id, exc)


async def _leave(context: AppContext, call_id: str, account_id: int, *, gone: bool) -> Group:
    component = groups(context)
    async with component.lock:
        try:
            _, member = component.table.member_of(call_id, account_id)
            token = member.token
            group = component.table.leave(call_id, account_id, context.now(), gone=gone)
        except GroupRefused as exc:
            raise _refused(exc) from None
        if component.relay is not None:
            if token is not None:
                component.relay.table.remove(token)
        logger.info(
            "group call %s: %s %s%s",
            call_id,
            member.name,
            "is gone" if gone else "left",
            "; the call ended" if group.ended is not None else "",
        )
        await _push(context, group)
    return group


async def message(context: AppContext, account: AccountRecord, body: SendGroupMessage) -> None:
    """Carry an opaque message from one joined member to another."""
    component = groups(context)
    try:
        recipient = component.table.check_message(body.call_id, account.id, body.to)
    except GroupRefused as exc:
        raise _refused(exc) from None
    event = GroupMessageEvent(call_id=body.call_id, sender=account.username, body=body.body)
    await event_hub(context).publish(
        recipient.account_id, EVENT_GROUP_MESSAGE, event.model_dump(mode="json")
    )


async def messages(
    context: AppContext, account: AccountRecord, body: SendGroupMessages
) -> GroupMessagesSent:
    """Carry a joined member's batch of opaque messages, each to its recipient, in order.

    Raises:
        HTTPException: 400 the bodies are too large together or one is addressed to
            the sender; 403 the sender is not joined; 404 no such call. A recipient
            who is not (or no longer) joined is listed in ``refused``, the rest go.
    """
    component = groups(context)
    total = sum(len(item.body) for item in body.messages)
    if total > MAX_GROUP_BATCH_BYTES:
        raise api_error(400, f"messages of {total} bytes together, over {MAX_GROUP_BATCH_BYTES}")
    if any(item.to == account.username for item in body.messages):
        raise api_error(400, "a message addressed to yourself")
    try:
        _, sender = component.table.member_of(body.call_id, account.id)
    except GroupRefused as exc:
        raise _refused(exc) from None
    if sender.state != "joined":
        raise api_error(403, "only a joined member may send to the group")
    hub = event_hub(context)
    refused = []
    for index, item in enumerate(body.messages):
        try:
            recipient = component.table.check_message(body.call_id, account.id, item.to)
        except GroupRefused as exc:
            refused.append(RefusedMessage(index=index, to=item.to, reason=exc.reason))
            continue
        event = GroupMessageEvent(call_id=body.call_id, sender=account.username, body=item.body)
        await hub.publish(recipient.account_id, EVENT_GROUP_MESSAGE, event.model_dump(mode="json"))
    return GroupMessagesSent(delivered=len(body.messages) - len(refused), refused=refused)


def status_of(context: AppContext, account: AccountRecord, call_id: str) -> tuple[Group, Member]:
    """The live call and the account's entry (404/403 otherwise)."""
    try:
        return groups(context).table.member_of(call_id, account.id)
    except GroupRefused as exc:
        raise _refused(exc) from None
