import hashlib
import io
import os
import tracemalloc

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.crypto import encoding
from pqcall.crypto.filecrypt import (
    CHUNK_LENGTH,
    FileDecryptor,
    FileEncryptor,
    decrypt_stream,
    encrypt_stream,
)
from pqcall.crypto.fileformat import (
    HPKE_ENC_LENGTH,
    MIN_CHUNK_LENGTH,
    MIN_PADDED_LENGTH,
    SIGNATURE_CONTEXT,
    FileHeader,
    padded_length,
)
from pqcall.crypto.filekey import FilePrivateKey, FilePublicKey, KeyBundle
from pqcall.crypto.identity import SIGNATURE_ENCODED_LENGTH, IdentityPrivateKey, sha256
from pqcall.exceptions import (
    BadSignature,
    FileCryptoError,
    LocalProtocolError,
    PqcallError,
)

ALICE = IdentityPrivateKey.generate()
BOB = IdentityPrivateKey.generate()
MALLORY = IdentityPrivateKey.generate()
BOB_FILE_KEY = FilePrivateKey.generate()
MALLORY_FILE_KEY = FilePrivateKey.generate()
BOB_BUNDLE = KeyBundle.create(BOB, "bob", BOB_FILE_KEY.public_key(), 1_700_000_000)
CREATED = 1_700_000_123
NAME = "report.pdf"
CONTENT_TYPE = "application/pdf"
# metadata record: u16 length | sender fingerprint | name | size | content type | created
RECORD_LENGTH = 2 + 32 + 2 + len(NAME) + 8 + 2 + len(CONTENT_TYPE) + 8


def encrypt(data: bytes, *, chunk_length: int = CHUNK_LENGTH, sender=ALICE, name=NAME) -> bytes:
    encryptor = FileEncryptor(
        sender,
        BOB.public_key(),
        BOB_BUNDLE,
        name=name,
        size=len(data),
        created=CREATED,
        content_type=CONTENT_TYPE,
        chunk_length=chunk_length,
    )
    out = encryptor.feed(data) + b"".join(encryptor.finish())
    assert len(out) == encryptor.ciphertext_length
    return out


def decrypt(ciphertext: bytes, *, keys=(BOB_FILE_KEY,), identity=BOB, expected_sender=None):
    decryptor = FileDecryptor(identity.public_key(), keys, expected_sender=expected_sender)
    plaintext = decryptor.feed(ciphertext)
    info = decryptor.finish()
    assert decryptor.is_verified
    return plaintext, info


def split(ciphertext: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Cut an encrypted file into header, chunks and signature."""
    body_length = int.from_bytes(ciphertext[4:8], "big")
    header_bytes = ciphertext[: 8 + body_length]
    header = FileHeader.parse(header_bytes)
    chunks = []
    offset = len(header_bytes)
    for index in range(header.chunk_count):
        length = header.chunk_ciphertext_length(index)
        chunks.append(ciphertext[offset : offset + length])
        offset += length
    signature = ciphertext[offset:]
    assert len(signature) == SIGNATURE_ENCODED_LENGTH
    return header_bytes, chunks, signature


def join(header: bytes, chunks: list[bytes], signature: bytes) -> bytes:
    return header + b"".join(chunks) + signature


# a file of many small chunks, for the tampering tests
SMALL_CHUNKS = MIN_CHUNK_LENGTH
MANY = os.urandom(70_000)
MANY_CT = encrypt(MANY, chunk_length=SMALL_CHUNKS)
HEADER, CHUNKS, SIGNATURE = split(MANY_CT)


# --- round trips ---


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(0, id="empty"),
        pytest.param(1, id="one-byte"),
        pytest.param(CHUNK_LENGTH - RECORD_LENGTH, id="fills-exactly-one-chunk"),
        pytest.param(CHUNK_LENGTH, id="one-chunk-of-data"),
        pytest.param(5 * CHUNK_LENGTH + 123, id="many-chunks"),
    ],
)
def test_round_trip(size):
    data = os.urandom(size)
    ciphertext = encrypt(data)
    plaintext, info = decrypt(ciphertext)
    assert plaintext == data
    assert info.sender == ALICE.public_key()
    assert (info.name, info.size, info.content_type, info.created) == (
        NAME,
        size,
        CONTENT_TYPE,
        CREATED,
    )
    assert info.verified is True
    assert len(info.file_id) == 16


def test_plaintext_and_name_do_not_appear_in_ciphertext():
    data = b"attack at dawn " * 100
    ciphertext = encrypt(data, name="secret-plans.txt")
    assert b"attack at dawn" not in ciphertext
    assert b"secret-plans" not in ciphertext


def test_round_trip_with_small_chunks_and_arbitrary_feeds():
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    out = bytearray()
    # feed in uneven pieces, down to single bytes
    offset, step = 0, 1
    while offset < len(MANY_CT):
        out += decryptor.feed(MANY_CT[offset : offset + step])
        offset += step
        step = step * 3 % 4099 + 1
    assert decryptor.sender == ALICE.public_key()
    assert decryptor.size == len(MANY)
    info = decryptor.finish()
    assert bytes(out) == MANY and info.size == len(MANY)


def test_encryptor_fed_in_pieces_matches_length():
    data = os.urandom(200_000)
    encryptor = FileEncryptor(
        ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, size=len(data), created=CREATED
    )
    pieces = [encryptor.feed(data[i : i + 777]) for i in range(0, len(data), 777)]
    ciphertext = b"".join(pieces) + b"".join(encryptor.finish())
    assert len(ciphertext) == encryptor.ciphertext_length
    assert decrypt(ciphertext)[0] == data


def test_stream_helpers_round_trip():
    data = os.urandom(3 * CHUNK_LENGTH + 5)
    encrypted = io.BytesIO()
    written = encrypt_stream(
        io.BytesIO(data), encrypted, ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, created=1
    )
    assert written == len(encrypted.getvalue())
    out = io.BytesIO()
    info = decrypt_stream(io.BytesIO(encrypted.getvalue()), out, BOB.public_key(), [BOB_FILE_KEY])
    assert out.getvalue() == data
    assert info.sender == ALICE.public_key() and info.size == len(data)


def test_stream_size_discovered_from_current_position():
    src = io.BytesIO(b"skip" + b"payload")
    src.read(4)
    encrypted = io.BytesIO()
    encrypt_stream(src, encrypted, ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, created=1)
    assert decrypt(encrypted.getvalue())[0] == b"payload"


class Unseekable(io.RawIOBase):
    def readable(self):
        return True

    def readinto(self, buffer):
        return 0


class ReadOnly:
    def read(self, size: int = -1, /) -> bytes:
        return b""


def test_unseekable_stream_needs_size():
    with pytest.raises(LocalProtocolError, match="size is required"):
        encrypt_stream(
            ReadOnly(), io.BytesIO(), ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, created=1
        )
    with pytest.raises(LocalProtocolError, match="size is required"):
        encrypt_stream(
            io.BufferedReader(Unseekable()),
            io.BytesIO(),
            ALICE,
            BOB.public_key(),
            BOB_BUNDLE,
            name=NAME,
            created=1,
        )
    out = io.BytesIO()
    encrypt_stream(
        io.BufferedReader(Unseekable()),
        out,
        ALICE,
        BOB.public_key(),
        BOB_BUNDLE,
        name=NAME,
        created=1,
        size=0,
    )
    assert decrypt(out.getvalue())[0] == b""


def test_rotated_key_still_decrypts_old_files():
    ciphertext = encrypt(b"before rotation")
    new_key = FilePrivateKey.generate()
    assert decrypt(ciphertext, keys=(new_key, BOB_FILE_KEY))[0] == b"before rotation"


# --- padding ---


def test_small_files_all_look_the_same():
    lengths = {len(encrypt(os.urandom(size))) for size in (0, 1, 100, 5000, 60_000)}
    assert len(lengths) == 1
    lengths = {len(encrypt(b"x", name=name)) for name in ("a", "a much longer file name.txt")}
    assert len(lengths) == 1


def test_hpke_encapsulation_length():
    assert hpke.KEM.MLKEM768_X25519.enc_length() == HPKE_ENC_LENGTH


def test_padme_bounds():
    previous = 0
    for length in [*range(0, 200_000, 997), 10**6, 10**7, 10**9, 10**12]:
        padded = padded_length(length)
        assert padded >= max(length, MIN_PADDED_LENGTH)
        assert padded <= max(MIN_PADDED_LENGTH, length * 1.032)
        assert padded_length(padded) == padded  # buckets are fixed points
        assert padded >= previous  # monotone
        previous = padded


def test_large_sizes_leak_only_a_bucket():
    # sizes a few KiB apart around 1 MiB share one ciphertext length
    sizes = [1_000_000 + step for step in (0, 3000, 6000)]
    assert len({padded_length(RECORD_LENGTH + s) for s in sizes}) == 1


# --- tampering ---


def assert_rejected(ciphertext: bytes, message: str | None = None) -> None:
    with pytest.raises(FileCryptoError) as excinfo:
        decrypt(ciphertext)
    if message is not None:
        assert str(excinfo.value) == message


def test_drop_last_chunk():
    assert_rejected(join(HEADER, CHUNKS[:-1], SIGNATURE))


def test_drop_last_chunk_and_signature():
    assert_rejected(join(HEADER, CHUNKS[:-1], b""), "file is truncated")


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(3, id="in-magic"),
        pytest.param(100, id="in-header"),
        pytest.param(len(HEADER) + 10, id="mid-first-chunk"),
        pytest.param(len(HEADER) + len(CHUNKS[0]), id="after-first-chunk"),
        pytest.param(len(MANY_CT) - SIGNATURE_ENCODED_LENGTH - 5, id="mid-last-chunk"),
        pytest.param(len(MANY_CT) - SIGNATURE_ENCODED_LENGTH, id="no-signature"),
        pytest.param(len(MANY_CT) - 1, id="mid-signature"),
    ],
)
def test_truncation(cut):
    assert_rejected(MANY_CT[:cut], "file is truncated")


def test_empty_input_is_truncated():
    assert_rejected(b"", "file is truncated")


def test_reordered_chunks():
    chunks = list(CHUNKS)
    chunks[3], chunks[4] = chunks[4], chunks[3]
    assert_rejected(join(HEADER, chunks, SIGNATURE), "chunk out of order")


def test_duplicated_chunk():
    chunks = [*CHUNKS[:5], CHUNKS[4], *CHUNKS[5:-1]]  # same count, chunk 4 twice
    assert_rejected(join(HEADER, [*chunks, CHUNKS[-1]], SIGNATURE), "chunk 4 is duplicated")


def test_chunk_appended_after_final_chunk():
    assert_rejected(join(HEADER, [*CHUNKS, CHUNKS[2]], SIGNATURE), "file has data after its end")


def test_data_after_signature():
    assert_rejected(MANY_CT + b"\0", "file has data after its end")


def test_final_chunk_moved_earlier():
    chunks = list(CHUNKS)
    chunks[1] = CHUNKS[-1] + CHUNKS[1][: len(CHUNKS[1]) - len(CHUNKS[-1])]
    assert_rejected(join(HEADER, chunks, SIGNATURE))


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# header offsets: 0 tag | 4 body length | 8 version | 9 chunk length | 13 padded length
# | 21 file id | 37 recipient | 69 recipient file key | 101 sender (vec16) | wrapped key (vec16)
@pytest.mark.parametrize(
    ("index", "message"),
    [
        pytest.param(0, "not a pqcall encrypted file", id="magic"),
        pytest.param(2, "encrypted file version 0 is not supported", id="encoding-version"),
        pytest.param(8, "encrypted file version 0 is not supported", id="format-version"),
        pytest.param(12, "chunk 0 is corrupt or was tampered with", id="chunk-length"),
        pytest.param(9, "file header has an invalid chunk length", id="chunk-length-range"),
        pytest.param(20, "file header has an invalid length", id="padded-length"),
        pytest.param(21, "chunk 0 is corrupt or was tampered with", id="file-id"),
        pytest.param(40, "file is not encrypted to this key", id="recipient"),
        pytest.param(70, "file is not encrypted to this key", id="recipient-file-key"),
        pytest.param(3000, "file key does not unwrap: the header was altered", id="sender"),
        pytest.param(-30, "file key does not unwrap: the header was altered", id="wrapped-key"),
    ],
)
def test_bit_flip_in_header(index, message):
    header = flip(HEADER, index % len(HEADER))
    assert_rejected(join(header, CHUNKS, SIGNATURE), message)


@pytest.mark.parametrize(
    "chunk",
    [pytest.param(0, id="metadata"), pytest.param(7, id="data"), pytest.param(-1, id="last")],
)
def test_bit_flip_in_chunk(chunk):
    chunks = list(CHUNKS)
    chunks[chunk] = flip(chunks[chunk], 5)
    index = chunk % len(CHUNKS)
    assert_rejected(
        join(HEADER, chunks, SIGNATURE), f"chunk {index} is corrupt or was tampered with"
    )


@pytest.mark.parametrize("index", [5, 100, -5])
def test_bit_flip_in_signature(index):
    assert_rejected(
        join(HEADER, CHUNKS, flip(SIGNATURE, index)), "signature does not match the sender"
    )


def test_signature_stripped_and_resigned_by_another_identity():
    # Mallory keeps Alice's header and chunks and signs them herself
    signed = sha256(HEADER) + hashlib.sha256(b"".join(CHUNKS)).digest()
    forged = MALLORY.sign(signed, context=SIGNATURE_CONTEXT)
    assert_rejected(join(HEADER, CHUNKS, forged), "signature does not match the sender")


def test_sender_replaced_and_resigned_by_another_identity():
    # Mallory also puts her identity in the header: the key wrap and every chunk break
    header = HEADER.replace(ALICE.public_key().encode(), MALLORY.public_key().encode())
    assert header != HEADER and len(header) == len(HEADER)
    signed = sha256(header) + hashlib.sha256(b"".join(CHUNKS)).digest()
    forged = MALLORY.sign(signed, context=SIGNATURE_CONTEXT)
    assert_rejected(
        join(header, CHUNKS, forged), "file key does not unwrap: the header was altered"
    )


def test_expected_sender_checked_before_decrypting():
    with pytest.raises(FileCryptoError, match=r"^file is not from the expected sender$"):
        decrypt(MANY_CT, expected_sender=MALLORY.public_key())
    assert decrypt(MANY_CT, expected_sender=ALICE.public_key())[0] == MANY


def test_wrong_recipient_cannot_decrypt():
    with pytest.raises(FileCryptoError, match=r"^file is not encrypted to this key$"):
        decrypt(MANY_CT, identity=MALLORY, keys=(MALLORY_FILE_KEY,))
    with pytest.raises(FileCryptoError, match=r"^file is not encrypted to this key$"):
        decrypt(MANY_CT, keys=(MALLORY_FILE_KEY,))


def test_other_kind_is_not_an_encrypted_file():
    assert_rejected(BOB_BUNDLE.encode(), "not a pqcall encrypted file")
    assert_rejected(b"%PDF-1.7 hello", "not a pqcall encrypted file")


def test_oversized_header_refused_early():
    blob = encoding.encode(encoding.Kind.FILE_HEADER, encoding.u32(2**31))
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    with pytest.raises(FileCryptoError, match=r"^file header is too long$"):
        decryptor.feed(blob)


def test_errors_name_no_secret():
    for ciphertext in (flip(MANY_CT, len(HEADER) + 3), flip(MANY_CT, len(MANY_CT) - 3)):
        with pytest.raises(FileCryptoError) as excinfo:
            decrypt(ciphertext)
        assert len(str(excinfo.value)) < 80
        assert MANY[:8].hex() not in str(excinfo.value)


# --- API contract ---


def test_recipient_bundle_must_match_pinned_identity():
    mallory_bundle = KeyBundle.create(MALLORY, "bob", MALLORY_FILE_KEY.public_key(), 1)
    with pytest.raises(BadSignature):
        FileEncryptor(ALICE, BOB.public_key(), mallory_bundle, name=NAME, size=0, created=CREATED)


def test_encryptor_misuse():
    encryptor = FileEncryptor(ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, size=3, created=1)
    with pytest.raises(LocalProtocolError, match="more bytes than the declared size"):
        encryptor.feed(b"abcd")
    encryptor.feed(b"ab")
    with pytest.raises(LocalProtocolError, match="fed 2 bytes, declared 3"):
        encryptor.finish()
    encryptor.feed(b"c")
    list(encryptor.finish())
    with pytest.raises(LocalProtocolError, match="already finished"):
        encryptor.feed(b"")
    with pytest.raises(LocalProtocolError, match="already finished"):
        encryptor.finish()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"name": "x" * 256}, id="long-name"),
        pytest.param({"content_type": "y" * 256}, id="long-content-type"),
        pytest.param({"name": "\ud800"}, id="surrogate-name"),
        pytest.param({"size": -1}, id="negative-size"),
        pytest.param({"created": -1}, id="negative-created"),
        pytest.param({"chunk_length": 512}, id="small-chunks"),
    ],
)
def test_encryptor_rejects_bad_arguments(kwargs):
    arguments = {"name": NAME, "size": 0, "created": 1, **kwargs}
    with pytest.raises(LocalProtocolError):
        FileEncryptor(ALICE, BOB.public_key(), BOB_BUNDLE, **arguments)


def test_decryptor_unusable_after_failure_or_finish():
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    with pytest.raises(FileCryptoError):
        decryptor.feed(b"garbage!")
    with pytest.raises(LocalProtocolError, match="decryptor is failed"):
        decryptor.feed(MANY_CT)
    with pytest.raises(LocalProtocolError):
        decryptor.finish()
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    decryptor.feed(MANY_CT)
    decryptor.finish()
    with pytest.raises(LocalProtocolError, match="decryptor is verified"):
        decryptor.finish()


def test_plaintext_is_released_before_verification_but_finish_decides():
    # the contract: feed() hands out authenticated chunks, finish() judges the whole file
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    plaintext = decryptor.feed(join(HEADER, CHUNKS, flip(SIGNATURE, 9)))
    assert plaintext == MANY
    assert not decryptor.is_verified
    with pytest.raises(FileCryptoError, match="signature does not match the sender"):
        decryptor.finish()
    assert not decryptor.is_verified


# --- constant memory ---


class GeneratedStream(io.RawIOBase):
    """A reproducible stream of ``size`` bytes, generated as it is read."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.counter = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        length = min(len(buffer), self.remaining, 4096)
        block = hashlib.sha256(self.counter.to_bytes(8, "big")).digest() * 128
        self.counter += 1
        buffer[:length] = block[:length]
        self.digest.update(block[:length])
        self.remaining -= length
        return length


def test_constant_memory_on_a_50_mb_stream():
    size = 50 * 1024 * 1024
    source = GeneratedStream(size)
    reader = io.BufferedReader(source, buffer_size=CHUNK_LENGTH)
    encryptor = FileEncryptor(ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, size=size, created=1)
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    received = hashlib.sha256()
    received_length = 0
    tracemalloc.start()
    try:
        while block := reader.read(CHUNK_LENGTH):
            plaintext = decryptor.feed(encryptor.feed(block))
            received.update(plaintext)
            received_length += len(plaintext)
        for block in encryptor.finish():
            received.update(decryptor.feed(block))
        info = decryptor.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == size
    assert received.digest() == source.digest.digest()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte file"


def test_stream_helpers_use_constant_memory():
    size = 8 * 1024 * 1024

    class Sink:
        def __init__(self) -> None:
            self.data_length = 0

        def write(self, data: bytes) -> int:
            self.data_length += len(data)
            return len(data)

    sink = Sink()
    tracemalloc.start()
    try:
        encrypt_stream(
            io.BufferedReader(GeneratedStream(size)),
            sink,
            ALICE,
            BOB.public_key(),
            BOB_BUNDLE,
            name=NAME,
            created=1,
            size=size,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.data_length > size
    assert peak < 2 * 1024 * 1024


# --- fuzzing: only pqcall's own errors ---


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=5000), st.integers(1, 5000))
def test_decryptor_fed_arbitrary_bytes(data, step):
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    with pytest.raises(FileCryptoError):
        for offset in range(0, len(data), step):
            decryptor.feed(data[offset : offset + step])
        decryptor.finish()


@settings(deadline=None, max_examples=100)
@given(st.binary(max_size=3000))
def test_decryptor_fed_valid_header_then_garbage(tail):
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    with pytest.raises(FileCryptoError):
        decryptor.feed(HEADER + tail)
        decryptor.finish()


SMALL_CT = encrypt(b"hello", chunk_length=8192)


@settings(deadline=None, max_examples=200)
@given(st.integers(0, len(SMALL_CT) - 1), st.integers(1, 255))
def test_any_byte_change_is_caught(index, xor):
    changed = bytearray(SMALL_CT)
    changed[index] ^= xor
    with pytest.raises(FileCryptoError):
        decrypt(bytes(changed))


@given(st.binary(max_size=4000))
def test_header_parse_arbitrary_bytes(data):
    for blob in (data, encoding.encode(encoding.Kind.FILE_HEADER, data)):
        try:
            FileHeader.parse(blob)
        except PqcallError as exc:
            assert isinstance(exc, FileCryptoError)


def test_recipient_file_key_that_cannot_be_encrypted_to():
    low_order = FilePublicKey(
        mlkem.MLKEM768PrivateKey.generate().public_key(),
        x25519.X25519PublicKey.from_public_bytes(bytes(32)),
    )
    bundle = KeyBundle.create(BOB, "bob", low_order, 1)
    with pytest.raises(FileCryptoError, match=r"^recipient file key is invalid$"):
        FileEncryptor(ALICE, BOB.public_key(), bundle, name=NAME, size=0, created=1)


# ---------------------------------------------------------------- resuming


def _encryptor(size, **extra):
    return FileEncryptor(
        ALICE, BOB.public_key(), BOB_BUNDLE, name=NAME, size=size, created=1, **extra
    )


def test_encryptor_from_secrets_repeats_the_ciphertext_and_keeps_the_signature():
    data = os.urandom(200_000)
    first = _encryptor(len(data))
    ciphertext = first.feed(data) + b"".join(first.finish())
    signature = ciphertext[-SIGNATURE_ENCODED_LENGTH:]
    again = _encryptor(len(data), secrets=first.secrets)
    assert again.feed(data) + b"".join(again.finish(signature=signature)) == ciphertext
    assert again.position == len(ciphertext) == first.ciphertext_length
    assert again.chunks_digest() == first.chunks_digest()
    # another plaintext under the same secrets: a different digest, the old signature refused
    other = _encryptor(len(data), secrets=first.secrets)
    other.feed(bytes(len(data)))
    assert other.chunks_digest() != first.chunks_digest()
    with pytest.raises(LocalProtocolError, match="the saved signature does not sign these chunks"):
        b"".join(other.finish(signature=signature))


def test_secrets_of_another_file_are_refused():
    secrets = _encryptor(10).secrets
    with pytest.raises(LocalProtocolError, match="saved encryption secrets belong to another file"):
        _encryptor(10_000_000, secrets=secrets)


@pytest.mark.parametrize("size", [0, 70_000, 300_000])
def test_decryptor_resumes_at_any_byte(size):
    data = os.urandom(size)
    encryptor = _encryptor(size)
    ciphertext = encryptor.feed(data) + b"".join(encryptor.finish())
    for cut in range(0, len(ciphertext) + 1, 9_973):
        decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
        delivered = decryptor.feed(ciphertext[:cut])
        checkpoint = decryptor.checkpoint()
        if checkpoint is None:  # before the header: start over
            assert cut < 4096
            continue
        resumed = FileDecryptor.resume(checkpoint, BOB.public_key(), [BOB_FILE_KEY])
        assert resumed.replay_length == len(delivered)
        resumed.replay(delivered)
        assert resumed.consumed == cut
        assert delivered + resumed.feed(ciphertext[cut:]) == data
        assert resumed.finish().size == size


def test_replayed_plaintext_that_differs_fails_the_signature():
    data = os.urandom(200_000)
    encryptor = _encryptor(len(data))
    ciphertext = encryptor.feed(data) + b"".join(encryptor.finish())
    decryptor = FileDecryptor(BOB.public_key(), [BOB_FILE_KEY])
    delivered = bytearray(decryptor.feed(ciphertext[:150_000]))
    checkpoint = decryptor.checkpoint()
    assert checkpoint is not None
    delivered[0] ^= 1
    resumed = FileDecryptor.resume(checkpoint, BOB.public_key(), [BOB_FILE_KEY])
    resumed.replay(bytes(delivered))
    resumed.feed(ciphertext[150_000:])
    with pytest.raises(FileCryptoError, match="signature does not match the sender"):
        resumed.finish()
