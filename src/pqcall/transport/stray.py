"""Datagrams of call setup that may reach the media session late: told apart, not rejected.

Scope: the media socket also carried, before media started, two kinds of datagram
that are neither media nor path messages, and a late copy of either may arrive once
the media session runs: a peer's NAT opener (:data:`pqcall.transport.gather.OPENER`,
exactly those 4 bytes; no SFrame packet is that short) and the answer to one of our
STUN Binding requests (RFC 5389: a Binding success or error response, magic cookie,
length matching the datagram; a random SFrame packet matches with odds near 2^-64).
:func:`stray_kind` names them so the session drops and counts each under its own
counter rather than as rejected (foreign or undecryptable). Pure: no I/O, no state.
"""

from __future__ import annotations

import enum
from typing import Final

from pqcall.transport.gather import OPENER

__all__ = ["StrayKind", "stray_kind"]

STUN_HEADER_BYTES: Final = 20
STUN_MAGIC_COOKIE: Final = b"\x21\x12\xa4\x42"
STUN_BINDING_RESPONSES: Final = frozenset({0x0101, 0x0111})
"""Binding success and error responses (RFC 5389 section 6)."""


class StrayKind(enum.StrEnum):
    """Which setup datagram arrived late on the media socket."""

    OPENER = "opener"
    """A peer's NAT opener."""
    STUN = "stun"
    """An answer to our STUN Binding request."""


def stray_kind(data: bytes) -> StrayKind | None:
    """The kind of setup datagram ``data`` is, or None (media, path message, garbage)."""
    if data == OPENER:
        return StrayKind.OPENER
    if (
        len(data) >= STUN_HEADER_BYTES
        and data[4:8] == STUN_MAGIC_COOKIE
        and int.from_bytes(data[0:2]) in STUN_BINDING_RESPONSES
        and int.from_bytes(data[2:4]) == len(data) - STUN_HEADER_BYTES
        and len(data) % 4 == 0
    ):
        return StrayKind.STUN
    return None
