import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind
from pqcall.crypto.identity import (
    PUBLIC_ENCODED_LENGTH,
    SIGNATURE_ENCODED_LENGTH,
    IdentityPrivateKey,
    IdentityPublicKey,
)
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError, PqcallError

ALICE = IdentityPrivateKey.generate()
BOB = IdentityPrivateKey.generate()


def test_sign_verify_round_trip():
    sig = ALICE.sign(b"hello", context=b"test")
    assert len(sig) == SIGNATURE_ENCODED_LENGTH
    ALICE.public_key().verify(sig, b"hello", context=b"test")


@pytest.mark.parametrize(
    ("data", "context", "signer"),
    [
        pytest.param(b"hellO", b"test", ALICE, id="other-data"),
        pytest.param(b"hello", b"tesT", ALICE, id="other-context"),
        pytest.param(b"hello", b"test", BOB, id="other-key"),
    ],
)
def test_verify_rejects(data, context, signer):
    sig = signer.sign(b"hello", context=b"test")
    with pytest.raises(BadSignature, match="signature does not verify"):
        ALICE.public_key().verify(sig, data, context=context)


@pytest.mark.parametrize("half", ["ed25519", "mldsa"])
def test_one_valid_half_is_not_enough(half):
    good = ALICE.sign(b"hello", context=b"test")
    bad = BOB.sign(b"hello", context=b"test")
    cut = encoding.HEADER_LENGTH + 64
    # splice: one half from Alice's valid signature, the other from Bob's
    spliced = good[:cut] + bad[cut:] if half == "ed25519" else bad[:cut] + good[cut:]
    with pytest.raises(BadSignature):
        ALICE.public_key().verify(spliced, b"hello", context=b"test")


def test_signature_bit_flip_in_each_half_rejected():
    sig = bytearray(ALICE.sign(b"hello", context=b"test"))
    for index in (encoding.HEADER_LENGTH + 5, len(sig) - 5):
        flipped = bytearray(sig)
        flipped[index] ^= 1
        with pytest.raises(BadSignature):
            ALICE.public_key().verify(bytes(flipped), b"hello", context=b"test")


def test_malformed_signature_is_bad_signature():
    with pytest.raises(BadSignature, match="signature is malformed"):
        ALICE.public_key().verify(b"PQ\x01\x03short", b"hello", context=b"test")


def test_context_required():
    with pytest.raises(LocalProtocolError):
        ALICE.sign(b"x", context=b"")


def test_public_key_encoding_round_trip_and_equality():
    encoded = ALICE.public_key().encode()
    assert len(encoded) == PUBLIC_ENCODED_LENGTH
    decoded = IdentityPublicKey.decode(encoded)
    assert decoded == ALICE.public_key()
    assert decoded != BOB.public_key()
    assert decoded.fingerprint() == ALICE.public_key().fingerprint()
    assert len(decoded.fingerprint_text().split()) == 8


def test_private_key_round_trip():
    restored = IdentityPrivateKey.decode(ALICE.encode())
    assert restored.public_key() == ALICE.public_key()
    ALICE.public_key().verify(restored.sign(b"m", context=b"c"), b"m", context=b"c")


def test_type_tag_prevents_confusion():
    sig = ALICE.sign(b"hello", context=b"test")
    with pytest.raises(DecodeError, match="expected identity public, got signature"):
        IdentityPublicKey.decode(sig)
    with pytest.raises(DecodeError, match="expected identity private, got identity public"):
        IdentityPrivateKey.decode(ALICE.public_key().encode())


def test_truncated_public_key():
    with pytest.raises(DecodeError, match="identity public key has truncated ML-DSA-65 key"):
        IdentityPublicKey.decode(ALICE.public_key().encode()[:-1])
    with pytest.raises(DecodeError, match="identity public key has 1 trailing bytes"):
        IdentityPublicKey.decode(ALICE.public_key().encode() + b"\0")


@given(st.binary(max_size=4000))
def test_decode_arbitrary_bytes_raises_only_decode_error(data):
    for parse in (IdentityPublicKey.decode, IdentityPrivateKey.decode):
        try:
            parse(data)
        except DecodeError:
            pass


@given(st.binary(max_size=64))
def test_decode_with_valid_header_and_garbage_body(body):
    for kind, parse in (
        (Kind.IDENTITY_PUBLIC, IdentityPublicKey.decode),
        (Kind.IDENTITY_PRIVATE, IdentityPrivateKey.decode),
    ):
        with pytest.raises(PqcallError):
            parse(encoding.encode(kind, body))
