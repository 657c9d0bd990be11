"""A group call as one JSON object (``pqcall call A B C --json``, ``listen --json``).

Fields: ``call_id``, ``group`` (true), ``state``/``reason``, ``participants`` (each:
name, fingerprint, trust, state, joined/left unix times, sender ids, packets
received, loss %, jitter ms, MOS, and whether we hold its key), ``group_code``,
``roster_agreed`` (members whose roster signature matched ours),
``key_generations`` (ours and each member's current one), ``path``, and the
``first_capture_unix`` / ``first_playout_unix`` of a 1:1 call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pqcall.client.group_call import GroupCall


def group_summary(call: GroupCall) -> dict[str, Any]:
    """The call as one JSON-ready object."""
    ring = call.keyring
    media = call.media
    participants = []
    for member in call.view.members:
        if member.name == call.context.username:
            continue
        peer = call.peers.get(member.name)
        seen = call.history.get(member.name, {})
        entry: dict[str, Any] = {
            "name": member.name,
            "state": member.state,
            "fingerprint": None,
            "trust": None,
            "vouched": None if peer is None else peer.vouched,
            "joined": seen.get("joined", member.joined),
            "left": seen.get("left", member.left),
            "sender_ids": seen.get("sender_ids", []),
            "packets_received": 0,
            "loss_percent": None,
            "jitter_ms": None,
            "mos": None,
            "has_key": False,
        }
        identity = seen.get("identity") or (peer.identity if peer is not None else None)
        if identity is not None:
            entry["fingerprint"] = identity.fingerprint_text()
        trust = seen.get("trust") or (peer.trust if peer is not None else None)
        if trust is not None:
            entry["trust"] = str(trust)
        if media is not None:
            final = seen.get("final_stats", {})
            for sender_id in entry["sender_ids"]:
                stats = final[sender_id] if sender_id in final else media.stats(sender_id)
                if stats is None:
                    continue
                entry["packets_received"] += stats.packets_received
                entry["loss_percent"] = round(stats.loss_percent, 2)
                entry["jitter_ms"] = round(stats.jitter_ms, 2)
                entry["mos"] = round(stats.mos, 2)
        if peer is not None and ring is not None:
            entry["has_key"] = ring.current_generation(peer.sender_id) is not None
        participants.append(entry)
    generations: dict[str, int | None] = {}
    if ring is not None:
        generations[call.context.username] = ring.own_key.generation
        for peer in call.peers.values():
            generations[peer.name] = ring.current_generation(peer.sender_id)
    return {
        "call_id": call.call_id,
        "group": True,
        "creator": call.view.creator,
        "state": call.state,
        "reason": call.reason,
        "joined": call.joined_at,
        "ended": call.ended_at,
        "participants": participants,
        "group_code": call.group_code,
        "group_codes": call.roster.codes,
        "roster_agreed": list(call.roster.agreed),
        "key_generations": generations,
        "path": call.path,
        "packets_sent": None if media is None else media.packets_sent,
        "packets_rejected": None if media is None else media.rejected,
        "first_capture_unix": call.trace.first_capture_unix,
        "first_playout_unix": call.trace.first_playout_unix,
    }
