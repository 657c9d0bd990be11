"""What a call and its phone share: the peer's trust, the server requests a call makes,
the context a phone hands each :class:`~pqcall.client.call.Call`, and
the call as a JSON record.

Kept apart from ``call.py`` so the phone, the peers' trust helpers and the UI can name
these types without the call's flows.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.signaling.messages import (
    AcceptCall,
    CallDetail,
    ConfirmCall,
    HangupCall,
    InitiateCall,
    RejectCall,
)
from pqcall.transport.gather import stun_server_of

if TYPE_CHECKING:
    from pqcall.client.call import Call
    from pqcall.client.media_options import WallClockTrace

__all__ = [
    "CallApi",
    "CallContext",
    "PeerTrust",
    "call_record",
    "key_mismatch_reason",
    "stun_server_of",
]


class PeerTrust(enum.StrEnum):
    """What we knew of the peer's identity key when the call started."""

    NEW = "new"
    """First contact: pinned now (trust on first use); compare the SAS."""
    PINNED = "pinned"
    """The key we pinned before."""
    VERIFIED = "verified"
    """The pinned key, and the user once compared the safety number or a SAS."""


class CallApi(Protocol):
    """The server requests a call makes (:class:`~pqcall.client.api.ServerApi` has them)."""

    async def initiate(self, body: InitiateCall) -> Any: ...
    async def accept(self, body: AcceptCall) -> CallDetail: ...
    async def confirm(self, body: ConfirmCall) -> Any: ...
    async def reject(self, body: RejectCall) -> Any: ...
    async def hangup(self, body: HangupCall) -> Any: ...


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a call needs from its phone."""

    username: str
    """Our username."""
    identity: IdentityPrivateKey
    """Our identity key (signs the handshake)."""
    api: CallApi
    """The signaling server."""
    server_host: str
    """The host we reach the server at (where the relay is when a grant names no host)."""
    on_change: Callable[[Call], None]
    """Called after every state change (the phone records history on terminal ones)."""
    stun_server: tuple[str, int] | None = None
    """The server's STUN port (its relay's UDP port, by default the HTTP port's number)."""
    device_key: IdentityPrivateKey | None = None
    """This device's key, which signs 1:1 handshakes when set (see pqcall.crypto.account)."""


def key_mismatch_reason(peer: str) -> str:
    """Why a call refused by the callee's key check failed, for the caller."""
    return (
        f"{peer}'s phone refused the call because the identity keys do not match: the"
        f" server gave you a key for {peer} that is not theirs, or {peer} pinned another"
        f" key for you. Compare safety numbers with {peer} (pqcall verify {peer})."
    )


def call_record(call: Call, *, frame_ms: int, trace: WallClockTrace) -> dict[str, Any]:
    """``call`` as one JSON-ready dict (what ``--json`` prints and history keeps)."""
    duration = (call.ended or time.time()) - call.answered if call.answered else 0.0
    record: dict[str, Any] = {
        "call_id": call.call_id,
        "peer": call.peer,
        "direction": str(call.direction),
        "result": str(call.state),
        "reason": call.reason,
        "sas": call.sas,
        "peer_fingerprint": call.peer_identity.fingerprint().hex(),
        "peer_trust": str(call.peer_trust),
        "path": call.path.label if call.path else None,  # turn-tcp etc. through TURN
        "path_address": _format_address(call.path.shown_address) if call.path else None,
        "path_turn_to": call.path.kind if call.path and call.path.turn else None,
        "path_setup_ms": round(call.path.elapsed_ms, 1) if call.path else None,
        "setup_ms": round((call.answered - call.created) * 1000, 1) if call.answered else None,
        "started_unix": call.created,
        "answered_unix": call.answered,
        "ended_unix": call.ended,
        "duration_s": round(duration, 3),
        "codec": "opus",
        "frame_ms": frame_ms,
        "first_capture_unix": trace.first_capture_unix,
        "first_playout_unix": trace.first_playout_unix,
        "voice_disguised": call.is_voice_disguised,  # ours (issue 23)
        "peer_voice_disguised": call.is_peer_voice_disguised,  # as the peer told us
    }
    stats = call.stats()
    if stats is not None:
        record.update(stats.as_dict())
    processing = call.processing_report()
    if processing is not None:
        record.update(processing.as_dict())
    return record


def _format_address(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
