"""What uploads and downloads share while streaming a file through its encryption.

The :data:`Progress` callback the caller passes in, a reader that reports
how far :mod:`pqcall.crypto.filecrypt` has read (:class:`CountingReader`), and
the private (0600) files the plaintexts are written to (:func:`open_private`),
and checkpoints of a transfer's state written often and cheaply
(:func:`replace_quickly`). Reads are at most :data:`READ_BLOCK_BYTES`, so
memory use is constant whatever the file's size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pqcall.safefile import FILE_MODE, remove_quietly, write_all

READ_BLOCK_BYTES = 256 * 1024  # plaintext/ciphertext bytes read per step of encrypt/decrypt

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: phase is ``encrypting``, ``uploading``,
``downloading`` or ``decrypting``; bytes done of total. Called from a worker thread
while encrypting or decrypting."""


class CountingReader:
    """A binary file that reports how many bytes were read from it.

    Args:
        file: the source.
        report: told the running total after every read.
    """

    def __init__(self, file: BinaryIO, report: Callable[[int], None]) -> None:
        self._file = file  # the source
        self._report = report  # told the running total
        self._done = 0  # bytes read so far

    def read(self, size: int = -1, /) -> bytes:
        """At most ``size`` bytes (:data:`READ_BLOCK_BYTES` when negative)."""
        data = self._file.read(READ_BLOCK_BYTES if size < 0 else size)
        self._done += len(data)
        self._report(self._done)
        return data


def no_progress(phase: str, done: int, total: int) -> None:
    """The :data:`Progress` of a caller that did not ask for one."""


@contextlib.contextmanager
def open_private(path: Path, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """``path`` open for writing with mode 0600: truncated, or new only if ``exclusive``.

    Raises:
        OSError: it cannot be created (``FileExistsError`` if ``exclusive`` and it exists).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "wb") as file:
        yield file


def replace_quickly(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) by a rename, without fsync.

    For checkpoints written many times a second: a crash of the process keeps
    the last one whole; a power cut may bring back an earlier one, which
    callers must accept (an older checkpoint, never a torn one).

    Raises:
        OSError: it cannot be written.
    """
    temp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        remove_quietly(temp)
        raise
