"""The call handshake between devices: device keys sign, account keys are named and pinned."""

import pytest

from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import HandshakeFailed

NOW = 1_700_000_000.0
ALICE_ACCOUNT = IdentityPrivateKey.generate()
ALICE_PHONE = IdentityPrivateKey.generate()
BOB_ACCOUNT = IdentityPrivateKey.generate()
BOB_LAPTOP = IdentityPrivateKey.generate()
BOB_PHONE = IdentityPrivateKey.generate()
SERVER = IdentityPrivateKey.generate()


def _pair(bob_device, their_devices):
    caller = CallerHandshake(
        call_id=b"call-1",
        our_name="alice",
        our_identity=ALICE_PHONE,
        their_name="bob",
        their_identity=BOB_ACCOUNT.public_key(),
        their_devices=their_devices,
    )
    callee = CalleeHandshake(
        call_id=b"call-1",
        our_name="bob",
        our_identity=bob_device,
        our_account=BOB_ACCOUNT.public_key(),
    )
    return caller, callee


def test_devices_of_both_accounts_complete_a_call():
    devices = (BOB_LAPTOP.public_key(), BOB_PHONE.public_key())
    caller, callee = _pair(BOB_PHONE, devices)
    offer = callee.receive_offer(caller.offer(now=NOW), now=NOW)
    assert offer.caller_identity == ALICE_PHONE.public_key()  # to check against alice's list
    callee.vouch(ALICE_ACCOUNT.public_key())
    confirm = caller.receive_answer(callee.answer())
    keys = callee.receive_confirm(confirm)
    assert caller.keys.sas == keys.sas
    # both sides name the account keys (the pins, the safety number), not the devices
    assert caller.keys.their_identity == BOB_ACCOUNT.public_key()
    assert keys.their_identity == ALICE_ACCOUNT.public_key()
    assert caller.keys.send_key == keys.receive_key


def test_answer_from_a_device_not_in_the_list_fails():
    caller, callee = _pair(SERVER, (BOB_LAPTOP.public_key(),))
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    with pytest.raises(HandshakeFailed, match="unexpected identity key"):
        caller.receive_answer(callee.answer())


def test_without_a_device_list_only_the_account_key_may_answer():
    caller, callee = _pair(BOB_LAPTOP, ())
    callee.receive_offer(caller.offer(now=NOW), now=NOW)
    with pytest.raises(HandshakeFailed, match="unexpected identity key"):
        caller.receive_answer(callee.answer())
    old_caller, old_callee = _pair(BOB_ACCOUNT, ())
    old_callee.receive_offer(old_caller.offer(now=NOW), now=NOW)
    old_callee.receive_confirm(old_caller.receive_answer(old_callee.answer()))
    assert old_caller.keys.their_identity == BOB_ACCOUNT.public_key()


def test_offer_for_another_account_is_refused_by_the_device():
    caller, _ = _pair(BOB_LAPTOP, (BOB_LAPTOP.public_key(),))
    callee = CalleeHandshake(
        call_id=b"call-1",
        our_name="bob",
        our_identity=BOB_LAPTOP,
        our_account=SERVER.public_key(),
    )
    with pytest.raises(HandshakeFailed, match="different identity key"):
        callee.receive_offer(caller.offer(now=NOW), now=NOW)
