"""Mobility: a call moves to a new address, or to the relay and back, without new keys.

Scope: once media runs, :class:`PathMonitor` (sans-I/O) is the media session's side
channel instead of :class:`~pqcall.transport.path_responder.PathResponder`: it answers
the peer's late checks and nominations as that did, and keeps the call on a working
path as ICE restart and consent freshness do in spirit (RFC 8445 section 9, RFC 7675;
``docs/protocol.md#mobility-and-consent``, decision 0720):

- **consent** (:mod:`pqcall.transport.consent`): a CHECK to where media goes every 1 s;
  no answer for 5 s and media stops going there;
- **re-check** on a change of our addresses, the peer's silence or lost consent: check
  the current address, where the peer's checks came from and the peer's candidates,
  and NOMINATE the first that answers (either phone may: either may move); none
  answers: bind to the pqcall relay and move there once both are bound; on the relay,
  re-check the direct addresses every 5 s and move back;
- **switch only after return routability**: media goes to (and comes only from) a new
  address once it answered a CHECK of ours (a fresh transaction id under the path
  key). A replayed check, nomination or media packet from elsewhere moves nothing.

:class:`Mobility` drives it: timers, this machine's IPv4 addresses (``ifaddr``, every
0.2 s), the session's silence, and the session's ``move_to`` / ``set_media_blocked``.
Nothing raises out of the side channel for any datagram. Example::

    mobility = Mobility(keys, choice, peer_candidates, relay=relay_target)
    session = MediaSession(keys, source, sink, side_channel=mobility.side_channel)
    await session.open(sock=sock)
    session.connect(choice.peer)
    mobility.attach(session)          # starts the watch; it stops when the call ends
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import ifaddr

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.consent import ConsentFreshness, ConsentLost, ConsentRestored
from pqcall.transport.path_choice import PathChoice
from pqcall.transport.path_messages import (
    MAGIC_LENGTH,
    MESSAGE_LENGTH,
    PATH_MAGIC,
    TRANSACTION_ID_LENGTH,
    Address,
    MessageType,
    PathMessage,
    PathRole,
    path_check_key,
)
from pqcall.transport.pathcheck import CHECK_INTERVAL_S, CHECK_MAX_INTERVAL_S
from pqcall.transport.relay_wire import (
    ACK_PEER_BOUND,
    BIND_RETRY_S,
    RelayTarget,
    is_relay_ack,
    is_relay_challenge,
)

if TYPE_CHECKING:
    from pqcall.transport.session import MediaSession

__all__ = [
    "MAX_LEARNED",
    "RECHECK_S",
    "VALIDATION_FRESH_S",
    "WATCH_INTERVAL_S",
    "ConsentLost",
    "ConsentRestored",
    "Mobility",
    "MobilityStats",
    "PathMonitor",
    "PathSwitched",
    "local_ipv4_addresses",
]

logger = logging.getLogger(__name__)

RECHECK_S: Final = 2.0
"""How long one re-check sends checks (as path selection's checks: 50 ms doubling to
200 ms); also the least time between two re-checks the peer's silence starts."""
NOMINATE_INTERVAL_S: Final = 0.05  # between two copies of a nomination
NOMINATE_TRANSMISSIONS: Final = 10
VALIDATION_FRESH_S: Final = 5.0
"""An address that answered our check this long ago still counts as validated."""
VALIDATE_INTERVAL_S: Final = 0.1
"""At most one validation check per address this often (a replayed check from a stranger
earns it one 40-byte check per 100 ms, no more)."""
MAX_LEARNED: Final = 8
"""Peer-reflexive addresses (where the peer's checks came from) kept at most."""
MAX_TRANSACTIONS: Final = 64  # our outstanding checks and nominations, at most
WATCH_INTERVAL_S: Final = 0.2
"""How often :class:`Mobility` reads this machine's addresses and the session's silence."""
RELAY_BIND_S: Final = 10.0
"""No direct address answered a re-check: bind to the relay (every 0.5 s) this long."""
DIRECT_RETRY_S: Final = 5.0
"""On the relay, the direct addresses are re-checked this often (to go back)."""
RELAY_KEEPALIVE_S: Final = 20.0
"""Off the relay, a bind this often keeps the relay allocation (idle after 60 s)."""


@dataclass(frozen=True, slots=True)
class PathSwitched:
    """Media now goes to, and is accepted from, ``new`` instead of ``old``."""

    old: Address
    new: Address
    reason: str
    """``nominated`` (the peer asked; ``new`` answered our check), ``acked`` (we asked;
    ``new`` acked) or ``relay`` (both bound at the relay)."""


MobilityEvent = PathSwitched | ConsentLost | ConsentRestored


@dataclass(frozen=True, slots=True)
class MobilityStats:
    """What the monitor did during the call: ``switches`` of the media's address,
    ``rechecks`` started, ``consent_checks`` sent, times ``consent_lost``,
    ``validations`` (our checks of an address the peer's messages came from), and
    ``unvalidated_nominations`` (from an address that had not answered our check:
    each started a validation, none moved media by itself)."""

    switches: int
    rechecks: int
    consent_checks: int
    consent_lost: int
    validations: int
    unvalidated_nominations: int


@dataclass(slots=True)
class _Target:
    address: Address
    sent: int = 0
    next_at: float | None = None


class PathMonitor:
    """The media path while media runs: answers, consent, re-checks and switches, sans-I/O.

    Args:
        keys: the call's keys (the path key is exported from them).
        choice: the path selection chose; media goes to ``choice.peer``.
        candidates: the peer's candidates (numeric IPv4), checked on a re-check.
        token_source: ``n`` unpredictable bytes (``secrets.token_bytes``).
        consent: the consent follower (default: the standard figures).
        relay: the relay grant (numeric address, the selection's bind counter): the
            fallback when no direct address answers a re-check.
    """

    def __init__(
        self,
        keys: CallKeys,
        choice: PathChoice,
        candidates: Sequence[Address] = (),
        *,
        token_source: Callable[[int], bytes] = secrets.token_bytes,
        consent: ConsentFreshness | None = None,
        relay: RelayTarget | None = None,
    ) -> None:
        self._key = path_check_key(keys)
        self._role = PathRole.of(keys.role)
        self._relay = choice.relay
        self._peer: Address = choice.peer
        self._candidates = list(dict.fromkeys(candidates))[:16]
        self._token_source = token_source
        self._consent = ConsentFreshness() if consent is None else consent
        self._transactions: dict[bytes, tuple[MessageType, Address]] = {}
        self._validated: dict[Address, float] = {}  # address -> when it answered us
        self._validate_at: dict[Address, float] = {}  # address -> last validation check
        self._learned: dict[Address, float] = {}  # peer-reflexive: where its checks came from
        self._pending: dict[Address, bytes] = {}  # NOMINATE from an unvalidated address
        self._targets: list[_Target] = []  # the re-check's
        self._recheck_until: float | None = None
        self._nominee: Address | None = None
        self._nominations = 0
        self._nominate_at: float | None = None
        self._outgoing: list[tuple[bytes, Address]] = []
        self._events: deque[MobilityEvent] = deque()
        self._counts = dict.fromkeys(MobilityStats.__slots__, 0)
        self._relay_target = relay  # the fallback (its address is choice.relay)
        self._bind_at: float | None = None  # next bind while falling back to the relay
        self._bind_until: float | None = None
        self._direct_at: float | None = None  # on the relay: next direct re-check
        self._keepalive_at: float | None = None  # off the relay: next keepalive bind

    # state

    @property
    def peer(self) -> Address:
        """Where media goes now, and the only address it is accepted from."""
        return self._peer

    @property
    def consent_lost(self) -> bool:
        """Whether media must not go to :attr:`peer` now."""
        return self._consent.is_lost

    @property
    def is_rechecking(self) -> bool:
        """Whether a re-check runs."""
        return self._recheck_until is not None

    @property
    def stats(self) -> MobilityStats:
        """The counters so far."""
        return MobilityStats(**self._counts)

    def next_event(self) -> MobilityEvent | None:
        """The oldest event for the driver, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams queued since the last call, each with its destination."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    # the calling contract

    def start(self, now: float) -> None:
        """Media starts now on ``choice.peer`` (just validated by path selection)."""
        self._consent.start(self._peer, now)
        self._relay_timers(now)

    def recheck(self, now: float, why: str) -> None:
        """Check the current, learned (newest first), offered addresses (8 at most);
        nominate the first to answer.

        One already running is restarted only for ``why == "address change"``."""
        if self._recheck_until is not None and why != "address change":
            return
        self._counts["rechecks"] += 1
        logger.info("mobility: re-checking the path (%s)", why)
        addresses = [self._peer, *reversed(self._learned), *self._candidates]
        if why == "direct retry":  # on the relay: the direct addresses only
            addresses = [a for a in addresses if a != self._relay]
        self._targets = [_Target(a, next_at=now) for a in list(dict.fromkeys(addresses))[:8]]
        self._recheck_until = now + RECHECK_S
        self._nominee = None
        self._nominate_at = None
        self.handle_timer(now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has something due."""
        times = [t.next_at for t in self._targets if t.next_at is not None]
        for when in (
            self._consent.get_timer(),
            self._recheck_until,
            self._nominate_at,
            self._bind_at,
            self._direct_at,
            self._keepalive_at,
        ):
            if when is not None:
                times.append(when)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Send what is due: consent checks, re-checks, nominations; follow consent."""
        if self._consent.check_due(now):
            self._request(MessageType.CHECK, self._peer)
            self._consent.checked(now)
            self._counts["consent_checks"] += 1
        change = self._consent.update(now)
        if change is True:
            self._counts["consent_lost"] += 1
            self._events.append(ConsentLost(self._peer))
            self.recheck(now, "consent lost")
        elif change is False:
            self._events.append(ConsentRestored(self._peer))
        for target in self._targets:
            if target.next_at is not None and now >= target.next_at:
                self._request(MessageType.CHECK, target.address)
                target.sent += 1
                wait = min(CHECK_INTERVAL_S * 2 ** min(target.sent - 1, 8), CHECK_MAX_INTERVAL_S)
                target.next_at = now + wait
        if self._nominate_at is not None and now >= self._nominate_at:
            self._send_nominate(now)
        if self._recheck_until is not None and now >= self._recheck_until:
            self._end_recheck()
            if self._relay_target is not None and self._peer != self._relay:
                self._bind_at, self._bind_until = now, now + RELAY_BIND_S  # no direct path
        self._relay_timer(now)

    def _relay_timer(self, now: float) -> None:
        target = self._relay_target
        if target is None:
            return
        if self._bind_until is not None and now >= self._bind_until:
            self._bind_at = self._bind_until = None
        if self._bind_at is not None and now >= self._bind_at:
            self._queue(target.bind, target.address)
            self._bind_at = now + BIND_RETRY_S
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._queue(target.bind, target.address)
            self._keepalive_at = now + RELAY_KEEPALIVE_S
        if self._direct_at is not None and now >= self._direct_at:
            self._direct_at = now + DIRECT_RETRY_S
            if self._recheck_until is None and (self._candidates or self._learned):
                self.recheck(now, "direct retry")

    def _relay_timers(self, now: float) -> None:
        """On the relay: retry direct; off it: keep the allocation alive."""
        if self._relay_target is None:
            return
        on_relay = self._peer == self._relay
        self._direct_at = now + DIRECT_RETRY_S if on_relay else None
        self._keepalive_at = None if on_relay else now + RELAY_KEEPALIVE_S

    def __call__(
        self, data: bytes, addr: Address, now: float
    ) -> list[tuple[bytes, Address]] | None:
        """The side channel: take ``data`` from ``addr`` if it is a path message or a relay's.

        Returns:
            None for media (or garbage: the session counts it), else what to send now.
        """
        if is_relay_ack(data, addr, self._relay):
            if data[MAGIC_LENGTH] == ACK_PEER_BOUND and self._bind_at is not None:
                self._end_recheck()
                self._switch(addr, now, "relay")  # both bound: the relay forwards
            return []
        if is_relay_challenge(data, addr, self._relay):
            target = self._relay_target
            answer = None if target is None else target.answer(data, addr)
            if answer is not None:  # to a fallback or keepalive bind: prove our address
                self._queue(answer, addr)
            return self.datagrams_to_send(now)
        if data[:MAGIC_LENGTH] != PATH_MAGIC or len(data) != MESSAGE_LENGTH:
            return None
        try:
            message = PathMessage.parse(data, self._key)
        except DecodeError:
            return None  # not from the peer: the media session counts it
        if message.role is not self._role:  # else one of ours, reflected: dropped
            try:
                self._receive(message, addr, now)
            except LocalProtocolError:  # a source address that is not IPv4
                pass
        return self.datagrams_to_send(now)

    # receiving

    def _receive(self, message: PathMessage, addr: Address, now: float) -> None:
        kind = message.kind
        if kind is MessageType.CHECK:
            self._answer(MessageType.RESPONSE, message, addr)
            if addr != self._peer:
                self._learn(addr, now)
                self._validate(addr, now)
        elif kind is MessageType.NOMINATE:
            if addr == self._peer:
                self._answer(MessageType.NOMINATE_ACK, message, addr)
            elif self._is_validated(addr, now):
                self._switch(addr, now, "nominated")
                self._answer(MessageType.NOMINATE_ACK, message, addr)
            else:
                # return routability first: switch once addr answers our check
                self._counts["unvalidated_nominations"] += 1
                self._learn(addr, now)
                if addr in self._pending or len(self._pending) < MAX_LEARNED:
                    self._pending[addr] = message.transaction_id
                self._validate(addr, now)
        else:
            self._receive_answer(message, addr, now)

    def _receive_answer(self, message: PathMessage, addr: Address, now: float) -> None:
        request = self._transactions.get(message.transaction_id)
        expected = (
            MessageType.CHECK if message.kind is MessageType.RESPONSE else MessageType.NOMINATE
        )
        if request is None or request != (expected, addr):
            return  # late, repeated, forged, or from elsewhere than the request went
        del self._transactions[message.transaction_id]
        if message.kind is MessageType.NOMINATE_ACK:
            if addr == self._nominee:
                if addr != self._peer:
                    self._switch(addr, now, "acked")
                self._end_recheck()
            return
        self._validated[addr] = now
        self._consent.answered(addr, now)
        if self._consent.update(now) is False:
            self._events.append(ConsentRestored(self._peer))
        pending = self._pending.pop(addr, None)
        if pending is not None and addr != self._peer:
            self._switch(addr, now, "nominated")
            ack = PathMessage(MessageType.NOMINATE_ACK, self._role, pending, addr)
            self._queue(ack.serialize(self._key), addr)
        target = next((t for t in self._targets if t.address == addr), None)
        if target is not None and self._nominee is None and self._recheck_until is not None:
            self._nominee = addr  # the first that answered
            for other in self._targets:
                other.next_at = None
            self._nominations = 0
            self._send_nominate(now)

    # helpers

    def _is_validated(self, addr: Address, now: float) -> bool:
        at = self._validated.get(addr)
        return at is not None and now - at < VALIDATION_FRESH_S

    def _learn(self, addr: Address, now: float) -> None:
        self._learned.pop(addr, None)
        self._learned[addr] = now  # the newest last
        while len(self._learned) > MAX_LEARNED:
            del self._learned[next(iter(self._learned))]

    def _validate(self, addr: Address, now: float) -> None:
        last = self._validate_at.get(addr)
        if last is not None and now - last < VALIDATE_INTERVAL_S:
            return
        if last is None and len(self._validate_at) >= 4 * MAX_LEARNED:
            self._validate_at.clear()  # bounded memory; only rate limits are forgotten
        self._validate_at[addr] = now
        self._counts["validations"] += 1
        self._request(MessageType.CHECK, addr)

    def _switch(self, addr: Address, now: float, reason: str) -> None:
        old, self._peer = self._peer, addr
        self._counts["switches"] += 1
        self._consent.start(addr, now)  # it just answered us
        self._bind_at = self._bind_until = None
        self._relay_timers(now)
        self._events.append(PathSwitched(old, addr, reason))

    def _send_nominate(self, now: float) -> None:
        if self._nominee is None or self._nominations >= NOMINATE_TRANSMISSIONS:
            self._nominate_at = None
            return
        self._request(MessageType.NOMINATE, self._nominee)
        self._nominations += 1
        self._nominate_at = now + NOMINATE_INTERVAL_S

    def _end_recheck(self) -> None:
        self._targets = []
        self._recheck_until = None
        self._nominate_at = None

    def _answer(self, kind: MessageType, request: PathMessage, addr: Address) -> None:
        reply = PathMessage(kind, self._role, request.transaction_id, addr)
        self._queue(reply.serialize(self._key), addr)

    def _request(self, kind: MessageType, addr: Address) -> None:
        transaction_id = self._token_source(TRANSACTION_ID_LENGTH)
        message = PathMessage(kind, self._role, transaction_id, addr)
        self._queue(message.serialize(self._key), addr)
        self._transactions[transaction_id] = (kind, addr)
        while len(self._transactions) > MAX_TRANSACTIONS:
            del self._transactions[next(iter(self._transactions))]

    def _queue(self, data: bytes, addr: Address) -> None:
        self._outgoing.append((data, addr))


def local_ipv4_addresses() -> frozenset[str]:
    """This machine's IPv4 addresses, but loopback and link-local (what a move changes)."""
    found = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ipaddress.IPv4Address(ip.ip)
                if not (address.is_loopback or address.is_link_local):
                    found.add(str(address))
    return frozenset(found)


class Mobility:
    """Drives a :class:`PathMonitor` beside a media session: timers, address watch, silence.

    Args:
        keys: the call's keys.
        choice: the chosen path.
        candidates: the peer's candidates, numeric IPv4.
        addresses: reads this machine's addresses (default :func:`local_ipv4_addresses`;
            None: no watch, only silence and consent start re-checks).
        watch_interval_s: how often the addresses and the session's silence are read.
        consent: the consent follower (default: the standard figures).
        relay: the relay grant to fall back to (see :class:`PathMonitor`).
    """

    def __init__(
        self,
        keys: CallKeys,
        choice: PathChoice,
        candidates: Sequence[Address] = (),
        *,
        addresses: Callable[[], frozenset[str]] | None = local_ipv4_addresses,
        watch_interval_s: float = WATCH_INTERVAL_S,
        consent: ConsentFreshness | None = None,
        relay: RelayTarget | None = None,
    ) -> None:
        self.monitor = PathMonitor(keys, choice, candidates, consent=consent, relay=relay)
        self._addresses = addresses
        self._watch_s = watch_interval_s
        self._session: MediaSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._known: frozenset[str] | None = None
        self._silent_recheck_at = 0.0
        self._closed = False

    def side_channel(
        self, data: bytes, addr: Address, now: float
    ) -> list[tuple[bytes, Address]] | None:
        """Give this to the media session as its ``side_channel``."""
        answers = self.monitor(data, addr, now)
        if answers is not None:
            self._apply_events()
            if self._wake is not None:
                self._wake.set()  # a timer may have moved
        return answers

    def attach(self, session: MediaSession) -> None:
        """Start watching: ``session`` is connected to the chosen path's peer."""
        loop = asyncio.get_running_loop()
        self._session = session
        self._wake = asyncio.Event()
        if self._addresses is not None:
            self._known = self._addresses()
        self.monitor.start(loop.time())
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop the watch (the session's end stops it too)."""
        self._closed = True  # ends the loop even if a cancellation were lost
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): that would also
            # swallow a cancellation of the task calling close (the call's own task)
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        session, wake = self._session, self._wake
        assert session is not None and wake is not None
        loop = asyncio.get_running_loop()
        next_watch = loop.time() + self._watch_s
        while session.end_reason is None and not self._closed:
            now = loop.time()
            if now >= next_watch:
                next_watch = now + self._watch_s
                self._watch(now, session)
            self.monitor.handle_timer(now)
            for data, addr in self.monitor.datagrams_to_send(now):
                session.send_datagram(data, addr)
            self._apply_events()
            when = self.monitor.get_timer()
            wait = next_watch if when is None else min(when, next_watch)
            wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for with a timeout of 0 can
            # turn a cancellation into a TimeoutError (which this loop would swallow)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait - loop.time())):
                    await wake.wait()

    def _watch(self, now: float, session: MediaSession) -> None:
        if self._addresses is not None:
            try:
                addresses = self._addresses()
            except OSError as exc:
                logger.debug("mobility: cannot read the addresses: %s", exc)
            else:
                if addresses != self._known:
                    logger.info("mobility: our addresses changed")
                    self._known = addresses
                    self.monitor.recheck(now, "address change")
        if session.is_reconnecting and now >= self._silent_recheck_at:
            self._silent_recheck_at = now + RECHECK_S
            self.monitor.recheck(now, "peer silent")

    def _apply_events(self) -> None:
        session = self._session
        while (event := self.monitor.next_event()) is not None:
            if session is None:
                continue
            if isinstance(event, PathSwitched):
                logger.info("mobility: media moved to %s:%d (%s)", *event.new, event.reason)
                session.move_to(event.new)
                session.set_media_blocked(False)
            elif isinstance(event, ConsentLost):
                logger.info("mobility: no consent from %s:%d, media paused", *event.address)
                session.set_media_blocked(True)
            else:
                logger.info("mobility: consent from %s:%d again", *event.address)
                session.set_media_blocked(False)
