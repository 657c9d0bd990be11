"""The key ring of one group-call member: its own sender keys and everyone else's.

Sans-I/O and clock-free: every method that depends on time takes ``now``
(seconds, any monotonic origin). The ring never sends anything; it tells the
caller which key to distribute (:meth:`GroupKeyring.rotate` returns it) and
the caller seals it to each other member over their
:class:`~pqcall.crypto.group_keys_channel.PairwiseChannel`.

Own keys. Generation 0 is drawn at construction. :meth:`~GroupKeyring.rotate`
draws the next generation as *pending*: the caller distributes it, and the ring
switches the sender to it ``switch_after_s`` later (or at
:meth:`~GroupKeyring.activate_next`, when every member has acknowledged it),
so receivers hold the key before the first frame under it arrives. The old
key is dropped at the switch. Rotation rules (docs/protocol.md#group-calls-keys):

- a member leaves: :meth:`~GroupKeyring.rekey_for_leave` forgets its keys and
  rotates, so the leaver never holds a key used after the switch;
- a member joins: :meth:`~GroupKeyring.rekey_for_join` rotates everyone's key
  (each member does it), and the newcomer is given only the new generation, so
  it cannot open anything sent before it joined;
- every ``rotate_after_s`` (:meth:`~GroupKeyring.rotation_due`).

Others' keys, by (sender id, generation), each as an
:class:`~pqcall.crypto.sframe_context.SFrameReceiver`. Once a frame under a
newer generation authenticates, the older ones of that sender are kept
``overlap_s`` for late frames and then erased; an older generation is erased
``stale_after_s`` after a newer one was added even if none authenticates (a
silent sender). An erased or superseded generation is never accepted again.

Receive path (:meth:`~GroupKeyring.unprotect`): parse the KID, find the
sender and generation, let its receiver decrypt and check its replay window,
deliver. Failures are dropped and counted, never raised.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Final

from pqcall.crypto.group_keys_sender import (
    GENERATION_MASK,
    GROUP_CIPHER_SUITE,
    MAX_GENERATION,
    SenderKey,
    packet_kid,
    sframe_sender_id,
)
from pqcall.crypto.sframe_context import DEFAULT_PAD_TO, SFrameReceiver, SFrameSender
from pqcall.exceptions import DecodeError, LocalProtocolError, RemoteProtocolError

# implementation constants
SWITCH_AFTER_S: Final = 1.5  # from drawing a key to sending under it (keys travel via the server)
OVERLAP_S: Final = 2.0  # an old generation kept after a newer one authenticates
STALE_AFTER_S: Final = 30.0  # an old generation kept after a newer one is added, at most
ROTATE_AFTER_S: Final = 180.0  # own key rotated at least this often
MAX_GENERATIONS_HELD: Final = 4  # per sender; the oldest not in use goes first
MAX_SENDERS: Final = 64  # other senders held at once (calls are capped at 20 members)


@dataclass(frozen=True, slots=True)
class GroupReceiveStats:
    """A snapshot of a :class:`GroupKeyring`'s receive counters."""

    accepted: int = 0
    """Frames delivered."""
    malformed: int = 0
    """Dropped: the header or KID did not parse."""
    unknown_sender: int = 0
    """Dropped: no key of that sender id (never given, or forgotten on a leave)."""
    unknown_generation: int = 0
    """Dropped: the sender is known but that generation is not held (not yet, or erased)."""
    rejected: int = 0
    """Dropped by the sender's SFrame receiver: did not authenticate, replayed, too old."""
    erased_generations: int = 0
    """Older generations erased so far."""

    @property
    def dropped(self) -> int:
        """Frames dropped for any reason."""
        return self.malformed + self.unknown_sender + self.unknown_generation + self.rejected


@dataclass(slots=True)
class _Held:
    """One generation of one other sender."""

    key: SenderKey  # as received, to recognise a second copy
    receiver: SFrameReceiver  # opens its frames
    authenticated: bool = False  # whether a frame under it opened
    expires_at: float = math.inf  # `now` at which it is erased (set once superseded)


@dataclass(slots=True)
class _Peer:
    """Everything held for one other sender id."""

    owner: str | None  # the member it belongs to, when the caller says
    generations: dict[int, _Held]  # by full generation
    floor: int = 0  # lowest generation still accepted by add_peer_key


class GroupKeyring:
    """Own sender keys and the other members' keys for one group call.

    Args:
        our_sender_id: our sender id in the call (0 to 65535), unique among the members.
        now: the current time.
        first_generation: our first generation (a rejoining member may start above
            the generations the others saw from it).
        pad_to: SFrame padding multiple of our frames (see
            :class:`~pqcall.crypto.sframe_context.SFrameSender`).
        switch_after_s: delay from :meth:`rotate` to sending under the new key.
        overlap_s: how long an old generation of another sender stays after a
            newer one authenticates.
        stale_after_s: how long it stays after a newer one is added, at most.
        rotate_after_s: after how long :meth:`rotation_due` says to rotate.

    Raises:
        LocalProtocolError: an argument out of range.
    """

    def __init__(
        self,
        our_sender_id: int,
        *,
        now: float,
        first_generation: int = 0,
        pad_to: int = DEFAULT_PAD_TO,
        switch_after_s: float = SWITCH_AFTER_S,
        overlap_s: float = OVERLAP_S,
        stale_after_s: float = STALE_AFTER_S,
        rotate_after_s: float = ROTATE_AFTER_S,
    ) -> None:
        if min(switch_after_s, overlap_s, stale_after_s) < 0 or rotate_after_s <= 0:
            raise LocalProtocolError("group key timers must not be negative")
        self.our_sender_id = our_sender_id  # our KID's sender bits
        self._pad_to = pad_to  # SFrame padding of our frames
        self._switch_after_s = switch_after_s  # rotate -> switch delay
        self._overlap_s = overlap_s  # old generation kept after a newer authenticates
        self._stale_after_s = stale_after_s  # old generation kept after a newer is added
        self._rotate_after_s = rotate_after_s  # timer rotation period
        self._own = SenderKey.new(our_sender_id, first_generation)  # key we send under
        self._sender = self._new_sender(self._own)  # SFrame sender of that key
        self._own_since = now  # when we started sending under it
        self._next: SenderKey | None = None  # drawn, distributed, not yet sent under
        self._next_due = math.inf  # when we switch to it
        self._peers: dict[int, _Peer] = {}  # other senders by sender id
        self._drops: Counter[str] = Counter()  # frames dropped, by GroupReceiveStats field
        self._accepted = 0  # frames delivered
        self._erased = 0  # generations erased
        self._expiry = math.inf  # earliest expires_at of any held generation

    # own keys

    @property
    def own_key(self) -> SenderKey:
        """The key our frames are sent under now."""
        return self._own

    @property
    def pending_key(self) -> SenderKey | None:
        """A key drawn by :meth:`rotate` and not yet sent under, if any."""
        return self._next

    def sender(self) -> SFrameSender:
        """The SFrame sender of the current key; ask again after every timer or switch.

        Prefer :meth:`protect`, which also switches to a pending key when due.
        """
        return self._sender

    def protect(self, payload: bytes, metadata: bytes = b"", *, now: float) -> bytes:
        """Switch keys if due, then protect one frame (see :meth:`SFrameSender.protect`)."""
        self.handle_timer(now)
        return self._sender.protect(payload, metadata, now=now)

    def rotate(self, now: float) -> SenderKey:
        """Draw our next generation; distribute the key it returns to every member.

        The ring sends under it from ``now + switch_after_s`` (or
        :meth:`activate_next`). Rotating again before then replaces the pending
        key with a newer one (distribute that one too).

        Raises:
            LocalProtocolError: generations exhausted (2**32).
        """
        newest = self._next or self._own
        if newest.generation >= MAX_GENERATION:
            raise LocalProtocolError("sender key generations exhausted")
        self._next = SenderKey.new(self.our_sender_id, newest.generation + 1)
        self._next_due = now + self._switch_after_s
        return self._next

    def activate_next(self, now: float) -> None:
        """Send under the pending key from now on and drop the current one."""
        if self._next is None:
            return
        self._own, self._next = self._next, None
        self._sender = self._new_sender(self._own)
        self._own_since = now
        self._next_due = math.inf

    def rotation_due(self, now: float) -> bool:
        """Whether our key has been used ``rotate_after_s`` and nothing is pending."""
        return self._next is None and now - self._own_since >= self._rotate_after_s

    def rekey_for_join(self, *, now: float) -> SenderKey:
        """A member joined: rotate; give the newcomer only the key this returns."""
        return self.rotate(now)

    def rekey_for_leave(self, sender_id: int, *, now: float) -> SenderKey:
        """The member sending as ``sender_id`` left: forget its keys, then rotate."""
        self.forget_sender(sender_id)
        return self.rotate(now)

    # others' keys

    def add_peer_key(self, key: SenderKey, now: float, *, owner: str | None = None) -> bool:
        """Hold another member's sender key, opened from its pairwise channel.

        Args:
            key: the key.
            now: the current time.
            owner: the member whose channel it came from. When given, a sender
                id another owner holds is refused, and an owner's new sender
                id replaces its old one.

        Returns:
            True if stored; False if already held, or older than a generation
            that superseded it (late or replayed, harmless).

        Raises:
            RemoteProtocolError: the sender id is ours or another member's, a
                different key was given for a generation already held, or too
                many senders.
        """
        self.handle_timer(now)
        sender_id, generation = key.sender_id, key.generation
        if sender_id == self.our_sender_id:
            raise RemoteProtocolError(f"sender id {sender_id} is ours")
        peer = self._claim(sender_id, owner)
        held = peer.generations.get(generation)
        if held is not None:
            if held.key.same_as(key):
                return False
            raise RemoteProtocolError(
                f"sender {sender_id} gave two different keys for generation {generation}"
            )
        if generation < peer.floor:
            return False
        # a held generation with the same KID bits is 256 generations apart: the older goes
        for other in [
            g for g in peer.generations if g & GENERATION_MASK == generation & GENERATION_MASK
        ]:
            if other > generation:
                return False
            self._erase(peer, other)
        receiver = SFrameReceiver(
            GROUP_CIPHER_SUITE, key.base_key(), sframe_sender_id(sender_id, generation)
        )
        held = peer.generations[generation] = _Held(key, receiver)
        for other, old in peer.generations.items():
            if other < generation:
                old.expires_at = min(old.expires_at, now + self._stale_after_s)
            elif other > generation:  # a late key of an older generation
                grace = self._overlap_s if old.authenticated else self._stale_after_s
                held.expires_at = min(held.expires_at, now + grace)
        while len(peer.generations) > MAX_GENERATIONS_HELD:
            self._erase(peer, self._evictable(peer))
        self._refresh_expiry()
        return True

    def forget_sender(self, sender_id: int) -> None:
        """Erase every key of ``sender_id`` (on a leave); its frames are dropped from now on."""
        peer = self._peers.pop(sender_id, None)
        if peer is not None:
            self._erased += len(peer.generations)
            peer.generations.clear()
            self._refresh_expiry()

    def unprotect(self, packet: bytes, now: float) -> tuple[int, bytes] | None:
        """Open a frame from another member.

        Returns:
            ``(sender_id, payload)``, or None if dropped (counted in :attr:`stats`).
        """
        self.handle_timer(now)
        # parse the KID
        try:
            kid = packet_kid(packet)
        except DecodeError:
            self._drops["malformed"] += 1
            return None
        # select the sender and generation
        peer = self._peers.get(kid.sender_id)
        if peer is None:
            self._drops["unknown_sender"] += 1
            return None
        found = [g for g in peer.generations if g & GENERATION_MASK == kid.generation_low]
        if not found:
            self._drops["unknown_generation"] += 1
            return None
        generation = found[0]
        held = peer.generations[generation]
        # decrypt and check the replay window (the receiver does both, in that order)
        payload = held.receiver.unprotect(packet, now=now)
        if payload is None:
            self._drops["rejected"] += 1
            return None
        # a newer generation authenticated: the older ones get their overlap
        if not held.authenticated:
            held.authenticated = True
            peer.floor = max(peer.floor, generation)
            for other, old in peer.generations.items():
                if other < generation:
                    old.expires_at = min(old.expires_at, now + self._overlap_s)
            self._refresh_expiry()
        self._accepted += 1
        return kid.sender_id, payload

    # timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has something to do, or None.

        (Each sender's SFrame receiver erases its previous ratchet step's key at
        its next frame after the grace period, as in a 1:1 call.)
        """
        earliest = min(self._next_due, self._expiry)
        return None if earliest == math.inf else earliest

    def handle_timer(self, now: float) -> None:
        """Switch to a pending key when due; erase generations past their overlap.

        Cheap when nothing is due: it runs before every frame.
        """
        if now >= self._next_due:
            self.activate_next(now)
        if now < self._expiry:
            return
        for peer in self._peers.values():
            for generation in [g for g, h in peer.generations.items() if now >= h.expires_at]:
                self._erase(peer, generation)
        self._refresh_expiry()

    # introspection

    @property
    def stats(self) -> GroupReceiveStats:
        """A snapshot of the receive counters."""
        return GroupReceiveStats(
            accepted=self._accepted,
            malformed=self._drops["malformed"],
            unknown_sender=self._drops["unknown_sender"],
            unknown_generation=self._drops["unknown_generation"],
            rejected=self._drops["rejected"],
            erased_generations=self._erased,
        )

    def senders(self) -> tuple[int, ...]:
        """The other members' sender ids we hold keys of, ascending."""
        return tuple(sorted(self._peers))

    def held_generations(self, sender_id: int) -> tuple[int, ...]:
        """The generations of ``sender_id`` held now, ascending (empty if none)."""
        peer = self._peers.get(sender_id)
        return tuple(sorted(peer.generations)) if peer is not None else ()

    def current_generation(self, sender_id: int) -> int | None:
        """The newest generation of ``sender_id`` a frame authenticated under, or None."""
        peer = self._peers.get(sender_id)
        if peer is None:
            return None
        seen = [g for g, h in peer.generations.items() if h.authenticated]
        return max(seen) if seen else None

    def owner_of(self, sender_id: int) -> str | None:
        """The member ``sender_id`` belongs to, if an owner was given with its keys."""
        peer = self._peers.get(sender_id)
        return peer.owner if peer is not None else None

    # internals

    def _new_sender(self, key: SenderKey) -> SFrameSender:
        sframe_id = sframe_sender_id(key.sender_id, key.generation)
        return SFrameSender(GROUP_CIPHER_SUITE, key.base_key(), sframe_id, pad_to=self._pad_to)

    def _claim(self, sender_id: int, owner: str | None) -> _Peer:
        """The entry of ``sender_id``, created if new, after the ownership checks."""
        peer = self._peers.get(sender_id)
        if peer is not None and owner is not None and peer.owner not in (None, owner):
            raise RemoteProtocolError(f"sender id {sender_id} belongs to {peer.owner!r}")
        if owner is not None:
            for other_id, other in list(self._peers.items()):
                if other.owner == owner and other_id != sender_id:
                    self.forget_sender(other_id)  # the owner moved to a new sender id
        if peer is None:
            if len(self._peers) >= MAX_SENDERS:
                raise RemoteProtocolError(f"more than {MAX_SENDERS} senders in a group call")
            peer = self._peers[sender_id] = _Peer(owner, {})
        elif peer.owner is None:
            peer.owner = owner
        return peer

    @staticmethod
    def _evictable(peer: _Peer) -> int:
        """The generation to drop when too many are held: the oldest that is neither
        the one the sender is known to use (newest authenticated) nor the newest given
        (a sender that rotates several times before switching skips the middle ones)."""
        keep = {max(peer.generations)}
        in_use = [g for g, h in peer.generations.items() if h.authenticated]
        if in_use:
            keep.add(max(in_use))
        return min(g for g in peer.generations if g not in keep)

    def _refresh_expiry(self) -> None:
        expiries = (h.expires_at for p in self._peers.values() for h in p.generations.values())
        self._expiry = min(expiries, default=math.inf)

    def _erase(self, peer: _Peer, generation: int) -> None:
        del peer.generations[generation]
        peer.floor = max(peer.floor, generation + 1)
        self._erased += 1
