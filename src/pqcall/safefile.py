"""Files replaced whole or not at all: temporary file (0600), fsync, rename, fsync of the folder.

Scope: the one way pqcall replaces a file that must survive a crash with
either its old content or its new one, never a mix: the keystore
(:mod:`pqcall.crypto.keystore`) and the home's private files
(:mod:`pqcall.client.privatefile`). It lives apart from both because neither
layer may import the other. :func:`shared_access` is the one check that a
private file or directory is not open to group or others (the keystore, the
server's data directory).

Failures are reported as :class:`~pqcall.exceptions.KeystoreError` with one
line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

from pqcall.exceptions import KeystoreError

__all__ = [
    "DIRECTORY_MODE",
    "FILE_MODE",
    "GROUP_OTHER_BITS",
    "remove_quietly",
    "replace_file",
    "shared_access",
    "write_all",
]

FILE_MODE: Final = 0o600
"""Mode of every file written here: readable by its owner only."""
DIRECTORY_MODE: Final = 0o700
"""Mode of a private directory: only its owner may list or enter it."""
GROUP_OTHER_BITS: Final = 0o077
"""Permission bits that let anyone but the owner in."""


def shared_access(info: os.stat_result, path: str | os.PathLike[str], what: str) -> str | None:
    """One line saying that group or others may access ``path``, or ``None`` if only its owner may.

    ``info`` is the path's ``stat`` (or ``fstat`` of an open descriptor, to
    check exactly what was opened). Always ``None`` off POSIX. The line ends
    with the ``chmod`` that fixes it: 600 for a file, 700 for a directory.
    """
    if os.name != "posix" or not info.st_mode & GROUP_OTHER_BITS:
        return None
    mode = stat.S_IMODE(info.st_mode)
    private = DIRECTORY_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
    return (
        f"{what} {os.fspath(path)} is accessible by others (mode {mode:04o});"
        f" run: chmod {private:o} {os.fspath(path)}"
    )


def replace_file(path: str | os.PathLike[str], data: bytes, what: str) -> None:
    """Replace ``path`` with ``data``; if anything fails, ``path`` keeps its previous content.

    The data goes to a temporary file in the same folder (created 0600, so
    never readable by others even briefly), which is fsynced and renamed over
    ``path``; the folder is then fsynced so the rename survives a crash. The
    temporary file is removed on any failure.

    Args:
        path: the file to replace (its folder must exist).
        data: its new content.
        what: what the file is, for error messages ("keystore", "contacts file").

    Raises:
        KeystoreError: the file cannot be written.
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.urandom(8).hex()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise KeystoreError(f"cannot write {what} {target}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # exact mode whatever the umask
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except OSError as exc:
        remove_quietly(temp)
        raise KeystoreError(f"cannot write {what} {target}: {exc.strerror}") from None
    except BaseException:
        remove_quietly(temp)
        raise
    _fsync_directory(target.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists; a failure to delete is ignored."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_directory(directory: Path) -> None:
    # make the rename durable; not possible on every platform, so best effort
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
