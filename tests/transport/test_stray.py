"""Late setup datagrams on the media socket (issue 17): a peer's NAT opener and the
answer to our STUN Binding request are dropped and counted under their own counters,
not as rejected; a STUN request, or anything else, still counts as before."""

from __future__ import annotations

import asyncio
import secrets

from aioice import stun

from pqcall.transport.gather import OPENER
from pqcall.transport.stray import StrayKind, stray_kind
from tests.transport.test_session import LOOPBACK, eventually, run, tapped_call


def binding(message_class: stun.Class) -> bytes:
    """A STUN Binding message as aioice writes it (what a STUN server answers)."""
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=message_class,
        transaction_id=secrets.token_bytes(12),
    )
    if message_class is stun.Class.RESPONSE:
        message.attributes["XOR-MAPPED-ADDRESS"] = ("198.51.100.7", 40000)
    elif message_class is stun.Class.ERROR:
        message.attributes["ERROR-CODE"] = (400, "Bad Request")
    message.add_fingerprint()
    return bytes(message)


def test_openers_and_binding_answers_are_told_apart_from_everything_else():
    assert stray_kind(OPENER) is StrayKind.OPENER
    assert stray_kind(binding(stun.Class.RESPONSE)) is StrayKind.STUN
    assert stray_kind(binding(stun.Class.ERROR)) is StrayKind.STUN
    # not answers to us, or not whole: left to the media session to count
    assert stray_kind(binding(stun.Class.REQUEST)) is None
    assert stray_kind(binding(stun.Class.RESPONSE)[:-4]) is None
    assert stray_kind(OPENER + b"x") is None
    assert stray_kind(b"") is None


def test_a_late_opener_and_stun_answer_are_counted_apart_not_rejected():
    async def main() -> None:
        call, tap = await tapped_call()
        await eventually(lambda: len(tap.a_to_b) >= 20)
        # no media datagram of a real call looks like either
        assert all(stray_kind(datagram) is None for datagram in tap.a_to_b)
        loop = asyncio.get_running_loop()
        stun_server, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=LOOPBACK
        )
        callee = call.callee
        for _ in range(3):  # the peer's openers, from the peer's address
            tap.inject_to_b(OPENER)
        tap.inject_to_b(binding(stun.Class.RESPONSE))  # the relay answers STUN too
        for message_class in (stun.Class.RESPONSE, stun.Class.ERROR):  # a STUN server
            stun_server.sendto(binding(message_class), callee.local_address)
        stun_server.sendto(binding(stun.Class.REQUEST), callee.local_address)  # not ours
        await eventually(lambda: callee.foreign_datagrams == 1)
        await eventually(lambda: sum(callee.stray_datagrams.values()) == 6)
        assert callee.stray_datagrams == {StrayKind.OPENER: 3, StrayKind.STUN: 3}
        assert callee.packets_rejected == 1  # only the request, from a foreign address
        assert callee.protocol_stats.dropped == 0
        assert callee.snapshot().packets_rejected == 1
        received = callee.snapshot().packets_received
        await eventually(lambda: callee.snapshot().packets_received >= received + 10)
        stun_server.close()
        tap.close()
        await call.close()

    run(main)
