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
    "MAX_CALL_CANDIDATES",
    "MAX_CANDIDATES",
    "MAX_HOST_LENGTH",
    "Candidate",
    "HostPort",
    "check_host",
]

MAX_CANDIDATES: Final = 8
"""Candidates one phone offers at most."""
MAX_CALL_CANDIDATES: Final = 2 * MAX_CANDIDATES
"""Candidates of one party in a call: its own, plus the server-reflexive ones."""
MAX_HOST_LENGTH: Final = 253
"""The longest DNS name."""

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

    def __post_init__(self) -> None:
        try:
            if not 0 < len(self.host) <= MAX_HOST_LENGTH:
                raise ValueError("host must be 1 to 253 characters")
            check_host(self.host)
        except ValueError as exc:
            raise LocalProtocolError(f"candidate {self.host!r}: {exc}") from None
        if not 0 < self.port < 1 << 16:
            raise LocalProtocolError(f"candidate port must be from 1 to 65535, got {self.port}")
