"""The sans-I/O decryptor of a file: feed the encrypted file, get plaintext, then finish.

:class:`FileDecryptor` checks the header names us, unwraps the file key,
opens each chunk as it arrives (saying which chunk failed and how), strips the
metadata record and the zero padding, and only in :meth:`FileDecryptor.finish`
checks that the file is complete and signed by its sender. The format and the
caller's contract (write to a temporary file, rename after ``finish()``) are
in :mod:`pqcall.crypto.filecrypt`.

Resuming a download: :meth:`FileDecryptor.checkpoint` is what a receiver keeps
(the header, the metadata record, how many chunks were opened, the ciphertext
received after them: under two chunks). :meth:`FileDecryptor.resume` builds a
decryptor from it that first takes back the plaintext the earlier one returned
(:meth:`FileDecryptor.replay`): it seals that plaintext again with the same
key and nonces to rebuild the hash of the chunks the signature covers, so only
the ciphertext after the checkpoint is downloaded again and nothing but the
plaintext is kept on disk. Replayed plaintext that differs from what was
received (a damaged or altered partial file) makes :meth:`finish` fail.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcall.crypto import encoding
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.fileformat import (
    FILE_KEY_LENGTH,
    HEADER_PREFIX_LENGTH,
    HPKE_SUITE,
    MAX_HEADER_BODY_LENGTH,
    SIGNATURE_CONTEXT,
    TAG_LENGTH,
    FileHeader,
    FileInfo,
    hpke_info,
    not_a_file_message,
    padded_length,
    payload_keys,
)
from pqcall.crypto.fileformat import (
    nonce as chunk_nonce,
)
from pqcall.crypto.filekey import FilePrivateKey
from pqcall.crypto.identity import (
    FINGERPRINT_LENGTH,
    SIGNATURE_ENCODED_LENGTH,
    IdentityPublicKey,
    sha256,
)
from pqcall.exceptions import BadSignature, DecodeError, FileCryptoError, LocalProtocolError

# implementation constants
MAX_PROBED_CHUNKS = 1024  # how far a failed chunk is looked for elsewhere, for the message


class _State(enum.Enum):
    EXPECT_REPLAY = enum.auto()
    EXPECT_HEADER = enum.auto()
    EXPECT_CHUNK = enum.auto()
    EXPECT_SIGNATURE = enum.auto()
    VERIFIED = enum.auto()
    FAILED = enum.auto()


@dataclasses.dataclass(frozen=True, slots=True)
class DecryptionCheckpoint:
    """Where a decryptor stands, to build it again with :meth:`FileDecryptor.resume`."""

    header: bytes
    """The file's serialized header."""
    metadata: bytes
    """The metadata record that opens chunk 0 (empty while chunk 0 is not opened)."""
    chunks: int
    """Chunks opened so far."""
    pending: bytes
    """Ciphertext received after those chunks (part of a chunk, or of the signature)."""


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
        self._metadata_record = b""  # its bytes, for checkpoints
        self._stream_offset = 0  # plaintext stream bytes opened so far
        self._consumed = 0  # ciphertext bytes fed and processed or buffered
        self._delivered = 0  # file data bytes returned so far
        self._replay_chunks = 0  # chunks to seal again from replayed plaintext
        self._replay_pending = b""  # checkpoint's pending ciphertext, fed after the replay
        self._replay_stream = bytearray()  # plaintext stream being replayed

    @classmethod
    def resume(
        cls,
        checkpoint: DecryptionCheckpoint,
        our_identity: IdentityPublicKey,
        our_file_keys: Sequence[FilePrivateKey],
        *,
        expected_sender: IdentityPublicKey | None = None,
    ) -> FileDecryptor:
        """A decryptor at ``checkpoint``; give it :attr:`replay_length` bytes with :meth:`replay`.

        Raises:
            FileCryptoError: the checkpoint's header or metadata is not for us
                or malformed (start the download over).
        """
        decryptor = cls(our_identity, our_file_keys, expected_sender=expected_sender)
        decryptor._buffer += checkpoint.header
        if not decryptor._open_header() or decryptor._buffer:
            raise FileCryptoError("saved download state is malformed")
        header = decryptor._header
        assert header is not None
        if not 0 <= checkpoint.chunks <= header.chunk_count or (
            checkpoint.chunks > 0 and not checkpoint.metadata
        ):
            raise FileCryptoError("saved download state is malformed")
        if checkpoint.metadata:
            decryptor._metadata = decryptor._open_metadata(checkpoint.metadata)
            decryptor._metadata_record = checkpoint.metadata
        decryptor._consumed = len(checkpoint.header) + sum(
            header.chunk_ciphertext_length(index) for index in range(checkpoint.chunks)
        )
        decryptor._replay_chunks = checkpoint.chunks
        decryptor._replay_pending = checkpoint.pending
        decryptor._replay_stream += checkpoint.metadata
        decryptor._state = _State.EXPECT_REPLAY
        decryptor._advance_replay()
        return decryptor

    @property
    def replay_length(self) -> int:
        """File data bytes :meth:`replay` still expects (0 when not resuming)."""
        if self._state is not _State.EXPECT_REPLAY:
            return 0
        return self._data_length(self._replay_chunks) - self._delivered

    @property
    def consumed(self) -> int:
        """Ciphertext bytes taken so far: where a download resumes."""
        return self._consumed

    @property
    def delivered(self) -> int:
        """File data bytes returned (or replayed) so far."""
        return self._delivered

    def checkpoint(self) -> DecryptionCheckpoint | None:
        """Where this decryptor stands, or None before the header (start over then)."""
        if self._header is None or self._state not in (
            _State.EXPECT_CHUNK,
            _State.EXPECT_SIGNATURE,
        ):
            return None
        return DecryptionCheckpoint(
            header=self._header.serialize(),
            metadata=self._metadata_record,
            chunks=self._index,
            pending=bytes(self._buffer),
        )

    def replay(self, data: bytes) -> None:
        """Take back plaintext an earlier decryptor returned, in order, in any pieces.

        Raises:
            LocalProtocolError: not resuming, or more than :attr:`replay_length` bytes.
        """
        if not data:
            return
        if self._state is not _State.EXPECT_REPLAY:
            raise LocalProtocolError("decryptor is not replaying")
        if len(data) > self.replay_length:
            raise LocalProtocolError("replayed more than was delivered")
        self._delivered += len(data)
        self._replay_stream += data
        self._advance_replay()

    def _advance_replay(self) -> None:
        # seal every whole chunk of the replayed stream; padding follows the data
        header = self._header
        assert header is not None and self._aead is not None
        if self.replay_length == 0:
            end = min(self._replay_chunks * header.chunk_length, header.padded_length)
            self._replay_stream += bytes(
                max(0, end - self._stream_offset - len(self._replay_stream))
            )
        while self._index < self._replay_chunks:
            length = header.chunk_ciphertext_length(self._index) - TAG_LENGTH
            if len(self._replay_stream) < length:
                return
            is_last = self._index == header.chunk_count - 1
            nonce = chunk_nonce(self._nonce_prefix, self._index, is_last)
            chunk = self._aead.encrypt(
                nonce, bytes(self._replay_stream[:length]), self._header_hash
            )
            del self._replay_stream[:length]
            self._chunks_hash.update(chunk)
            self._stream_offset += length
            self._index += 1
        # replay done: continue with the pending ciphertext
        last = self._index == header.chunk_count
        self._state = _State.EXPECT_SIGNATURE if last else _State.EXPECT_CHUNK
        self._replay_stream.clear()
        pending, self._replay_pending = self._replay_pending, b""
        if self.feed(pending):
            raise FileCryptoError("saved download state is malformed")

    def _data_length(self, chunks: int) -> int:
        # file data bytes inside the first ``chunks`` chunks
        if self._metadata is None or self._header is None:
            return 0
        stream = min(chunks * self._header.chunk_length, self._header.padded_length)
        start = self._metadata.record_length
        return max(0, min(stream, start + self._metadata.size) - start)

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
        if self._state in (_State.VERIFIED, _State.FAILED, _State.EXPECT_REPLAY):
            raise LocalProtocolError(f"decryptor is {self._state.name.lower()}")
        self._buffer += data
        self._consumed += len(data)
        try:
            plaintext = self._process()
        except FileCryptoError:
            self._fail()
            raise
        self._delivered += len(plaintext)
        return plaintext

    def finish(self) -> FileInfo:
        """Check the file is complete and signed by its sender.

        Returns:
            What the file says about itself, with the verified sender.

        Raises:
            FileCryptoError: the file is truncated, has trailing data, or the
                signature does not match the sender.
            LocalProtocolError: called twice or after a failure.
        """
        if self._state in (_State.VERIFIED, _State.FAILED, _State.EXPECT_REPLAY):
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
            self._metadata_record = plaintext[: self._metadata.record_length]
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
