"""What a chosen path shows (issue 17): through a TURN server it says ``turn-<transport>``
and the server's address, never the loopback proxy the media socket sends to; and the
call record (``--json``) and UI view take those values."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from pqcall.transport.path_choice import (
    DropReason,
    PathCheckStats,
    PathChoice,
    PathKind,
    TurnRoute,
)

PEER = ("198.51.100.7", 40000)
PROXY = ("127.0.0.1", 51234)
TURN_SERVER = ("turn.example.org", 3478)
RELAYED = ("203.0.113.9", 49160)


def stats() -> PathCheckStats:
    return PathCheckStats(1, 1, 1, 1, 0, 0, 0, MappingProxyType(dict.fromkeys(DropReason, 0)))


def choice(kind: PathKind = PathKind.DIRECT, turn: TurnRoute | None = None) -> PathChoice:
    return PathChoice(kind, PEER, None, PEER, None, 12.0, stats(), turn)


def test_a_path_without_turn_shows_its_kind_and_the_peer():
    for kind in PathKind:
        shown = choice(kind)
        assert shown.label == str(kind)
        assert shown.shown_address == PEER


def test_a_path_through_turn_shows_the_transport_and_the_server_not_the_proxy():
    for transport in ("udp", "tcp", "tls"):
        route = TurnRoute(transport, TURN_SERVER, RELAYED)
        # as turn_path.through_turn returns it: media goes to the loopback proxy
        shown = dataclasses.replace(choice(PathKind.DIRECT, route), peer=PROXY)
        assert shown.label == f"turn-{transport}"
        assert shown.shown_address == TURN_SERVER
        assert shown.kind is PathKind.DIRECT  # what TURN forwards to, for the checks
        assert shown.peer == PROXY
    relayed = choice(PathKind.RELAY, TurnRoute("tcp", TURN_SERVER, RELAYED))
    assert relayed.label == "turn-tcp" and relayed.kind is PathKind.RELAY
