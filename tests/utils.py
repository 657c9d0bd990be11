"""Helpers shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass

from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake, CallKeys
from pqcall.crypto.identity import IdentityPrivateKey

ALICE = IdentityPrivateKey.generate()
BOB = IdentityPrivateKey.generate()
MALLORY = IdentityPrivateKey.generate()


@dataclass
class HandshakeRun:
    caller: CallerHandshake
    callee: CalleeHandshake
    offer: bytes
    answer: bytes
    confirm: bytes


def handshake_pair(
    call_id: bytes = b"call-1",
    caller_name: str = "alice",
    caller_identity: IdentityPrivateKey = ALICE,
    callee_name: str = "bob",
    callee_identity: IdentityPrivateKey = BOB,
) -> HandshakeRun:
    """Run a complete, honest handshake and return both sides and the messages."""
    caller = CallerHandshake(
        call_id=call_id,
        our_name=caller_name,
        our_identity=caller_identity,
        their_name=callee_name,
        their_identity=callee_identity.public_key(),
    )
    callee = CalleeHandshake(call_id=call_id, our_name=callee_name, our_identity=callee_identity)
    offer = caller.offer()
    callee.receive_offer(offer)
    answer = callee.answer()
    confirm = caller.receive_answer(answer)
    callee.receive_confirm(confirm)
    return HandshakeRun(caller, callee, offer, answer, confirm)


def keys_of(run: HandshakeRun) -> tuple[CallKeys, CallKeys]:
    return run.caller.keys, run.callee.keys
