"""The HANGUP packet's reason codes (``docs/protocol.md#media-packets``).

Scope: :class:`HangupReason`, the one byte a hang-up carries; its own module so
:mod:`~pqcall.transport.media_packets` stays under the size limit.
:mod:`~pqcall.transport.media_packets` re-exports it. Pure.
"""

from __future__ import annotations

import enum

__all__ = ["HangupReason"]


class HangupReason(enum.IntEnum):
    """Why a side hung up (the HANGUP reason byte); other values mean "unspecified"."""

    NORMAL = 0
    """The user ended the call."""
    ERROR = 1
    """The softphone failed (device, codec)."""
    SHUTDOWN = 2
    """The softphone is quitting."""
