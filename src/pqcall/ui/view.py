"""The page's view: the softphone's state projected to JSON-ready dicts.

Pure functions of what the controller's parts hold (the phone, its contacts
and call, presence, warnings, files); :class:`~pqcall.ui.controller.Controller`
assembles them into ``State`` (see ``docs/cli.md#ui``). Every number in the
result is finite: :func:`finite` turns NaN and infinities into None, which JSON
can carry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from pqcall.client.call import Call
from pqcall.client.call_outcome import outcome_word
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, SecurityWarning
from pqcall.client.phone_callstate import CallState, Direction
from pqcall.exceptions import KeystoreError
from pqcall.media.disguise import PRESETS
from pqcall.signaling.messages import FileView

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 50
"""Calls listed in the state."""
STATS_KEYS = (
    "rtt_ms",
    "loss_percent",
    "jitter_ms",
    "jitter_buffer_ms",
    "tx_kbps",
    "rx_kbps",
    "mos",
    "audio_level_dbfs",
    "input_level_dbfs",
    "packets_received",
    "packets_lost",
    "reconnecting",
    "peer_silent_s",
)
"""The statistics the page shows, from :class:`~pqcall.media.stats.CallStatsSnapshot`."""

PresenceMap = Mapping[str, tuple[bool, float | None]]
"""Contact name: (online, last seen in unix seconds)."""


def account_view(phone: Phone | None) -> dict[str, Any] | None:
    """``State.account``: who we are, once unlocked."""
    if phone is None:
        return None
    return {
        "username": phone.username,
        "server_url": phone.server_url,
        "fingerprint": phone.identity.fingerprint_text(),
    }


def contacts_view(
    phone: Phone | None, presence: PresenceMap, suspicious: Any
) -> list[dict[str, Any]]:
    """``State.contacts``: each contact with its trust and presence.

    Args:
        phone: the phone (no contacts while locked).
        presence: what the server last said about each contact.
        suspicious: the names whose SAS did not match (from the UI's notes).
    """
    if phone is None:
        return []
    entries = []
    for contact in phone.contacts.list():
        online, last_seen = presence.get(contact.name, (False, None))
        entries.append(
            {
                "name": contact.name,
                "fingerprint": contact.fingerprint,
                "verified": contact.verified,
                # the server shares presence only between call partners (docs/server.md)
                "presence_shown": contact.name in presence,
                "online": online,
                "last_seen": last_seen,
                "key_changed": contact.key_changed is not None,
                "suspicious": contact.name in suspicious,
                "last_call": contact.last_call,
            }
        )
    return entries


def call_view(call: Call, *, sas_confirmed: bool, muted: bool) -> dict[str, Any]:
    """``State.call``: the current call, its SAS and its live statistics."""
    snapshot = call.stats()
    stats = None
    if snapshot is not None:
        values = snapshot.as_dict()
        stats = {key: values.get(key) for key in STATS_KEYS}
    return {
        "call_id": call.call_id,
        "peer": call.peer,
        "direction": str(call.direction),
        "state": str(call.state),
        "reason": call.reason,
        "sas": call.sas,
        "sas_confirmed": sas_confirmed,
        "path": call.path.label if call.path is not None else None,  # turn-tcp etc.
        "muted": muted,
        "peer_muted": call.is_peer_muted,
        "voice_disguised": call.is_voice_disguised,
        "peer_voice_disguised": call.is_peer_voice_disguised,
        "peer_trust": str(call.peer_trust),
        "started": call.created,
        "answered": call.answered,
        "stats": stats,
    }


def history_view(phone: Phone | None) -> list[dict[str, Any]]:
    """``State.history``: the newest calls, each with its ``outcome`` (none when unreadable)."""
    if phone is None:
        return []
    try:
        return [with_outcome(record) for record in phone.history.list(HISTORY_LIMIT)]
    except KeystoreError as exc:
        logger.warning("cannot read the call history: %s", exc)
        return []


def with_outcome(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` (a finished call) with ``outcome``: how it went in the words the CLI uses."""
    return {**summary, "outcome": outcome_word(summary)}


def missed_unseen(history: Iterable[dict[str, Any]], seen: float) -> int:
    """``State.missed_unseen``: incoming calls missed after ``seen`` (unix seconds)."""
    return sum(
        1
        for record in history
        if record.get("direction") == str(Direction.INCOMING)
        and record.get("result") == str(CallState.MISSED)
        and float(record.get("ended_unix") or 0.0) > seen
    )


def warnings_view(warnings: Iterable[SecurityWarning]) -> list[dict[str, Any]]:
    """``State.warnings``: newest first."""
    return [
        {"peer": w.peer, "message": w.message, "when": w.when} for w in reversed(list(warnings))
    ]


def devices_view(inputs: list[str], outputs: list[str], media: MediaOptions) -> dict[str, Any]:
    """``State.devices``: the sound devices and the ones in use."""
    return {
        "inputs": list(inputs),
        "outputs": list(outputs),
        "audio_in": media.audio_in,
        "audio_out": media.audio_out,
        "echo_cancel": media.echo_cancel,
        "noise_suppression": media.noise_suppression,
        "auto_gain": media.auto_gain,
        "voice_disguise": media.voice_disguise,
        "voice_disguise_presets": [
            {"name": p.name, "description": p.description} for p in PRESETS.values()
        ],
    }


def inbox_view(inbox: Iterable[FileView]) -> list[dict[str, Any]]:
    """``State.inbox``: files waiting for us on the server."""
    return [
        {
            "file_id": view.file_id,
            "sender": view.sender,
            "size": view.size,
            "created": view.created,
        }
        for view in inbox
    ]


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


__all__ = [
    "HISTORY_LIMIT",
    "STATS_KEYS",
    "account_view",
    "call_view",
    "contacts_view",
    "devices_view",
    "finite",
    "history_view",
    "inbox_view",
    "missed_unseen",
    "warnings_view",
    "with_outcome",
]
