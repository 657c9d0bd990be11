"""Encrypt a file of any size to a recipient, streamed in constant memory.

Files go through the server, which stores them until an offline recipient
fetches them, so a file is encrypted to the recipient's long-lived file key
(:mod:`pqcall.crypto.filekey`) and signed by the sender's identity. The server
learns who sent what to whom, when, and a coarse size; nothing else.

Design
======

Key wrap. A random 32-byte *file key* is wrapped with HPKE (RFC 9180) base
mode, suite ``MLKEM768_X25519`` / ``HKDF_SHA256`` / ``AES_256_GCM``, to the
recipient's file public key, which the sender accepted only through a
:class:`~pqcall.crypto.filekey.KeyBundle` verified against the recipient's
pinned identity. HPKE ``info`` is::

    b"pqcall v1 file" | sender identity fingerprint (32) | recipient identity fingerprint (32)

Key schedule. With ``file_id`` (16 random bytes from the header) as HKDF salt::

    payload key  = HKDF-SHA256(file key, salt=file_id, info=b"pqcall v1 file payload key", 32)
    nonce prefix = HKDF-SHA256(file key, salt=file_id, info=b"pqcall v1 file nonce prefix", 7)

Stream. The plaintext stream is ``metadata record | file data | zero
padding``, of ``padded length`` bytes, cut into chunks of ``chunk length``
bytes (the last one may be shorter). Chunk ``i`` of ``n`` is sealed with the
STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015)::

    nonce_i = nonce prefix (7) | u32 i | u8 (1 if i == n - 1 else 0)
    chunk_i = AES-256-GCM(payload key, nonce_i, plaintext_i, aad = SHA-256(header))

so a reordered, duplicated, dropped or appended chunk, a missing final chunk,
or any change to the header fails authentication.

Metadata record (first bytes of the plaintext stream, so it is encrypted and
its length hidden by the padding)::

    u16 length | sender identity fingerprint (32) | name (text16)
               | size (u64) | content type (text16) | created (u64, unix seconds)

Padding. ``padded length = Padmé(max(len(metadata record) + size, 64 KiB))``
(Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
Communication with PURBs", PETS 2019): every file under about 64 KiB looks
the same, and above that the length shows only its binary exponent and top
five bits (O(log log size) bits of leakage), for under 3.2 % overhead (under
1.6 % from 4 GiB). Plain 64 KiB multiples would give a big file's size to
within 64 KiB; power-of-two buckets would cost up to 100 %.

File layout (integers big-endian)::

    file      = header | chunk_0 | ... | chunk_{n-1} | signature
    header    = "PQ" | 0x01 | 0x30 (FILE_HEADER) | u32 body length | body
    body      = format version u8 (1) | chunk length u32 | padded length u64
                | file id (16) | recipient identity fingerprint (32)
                | recipient file key fingerprint (32)
                | sender identity public key (vec16) | wrapped file key (vec16)
    signature = hybrid identity signature, context b"pqcall file", over
                SHA-256(header) | SHA-256(chunk_0 | ... | chunk_{n-1})

The padded length in the clear tells the reader where the last chunk is; the
ciphertext length reveals it anyway.

Sender authentication. The sender identity sits in the header (bound into
every chunk by the AAD and into the key wrap by ``info``), again inside the
encrypted metadata, and signs the header and every chunk at the end. Someone
who strips the signature and signs with another identity must change the
header, which breaks the key wrap and every chunk (the "re-signed" attack);
a recipient who re-encrypts a signed file to a third party changes the
recipient fingerprints, which breaks the original signature (Davis,
"Defective Sign & Encrypt", USENIX 2001).

Contract of the decryptor: :meth:`FileDecryptor.feed` returns plaintext that
is authenticated chunk by chunk, but only :meth:`FileDecryptor.finish`
checks the sender's signature and that the file is complete. Write the
plaintext to a temporary file and rename it into place only after
``finish()`` returned; on :class:`~pqcall.exceptions.FileCryptoError`, delete
it.

Future direction: a sender-chosen chunk length is already in the header, so a
client may trade memory for speed on big files without a format change.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import io
import os
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.fileformat import (
    FILE_ID_LENGTH,
    FILE_KEY_LENGTH,
    HEADER_PREFIX_LENGTH,
    HPKE_SUITE,
    MAX_CHUNK_LENGTH,
    MAX_CHUNKS,
    MAX_CREATED,
    MAX_HEADER_BODY_LENGTH,
    MIN_CHUNK_LENGTH,
    SIGNATURE_CONTEXT,
    FileHeader,
    FileInfo,
    encode_metadata,
    hpke_info,
    not_a_file_message,
    padded_length,
    payload_keys,
)
from pqcall.crypto.fileformat import (
    nonce as chunk_nonce,
)
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import (
    FINGERPRINT_LENGTH,
    SIGNATURE_ENCODED_LENGTH,
    IdentityPrivateKey,
    IdentityPublicKey,
    sha256,
)
from pqcall.exceptions import BadSignature, DecodeError, FileCryptoError, LocalProtocolError

# implementation constants
CHUNK_LENGTH = 64 * 1024  # plaintext bytes per chunk
READ_LENGTH = 64 * 1024  # bytes read per call by the stream helpers
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PROBED_CHUNKS = 1024  # how far a failed chunk is looked for elsewhere, for the message


class ByteSource(Protocol):
    """Where :func:`encrypt_stream` and :func:`decrypt_stream` read (a binary file)."""

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes, or ``b""`` at the end."""
        ...


class ByteSink(Protocol):
    """Where :func:`encrypt_stream` and :func:`decrypt_stream` write (a binary file)."""

    def write(self, data: bytes, /) -> int | None:
        """Write all of ``data``."""
        ...


@runtime_checkable
class _Seekable(Protocol):
    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


class FileEncryptor:
    """Sans-I/O encryptor: feed plaintext, get ciphertext.

    Concatenate, in order, everything :meth:`feed` returns and everything the
    iterator from :meth:`finish` yields: that is the encrypted file. Memory use
    is one chunk, whatever the file size.

    Args:
        our_identity: the sender, who signs the file.
        their_identity: the recipient's *pinned* identity.
        their_bundle: the recipient's key bundle (from the server); verified
            against ``their_identity`` here.
        name: the file name to tell the recipient (up to 255 UTF-8 bytes).
        size: the exact number of bytes that will be fed.
        created: unix seconds, from the caller's clock.
        content_type: a media type (up to 255 UTF-8 bytes).
        chunk_length: plaintext bytes per chunk.

    Raises:
        BadSignature: the bundle is not signed by ``their_identity``.
        FileCryptoError: the recipient's file key cannot be encrypted to.
        LocalProtocolError: an argument is out of range.
    """

    def __init__(
        self,
        our_identity: IdentityPrivateKey,
        their_identity: IdentityPublicKey,
        their_bundle: KeyBundle,
        *,
        name: str,
        size: int,
        created: int,
        content_type: str = DEFAULT_CONTENT_TYPE,
        chunk_length: int = CHUNK_LENGTH,
    ) -> None:
        their_file_key = their_bundle.verify(their_identity)
        if not 0 <= size < 2**63:
            raise LocalProtocolError("file size out of range")
        if not 0 <= created <= MAX_CREATED:
            raise LocalProtocolError("file creation time out of range")
        if not MIN_CHUNK_LENGTH <= chunk_length <= MAX_CHUNK_LENGTH:
            raise LocalProtocolError("chunk length out of range")
        our_public = our_identity.public_key()
        metadata = encode_metadata(our_public.fingerprint(), name, size, content_type, created)
        padded = padded_length(len(metadata) + size)
        if -(-padded // chunk_length) > MAX_CHUNKS:
            raise LocalProtocolError("file too large for this chunk length")
        # wrap a fresh file key to the recipient
        file_key = os.urandom(FILE_KEY_LENGTH)
        info = hpke_info(our_public.fingerprint(), their_identity.fingerprint())
        try:
            wrapped_key = HPKE_SUITE.encrypt(file_key, their_file_key.hpke_key(), info=info)
        except ValueError:  # e.g. a low-order X25519 point
            raise FileCryptoError("recipient file key is invalid") from None
        header = FileHeader(
            chunk_length=chunk_length,
            padded_length=padded,
            file_id=os.urandom(FILE_ID_LENGTH),
            recipient_fingerprint=their_identity.fingerprint(),
            recipient_file_key_fingerprint=their_file_key.fingerprint(),
            sender=our_public,
            wrapped_key=wrapped_key,
        )
        self._identity = our_identity  # signs at the end
        self._header = header  # clear header
        self._header_bytes = header.serialize()  # written first
        self._header_hash = sha256(self._header_bytes)  # AAD of every chunk
        self._aead, self._nonce_prefix = payload_keys(file_key, header.file_id)
        self._chunks_hash = hashes.Hash(hashes.SHA256())  # over every chunk ciphertext
        self._buffer = bytearray(metadata)  # plaintext stream not yet sealed
        self._index = 0  # next chunk to seal
        self._size = size  # bytes the caller promised
        self._fed = 0  # bytes the caller gave so far
        self._header_sent = False  # header already returned
        self._finishing = False  # finish() was called

    @property
    def header(self) -> FileHeader:
        """The clear header of the file being written."""
        return self._header

    @property
    def ciphertext_length(self) -> int:
        """The exact length of the encrypted file, known before any byte is fed."""
        return self._header.ciphertext_length()

    def feed(self, data: bytes) -> bytes:
        """Encrypt more plaintext; return the ciphertext ready so far (maybe empty).

        Raises:
            LocalProtocolError: called after :meth:`finish`, or more bytes than
                ``size`` were fed.
        """
        if self._finishing:
            raise LocalProtocolError("encryptor is already finished")
        if self._fed + len(data) > self._size:
            raise LocalProtocolError("fed more bytes than the declared size")
        self._fed += len(data)
        self._buffer += data
        out = [self._take_header()]
        last = self._header.chunk_count - 1
        chunk_length = self._header.chunk_length
        while self._index < last and len(self._buffer) >= chunk_length:
            out.append(self._seal(bytes(self._buffer[:chunk_length]), is_last=False))
            del self._buffer[:chunk_length]
        return b"".join(out)

    def finish(self) -> Iterator[bytes]:
        """End the plaintext; return an iterator over the rest of the ciphertext.

        The iterator yields the padding, the final chunk and the signature, one
        chunk at a time (padding can be large). The file is complete only when
        the iterator is exhausted.

        Raises:
            LocalProtocolError: called twice, or fewer bytes than ``size`` were fed.
        """
        if self._finishing:
            raise LocalProtocolError("encryptor is already finished")
        if self._fed != self._size:
            raise LocalProtocolError(f"fed {self._fed} bytes, declared {self._size}")
        self._finishing = True
        return self._final_chunks()

    def _final_chunks(self) -> Iterator[bytes]:
        header = self._header
        yield self._take_header()
        last = header.chunk_count - 1
        while self._index < last:
            self._buffer += bytes(header.chunk_length - len(self._buffer))
            yield self._seal(bytes(self._buffer), is_last=False)
            self._buffer.clear()
        final_length = header.padded_length - last * header.chunk_length
        self._buffer += bytes(final_length - len(self._buffer))
        yield self._seal(bytes(self._buffer), is_last=True)
        self._buffer.clear()
        signed = self._header_hash + self._chunks_hash.finalize()
        yield self._identity.sign(signed, context=SIGNATURE_CONTEXT)

    def _take_header(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return self._header_bytes

    def _seal(self, plaintext: bytes, *, is_last: bool) -> bytes:
        nonce = chunk_nonce(self._nonce_prefix, self._index, is_last)
        chunk = self._aead.encrypt(nonce, plaintext, self._header_hash)
        self._chunks_hash.update(chunk)
        self._index += 1
        return chunk


class _State(enum.Enum):
    EXPECT_HEADER = enum.auto()
    EXPECT_CHUNK = enum.auto()
    EXPECT_SIGNATURE = enum.auto()
    VERIFIED = enum.auto()
    FAILED = enum.auto()


@dataclasses.dataclass(frozen=True, slots=True)
class _Metadata:
    sender_fingerprint: bytes
    name: str
    size: int
    content_type: str
    created: int
    record_length: int  # bytes of the plaintext stream the record takes


class FileDecryptor:
    """Sans-I/O decryptor: feed ciphertext, get plaintext, then call :meth:`finish`.

    The plaintext :meth:`feed` returns is authenticated chunk by chunk but not
    yet known to be complete or signed by the sender. Only when
    :meth:`finish` returns is the file verified: write plaintext to a
    temporary file and rename it into place after ``finish()``; delete it if
    anything raises.

    Args:
        our_identity: the recipient's identity (the file must name it).
        our_file_keys: the recipient's file private keys, current first, then
            previous ones (see ``AccountSecrets.file_keys()``).
        expected_sender: if given, a file from any other identity is refused
            as soon as its header arrives.
    """

    def __init__(
        self,
        our_identity: IdentityPublicKey,
        our_file_keys: Sequence[FilePrivateKey],
        *,
        expected_sender: IdentityPublicKey | None = None,
    ) -> None:
        self._our_fingerprint = our_identity.fingerprint()  # must match the header
        self._our_file_keys = tuple(our_file_keys)  # tried by fingerprint
        self._expected_sender = expected_sender  # refuse others early when set
        self._state = _State.EXPECT_HEADER  # what the next bytes are
        self._buffer = bytearray()  # ciphertext not yet processed
        self._header: FileHeader | None = None  # set once the header is parsed
        self._header_hash = b""  # AAD of every chunk
        self._aead: AESGCM | None = None  # payload cipher
        self._nonce_prefix = b""  # first 7 bytes of every nonce
        self._chunks_hash = hashes.Hash(hashes.SHA256())  # over every chunk ciphertext
        self._index = 0  # next chunk to open
        self._metadata: _Metadata | None = None  # from chunk 0
        self._stream_offset = 0  # plaintext stream bytes opened so far

    @property
    def sender(self) -> IdentityPublicKey | None:
        """The claimed sender, once the header has arrived; unverified until finish()."""
        return None if self._header is None else self._header.sender

    @property
    def size(self) -> int | None:
        """The exact plaintext size, once the first chunk has been opened (for progress)."""
        return None if self._metadata is None else self._metadata.size

    @property
    def is_verified(self) -> bool:
        """Whether :meth:`finish` has verified the whole file."""
        return self._state is _State.VERIFIED

    def feed(self, data: bytes) -> bytes:
        """Process more ciphertext; return the plaintext opened so far (maybe empty).

        Raises:
            FileCryptoError: the file is malformed, not for us, or tampered with.
                The decryptor is then unusable.
            LocalProtocolError: called after :meth:`finish` or after a failure.
        """
        if self._state in (_State.VERIFIED, _State.FAILED):
            raise LocalProtocolError(f"decryptor is {self._state.name.lower()}")
        self._buffer += data
        try:
            return self._process()
        except FileCryptoError:
            self._fail()
            raise

    def finish(self) -> FileInfo:
        """Check the file is complete and signed by its sender.

        Returns:
            What the file says about itself, with the verified sender.

        Raises:
            FileCryptoError: the file is truncated, has trailing data, or the
                signature does not match the sender.
            LocalProtocolError: called twice or after a failure.
        """
        if self._state in (_State.VERIFIED, _State.FAILED):
            raise LocalProtocolError(f"decryptor is {self._state.name.lower()}")
        try:
            info = self._verify()
        except FileCryptoError:
            self._fail()
            raise
        self._state = _State.VERIFIED
        return info

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._buffer.clear()
        self._aead = None

    def _process(self) -> bytes:
        out: list[bytes] = []
        while True:
            if self._state is _State.EXPECT_HEADER:
                if not self._open_header():
                    break
            elif self._state is _State.EXPECT_CHUNK:
                plaintext = self._open_chunk()
                if plaintext is None:
                    break
                out.append(plaintext)
            else:  # EXPECT_SIGNATURE
                if len(self._buffer) > SIGNATURE_ENCODED_LENGTH:
                    raise FileCryptoError("file has data after its end")
                break
        return b"".join(out)

    def _open_header(self) -> bool:
        # check the tag as soon as it arrives, then wait for the whole header
        if len(self._buffer) >= encoding.HEADER_LENGTH:
            try:
                encoding.decode(Kind.FILE_HEADER, bytes(self._buffer[: encoding.HEADER_LENGTH]))
            except DecodeError as exc:
                raise FileCryptoError(not_a_file_message(str(exc))) from None
        if len(self._buffer) < HEADER_PREFIX_LENGTH:
            return False
        body_length = int.from_bytes(
            self._buffer[encoding.HEADER_LENGTH : HEADER_PREFIX_LENGTH], "big"
        )
        if body_length > MAX_HEADER_BODY_LENGTH:
            raise FileCryptoError("file header is too long")
        if len(self._buffer) < HEADER_PREFIX_LENGTH + body_length:
            return False
        raw = bytes(self._buffer[: HEADER_PREFIX_LENGTH + body_length])
        del self._buffer[: len(raw)]
        header = FileHeader.parse(raw)
        # is it for us, and from whom we expect?
        if not hmac.compare_digest(header.recipient_fingerprint, self._our_fingerprint):
            raise FileCryptoError("file is not encrypted to this key")
        keys = [
            key
            for key in self._our_file_keys
            if key.public_key().fingerprint() == header.recipient_file_key_fingerprint
        ]
        if not keys:
            raise FileCryptoError("file is not encrypted to this key")
        if self._expected_sender is not None and header.sender != self._expected_sender:
            raise FileCryptoError("file is not from the expected sender")
        # unwrap the file key and derive the payload keys
        info = hpke_info(header.sender.fingerprint(), header.recipient_fingerprint)
        try:
            file_key = HPKE_SUITE.decrypt(header.wrapped_key, keys[0].hpke_key(), info=info)
        except InvalidTag:
            raise FileCryptoError("file key does not unwrap: the header was altered") from None
        if len(file_key) != FILE_KEY_LENGTH:
            raise FileCryptoError("file key has the wrong length")
        self._header = header
        self._header_hash = sha256(raw)
        self._aead, self._nonce_prefix = payload_keys(file_key, header.file_id)
        self._state = _State.EXPECT_CHUNK
        return True

    def _open_chunk(self) -> bytes | None:
        header = self._header
        assert header is not None and self._aead is not None
        length = header.chunk_ciphertext_length(self._index)
        if len(self._buffer) < length:
            return None
        chunk = bytes(self._buffer[:length])
        del self._buffer[:length]
        is_last = self._index == header.chunk_count - 1
        try:
            plaintext = self._aead.decrypt(
                chunk_nonce(self._nonce_prefix, self._index, is_last), chunk, self._header_hash
            )
        except InvalidTag:
            raise FileCryptoError(self._diagnose(chunk)) from None
        self._chunks_hash.update(chunk)
        self._index += 1
        if is_last:
            self._state = _State.EXPECT_SIGNATURE
        return self._take_data(plaintext)

    def _diagnose(self, chunk: bytes) -> str:
        # a chunk that does not open here may open at another index: say which
        assert self._header is not None and self._aead is not None
        count = self._header.chunk_count
        low = max(0, self._index - MAX_PROBED_CHUNKS)
        high = min(count, self._index + MAX_PROBED_CHUNKS)
        for index in range(low, high):
            if index == self._index:
                continue
            nonce = chunk_nonce(self._nonce_prefix, index, index == count - 1)
            try:
                self._aead.decrypt(nonce, chunk, self._header_hash)
            except InvalidTag:
                continue
            if index < self._index:
                return f"chunk {index} is duplicated"
            return "chunk out of order"
        return f"chunk {self._index} is corrupt or was tampered with"

    def _take_data(self, plaintext: bytes) -> bytes:
        start = self._stream_offset
        self._stream_offset += len(plaintext)
        if self._metadata is None:
            self._metadata = self._open_metadata(plaintext)
        metadata = self._metadata
        data_start = metadata.record_length
        data_end = data_start + metadata.size
        # keep the bytes of [data_start, data_end) this chunk holds; padding must be zero
        begin = min(max(data_start - start, 0), len(plaintext))
        end = min(max(data_end - start, 0), len(plaintext))
        padding = plaintext[end:]
        if padding.count(0) != len(padding):
            raise FileCryptoError("file padding is not zero")
        return plaintext[begin:end]

    def _open_metadata(self, first_chunk: bytes) -> _Metadata:
        assert self._header is not None
        try:
            raw = Reader(first_chunk, "file metadata").vec16("record")
            record = Reader(raw, "file metadata")
            sender_fingerprint = record.fixed(FINGERPRINT_LENGTH, "sender fingerprint")
            name = record.text("name")
            size = record.u64("size")
            content_type = record.text("content type")
            created = record.u64("created")
            record.end()
        except DecodeError as exc:
            raise FileCryptoError(f"file metadata is malformed ({exc})") from None
        if not hmac.compare_digest(sender_fingerprint, self._header.sender.fingerprint()):
            raise FileCryptoError("file sender does not match its encrypted metadata")
        record_length = 2 + len(raw)
        if padded_length(record_length + size) != self._header.padded_length:
            raise FileCryptoError("file length does not match its metadata")
        return _Metadata(sender_fingerprint, name, size, content_type, created, record_length)

    def _verify(self) -> FileInfo:
        if self._state is not _State.EXPECT_SIGNATURE:
            raise FileCryptoError("file is truncated")
        if len(self._buffer) < SIGNATURE_ENCODED_LENGTH:
            raise FileCryptoError("file is truncated")
        assert self._header is not None and self._metadata is not None
        signed = self._header_hash + self._chunks_hash.finalize()
        try:
            self._header.sender.verify(bytes(self._buffer), signed, context=SIGNATURE_CONTEXT)
        except BadSignature:
            raise FileCryptoError("signature does not match the sender") from None
        self._buffer.clear()
        metadata = self._metadata
        return FileInfo(
            sender=self._header.sender,
            name=metadata.name,
            size=metadata.size,
            content_type=metadata.content_type,
            created=metadata.created,
            file_id=self._header.file_id,
            verified=True,
        )


def encrypt_stream(
    src: ByteSource,
    dst: ByteSink,
    our_identity: IdentityPrivateKey,
    their_identity: IdentityPublicKey,
    their_bundle: KeyBundle,
    *,
    name: str,
    created: int,
    size: int | None = None,
    content_type: str = DEFAULT_CONTENT_TYPE,
) -> int:
    """Encrypt ``src`` into ``dst`` in constant memory; return the bytes written.

    Args:
        src: the plaintext, read to its end from its current position.
        dst: where the encrypted file goes.
        our_identity, their_identity, their_bundle, name, created, content_type:
            as for :class:`FileEncryptor`.
        size: the number of bytes ``src`` holds; found by seeking when None.

    Raises:
        BadSignature: the bundle is not signed by ``their_identity``.
        LocalProtocolError: ``size`` is needed but ``src`` cannot seek, or
            ``src`` did not hold ``size`` bytes.
    """
    if size is None:
        size = _remaining_length(src)
    encryptor = FileEncryptor(
        our_identity,
        their_identity,
        their_bundle,
        name=name,
        size=size,
        created=created,
        content_type=content_type,
    )
    written = 0
    while block := src.read(READ_LENGTH):
        ciphertext = encryptor.feed(block)
        dst.write(ciphertext)
        written += len(ciphertext)
    for ciphertext in encryptor.finish():
        dst.write(ciphertext)
        written += len(ciphertext)
    return written


def decrypt_stream(
    src: ByteSource,
    dst: ByteSink,
    our_identity: IdentityPublicKey,
    our_file_keys: Sequence[FilePrivateKey],
    *,
    expected_sender: IdentityPublicKey | None = None,
) -> FileInfo:
    """Decrypt ``src`` into ``dst`` in constant memory and verify it.

    ``dst`` receives plaintext before the file is verified: make it a
    temporary file, and move it into place only if this returns.

    Raises:
        FileCryptoError: the file is malformed, not for us, truncated,
            tampered with, or not signed by its sender.
    """
    decryptor = FileDecryptor(our_identity, our_file_keys, expected_sender=expected_sender)
    while block := src.read(READ_LENGTH):
        plaintext = decryptor.feed(block)
        if plaintext:
            dst.write(plaintext)
    return decryptor.finish()


def _remaining_length(src: ByteSource) -> int:
    if not isinstance(src, _Seekable):
        raise LocalProtocolError("size is required for a stream that cannot seek")
    try:
        position = src.tell()
        end = src.seek(0, io.SEEK_END)
        src.seek(position)
    except (OSError, ValueError):
        raise LocalProtocolError("size is required for a stream that cannot seek") from None
    return end - position
