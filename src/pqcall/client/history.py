"""Local call history: one JSON object per line in ``history.jsonl``.

Each finished call appends its full record (peer, direction, result, SAS, path,
media statistics...; the caller decides the fields). The file is append-only,
0600, and every append is one whole line written and fsynced under the home's
lock, so two processes sharing a home never interleave lines.

Reading is forgiving: a line that is not a JSON object (a crash cut it short,
or a disk error garbled it) is skipped and counted in :attr:`History.skipped`,
never fatal; the calls around it are still listed. Reading is also bounded: only
the newest :data:`MAX_HISTORY_LINES` lines (at most :data:`MAX_HISTORY_READ_BYTES`
bytes) are ever looked at, however long the file has grown.
"""

from __future__ import annotations

import builtins
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from pqcall.client.privatefile import LOCK_NAME, FileLock, append_line
from pqcall.exceptions import KeystoreError, LocalProtocolError

MAX_HISTORY_LINES = 10_000  # lines looked at by one list(), newest first
MAX_HISTORY_READ_BYTES = 64 * 1024 * 1024  # bytes read from the end by one list()
MAX_RECORD_BYTES = 1024 * 1024  # one encoded record; a call's record is a few KiB
READ_BLOCK_BYTES = 64 * 1024


class History:
    """The call history file of one home."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)  # the JSON-lines file
        self._lock = FileLock(self.path.parent / LOCK_NAME)  # shared with the home's other files
        self.skipped = 0  # damaged lines skipped by the last list()

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one call's record as a JSON line and fsync it.

        Non-finite floats (a statistic that was never measured) are written as
        ``null``, so every line is standard JSON.

        Raises:
            LocalProtocolError: ``record`` cannot be encoded as JSON or is
                larger than :data:`MAX_RECORD_BYTES`.
            KeystoreError: the file cannot be written.
        """
        try:
            text = json.dumps(
                _finite(dict(record)), ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"history record is not JSON: {exc}") from None
        line = text.encode("utf-8")
        if len(line) > MAX_RECORD_BYTES:
            raise LocalProtocolError("history record is too large")
        with self._lock.held():
            append_line(self.path, line, "history file")

    def list(self, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """The newest ``limit`` records (all that are read when None), newest first.

        Sets :attr:`skipped` to the number of damaged lines passed over.

        Raises:
            LocalProtocolError: ``limit`` is negative.
            KeystoreError: the file exists but cannot be read.
        """
        if limit is not None and limit < 0:
            raise LocalProtocolError("history limit must not be negative")
        self.skipped = 0
        records: builtins.list[dict[str, Any]] = []
        if limit == 0 or not self.path.exists():
            return records
        with self._lock.held():
            try:
                with open(self.path, "rb") as file:
                    for line in _newest_lines(file):
                        record = _parse(line)
                        if record is None:
                            self.skipped += 1
                            continue
                        records.append(record)
                        if limit is not None and len(records) == limit:
                            break
            except FileNotFoundError:
                return records
            except OSError as exc:
                raise KeystoreError(
                    f"cannot read history file {self.path}: {exc.strerror}"
                ) from None
        return records


def _newest_lines(file: BinaryIO) -> Iterator[bytes]:
    # non-empty lines from the end of the file backwards, within the read bounds
    end = file.seek(0, os.SEEK_END)
    floor = max(0, end - MAX_HISTORY_READ_BYTES)  # never read before this offset
    position = end  # start of the bytes read so far
    pending = b""  # the unfinished line at the start of what was read
    produced = 0
    while position > floor:
        step = min(READ_BLOCK_BYTES, position - floor)
        position -= step
        file.seek(position)
        pieces = (file.read(step) + pending).split(b"\n")
        pending = pieces[0]
        for line in reversed(pieces[1:]):
            if line.strip():
                yield line
                produced += 1
                if produced == MAX_HISTORY_LINES:
                    return
    # the file's first line is whole; a line cut by the byte bound is not
    if position == 0 and pending.strip():
        yield pending


def _parse(line: bytes) -> dict[str, Any] | None:
    if len(line) > MAX_RECORD_BYTES:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def _finite(value: Any) -> Any:
    # NaN and infinities are not JSON; write them as null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
