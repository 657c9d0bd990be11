"""The server's STUN responder: answers standard Binding requests on the relay's real UDP port.

Clients are aioice's STUN messages on real sockets (what any STUN client sends), so
the answers are checked against a library that did not write them.
"""

from __future__ import annotations

import asyncio
import socket

from aioice import stun

from pqcall.server.ratelimit import RateLimit
from pqcall.server.relay import MediaRelay
from pqcall.server.stun import MAX_GROWTH_BYTES, StunResponder, is_stun_request

TIMEOUT_S = 2.0


def binding_request(*, fingerprint: bool = True, software: str | None = None) -> stun.Message:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if software is not None:
        request.attributes["SOFTWARE"] = software
    if fingerprint:
        request.add_fingerprint()
    return request


def ask(sock: socket.socket, data: bytes, to: tuple[str, int]) -> bytes | None:
    sock.sendto(data, to)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.3)
    return sock


def test_the_relay_port_answers_a_binding_request_with_the_source_address():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            loop = asyncio.get_running_loop()
            with client() as sock:
                request = binding_request()
                data = bytes(request)
                answer = await loop.run_in_executor(None, ask, sock, data, relay.address)
                assert answer is not None, "no STUN answer"
                response = stun.parse_message(answer)  # checks the FINGERPRINT too
                assert response.message_method is stun.Method.BINDING
                assert response.message_class is stun.Class.RESPONSE
                assert response.transaction_id == request.transaction_id
                assert response.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
                assert "FINGERPRINT" in response.attributes
                assert len(answer) <= len(data) + MAX_GROWTH_BYTES
                # without a fingerprint in the request, none in the answer (no growth)
                bare = bytes(binding_request(fingerprint=False))
                answer = await loop.run_in_executor(None, ask, sock, bare, relay.address)
                assert answer is not None
                assert len(bare) == 20 and len(answer) == 32
                assert "FINGERPRINT" not in stun.parse_message(answer).attributes
            assert relay.stun.stats.answered == 2
            assert relay.stats().binds == 0  # the relay table never saw them

    asyncio.run(main())


def test_what_is_not_a_binding_request_is_not_answered():
    request = binding_request()
    data = bytes(request)
    assert is_stun_request(data)
    assert not is_stun_request(b"PQRB" + bytes(16))  # a relay bind
    assert not is_stun_request(data[:-4])  # length does not match
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    assert not is_stun_request(bytes(indication))
    responder = StunResponder()
    broken = bytearray(data)
    broken[-1] ^= 1  # the fingerprint no longer verifies
    assert responder.answer(bytes(broken), ("192.0.2.1", 4000), 0.0) is None
    assert responder.stats.dropped["malformed"] == 1
    assert responder.answer(data, ("192.0.2.1", 4000), 0.0) is not None


def test_no_amplification_an_ipv6_source_with_a_short_request_gets_nothing():
    responder = StunResponder()
    short = bytes(binding_request(fingerprint=False))
    assert responder.answer(short, ("2001:db8::1", 4000, 0, 0), 0.0) is None
    assert responder.stats.dropped["too_large"] == 1
    padded = bytes(binding_request(software="pqcall test client"))  # 52 bytes
    answer = responder.answer(padded, ("2001:db8::1", 4000, 0, 0), 0.0)
    assert answer is not None and len(answer) <= len(padded) + MAX_GROWTH_BYTES
    assert stun.parse_message(answer).attributes["XOR-MAPPED-ADDRESS"] == ("2001:db8::1", 4000)


def test_rate_limits_per_source_and_in_total():
    responder = StunResponder(
        per_source=RateLimit(rate_per_s=1.0, burst=3.0), total=RateLimit(rate_per_s=1.0, burst=5.0)
    )
    data = bytes(binding_request())
    answered = [responder.answer(data, ("192.0.2.1", 4000), 0.0) is not None for _ in range(5)]
    assert answered == [True, True, True, False, False]
    # another source still gets its own, until the total runs out
    others = [responder.answer(data, ("192.0.2.2", 4000), 0.0) is not None for _ in range(5)]
    assert others == [True, True, False, False, False]
    assert responder.stats.dropped["rate_limited"] == 5
    # the buckets refill
    assert responder.answer(data, ("192.0.2.1", 4000), 1.5) is not None
