import pytest

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.pinning import (
    KeyChanged,
    MemoryPinStorage,
    PinCreated,
    PinMatched,
    PinStore,
)
from pqcall.crypto.safety import safety_number
from pqcall.exceptions import LocalProtocolError
from tests.utils import ALICE, BOB, MALLORY

A, B, M = ALICE.public_key(), BOB.public_key(), MALLORY.public_key()


def test_safety_number_is_symmetric_and_well_formed():
    ours = safety_number("alice", A, "bob", B)
    theirs = safety_number("bob", B, "alice", A)
    assert ours == theirs
    groups = ours.split(" ")
    assert len(groups) == 12
    assert all(len(g) == 5 and g.isdigit() for g in groups)


def test_safety_number_is_stable():
    fixed_a = IdentityPrivateKey(bytes([1]) * 32, bytes([2]) * 32).public_key()
    fixed_b = IdentityPrivateKey(bytes([3]) * 32, bytes([4]) * 32).public_key()
    assert safety_number("alice", fixed_a, "bob", fixed_b) == safety_number(
        "alice", fixed_a, "bob", fixed_b
    )


@pytest.mark.parametrize(
    ("their_name", "their_key"),
    [
        pytest.param("bob", M, id="substituted-key"),
        pytest.param("bobby", B, id="other-name"),
    ],
)
def test_safety_number_changes_with_key_or_name(their_name, their_key):
    assert safety_number("alice", A, "bob", B) != safety_number("alice", A, their_name, their_key)


def test_one_half_is_shared_between_pairs():
    # Alice's half appears in every safety number she has: each half is per user
    with_bob = safety_number("alice", A, "bob", B).replace(" ", "")
    with_mallory = safety_number("alice", A, "mallory", M).replace(" ", "")
    halves_bob = {with_bob[:30], with_bob[30:]}
    halves_mallory = {with_mallory[:30], with_mallory[30:]}
    assert len(halves_bob & halves_mallory) == 1


def test_tofu_pins_first_then_reports_changes():
    pins = PinStore(MemoryPinStorage())
    first = pins.check("bob", B)
    assert isinstance(first, PinCreated) and first.pin.identity == B
    assert isinstance(pins.check("bob", B), PinMatched)
    changed = pins.check("bob", M)
    assert isinstance(changed, KeyChanged)
    assert changed.pin.identity == B and changed.new_identity == M
    # the pin did not move silently
    assert isinstance(pins.check("bob", B), PinMatched)


def test_verification_and_explicit_key_change():
    pins = PinStore(MemoryPinStorage())
    pins.check("bob", B)
    assert pins.mark_verified("bob", B).verified
    with pytest.raises(LocalProtocolError, match="no pin for bob with that identity"):
        pins.mark_verified("bob", M)
    accepted = pins.accept_new_key("bob", M)
    assert accepted.identity == M and not accepted.verified
    assert isinstance(pins.check("bob", M), PinMatched)
    pin = pins.get("bob")
    assert pin is not None and not pin.verified
