"""Decrypt a file while it is downloaded, into a hidden file next to where it will be saved.

:class:`PartialDownload` owns one download's two files: the plaintext so far,
``OUT/.<file id>.part`` (0600, in the output folder so the final rename never
copies), and its state, ``incoming/<file id>.json`` (0600): the decryptor's
:class:`~pqcall.crypto.filedecryptor.DecryptionCheckpoint` (header, metadata
record, chunks opened, the ciphertext after them: under two chunks). It is
blocking (worker threads run it). No ciphertext is kept beyond that tail.

Resuming keeps the plaintext, not the ciphertext: the state is recorded every
:data:`CHECKPOINT_BYTES` and when a download breaks off, after the plaintext it
covers was flushed; a new run truncates the part file to what the checkpoint
covers, gives that plaintext back to the decryptor, which seals it again to
rebuild the hash of the chunks the signature covers
(:meth:`~pqcall.crypto.filedecryptor.FileDecryptor.resume`), and downloads from
the checkpoint's byte on. A part file damaged or altered in between fails the
signature check at the end: nothing is saved under the file's name, as for any
other failure. Disk use is the file's size plus the state.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from pqcall.client.file_names import place_file, sanitize_name
from pqcall.client.file_stream import replace_quickly
from pqcall.client.privatefile import read_bounded
from pqcall.crypto.filedecryptor import DecryptionCheckpoint, FileDecryptor
from pqcall.crypto.fileformat import FileInfo
from pqcall.crypto.filekey import FilePrivateKey
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.exceptions import FileCryptoError, KeystoreError
from pqcall.safefile import FILE_MODE, remove_quietly

logger = logging.getLogger(__name__)

STATE_FORMAT = "pqcall download"
STATE_VERSION = 1
MAX_STATE_BYTES = 1024 * 1024  # header, metadata and a tail of under two chunks, in base64
CHECKPOINT_BYTES = 32 * 1024 * 1024  # ciphertext between two recorded checkpoints
REPLAY_BYTES = 1024 * 1024  # plaintext read back per step when resuming


class PartialDownload:
    """One download being decrypted into ``part``, resumable through ``state``.

    Args:
        part: the hidden plaintext file in the output folder.
        state: the checkpoint file under ``incoming/``.
        decryptor: at the start, or resumed at the checkpoint.
        file: ``part``, open for writing at the end of what the decryptor delivered.
    """

    def __init__(self, part: Path, state: Path, decryptor: FileDecryptor, file: BinaryIO) -> None:
        self.part = part  # plaintext so far
        self.state = state  # its checkpoint
        self._decryptor = decryptor  # where the stream is
        self._file = file  # part, open for writing
        self._recorded = decryptor.consumed  # ciphertext covered by the last checkpoint

    @classmethod
    def open(
        cls,
        part: Path,
        state: Path,
        our_identity: IdentityPublicKey,
        our_file_keys: list[FilePrivateKey],
        expected_sender: IdentityPublicKey,
    ) -> PartialDownload:
        """Resume the download recorded in ``state`` into ``part``, or start it afresh.

        Raises:
            OSError: ``part`` cannot be created.
        """
        checkpoint = _load(state, part)
        if checkpoint is not None:
            try:
                return cls._resume(
                    part, state, checkpoint, our_identity, our_file_keys, expected_sender
                )
            except (OSError, FileCryptoError) as exc:
                logger.info("cannot resume the download into %s (%s): starting over", part, exc)
        remove_quietly(state)
        decryptor = FileDecryptor(our_identity, our_file_keys, expected_sender=expected_sender)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # exact mode whatever the umask
        return cls(part, state, decryptor, os.fdopen(fd, "r+b"))

    @classmethod
    def _resume(
        cls,
        part: Path,
        state: Path,
        checkpoint: DecryptionCheckpoint,
        our_identity: IdentityPublicKey,
        our_file_keys: list[FilePrivateKey],
        expected_sender: IdentityPublicKey,
    ) -> PartialDownload:
        decryptor = FileDecryptor.resume(
            checkpoint, our_identity, our_file_keys, expected_sender=expected_sender
        )
        length = decryptor.replay_length
        file = open(part, "r+b")
        try:
            if os.fstat(file.fileno()).st_size < length:
                raise FileCryptoError("the partial file is shorter than its checkpoint")
            file.truncate(length)  # bytes written after the checkpoint come again
            while block := file.read(min(REPLAY_BYTES, decryptor.replay_length)):
                decryptor.replay(block)
            file.seek(length)
        except BaseException:
            file.close()
            raise
        logger.info("resuming the download into %s at byte %d", part, decryptor.consumed)
        return cls(part, state, decryptor, file)

    @property
    def consumed(self) -> int:
        """Ciphertext bytes taken: where the download goes on."""
        return self._decryptor.consumed

    def absorb(self, pieces: Iterable[bytes]) -> None:
        """Decrypt ``pieces`` of ciphertext into the part file; record a checkpoint now and then.

        Each piece goes to the decryptor as it came from the socket (no
        joining copy), and the plaintext is written as it comes out.

        Raises:
            FileCryptoError: the ciphertext is tampered with or not for us.
            OSError: the part file or the state cannot be written.
        """
        for piece in pieces:
            if plaintext := self._decryptor.feed(piece):
                self._file.write(plaintext)
        if self.consumed - self._recorded >= CHECKPOINT_BYTES:
            self.record()

    def record(self) -> None:
        """Save a checkpoint covering everything absorbed (the plaintext flushed first)."""
        checkpoint = self._decryptor.checkpoint()
        if checkpoint is None:
            return
        self._file.flush()
        document = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "part": str(self.part),
            "header": _b64(checkpoint.header),
            "metadata": _b64(checkpoint.metadata),
            "chunks": checkpoint.chunks,
            "pending": _b64(checkpoint.pending),
        }
        replace_quickly(self.state, json.dumps(document).encode("utf-8"))
        self._recorded = self.consumed

    def finish(self, folder: Path) -> tuple[Path, FileInfo]:
        """Verify the whole file and its signature, then rename it into ``folder``.

        Raises:
            FileCryptoError: truncated, trailing data, or not signed by the sender.
            TransferError: no free name.
            OSError: the folder cannot be written.
        """
        info = self._decryptor.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        saved = place_file(self.part, folder, sanitize_name(info.name))
        remove_quietly(self.state)
        return saved, info

    def close(self) -> None:
        """Close the part file (kept, with the state, for a resume)."""
        self._file.close()

    def discard(self) -> None:
        """Close and delete the part file and the state: nothing of this download is kept."""
        self._file.close()
        remove_quietly(self.part)
        remove_quietly(self.state)


def _load(state: Path, part: Path) -> DecryptionCheckpoint | None:
    try:
        data = read_bounded(state, "download state", MAX_STATE_BYTES)
    except KeystoreError:
        return None
    if data is None:
        return None
    try:
        value = json.loads(data)
        if value.get("format") != STATE_FORMAT or value.get("version") != STATE_VERSION:
            raise ValueError("not a download state")
        if value["part"] != str(part):  # saved into another folder that time
            if Path(value["part"]).name == part.name:
                remove_quietly(Path(value["part"]))
            return None
        return DecryptionCheckpoint(
            header=base64.b64decode(value["header"], validate=True),
            metadata=base64.b64decode(value["metadata"], validate=True),
            chunks=int(value["chunks"]),
            pending=base64.b64decode(value["pending"], validate=True),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        logger.info("ignoring unreadable download state %s", state)
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
