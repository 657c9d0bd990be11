"""Media path selection for one call: connectivity checks, nomination, relay fallback, sans-I/O.

Scope: deciding where a phone sends its media (``docs/protocol.md#media-path-selection``).
Each phone has one UDP socket per call and offers candidate addresses for it over
signaling (host and server-reflexive ones with RFC 8445 priorities, gathered by
:mod:`pqcall.transport.gather`); the server adds the address it saw each phone at.
Both phones then probe the other's candidates, in the order given (by priority), with
small authenticated messages on that socket, the caller
(the *controlling* side, as in ICE, RFC 8445) nominates the first pair that answered,
and the callee (*controlled*) follows the nomination. When no pair answers, both use
the server's media relay (:mod:`pqcall.transport.relay_wire` holds its bind/ack format).
No socket, clock or randomness here: bytes, addresses and ``now`` in, datagrams and a
:class:`PathChoice` out, as aioquic's connection. :mod:`pqcall.transport.connect`
pumps a UDP socket through it.

The messages themselves (40 bytes, authenticated with a key both parties
export from the call's handshake) are :mod:`pqcall.transport.path_messages`; what a
selection reports is :mod:`pqcall.transport.path_choice`.

Calling contract::

    selection = PathSelection(keys, PathRole.CONTROLLING, remote, relay, token_source=...)
    selection.start(now)
    selection.receive_datagram(data, addr, now)    # every datagram on the socket
    selection.handle_timer(now)                    # when get_timer() comes
    # after each of the calls above:
    for data, addr in selection.datagrams_to_send(now): send data to addr
    # and stop at selection.choice (a PathChoice) or selection.failure (a reason)

Nothing raises out of :meth:`PathSelection.receive_datagram`: datagrams that are not
path messages, malformed, unauthenticated, reflected or unexpected ones are dropped
and counted (:class:`~pqcall.transport.path_choice.PathCheckStats`). Once media runs
on the socket, a :class:`~pqcall.transport.path_responder.PathResponder` keeps
answering the peer's late checks and nominations.

Future direction: IPv6 candidates (the messages carry IPv4 addresses), and TURN
candidates checked like the others.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.candidates import MAX_CALL_CANDIDATES
from pqcall.transport.path_choice import (
    DropReason,
    PathCheckStats,
    PathChoice,
    PathCounters,
    PathKind,
)
from pqcall.transport.path_messages import (
    MAGIC_LENGTH,
    MESSAGE_LENGTH,
    PATH_MAGIC,
    TRANSACTION_ID_LENGTH,
    UNAUTHENTICATED_MESSAGE,
    Address,
    MessageType,
    PathMessage,
    PathRole,
    numeric_ipv4,
    path_check_key,
)
from pqcall.transport.relay_wire import (
    ACK_PEER_BOUND,
    ACK_PEER_WAITING,
    BIND_RETRY_S,
    RelayTarget,
    is_relay_ack,
)

__all__ = [
    "CHECK_INTERVAL_S",
    "CHECK_MAX_INTERVAL_S",
    "CHECK_TRANSMISSIONS",
    "DIRECT_TIMEOUT_S",
    "MAX_REMOTE_CANDIDATES",
    "NOMINATE_INTERVAL_S",
    "NOMINATE_TRANSMISSIONS",
    "PATH_TIMEOUT_S",
    "PathSelection",
    "PathState",
]

# implementation constants
CHECK_INTERVAL_S: Final = 0.05
"""Wait before the first repeat of a check (ICE's Ta); each later wait doubles."""
CHECK_MAX_INTERVAL_S: Final = 0.2
"""Longest wait between two checks to one candidate."""
CHECK_TRANSMISSIONS: Final = 12
"""Checks sent to one candidate at most (the last about 1.95 s after the first)."""
NOMINATE_INTERVAL_S: Final = 0.05
"""Wait between two copies of a nomination."""
NOMINATE_TRANSMISSIONS: Final = 10
"""Copies of a nomination before the caller gives up on that path."""
DIRECT_TIMEOUT_S: Final = 2.0
"""The caller turns to the relay when no direct path answered by then."""
PATH_TIMEOUT_S: Final = 10.0
"""Selection fails when no path is chosen by then."""
MAX_REMOTE_CANDIDATES: Final = MAX_CALL_CANDIDATES
"""Candidates of the peer to check at most: all it may offer in a call."""
MAX_PEER_REFLEXIVE: Final = 8
"""Addresses learned from the peer's checks (not offered) that are checked too, at most."""
MAX_TRANSACTIONS: Final = 512
"""Outstanding requests remembered for their answer; the oldest are forgotten."""


class PathState(enum.StrEnum):
    """What a :class:`PathSelection` waits for."""

    EXPECT_RESPONSE = "expect_response"
    """Caller: checks are out; the first pair that answers is nominated."""
    EXPECT_NOMINATE_ACK = "expect_nominate_ack"
    """Caller: a pair answered and is nominated; waiting for the callee's ack."""
    EXPECT_RELAY = "expect_relay"
    """Caller: gave up on the direct path; bound to the relay, waiting for the callee there."""
    EXPECT_NOMINATION = "expect_nomination"
    """Callee: answering checks, checking too, bound to the relay; waiting for the caller."""
    CHOSEN = "chosen"
    """A path is chosen (:attr:`PathSelection.choice`)."""
    FAILED = "failed"
    """No path (:attr:`PathSelection.failure`)."""


@dataclass(slots=True, eq=False)
class _Remote:
    address: Address  # the peer's candidate (numeric IPv4)
    is_peer_reflexive: bool  # learned from a check of the peer's, not offered
    sent: int = 0  # checks sent to it
    next_at: float | None = None  # when the next check is due; None: no more
    answered: bool = False  # a response came back from it


@dataclass(frozen=True, slots=True)
class _Transaction:
    kind: MessageType  # CHECK or NOMINATE
    address: Address  # where it was sent


class PathSelection:
    """One side of a call's path selection (``docs/protocol.md#media-path-selection``).

    Args:
        keys: the call's keys; the MAC key is exported from them.
        role: CONTROLLING for the caller, CONTROLLED for the callee (must match ``keys``).
        remote: the peer's candidates, numeric IPv4, in the order to prefer (duplicates
            are checked once).
        relay: the relay and our bind token, if the server granted one.
        token_source: returns ``n`` unpredictable bytes (``secrets.token_bytes``).
        direct_timeout_s: the caller binds to the relay when no direct path answered by
            then (at once when it has no candidate to check).
        timeout_s: no path by then is a failure.

    Raises:
        LocalProtocolError: a role that does not match the keys, a remote or relay
            address that is not numeric IPv4, too many candidates, or a bad timeout.
    """

    def __init__(
        self,
        keys: CallKeys,
        role: PathRole,
        remote: Sequence[Address],
        relay: RelayTarget | None = None,
        *,
        token_source: Callable[[int], bytes],
        direct_timeout_s: float = DIRECT_TIMEOUT_S,
        timeout_s: float = PATH_TIMEOUT_S,
    ) -> None:
        if role is not PathRole.of(keys.role):
            raise LocalProtocolError(
                f"path role {role.name.lower()} does not match the keys of the {keys.role.value}"
            )
        if timeout_s <= 0 or direct_timeout_s < 0:
            raise LocalProtocolError(
                "path selection timeouts must be positive (direct: not negative)"
            )
        addresses = list(dict.fromkeys(numeric_ipv4(a, "remote candidate") for a in remote))
        if len(addresses) > MAX_REMOTE_CANDIDATES:
            raise LocalProtocolError(
                f"{len(addresses)} remote candidates, at most {MAX_REMOTE_CANDIDATES}"
            )
        self._key = path_check_key(keys)  # MAC key of every message
        self._role = role  # ours
        self._remotes = [_Remote(a, is_peer_reflexive=False) for a in addresses]  # to check
        self._relay = (  # the relay, with its address normalized
            None
            if relay is None
            else RelayTarget(
                numeric_ipv4(relay.address, "relay address"), relay.token, relay.sequence
            )
        )
        self._token_source = token_source  # randomness, injected
        self._direct_timeout_s = direct_timeout_s  # see DIRECT_TIMEOUT_S
        self._timeout_s = timeout_s  # see PATH_TIMEOUT_S
        self._state = (
            PathState.EXPECT_RESPONSE
            if role is PathRole.CONTROLLING
            else PathState.EXPECT_NOMINATION
        )
        self._started_at: float | None = None  # set by start
        self._direct_deadline: float | None = None  # caller: when to turn to the relay
        self._deadline: float | None = None  # when selection fails
        self._transactions: dict[bytes, _Transaction] = {}  # our requests awaiting answers
        self._nominee: Address | None = None  # caller: the pair being nominated
        self._nominations = 0  # copies of the nomination sent
        self._nominate_at: float | None = None  # when the next copy is due
        self._nomination_failed = False  # every copy went unanswered
        self._bind_at: float | None = None  # when the next relay bind is due
        self._relay_bound = False  # the relay acked a bind of ours
        self._outgoing: list[tuple[bytes, Address]] = []  # datagrams to send
        self._counters = PathCounters()  # see PathCheckStats
        self._choice: PathChoice | None = None  # set once chosen
        self._failure: str | None = None  # set once failed

    # state

    @property
    def role(self) -> PathRole:
        """Our role."""
        return self._role

    @property
    def state(self) -> PathState:
        """What the selection waits for."""
        return self._state

    @property
    def choice(self) -> PathChoice | None:
        """The chosen path, once :attr:`state` is CHOSEN."""
        return self._choice

    @property
    def failure(self) -> str | None:
        """Why no path was found, once :attr:`state` is FAILED (one line for a user)."""
        return self._failure

    @property
    def remote_candidates(self) -> list[Address]:
        """The peer's addresses being checked, offered first, then learned ones."""
        return [remote.address for remote in self._remotes]

    @property
    def stats(self) -> PathCheckStats:
        """The counters so far."""
        return self._counters.snapshot()

    # the calling contract

    def start(self, now: float) -> None:
        """Start checking (and, for the callee, binding to the relay) at ``now``.

        Raises:
            LocalProtocolError: already started.
        """
        if self._started_at is not None:
            raise LocalProtocolError("path selection is already started")
        self._started_at = now
        self._deadline = now + self._timeout_s
        for remote in self._remotes:
            remote.next_at = now
        if self._role is PathRole.CONTROLLING:
            self._direct_deadline = now + self._direct_timeout_s
            if not self._remotes and self._relay is not None:
                self._turn_to_relay(now)
        elif self._relay is not None:
            self._bind_at = now
        self.handle_timer(now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one datagram received on the media socket from ``addr``.

        Never raises on the datagram's content: what does not count is dropped and
        counted in :attr:`stats`.

        Raises:
            LocalProtocolError: not started, or ``addr`` is not a numeric IPv4 address.
        """
        if self._started_at is None:
            raise LocalProtocolError("path selection is not started")
        addr = numeric_ipv4(addr, "source address")
        if is_relay_ack(data, addr, self._relay_address):
            self._receive_relay_ack(data[MAGIC_LENGTH], now)
            return
        relay_answer = None if self._relay is None else self._relay.answer(data, addr)
        if relay_answer is not None:  # the relay's return-routability check (relay_wire)
            self._queue(relay_answer, addr)
            return
        message = self._open(data)
        if message is None:
            return
        kind = message.kind
        if kind is MessageType.CHECK:
            self._receive_check(message, addr, now)
        elif kind is MessageType.NOMINATE:
            self._receive_nominate(message, addr, now)
        else:
            self._receive_answer(message, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams queued since the last call, each with its destination, in order."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        if self._state in (PathState.CHOSEN, PathState.FAILED) or self._deadline is None:
            return None
        times = [self._deadline]
        if self._is_checking:
            times += [r.next_at for r in self._remotes if r.next_at is not None]
        if (
            self._state is PathState.EXPECT_RESPONSE
            and self._direct_deadline is not None
            and self._relay is not None  # without one, direct checking goes on to the end
        ):
            times.append(self._direct_deadline)
        if self._nominate_at is not None:
            times.append(self._nominate_at)
        if self._bind_at is not None:
            times.append(self._bind_at)
        return min(times)

    def handle_timer(self, now: float) -> None:
        """Send what is due at ``now``: checks, nominations, binds; give up when it is time."""
        if self._state in (PathState.CHOSEN, PathState.FAILED) or self._deadline is None:
            return
        if now >= self._deadline:
            self._fail(self._timeout_reason())
            return
        if self._is_checking:
            for remote in self._remotes:
                if remote.next_at is not None and now >= remote.next_at:
                    self._send_check(remote, now)
        if self._nominate_at is not None and now >= self._nominate_at:
            if self._nominations >= NOMINATE_TRANSMISSIONS:
                self._nomination_timed_out(now)
            else:
                self._send_nominate(now)
        if (
            self._state is PathState.EXPECT_RESPONSE
            and self._direct_deadline is not None
            and now >= self._direct_deadline
            and self._relay is not None
        ):
            self._turn_to_relay(now)
        if self._bind_at is not None and now >= self._bind_at:
            assert self._relay is not None
            self._queue(self._relay.bind, self._relay.address)
            self._counters.binds_sent += 1
            self._bind_at = now + BIND_RETRY_S

    # receiving

    @property
    def _relay_address(self) -> Address | None:
        return None if self._relay is None else self._relay.address

    @property
    def _is_checking(self) -> bool:
        return self._state in (PathState.EXPECT_RESPONSE, PathState.EXPECT_NOMINATION)

    def _open(self, data: bytes) -> PathMessage | None:
        """The authentic message from the peer in ``data``, or None (counted)."""
        dropped = self._counters.dropped
        if data[:MAGIC_LENGTH] != PATH_MAGIC:
            dropped[DropReason.NOT_PATH_MESSAGE] += 1
            return None
        if len(data) != MESSAGE_LENGTH:
            dropped[DropReason.MALFORMED] += 1
            return None
        try:
            message = PathMessage.parse(data, self._key)
        except DecodeError as exc:
            authentic = str(exc) != UNAUTHENTICATED_MESSAGE
            dropped[DropReason.MALFORMED if authentic else DropReason.UNAUTHENTICATED] += 1
            return None
        if message.role is self._role:
            dropped[DropReason.REFLECTED] += 1
            return None
        return message

    def _receive_relay_ack(self, state: int, now: float) -> None:
        if state not in (ACK_PEER_WAITING, ACK_PEER_BOUND):
            self._counters.dropped[DropReason.MALFORMED] += 1
            return
        self._counters.relay_acks_received += 1
        self._relay_bound = True
        if state != ACK_PEER_BOUND:
            return
        # both bound: the caller binds only once it gave up on the direct path
        if self._state in (PathState.EXPECT_RELAY, PathState.EXPECT_NOMINATION):
            assert self._relay is not None
            self._choose(PathKind.RELAY, self._relay.address, None, None, now)

    def _receive_check(self, message: PathMessage, addr: Address, now: float) -> None:
        self._counters.checks_received += 1
        response = PathMessage(MessageType.RESPONSE, self._role, message.transaction_id, addr)
        self._queue(response.serialize(self._key), addr)
        if not self._is_checking:
            return
        # a triggered check (RFC 8445 section 7.3.1.4): the peer reached us from addr,
        # so addr is likely to reach the peer, even if the peer did not offer it
        remote = next((r for r in self._remotes if r.address == addr), None)
        if remote is None:
            learned = sum(r.is_peer_reflexive for r in self._remotes)
            if learned >= MAX_PEER_REFLEXIVE:
                return
            remote = _Remote(addr, is_peer_reflexive=True)
            self._remotes.append(remote)
            self._send_check(remote, now)
        elif not remote.answered and remote.next_at is None:
            self._send_check(remote, now)

    def _receive_nominate(self, message: PathMessage, addr: Address, now: float) -> None:
        if self._role is not PathRole.CONTROLLED:
            self._counters.dropped[DropReason.UNEXPECTED] += 1
            return
        if self._state is PathState.EXPECT_NOMINATION:
            self._counters.nominations_received += 1
            self._choose(PathKind.DIRECT, addr, message.address, addr, now)
        elif self._choice is not None and self._choice.kind is PathKind.DIRECT:
            if addr != self._choice.peer:  # one nomination per call: the first one stands
                self._counters.dropped[DropReason.UNEXPECTED] += 1
                return
            self._counters.nominations_received += 1  # a repeat: our ack was lost
        else:
            self._counters.dropped[DropReason.UNEXPECTED] += 1
            return
        ack = PathMessage(MessageType.NOMINATE_ACK, self._role, message.transaction_id, addr)
        self._queue(ack.serialize(self._key), addr)

    def _receive_answer(self, message: PathMessage, addr: Address, now: float) -> None:
        request = self._transactions.get(message.transaction_id)
        expected = (
            MessageType.CHECK if message.kind is MessageType.RESPONSE else MessageType.NOMINATE
        )
        if request is None or request.kind is not expected:
            self._counters.dropped[DropReason.UNKNOWN_TRANSACTION] += 1
            return
        if request.address != addr:
            # the answer must come from where the request went (RFC 8445 section 7.2.5.2.1),
            # or the peer's media would come from an address we do not expect
            self._counters.dropped[DropReason.ASYMMETRIC] += 1
            return
        del self._transactions[message.transaction_id]
        if message.kind is MessageType.RESPONSE:
            self._counters.responses_received += 1
            remote = next((r for r in self._remotes if r.address == addr), None)
            if remote is not None:
                remote.answered = True
                remote.next_at = None
            if self._state is PathState.EXPECT_RESPONSE:
                # the first pair that answered is nominated
                self._state = PathState.EXPECT_NOMINATE_ACK
                self._nominee = addr
                self._send_nominate(now)
        elif (
            self._state in (PathState.EXPECT_NOMINATE_ACK, PathState.EXPECT_RELAY)
            and addr == self._nominee
        ):
            # also after the copies ran out: the callee has chosen this path, so follow it
            self._choose(PathKind.DIRECT, addr, message.address, addr, now)
        else:
            self._counters.dropped[DropReason.UNEXPECTED] += 1

    # sending

    def _queue(self, data: bytes, addr: Address) -> None:
        self._outgoing.append((data, addr))

    def _request(self, kind: MessageType, addr: Address) -> None:
        transaction_id = self._token_source(TRANSACTION_ID_LENGTH)
        if len(transaction_id) != TRANSACTION_ID_LENGTH:
            raise LocalProtocolError(f"token source gave {len(transaction_id)} bytes, not 12")
        self._transactions[transaction_id] = _Transaction(kind, addr)
        while len(self._transactions) > MAX_TRANSACTIONS:
            del self._transactions[next(iter(self._transactions))]
        message = PathMessage(kind, self._role, transaction_id, addr)
        self._queue(message.serialize(self._key), addr)

    def _send_check(self, remote: _Remote, now: float) -> None:
        self._request(MessageType.CHECK, remote.address)
        self._counters.checks_sent += 1
        remote.sent += 1
        if remote.sent < CHECK_TRANSMISSIONS:
            interval = CHECK_INTERVAL_S * 2 ** min(remote.sent - 1, 16)
            remote.next_at = now + min(interval, CHECK_MAX_INTERVAL_S)
        else:
            remote.next_at = None

    def _send_nominate(self, now: float) -> None:
        assert self._nominee is not None
        self._request(MessageType.NOMINATE, self._nominee)
        self._counters.nominations_sent += 1
        self._nominations += 1
        self._nominate_at = now + NOMINATE_INTERVAL_S

    def _nomination_timed_out(self, now: float) -> None:
        self._nominate_at = None
        self._nomination_failed = True
        if self._relay is not None:
            self._turn_to_relay(now)
        else:
            self._fail(self._timeout_reason(early=True))

    def _turn_to_relay(self, now: float) -> None:
        self._state = PathState.EXPECT_RELAY
        self._nominate_at = None
        self._bind_at = now

    # ending

    def _choose(
        self,
        kind: PathKind,
        peer: Address,
        local: Address | None,
        remote: Address | None,
        now: float,
    ) -> None:
        assert self._started_at is not None
        self._state = PathState.CHOSEN
        self._stop()
        self._choice = PathChoice(
            kind=kind,
            peer=peer,
            local_candidate=local,
            remote_candidate=remote,
            relay=self._relay_address,
            elapsed_ms=(now - self._started_at) * 1000,
            stats=self._counters.snapshot(),
        )

    def _fail(self, reason: str) -> None:
        self._state = PathState.FAILED
        self._stop()
        self._failure = reason

    def _stop(self) -> None:
        for remote in self._remotes:
            remote.next_at = None
        self._nominate_at = None
        self._bind_at = None

    def _timeout_reason(self, *, early: bool = False) -> str:
        """One line: why neither the direct path nor the relay worked."""
        head = "no media path" if early else f"no media path after {self._timeout_s:g} s"
        offered = [r for r in self._remotes if not r.is_peer_reflexive]
        if self._nomination_failed or self._state is PathState.EXPECT_NOMINATE_ACK:
            direct = "the peer did not confirm the direct path"
        elif self._role is PathRole.CONTROLLED:
            direct = "the caller nominated no direct path"
        elif not offered:
            direct = "the peer offered no usable address"
        else:
            count = len(offered)
            direct = f"no answer from the peer's {count} address{'es' if count > 1 else ''}"
        if self._relay is None:
            relay = "no relay offered"
        elif self._state in (PathState.EXPECT_RESPONSE, PathState.EXPECT_NOMINATE_ACK):
            relay = "the relay was not tried"
        elif not self._relay_bound:
            relay = "the relay did not answer"
        else:
            relay = "the peer did not reach the relay"
        return f"{head}: {direct}; {relay}"
