"""The sans-I/O encryptor of a file: feed plaintext, get the encrypted file.

:class:`FileEncryptor` wraps a fresh file key to the recipient (HPKE), seals
the padded plaintext stream chunk by chunk (STREAM construction) and signs the
header and every chunk. The format and its reasons are in
:mod:`pqcall.crypto.filecrypt`; the byte-level pieces in
:mod:`pqcall.crypto.fileformat`. Memory use is one chunk, whatever the size.

Resuming an upload: an encryptor built again with the :class:`EncryptionSecrets`
of an earlier one (and the same name, size, created time and content type)
produces the same ciphertext byte for byte from the same plaintext, so a sender
can re-encrypt a file it streamed and send only what the server lacks. The
same key and nonce must never seal a *different* plaintext: compare
:meth:`FileEncryptor.chunks_digest` at a position with the one recorded before
the bytes up to it were sent, and start over with fresh secrets if it differs
(docs/threat-model.md#files). The signature may be randomized (ML-DSA is
hedged), so the first one made is kept and passed back to :meth:`finish`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from cryptography.hazmat.primitives import hashes

from pqcall.crypto.fileformat import (
    FILE_ID_LENGTH,
    FILE_KEY_LENGTH,
    HPKE_SUITE,
    MAX_CHUNK_LENGTH,
    MAX_CHUNKS,
    MAX_CREATED,
    MIN_CHUNK_LENGTH,
    SIGNATURE_CONTEXT,
    FileHeader,
    encode_metadata,
    hpke_info,
    padded_length,
    payload_keys,
)
from pqcall.crypto.fileformat import (
    nonce as chunk_nonce,
)
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey, sha256
from pqcall.exceptions import BadSignature, FileCryptoError, LocalProtocolError

# implementation constants
CHUNK_LENGTH = 64 * 1024  # plaintext bytes per chunk
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclasses.dataclass(frozen=True, slots=True)
class EncryptionSecrets:
    """What re-creates an encryptor byte for byte: keep it private (0600), drop it when sent."""

    file_key: bytes
    """The random file key (the recipient gets it wrapped in the header)."""
    header: bytes
    """The serialized clear header (file id, wrapped key)."""


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
        secrets: an earlier encryptor's :attr:`secrets`, to produce the same
            ciphertext again (resuming); fresh ones when None.

    Raises:
        BadSignature: the bundle is not signed by ``their_identity``.
        FileCryptoError: the recipient's file key cannot be encrypted to.
        LocalProtocolError: an argument is out of range, or ``secrets`` do not
            belong to this sender, recipient and size.
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
        secrets: EncryptionSecrets | None = None,
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
        if secrets is None:
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
        else:
            # the same file key and header as an earlier run
            file_key = secrets.file_key
            try:
                header = FileHeader.parse(secrets.header)
            except FileCryptoError:
                raise LocalProtocolError("saved encryption secrets are malformed") from None
            expected = (chunk_length, padded, their_identity.fingerprint())
            if (
                len(file_key) != FILE_KEY_LENGTH
                or (header.chunk_length, header.padded_length, header.recipient_fingerprint)
                != expected
                or header.recipient_file_key_fingerprint != their_file_key.fingerprint()
                or header.sender != our_public
            ):
                raise LocalProtocolError("saved encryption secrets belong to another file")
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
        self._file_key = file_key  # kept only to hand out as secrets
        self._position = 0  # ciphertext bytes returned so far

    @property
    def header(self) -> FileHeader:
        """The clear header of the file being written."""
        return self._header

    @property
    def secrets(self) -> EncryptionSecrets:
        """What builds this encryptor again (private: it decrypts the file)."""
        return EncryptionSecrets(self._file_key, self._header_bytes)

    @property
    def position(self) -> int:
        """Ciphertext bytes returned so far (header included)."""
        return self._position

    def chunks_digest(self) -> bytes:
        """SHA-256 over the chunks sealed so far: names the plaintext up to :attr:`position`."""
        return self._chunks_hash.copy().finalize()

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
        ciphertext = b"".join(out)
        self._position += len(ciphertext)
        return ciphertext

    def finish(self, *, signature: bytes | None = None) -> Iterator[bytes]:
        """End the plaintext; return an iterator over the rest of the ciphertext.

        The iterator yields the padding, the final chunk and the signature, one
        chunk at a time (padding can be large). The file is complete only when
        the iterator is exhausted.

        Args:
            signature: the signature an earlier run with the same secrets made;
                checked against this run's chunks and used instead of a new one.

        Raises:
            LocalProtocolError: called twice, or fewer bytes than ``size`` were fed;
                (while iterating) ``signature`` does not sign these chunks.
        """
        if self._finishing:
            raise LocalProtocolError("encryptor is already finished")
        if self._fed != self._size:
            raise LocalProtocolError(f"fed {self._fed} bytes, declared {self._size}")
        self._finishing = True
        return self._final_chunks(signature)

    def _final_chunks(self, signature: bytes | None) -> Iterator[bytes]:
        for ciphertext in self._final_pieces(signature):
            self._position += len(ciphertext)
            yield ciphertext

    def _final_pieces(self, signature: bytes | None) -> Iterator[bytes]:
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
        signed = self._header_hash + self.chunks_digest()
        if signature is None:
            yield self._identity.sign(signed, context=SIGNATURE_CONTEXT)
            return
        try:
            self._identity.public_key().verify(signature, signed, context=SIGNATURE_CONTEXT)
        except BadSignature:
            raise LocalProtocolError("the saved signature does not sign these chunks") from None
        yield signature

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
