"""Candidate addresses for the media path: the plain type, its limits and checks.

Scope: what a phone offers for the direct path and what path selection checks
(``docs/protocol.md#media-path-selection``), owned by transport so that it needs no
signaling. :mod:`pqcall.signaling.messages` builds its JSON ``Candidate`` on these
limits and checks; the client turns one into the other when it offers its candidates.
Anything with ``host`` and ``port`` (:class:`HostPort`) is accepted as the peer's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Protocol

from pqcall.exceptions import LocalProtocolError

__all__ = [
    "CANDIDATE_KINDS",
    "MAX_CALL_CANDIDATES",
    "MAX_CANDIDATES",
    "MAX_HOST_LENGTH",
    "MAX_PRIORITY",
    "Candidate",
    "HostPort",
    "candidate_priority",
    "check_host",
    "priority_of",
]

MAX_CANDIDATES: Final = 8
"""Candidates one phone offers at most."""
MAX_CALL_CANDIDATES: Final = 2 * MAX_CANDIDATES
"""Candidates of one party in a call: its own, plus the server-reflexive ones."""
MAX_HOST_LENGTH: Final = 253
"""The longest DNS name."""
MAX_PRIORITY: Final = (1 << 31) - 1
"""A candidate's priority is 1 to this (RFC 8445 section 5.1.2)."""
CANDIDATE_KINDS: Final = ("host", "srflx", "prflx", "relay")
"""RFC 8445 candidate types: on an interface, server-reflexive (the NAT's mapping,
learned by STUN), peer-reflexive (learned from a check), relayed."""
_TYPE_PREFERENCE: Final = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}
_COMPONENT: Final = 1  # one UDP flow per call (RTP and RTCP share it)


def candidate_priority(kind: str, local_preference: int = 65535) -> int:
    """RFC 8445 section 5.1.2.1: ``2^24 type preference + 2^8 local preference + 255``.

    Raises:
        LocalProtocolError: an unknown kind, or a local preference outside 0-65535.
    """
    if kind not in _TYPE_PREFERENCE:
        raise LocalProtocolError(f"unknown candidate kind {kind!r}")
    if not 0 <= local_preference <= 0xFFFF:
        raise LocalProtocolError(f"local preference must be 0-65535, got {local_preference}")
    return (_TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + (256 - _COMPONENT)


def priority_of(candidate: object) -> int:
    """A candidate's ``priority`` if it has one (1 or more), else 0: sorts after every
    prioritized one (the server's address guesses carry none)."""
    priority = getattr(candidate, "priority", None)
    return priority if isinstance(priority, int) and priority > 0 else 0


_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def check_host(host: str) -> str:
    """``host`` unchanged if it is an IP address or a DNS name.

    Raises:
        ValueError: neither (as pydantic validators expect).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError("host must be an IP address or a DNS name") from None
    return host


class HostPort(Protocol):
    """Anything that names a candidate: a :class:`Candidate` or a signaling message."""

    @property
    def host(self) -> str:
        """An IP address or a DNS name."""
        ...

    @property
    def port(self) -> int:
        """A UDP port, 1 to 65535."""
        ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """A transport address a phone offers for the media path.

    Raises:
        LocalProtocolError: a host that is no IP address or DNS name, or a port outside
            1-65535.
    """

    host: str
    """An IP address or a DNS name (at most ``MAX_HOST_LENGTH`` characters)."""
    port: int
    """The UDP port."""
    kind: str = "host"
    """One of :data:`CANDIDATE_KINDS`."""
    priority: int = 0
    """RFC 8445 priority (:func:`candidate_priority`); 0: none given."""

    def __post_init__(self) -> None:
        try:
            if not 0 < len(self.host) <= MAX_HOST_LENGTH:
                raise ValueError("host must be 1 to 253 characters")
            check_host(self.host)
        except ValueError as exc:
            raise LocalProtocolError(f"candidate {self.host!r}: {exc}") from None
        if not 0 < self.port < 1 << 16:
            raise LocalProtocolError(f"candidate port must be from 1 to 65535, got {self.port}")
        if self.kind not in CANDIDATE_KINDS or not 0 <= self.priority <= MAX_PRIORITY:
            raise LocalProtocolError(f"candidate kind {self.kind!r} or priority is not valid")
