"""Encrypt a file while it is uploaded, and encrypt it again, byte for byte, to resume.

:class:`CipherStream` reads the source, encrypts it with an encryptor built
from the upload's saved secrets (:class:`~pqcall.crypto.fileencryptor.EncryptionSecrets`)
and hands out the ciphertext from the server's offset on, in batches of about
:data:`BATCH_BYTES`. It is blocking (a worker thread runs it); no ciphertext
is ever written to disk.

Checkpoints. Before any ciphertext past the last recorded :class:`Checkpoint`
is handed out, a new one is recorded through ``save``: its position and the
SHA-256 of the chunks up to it, which names the plaintext there. So every byte
the server can hold lies before the recorded checkpoint. Resuming re-encrypts
from the start and holds the bytes between the server's offset and the
checkpoint (at most :data:`MAX_HELD_BYTES`) until the digest there matches:
a source that changed in any way is found before one byte of it is sent under
the old key (:class:`SourceChanged`), and the caller starts over with a fresh
key. The same key and nonce never seal two plaintexts the server could both
see, even a server that lies about its offset (docs/threat-model.md#files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pqcall.crypto.fileencryptor import FileEncryptor
from pqcall.exceptions import LocalProtocolError

READ_BYTES = 1024 * 1024  # plaintext read per step (a multiple of the chunk length)
BATCH_BYTES = 8 * 1024 * 1024  # ciphertext per batch: a checkpoint at most this often
MAX_HELD_BYTES = 64 * 1024 * 1024  # resuming: most bytes held until the checkpoint checks


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far ciphertext may have left, and what plaintext it came from."""

    position: int
    """Ciphertext bytes (header included) recorded as possibly sent."""
    digest: bytes
    """:meth:`FileEncryptor.chunks_digest` at that position."""
    signature: bytes | None = None
    """The file's signature, once the position is the end (it is randomized: keep it)."""


class SourceChanged(Exception):
    """The source is not the plaintext the server's bytes came from: start over, fresh key."""


class CannotResume(Exception):
    """The checkpoint cannot vouch for the server's offset: start over, fresh key."""


class CipherStream:
    """The ciphertext of ``source`` from ``offset`` on; call :meth:`prime` first.

    Args:
        source: the plaintext, open at its start.
        encryptor: built from the upload's saved secrets and metadata.
        offset: where the server is (its ``received``).
        checkpoint: the last one recorded (position 0 for a new upload).
        save: records a checkpoint; called before the bytes it covers are handed out.
    """

    def __init__(
        self,
        source: BinaryIO,
        encryptor: FileEncryptor,
        *,
        offset: int,
        checkpoint: Checkpoint,
        save: Callable[[Checkpoint], None],
    ) -> None:
        self._source = source  # closed by close()
        self._encryptor = encryptor  # the same secrets as every earlier run
        self._pieces = self._ciphertext(source)  # lazily encrypted pieces
        self._offset = offset  # the server's position
        self._recorded = checkpoint  # the last checkpoint saved
        self._save = save  # records checkpoints
        self._held: list[bytes] = []  # ciphertext from offset, ready to hand out
        self._position = 0  # ciphertext bytes produced so far
        self._last_piece = b""  # the signature, once finished

    @property
    def total(self) -> int:
        """Length of the whole encrypted file."""
        return self._encryptor.ciphertext_length

    def prime(self) -> None:
        """Encrypt again up to the offset and the checkpoint; check the digest there.

        Raises:
            CannotResume: the server is past the checkpoint, or too far behind it.
            SourceChanged: the digest at the checkpoint differs (the source changed).
        """
        target = self._recorded.position
        if not self._offset <= target <= self._offset + MAX_HELD_BYTES:
            raise CannotResume(f"server at byte {self._offset}, checkpoint at {target}")
        while self._position < target:
            start = self._position
            piece = self._next_piece()
            if piece is None:
                raise SourceChanged("source ended before the checkpoint")
            if self._position > self._offset:
                self._held.append(piece[max(0, self._offset - start) :])
        if self._position != target or self._digest() != self._recorded.digest:
            raise SourceChanged("source differs from the one encrypted before")

    def next_batch(self) -> list[bytes]:
        """The next pieces to send (empty at the end); a checkpoint is recorded first.

        Raises:
            SourceChanged: the source grew or shrank while it was read.
            OSError: it cannot be read, or the checkpoint cannot be written.
        """
        batch, self._held = self._held, []
        size = sum(len(piece) for piece in batch)
        while size < BATCH_BYTES:
            piece = self._next_piece()
            if piece is None:
                break
            batch.append(piece)
            size += len(piece)
        if self._position > self._recorded.position:
            at_end = self._position == self.total
            self._recorded = Checkpoint(
                self._position, self._digest(), self._last_piece if at_end else None
            )
            self._save(self._recorded)
        return batch

    def close(self) -> None:
        """Close the source."""
        self._source.close()

    def _next_piece(self) -> bytes | None:
        try:
            piece = next(self._pieces, None)
        except LocalProtocolError as exc:  # more or fewer bytes than the size announced
            raise SourceChanged(str(exc)) from None
        if piece is not None:
            self._position += len(piece)
            self._last_piece = piece
        return piece

    def _ciphertext(self, source: BinaryIO) -> Iterator[bytes]:
        while block := source.read(READ_BYTES):
            if piece := self._encryptor.feed(block):
                yield piece
        for piece in self._encryptor.finish(signature=self._recorded.signature):
            if piece:
                yield piece

    def _digest(self) -> bytes:
        return self._encryptor.chunks_digest()
