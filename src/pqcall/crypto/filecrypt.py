"""Encrypt a file of any size to a recipient, streamed in constant memory.

Files go through the server, which stores them until an offline recipient
fetches them, so a file is encrypted to the recipient's long-lived file key
(:mod:`pqcall.crypto.filekey`) and signed by the sender's identity. The server
learns who sent what to whom, when, and a coarse size; nothing else.

Modules: :mod:`~pqcall.crypto.fileformat` (the byte-level pieces),
:mod:`~pqcall.crypto.fileencryptor` and :mod:`~pqcall.crypto.filedecryptor`
(the sans-I/O state machines), and this one: the format's design and the
stream helpers :func:`encrypt_stream` and :func:`decrypt_stream` over binary
files. Its names are the public API of file encryption.

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

import io
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pqcall.crypto.filedecryptor import FileDecryptor
from pqcall.crypto.fileencryptor import CHUNK_LENGTH, DEFAULT_CONTENT_TYPE, FileEncryptor
from pqcall.crypto.fileformat import FileInfo
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import LocalProtocolError

# implementation constants
READ_LENGTH = 64 * 1024  # bytes read per call by the stream helpers


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


__all__ = [
    "CHUNK_LENGTH",
    "DEFAULT_CONTENT_TYPE",
    "READ_LENGTH",
    "ByteSink",
    "ByteSource",
    "FileDecryptor",
    "FileEncryptor",
    "FileInfo",
    "decrypt_stream",
    "encrypt_stream",
]
