"""Private files in the home directory: mode 0600, atomic replace, one advisory lock.

Two processes may share a home at once (``pqcall listen`` and ``pqcall call``).
Every write happens under an exclusive ``flock`` on the home's ``.lock`` file,
and a whole-file write goes to a temporary file that is fsynced and renamed
over the target, so a reader sees the old content or the new, never a mix, and
a crash leaves the old content. Appends (the history) write one whole line and
fsync it under the same lock.

The lock is advisory and POSIX-only (``fcntl``); it blocks the calling thread
for as long as another process holds it, which is only ever for one short
read-modify-write.

Failures are reported as :class:`~pqcall.exceptions.KeystoreError` with one
line naming the file, like the keystore's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from pqcall.exceptions import KeystoreError
from pqcall.safefile import FILE_MODE, replace_file, write_all

DIRECTORY_MODE = 0o700
LOCK_NAME = ".lock"


class FileLock:
    """An exclusive ``flock`` on ``path``, reentrant within this object.

    Nested :meth:`held` blocks of the same object (in one thread) take the lock
    once, so a read-modify-write can call helpers that lock too. Two objects on
    one path exclude each other even in one process (each opens its own file
    description), so never nest blocks of two different objects.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)  # the lock file, created 0600 on first use
        self._mutex = threading.RLock()  # threads of this process, one at a time
        self._depth = 0  # nesting level of held() in the owning thread
        self._fd: int | None = None  # the open lock file while held

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block, creating the directory 0700 if missing.

        Raises:
            KeystoreError: the directory or lock file cannot be created.
        """
        with self._mutex:
            if self._depth == 0:
                self._fd = _acquire(self.path)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    try:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    finally:
                        os.close(fd)


def _acquire(path: Path) -> int:
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise KeystoreError(f"cannot create lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise KeystoreError(f"cannot lock {path}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) if needed; a directory created here gets 0700.

    An existing directory keeps its mode: ``--home`` may name a directory the
    user made on purpose, and every file inside is 0600 anyway.

    Raises:
        KeystoreError: the directory cannot be created, or ``path`` is not one.
    """
    directory = Path(path)
    if directory.is_dir():
        return directory
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=DIRECTORY_MODE)
        os.chmod(directory, DIRECTORY_MODE)  # exact mode whatever the umask
    except FileExistsError:
        if not directory.is_dir():
            raise KeystoreError(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise KeystoreError(f"cannot create directory {directory}: {exc.strerror}") from None
    return directory


def write_atomic(path: str | os.PathLike[str], data: bytes, what: str) -> None:
    """Replace ``path`` with ``data``: temporary file (0600), fsync, rename, fsync directory.

    If anything fails, ``path`` keeps its previous content. Call it with the
    home's lock held when the content came from a read of the same file.

    Args:
        path: the file to replace.
        data: its new content.
        what: what the file is, for error messages ("contacts file").

    Raises:
        KeystoreError: the file cannot be written.
    """
    make_private_dir(Path(path).parent)
    replace_file(path, data, what)


def append_line(path: str | os.PathLike[str], line: bytes, what: str) -> None:
    """Append ``line`` plus a newline to ``path`` (created 0600) and fsync it.

    If the file does not end with a newline (a crash cut its last line short),
    a newline is written first, so the damaged line stays one skippable line
    and the new one stays intact. Call it with the home's lock held.

    Raises:
        KeystoreError: the file cannot be written.
    """
    target = Path(path)
    make_private_dir(target.parent)
    try:
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise KeystoreError(f"cannot write {what} {target}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        write_all(fd, line + b"\n")
        os.fsync(fd)
    except OSError as exc:
        raise KeystoreError(f"cannot write {what} {target}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_bounded(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes | None:
    """The content of ``path``, or None if it does not exist.

    Raises:
        KeystoreError: the file is larger than ``max_bytes``, is not a regular
            file, or cannot be read.
    """
    target = Path(path)
    try:
        with open(target, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise KeystoreError(f"{what} {target} is not a regular file")
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeystoreError(f"cannot read {what} {target}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise KeystoreError(f"{what} {target} is too large")
    return data
