import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind
from pqcall.crypto.filekey import (
    PRIVATE_ENCODED_LENGTH,
    PUBLIC_ENCODED_LENGTH,
    FilePrivateKey,
    FilePublicKey,
    KeyBundle,
)
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import BadSignature, DecodeError, LocalProtocolError, PqcallError

ALICE = IdentityPrivateKey.generate()
MALLORY = IdentityPrivateKey.generate()
ALICE_FILE_KEY = FilePrivateKey.generate()
MALLORY_FILE_KEY = FilePrivateKey.generate()
CREATED = 1_700_000_000


def test_private_key_round_trip():
    encoded = ALICE_FILE_KEY.encode()
    assert len(encoded) == PRIVATE_ENCODED_LENGTH
    restored = FilePrivateKey.decode(encoded)
    assert restored.public_key() == ALICE_FILE_KEY.public_key()
    assert restored.encode() == encoded


def test_public_key_round_trip_and_equality():
    public = ALICE_FILE_KEY.public_key()
    encoded = public.encode()
    assert len(encoded) == PUBLIC_ENCODED_LENGTH
    decoded = FilePublicKey.decode(encoded)
    assert decoded == public
    assert hash(decoded) == hash(public)
    assert decoded != MALLORY_FILE_KEY.public_key()
    assert decoded != encoded
    assert decoded.fingerprint() == public.fingerprint()


def test_generated_keys_differ():
    assert FilePrivateKey.generate().public_key() != FilePrivateKey.generate().public_key()


def test_repr_shows_no_secret():
    secret = ALICE_FILE_KEY.encode()[encoding.HEADER_LENGTH :]
    assert secret.hex()[:16] not in repr(ALICE_FILE_KEY)
    assert "FilePrivateKey(public=" in repr(ALICE_FILE_KEY)


def test_type_tags_prevent_confusion():
    with pytest.raises(DecodeError, match="expected file public key, got file private key"):
        FilePublicKey.decode(ALICE_FILE_KEY.encode())
    with pytest.raises(DecodeError, match="expected file private key, got identity private"):
        FilePrivateKey.decode(ALICE.encode())


def test_truncated_and_padded_keys():
    with pytest.raises(DecodeError, match="file public key has truncated X25519 key"):
        FilePublicKey.decode(ALICE_FILE_KEY.public_key().encode()[:-1])
    with pytest.raises(DecodeError, match="file private key has 1 trailing bytes"):
        FilePrivateKey.decode(ALICE_FILE_KEY.encode() + b"\0")


def test_bad_seed_lengths():
    with pytest.raises(LocalProtocolError):
        FilePrivateKey(b"\0" * 63, b"\0" * 32)


def make_bundle(identity=ALICE, username="alice", file_key=ALICE_FILE_KEY, created=CREATED):
    return KeyBundle.create(identity, username, file_key.public_key(), created)


def test_bundle_round_trip_and_verify():
    blob = make_bundle().encode()
    bundle = KeyBundle.decode(blob)
    assert bundle.encode() == blob
    assert bundle.username == "alice"
    assert bundle.identity == ALICE.public_key()
    assert bundle.created == CREATED
    assert bundle.verify(ALICE.public_key()) == ALICE_FILE_KEY.public_key()


def test_bundle_of_another_identity_is_refused():
    # a server that swaps in a bundle it made with its own identity
    forged = KeyBundle.decode(make_bundle(MALLORY, "alice", MALLORY_FILE_KEY).encode())
    with pytest.raises(BadSignature, match="key bundle is signed by another identity"):
        forged.verify(ALICE.public_key())


def splice(blob: bytes, old: bytes, new: bytes) -> bytes:
    assert blob.count(old) == 1 and len(old) == len(new)
    return blob.replace(old, new)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda b: splice(
                b, ALICE_FILE_KEY.public_key().encode(), MALLORY_FILE_KEY.public_key().encode()
            ),
            id="file-key-swapped",
        ),
        pytest.param(
            lambda b: splice(b, encoding.u64(CREATED), encoding.u64(CREATED + 1)),
            id="created-changed",
        ),
        pytest.param(lambda b: splice(b, b"alice", b"alics"), id="username-changed"),
        pytest.param(lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:], id="signature-bit-flip"),
    ],
)
def test_tampered_bundle_does_not_verify(tamper):
    bundle = KeyBundle.decode(tamper(make_bundle().encode()))
    with pytest.raises(BadSignature, match="key bundle signature does not verify"):
        bundle.verify(ALICE.public_key())


def test_identity_swapped_inside_bundle_is_refused():
    blob = splice(
        make_bundle().encode(), ALICE.public_key().encode(), MALLORY.public_key().encode()
    )
    bundle = KeyBundle.decode(blob)
    with pytest.raises(BadSignature, match="signed by another identity"):
        bundle.verify(ALICE.public_key())
    with pytest.raises(BadSignature, match="key bundle signature does not verify"):
        bundle.verify(MALLORY.public_key())


@pytest.mark.parametrize(
    ("username", "created"),
    [
        pytest.param("", CREATED, id="empty-username"),
        pytest.param("x" * 256, CREATED, id="long-username"),
        pytest.param("\ud800", CREATED, id="surrogate-username"),
        pytest.param("alice", -1, id="negative-created"),
        pytest.param("alice", 2**64, id="huge-created"),
    ],
)
def test_bundle_create_rejects_bad_arguments(username, created):
    with pytest.raises(LocalProtocolError):
        KeyBundle.create(ALICE, username, ALICE_FILE_KEY.public_key(), created)


def test_bundle_truncated():
    with pytest.raises(DecodeError, match="key bundle has truncated signature"):
        KeyBundle.decode(make_bundle().encode()[:-1])


@given(st.binary(max_size=4000))
def test_decode_arbitrary_bytes_raises_only_decode_error(data):
    for parse in (FilePublicKey.decode, FilePrivateKey.decode, KeyBundle.decode):
        try:
            parse(data)
        except DecodeError:
            pass


@given(st.binary(max_size=200))
def test_decode_valid_header_garbage_body(body):
    # any 96 bytes are a valid private key (seeds); everything else must raise our errors
    for kind, parse in (
        (Kind.FILE_PUBLIC_KEY, FilePublicKey.decode),
        (Kind.FILE_PRIVATE_KEY, FilePrivateKey.decode),
        (Kind.KEY_BUNDLE, KeyBundle.decode),
    ):
        try:
            parse(encoding.encode(kind, body))
        except PqcallError:
            pass


BUNDLE_BLOB = make_bundle().encode()


@settings(deadline=None, max_examples=50)
@given(st.integers(0, len(BUNDLE_BLOB) - 1), st.integers(1, 255))
def test_any_byte_change_in_bundle_is_caught(index, xor):
    blob = bytearray(BUNDLE_BLOB)
    blob[index] ^= xor
    with pytest.raises((DecodeError, BadSignature)):
        KeyBundle.decode(bytes(blob)).verify(ALICE.public_key())
