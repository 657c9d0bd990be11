"""Where stored files' ciphertext lives on disk: one blob per file, and how to hold one.

Blobs live in ``data_dir/files/``, named by file id only (32 random hex
digits: no user-supplied name reaches the disk), mode 0600. How many bytes an
upload holds is the blob's size on disk, and when it last received a byte is
the blob's modification time, which the server sets to its own clock at each
write; so the database needs no column for either. An upload holds an
exclusive ``flock`` on its blob while it writes (:func:`locked_blob`), so two
uploads of one file (from any process on the machine) cannot interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pqcall.server.context import AppContext
from pqcall.server.storage import FILE_STORED, FileRecord

FILES_DIR = "files"  # under the data directory
BLOB_MODE = 0o600
FILES_DIR_MODE = 0o700
FILE_ID_BYTES = 16  # 32 hex digits
DISCARDED_SUFFIX = ".deleted"  # a blob being unlinked (its row is gone)


def files_dir(context: AppContext) -> Path:
    """Where blobs are: ``data_dir/files`` (created 0700 when missing)."""
    directory = context.settings.data_dir / FILES_DIR
    directory.mkdir(mode=FILES_DIR_MODE, parents=True, exist_ok=True)
    return directory


def blob_of(context: AppContext, record: FileRecord) -> Path:
    """The absolute path of a file's blob."""
    return context.settings.data_dir / record.blob_path


def received_bytes(context: AppContext, record: FileRecord) -> int:
    """How many bytes of the file the server holds."""
    if record.state == FILE_STORED:
        return record.size
    try:
        return min(record.size, blob_of(context, record).stat().st_size)
    except FileNotFoundError:
        return 0


async def discard_blob(path: Path) -> None:
    """Delete a blob whose row is gone: renamed aside at once, unlinked in a worker thread.

    Unlinking a large file takes a while (tens of ms for 100 MiB on ext4); the
    rename frees its name now, so nothing sees the blob after the caller
    returns. A crash before the unlink leaves ``<id>.deleted``, which the
    sweeper's orphan scan removes.
    """
    aside = path.with_name(f"{path.name}{DISCARDED_SUFFIX}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    await asyncio.to_thread(_unlink_quietly, aside)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a new blob's name) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked_blob(path: Path) -> Iterator[int | None]:
    """The blob opened for writing under an exclusive ``flock``; ``None`` if another holds it.

    Raises:
        FileNotFoundError: the blob is gone.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)  # releases the lock
