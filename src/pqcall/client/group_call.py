"""A group call on one phone: roster, pairwise handshakes, sender keys, media, stats.

Made by :class:`~pqcall.client.phone.Phone` (``phone.group_call(names)`` or a
``group.invite`` event). Its life (docs/protocol.md, "Group calls")::

    create / accept  -> joined: our grant, our sender id; GroupKeyring, GroupMedia
    group.roster     -> for each other joined member: a PeerLink; the name that sorts
                        first offers the 1:1 hybrid handshake over /group/message;
                        a join rotates our key (the newcomer gets only the new one),
                        a leave forgets the leaver's keys and rotates ours
    channel up       -> if the member is vouched for (its invitation verifies, see
                        below): seal our sender key and our roster signature to it
    group.ended, leave() or our own removal -> ended

Vouching: the server's roster says who invited whom, with the inviter's
signature over (call id, invitee, invitee's fingerprint). Starting from
ourselves, a member is vouched for when an invitation links it, validly signed,
to someone vouched for (in either direction). A joined member nobody vouches for
was added by the server: every phone warns, and none sends it a key.

The roster we sign (``crypto.group_keys.Roster``) is ourselves and the vouched
joined members with their handshake identities at the server's roster version;
the group code is derived from it. The others' signatures over theirs are checked
against ours: a mismatch (a member hidden from some phones, a swapped identity) warns.

Events are handled one at a time, in order, by one task.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pqcall.client.api import ServerApi
from pqcall.client.call_context import PeerTrust
from pqcall.client.contacts import Contacts
from pqcall.client.group_api import GroupApi
from pqcall.client.group_media import GroupMedia
from pqcall.client.group_outbox import Outbox
from pqcall.client.group_peers import (
    INNER_KEY_ACK,
    INNER_ROSTER,
    INNER_SENDER_KEY,
    KIND_ANSWER,
    KIND_CONFIRM,
    KIND_OFFER,
    KIND_SEALED,
    PeerLink,
    pair_id,
    unframe,
)
from pqcall.client.group_roster import RosterState
from pqcall.client.group_speaking import mute_message, parse_mute
from pqcall.client.media_options import MediaOptions, WallClockTrace, open_call_devices
from pqcall.client.peers import check_peer, key_change_message, trust_of
from pqcall.crypto.group_keys import GroupKeyring, SenderKey, decode_sender_key, encode_sender_key
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.pinning import KeyChanged
from pqcall.exceptions import CallError, PqcallError
from pqcall.media.audio import close_all
from pqcall.signaling.group_messages import (
    EVENT_GROUP_ENDED,
    EVENT_GROUP_MESSAGE,
    GroupDetail,
    GroupMessageEvent,
    GroupView,
    Invitation,
)
from pqcall.signaling.messages import Event
from pqcall.transport.group_wire import FRAME_HEADER_BYTES

logger = logging.getLogger(__name__)

ROTATION_CHECK_S = 1.0
HANDSHAKE_RETRY_S = 8.0  # a caller whose pairwise handshake has not finished offers again
SWITCH_FALLBACK_S = 5.0  # send under a new key at the latest this long after drawing it


@dataclass(frozen=True, slots=True)
class _Retry:
    """Offer the pairwise handshake to ``name`` again (queued to the call's task)."""

    name: str


@dataclass(frozen=True, slots=True)
class GroupContext:
    """What a group call needs from its phone."""

    username: str
    identity: IdentityPrivateKey
    api: ServerApi
    contacts: Contacts
    server_host: str
    media: MediaOptions
    warn: Callable[[str, str], None]  # (about whom, message for the user)


class GroupCall:
    """One group call on this phone (see the module docstring)."""

    def __init__(self, context: GroupContext, view: GroupView, *, incoming: bool) -> None:
        self.context = context
        self.call_id = view.call_id
        self.view = view
        self.incoming = incoming
        self.state = "invited" if incoming else "joining"
        self.reason: str | None = None
        self.started = time.time()
        self.joined_at: float | None = None
        self.ended_at: float | None = None
        self.keyring: GroupKeyring | None = None
        self.media: GroupMedia | None = None
        self.peers: dict[str, PeerLink] = {}  # other joined members, by name
        self.history: dict[str, dict[str, Any]] = {}  # everyone we saw joined
        self.roster = RosterState(context.username, context.identity, view.call_id)
        self.trace = WallClockTrace()
        self.path: str | None = None
        self._api = GroupApi(context.api)
        self._outbox = Outbox(self._api, view.call_id)
        self._events: asyncio.Queue[Event | GroupView | _Retry] = asyncio.Queue()
        self._stash: list[GroupMessageEvent] = []  # messages from members not in our roster yet
        self._warned: set[tuple[str, str]] = set()
        self._ended = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._audio: tuple[Any, Any] | None = None
        self._rosters = 0  # rosters handled since we joined
        self._first_trust: dict[str, PeerTrust] = {}  # trust at our first lookup in this call

    # ------------------------------------------------------------ actions

    async def create(self, names: list[str]) -> None:
        """Start the call with ``names`` invited (we are joined)."""
        invitations = [await self._invitation(name) for name in names]
        detail = await self._api.create(self.call_id, invitations)
        await self._joined(detail)

    async def accept(self) -> None:
        """Join the call we were invited to."""
        if self.state != "invited":
            raise CallError(f"cannot accept a group call that is {self.state}")
        self.state = "joining"
        try:
            detail = await self._api.accept(self.call_id)
        except PqcallError as exc:
            self._finish(f"could not join: {exc}")
            raise
        await self._joined(detail)

    async def decline(self, *, busy: bool = False) -> None:
        """Say no (or busy)."""
        try:
            await self._api.decline(self.call_id, busy=busy)
        finally:
            self._finish("busy" if busy else "declined")

    async def invite(self, name: str) -> None:
        """Invite one more person (we must be joined)."""
        await self._api.invite(self.call_id, await self._invitation(name))

    async def leave(self) -> None:
        """Leave the call (the last one out ends it)."""
        if self.state == "ended":
            return
        try:
            await self._api.leave(self.call_id)
        except PqcallError as exc:
            logger.info("group call %s: leave: %s", self.call_id, exc)
        self._finish("left")
        await self._stop()

    def set_muted(self, muted: bool) -> None:
        """Send silence, and tell the others we (un)muted."""
        if self.media is not None:
            self.media.set_muted(muted)
            for peer in self.peers.values():
                if peer.established and peer.vouched:
                    self._outbox.post(peer.name, peer.seal(mute_message(muted)))

    def deliver(self, event: Event) -> None:
        """A ``group.*`` event for this call (handled in order by the call's task).

        While we ring (invited, not answered), a roster that no longer has us
        invited (the invitation rang out, the call ended) ends the call here.
        """
        if self.state == "invited" and event.type != EVENT_GROUP_MESSAGE:
            payload = {k: v for k, v in event.payload.items() if k != "relay"}
            view = GroupView.model_validate(payload)
            me = next((m for m in view.members if m.name == self.context.username), None)
            if view.ended is not None or me is None or me.state != "invited":
                self.view = view
                state = "the call ended" if view.ended is not None else None
                self._finish(state or ("no answer" if me is None else me.state.replace("_", " ")))
            return
        self._events.put_nowait(event)

    @property
    def is_ended(self) -> bool:
        return self.state == "ended"

    async def wait_ended(self) -> None:
        """Until the call ends here."""
        await self._ended.wait()
        await self._stop()

    def joined_names(self) -> list[str]:
        """The other members we have a channel with and hold a key from."""
        ring = self.keyring
        return sorted(
            peer.name
            for peer in self.peers.values()
            if peer.established
            and ring is not None
            and ring.current_generation(peer.sender_id) is not None
        )

    @property
    def group_code(self) -> str | None:
        """The code every phone shows for the same roster (None before any)."""
        return self.roster.code

    # ------------------------------------------------------------ joining

    async def _invitation(self, name: str) -> Invitation:
        from pqcall.signaling.group_messages import INVITATION_CONTEXT, invitation_data

        checked = await check_peer(self.context.api, self.context.contacts, name)
        self._first_trust.setdefault(checked.name, trust_of(checked.pin))
        data = invitation_data(self.call_id, checked.name, checked.identity.fingerprint())
        signature = self.context.identity.sign(data, context=INVITATION_CONTEXT)
        return Invitation(name=checked.name, signature=signature)

    async def _joined(self, detail: GroupDetail) -> None:
        me = next((m for m in detail.members if m.name == self.context.username), None)
        if me is None or me.sender_id is None or detail.relay is None:
            self._finish("the server gave no sender id or forwarding grant")
            raise CallError("the server gave no sender id or forwarding grant")
        # we switch as soon as every member acknowledged the new key, else after the fallback
        self.keyring = self._new_keyring(me.sender_id)
        media = self.context.media
        source, sink = await asyncio.to_thread(
            open_call_devices, media.audio_in, media.audio_out, media.settings.opus.frame_ms
        )
        self._audio = (source, sink)
        self.media = GroupMedia(self.keyring, source, sink, media.settings.opus, self.trace)
        host = detail.relay.host or self.context.server_host
        await self.media.open(host, detail.relay.port, detail.relay.token, media.media_port)
        self.path = f"forwarder {host}:{detail.relay.port}"
        self.joined_at = time.time()
        self.state = "active"
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group {self.call_id[:8]}"),
            asyncio.create_task(self._rotate_on_timer(), name="group key timer"),
        ]
        # rosters queued while our accept was on its way still have us invited: older than
        # this one, they are skipped (handled, they ended the call: "the server says we invited")
        self.view = detail
        self._events.put_nowait(detail)

    def _new_keyring(self, sender_id: int) -> GroupKeyring:
        """Our key ring: packets padded to one frame at the bitrate (every one the same size)."""
        opus = self.context.media.settings.opus
        return GroupKeyring(
            sender_id,
            now=asyncio.get_running_loop().time(),
            pad_to=FRAME_HEADER_BYTES + opus.max_packet_bytes,
            switch_after_s=SWITCH_FALLBACK_S,
        )

    async def _rejoin(self) -> None:
        """Join again with a new sender id, token, key ring and pairwise channels."""
        logger.warning("group call %s: the server lost us; joining again", self.call_id)
        try:
            detail = await self._api.accept(self.call_id)
        except PqcallError as exc:
            self._finish(f"could not join again: {exc}")
            return
        me = next((m for m in detail.members if m.name == self.context.username), None)
        if me is None or me.sender_id is None or detail.relay is None or self.media is None:
            self._finish("the server gave no sender id or forwarding grant")
            return
        self.keyring = self._new_keyring(me.sender_id)
        self.media.keys = self.keyring
        self.media.rebind(detail.relay.token)
        self.peers.clear()
        self._rosters = 0
        self._stash = []
        await self._roster_changed(detail)

    # ------------------------------------------------------------ events

    async def _run(self) -> None:
        while True:
            item = await self._events.get()
            try:
                if isinstance(item, _Retry):
                    peer = self.peers.get(item.name)
                    if peer is not None and not peer.established:
                        await self._offer(peer)
                elif isinstance(item, GroupView):
                    await self._roster_changed(item)
                elif item.type == EVENT_GROUP_MESSAGE:
                    await self._message(GroupMessageEvent.model_validate(item.payload))
                else:
                    view = GroupView.model_validate(
                        {k: v for k, v in item.payload.items() if k != "relay"}
                    )
                    if item.type == EVENT_GROUP_ENDED:
                        self._finish("the call ended")
                    else:
                        await self._roster_changed(view)
            except Exception:
                logger.exception("group call %s: event could not be handled", self.call_id)
            if self.state == "ended":
                return

    async def _roster_changed(self, view: GroupView) -> None:
        if view.version < self.view.version:
            return  # an older roster arriving late
        first = self._rosters == 0  # the roster of our own join: our key is fresh
        self._rosters += 1
        self.view = view
        me = next((m for m in view.members if m.name == self.context.username), None)
        if view.ended is not None:
            self._finish("the call ended")
            return
        if me is not None and me.state == "gone" and self.state == "active":
            await self._rejoin()  # the forwarder missed us (a stall): back into the same call
            return
        if me is None or me.state != "joined":
            self._finish(f"the server says we {me.state if me else 'are not a member'}")
            return
        assert self.keyring is not None
        loop = asyncio.get_running_loop()
        joined = {
            m.name: m.sender_id
            for m in view.members
            if m.state == "joined" and m.name != me.name and m.sender_id is not None
        }
        removed = [p for p in self.peers.values() if joined.get(p.name) != p.sender_id]
        for peer in removed:
            del self.peers[peer.name]
            entry = self.history.setdefault(peer.name, {})
            entry["left"] = time.time()
            if self.media is not None:  # what we heard, frozen (its silence since is no loss)
                entry.setdefault("final_stats", {})[peer.sender_id] = self.media.stats(
                    peer.sender_id
                )
            self._distribute(self.keyring.rekey_for_leave(peer.sender_id, now=loop.time()))
        added = [(name, sid) for name, sid in joined.items() if name not in self.peers]
        for name, sid in added:
            link = PeerLink(
                name=name,
                sender_id=sid,
                pair=pair_id(self.call_id, (me.name, me.sender_id or 0), (name, sid)),
                is_caller=me.name < name,
            )
            self.peers[name] = link
            entry = self.history.setdefault(name, {"joined": time.time()})
            entry.pop("left", None)
            entry.setdefault("sender_ids", []).append(sid)
        if added and not first:
            self._distribute(self.keyring.rekey_for_join(now=loop.time()))
        await self._check_vouching()
        for name, _ in added:
            peer = self.peers[name]
            if peer.is_caller and peer.vouched is not False:
                await self._offer(peer)
        stash, self._stash = self._stash, []
        for message in stash:
            await self._message(message)
        await self._update_roster()

    async def _check_vouching(self) -> None:
        vouched = await self.roster.vouched(self.view, self._identity)
        for peer in self.peers.values():
            peer.vouched = peer.name in vouched
            if not peer.vouched:
                self._warn(
                    peer.name,
                    f"{peer.name} is in the group call without an invitation from a member:"
                    " the server added them. They get no key and cannot hear you.",
                )

    async def _identity(self, name: str) -> Any:
        peer = self.peers.get(name)
        if peer is not None and peer.identity is not None:
            return peer.identity
        try:
            checked = await check_peer(self.context.api, self.context.contacts, name)
            self._first_trust.setdefault(name, trust_of(checked.pin))
            return checked.identity
        except PqcallError as exc:
            logger.info("group call %s: no identity for %s: %s", self.call_id, name, exc)
            return None

    # ------------------------------------------------------------ pairwise

    async def _offer(self, peer: PeerLink) -> None:
        try:
            checked = await check_peer(self.context.api, self.context.contacts, peer.name)
        except PqcallError as exc:
            peer.error = str(exc)
            self._warn(peer.name, f"no secure channel with {peer.name}: {exc}")
            return
        peer.trust = self._first_trust.setdefault(peer.name, trust_of(checked.pin))
        body = peer.start_caller(self.context.username, self.context.identity, checked.identity)
        peer.offered_at = time.monotonic()
        await self._send(peer.name, body)

    async def _message(self, message: GroupMessageEvent) -> None:
        peer = self.peers.get(message.sender)
        try:
            kind, pair, data = unframe(message.body)
        except PqcallError:
            return
        if peer is None or pair != peer.pair:
            if len(self._stash) < 64:
                self._stash.append(message)  # its sender's join is not in our roster yet
            return
        try:
            if peer.established and kind != KIND_SEALED:
                return  # a handshake message repeated or late: the channel is up already
            if kind == KIND_OFFER and not peer.is_caller:
                identity = peer.receive_offer(self.context.username, self.context.identity, data)
                result = self.context.contacts.check(peer.name, identity)
                if isinstance(result, KeyChanged):
                    peer.error = "key changed"
                    self._warn(peer.name, key_change_message(peer.name))
                    return
                peer.trust = self._first_trust.setdefault(peer.name, trust_of(result))
                await self._send(peer.name, peer.answer())
            elif kind == KIND_ANSWER and peer.is_caller:
                await self._send(peer.name, peer.receive_answer(data, self.context.username))
                await self._established(peer)
            elif kind == KIND_CONFIRM and not peer.is_caller:
                peer.receive_confirm(data, self.context.username)
                await self._established(peer)
            elif kind == KIND_SEALED and peer.channel is not None:
                self._sealed(peer, peer.channel.open(data))
        except PqcallError as exc:
            peer.error = str(exc)
            self._warn(peer.name, f"the secure channel with {peer.name} failed: {exc}")

    async def _established(self, peer: PeerLink) -> None:
        logger.info("group call %s: channel with %s up", self.call_id, peer.name)
        self.history.setdefault(peer.name, {}).update(identity=peer.identity, trust=peer.trust)
        await self._check_vouching()
        if not peer.vouched:
            return
        assert self.keyring is not None
        key = self.keyring.pending_key or self.keyring.own_key
        await self._send_key(peer, key)
        if self.media is not None and self.media.pipeline.is_muted:
            await self._send(peer.name, peer.seal(mute_message(True)))
        await self._update_roster()

    def _sealed(self, peer: PeerLink, inner: bytes) -> None:
        assert self.keyring is not None
        if inner[:1] == bytes([INNER_SENDER_KEY]):
            key = decode_sender_key(inner[1:])
            if key.sender_id != peer.sender_id:
                self._warn(peer.name, f"{peer.name} sent a key for another sender id")
                return
            loop = asyncio.get_running_loop()
            self.keyring.add_peer_key(key, loop.time(), owner=peer.name)
            ack = bytes([INNER_KEY_ACK]) + key.generation.to_bytes(4, "big")
            self._spawn(self._send(peer.name, peer.seal(ack)))
        elif inner[:1] == bytes([INNER_KEY_ACK]) and len(inner) == 5:
            peer.acked_generations.add(int.from_bytes(inner[1:], "big"))
            self._switch_if_everyone_has_it()
        elif inner[:1] == bytes([INNER_ROSTER]) and len(inner) > 5:
            version = int.from_bytes(inner[1:5], "big")
            peer.roster_signatures[version] = inner[5:]
            self._check_roster()
        elif (muted := parse_mute(inner)) is not None:
            peer.muted = muted

    def _switch_if_everyone_has_it(self) -> None:
        ring = self.keyring
        pending = None if ring is None else ring.pending_key
        if ring is None or pending is None:
            return
        members = [p for p in self.peers.values() if p.vouched and p.established]
        if all(pending.generation in p.acked_generations for p in members):
            ring.activate_next(asyncio.get_running_loop().time())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(work))

    def _distribute(self, key: SenderKey) -> None:
        for peer in self.peers.values():
            if peer.established and peer.vouched:
                self._spawn_send_key(peer, key)

    def _spawn_send_key(self, peer: PeerLink, key: SenderKey) -> None:
        task = asyncio.create_task(self._send_key(peer, key))
        self._tasks.append(task)

    async def _send_key(self, peer: PeerLink, key: SenderKey) -> None:
        if key.generation in peer.sent_generations:
            return
        peer.sent_generations.add(key.generation)
        await self._send(peer.name, peer.seal(bytes([INNER_SENDER_KEY]) + encode_sender_key(key)))

    async def _send(self, name: str, body: bytes) -> None:
        self._outbox.post(name, body)  # queued: sent in order, batched with the others

    async def _update_roster(self) -> None:
        members = {
            p.name: p.identity
            for p in self.peers.values()
            if p.vouched and p.established and p.identity is not None
        }
        waiting = [p for p in self.peers.values() if p.vouched and not p.established]
        if waiting:
            return  # sign once every vouched member's identity is authenticated
        signature = self.roster.sign(self.view.version, members)
        if signature is None:
            return
        body = bytes([INNER_ROSTER]) + self.view.version.to_bytes(4, "big") + signature
        for peer in self.peers.values():
            if peer.vouched and peer.established:
                await self._send(peer.name, peer.seal(body))
        self._check_roster()

    def _check_roster(self) -> None:
        version = self.view.version
        signatures = {
            p.name: p.roster_signatures[version]
            for p in self.peers.values()
            if version in p.roster_signatures
        }
        identities = {p.name: p.identity for p in self.peers.values() if p.identity is not None}
        for name in self.roster.check(identities, signatures):
            self._warn(
                name,
                f"{name} sees another roster for this group call than you do (a member"
                " hidden or a swapped identity): do not trust the group code",
            )

    # ------------------------------------------------------------ timers, end

    async def _rotate_on_timer(self) -> None:
        loop = asyncio.get_running_loop()
        while self.keyring is not None:
            await asyncio.sleep(ROTATION_CHECK_S)
            if self.keyring.rotation_due(loop.time()):
                self._distribute(self.keyring.rotate(loop.time()))
            for peer in list(self.peers.values()):
                stalled = time.monotonic() - peer.offered_at > HANDSHAKE_RETRY_S
                if peer.is_caller and peer.vouched and not peer.established and stalled:
                    logger.warning("group call %s: offering %s again", self.call_id, peer.name)
                    self._events.put_nowait(_Retry(peer.name))

    def _warn(self, name: str, message: str) -> None:
        if (name, message) in self._warned:
            return
        self._warned.add((name, message))
        logger.warning("group call %s: %s", self.call_id, message)
        self.context.warn(name, message)

    def _finish(self, reason: str) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.reason = reason
        self.ended_at = time.time()
        self._ended.set()

    async def _stop(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        self._tasks = []
        await self._outbox.close()
        if self.media is not None:
            await self.media.close()
        if self._audio is not None:
            close_all(self._audio)
            self._audio = None

    def trust_of(self, name: str) -> PeerTrust | None:
        """How far we trust ``name``'s identity (None: no channel yet)."""
        peer = self.peers.get(name)
        return None if peer is None else peer.trust


def new_call_id() -> str:
    """A fresh group call id."""
    return secrets.token_hex(16)
