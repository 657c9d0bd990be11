"""Helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    offer = caller.offer(now=0.0)
    callee.receive_offer(offer, now=0.0)
    answer = callee.answer()
    confirm = caller.receive_answer(answer)
    callee.receive_confirm(confirm)
    return HandshakeRun(caller, callee, offer, answer, confirm)


def keys_of(run: HandshakeRun) -> tuple[CallKeys, CallKeys]:
    return run.caller.keys, run.callee.keys


class FakeClock:
    """Virtual time for sans-I/O tests: ``now`` only moves when the test advances it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        """Move time forward; return the new ``now``."""
        self.now += seconds
        return self.now


class DatagramPair:
    """An in-memory link between two sans-I/O endpoints, with a loss pattern per direction.

    ``loss_pattern`` (or ``a_to_b_loss`` / ``b_to_a_loss``) is a sequence of booleans
    (True: dropped) repeated over the datagrams of that direction, or a callable that
    takes the datagram's index and says whether to drop it. Everything sent is kept in
    :attr:`a_to_b` / :attr:`b_to_a`, dropped or not.
    """

    def __init__(
        self,
        loss_pattern: Sequence[bool] | Callable[[int], bool] = (),
        *,
        a_to_b_loss: Sequence[bool] | Callable[[int], bool] | None = None,
        b_to_a_loss: Sequence[bool] | Callable[[int], bool] | None = None,
    ) -> None:
        self._loss = {
            "a": _loss_rule(loss_pattern if a_to_b_loss is None else a_to_b_loss),
            "b": _loss_rule(loss_pattern if b_to_a_loss is None else b_to_a_loss),
        }
        self.a_to_b: list[bytes] = []
        self.b_to_a: list[bytes] = []
        self.dropped = {"a": 0, "b": 0}

    def send(self, side: str, datagrams: Iterable[bytes]) -> list[bytes]:
        """Datagrams sent by ``side`` ("a" or "b"): the ones that reach the other side."""
        sent = self.a_to_b if side == "a" else self.b_to_a
        delivered = []
        for datagram in datagrams:
            if self._loss[side](len(sent)):
                self.dropped[side] += 1
            else:
                delivered.append(datagram)
            sent.append(datagram)
        return delivered


def _loss_rule(pattern: Sequence[bool] | Callable[[int], bool]) -> Callable[[int], bool]:
    if callable(pattern):
        return pattern
    frozen = tuple(pattern)
    return lambda index: bool(frozen) and frozen[index % len(frozen)]
