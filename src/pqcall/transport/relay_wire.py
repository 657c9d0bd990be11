"""The media relay's bind and ack datagrams, on the wire; spoken by the phone and the relay.

Scope: the format, and the phone's resend timing, of the two messages a phone and
the server's relay exchange (``docs/protocol.md#media-path-selection``). The relay's
rules live in :mod:`pqcall.server.relay_table`; the phone's use of them in
:mod:`pqcall.transport.pathcheck`. It sits in transport, the lowest layer that
speaks it, so neither side imports the other. No state, no I/O.

Wire format (UDP, to the relay's port)::

    bind  (phone → relay)  b"PQRB" || token            20 bytes
    ack   (relay → phone)  b"PQRA" || state             5 bytes
                           state 0x00: bound, the other party is not bound yet
                           state 0x01: bound, both parties bound (forwarding)
    media (phone → relay)  any other datagram from a bound address, forwarded
                           unchanged to the other party's bound address

Phones tell an ack from forwarded media by length and magic (:func:`is_relay_ack`):
forwarded media is an SFrame packet, always longer than 5 bytes (its tag alone is 16).
A phone's :class:`RelayTarget` is the relay's address with its own token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Self

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.path_messages import Address

__all__ = [
    "ACK_LENGTH",
    "ACK_MAGIC",
    "ACK_PEER_BOUND",
    "ACK_PEER_WAITING",
    "BIND_LENGTH",
    "BIND_MAGIC",
    "BIND_RETRY_S",
    "KEEPALIVE_S",
    "MAGIC_LENGTH",
    "TOKEN_LENGTH",
    "RelayAck",
    "RelayBind",
    "RelayTarget",
    "is_relay_ack",
]

# specification constants
BIND_MAGIC: Final = b"PQRB"
"""First bytes of a bind."""
ACK_MAGIC: Final = b"PQRA"
"""First bytes of an ack."""
MAGIC_LENGTH: Final = 4
TOKEN_LENGTH: Final = 16
"""A party's bind token: its whole authorization to use the relay for one call."""
BIND_LENGTH: Final = MAGIC_LENGTH + TOKEN_LENGTH
ACK_LENGTH: Final = MAGIC_LENGTH + 1
ACK_PEER_WAITING: Final = 0x00
"""Ack state: this party is bound, the other one not yet."""
ACK_PEER_BOUND: Final = 0x01
"""Ack state: both parties are bound; the relay forwards."""

# phone behaviour
BIND_RETRY_S: Final = 0.5
"""Resend a bind this often until the ack says both parties are bound."""
KEEPALIVE_S: Final = 15.0
"""Then resend it this often, well inside NAT and relay idle timeouts."""


@dataclass(frozen=True, slots=True)
class RelayBind:
    """A bind: "send what the other party of my call sends to the address this came from"."""

    token: bytes
    """The sender's 16-byte bind token, from the signaling server."""

    def __post_init__(self) -> None:
        if len(self.token) != TOKEN_LENGTH:
            raise LocalProtocolError(
                f"relay token must be {TOKEN_LENGTH} bytes, got {len(self.token)}"
            )

    def serialize(self) -> bytes:
        """The bind datagram."""
        return BIND_MAGIC + self.token

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a bind datagram.

        Raises:
            DecodeError: not a bind, or not 20 bytes long.
        """
        if data[:MAGIC_LENGTH] != BIND_MAGIC:
            raise DecodeError("not a relay bind")
        if len(data) != BIND_LENGTH:
            raise DecodeError(f"relay bind must be {BIND_LENGTH} bytes, got {len(data)}")
        return cls(data[MAGIC_LENGTH:])


@dataclass(frozen=True, slots=True)
class RelayAck:
    """The relay's answer to a bind."""

    is_peer_bound: bool
    """Both parties are bound (state 0x01), not only the sender of the bind (0x00)."""

    def serialize(self) -> bytes:
        """The ack datagram."""
        return ACK_MAGIC + bytes([ACK_PEER_BOUND if self.is_peer_bound else ACK_PEER_WAITING])

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse an ack datagram.

        Raises:
            DecodeError: not an ack, not 5 bytes long, or an unknown state.
        """
        if data[:MAGIC_LENGTH] != ACK_MAGIC:
            raise DecodeError("not a relay ack")
        if len(data) != ACK_LENGTH:
            raise DecodeError(f"relay ack must be {ACK_LENGTH} bytes, got {len(data)}")
        state = data[MAGIC_LENGTH]
        if state not in (ACK_PEER_WAITING, ACK_PEER_BOUND):
            raise DecodeError(f"relay ack has an unknown state 0x{state:02x}")
        return cls(is_peer_bound=state == ACK_PEER_BOUND)


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """The relay one party may use for a call: its address and this party's bind token."""

    address: Address
    """Where to send binds and relayed media (numeric for path selection)."""
    token: bytes
    """This party's 16-byte bind token, from the signaling server."""

    def __post_init__(self) -> None:
        if len(self.token) != TOKEN_LENGTH:
            raise LocalProtocolError(
                f"relay token must be {TOKEN_LENGTH} bytes, got {len(self.token)}"
            )

    @property
    def bind(self) -> bytes:
        """The bind datagram."""
        return RelayBind(self.token).serialize()


def is_relay_ack(data: bytes, addr: Address, relay: Address | None) -> bool:
    """Whether a phone should read ``data`` from ``addr`` as an ack of ``relay`` (not media)."""
    return (
        relay is not None
        and addr == relay
        and len(data) == ACK_LENGTH
        and data[:MAGIC_LENGTH] == ACK_MAGIC
    )
