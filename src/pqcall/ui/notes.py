"""The UI's own notes in the home (``ui.json``): suspicious contacts, when missed calls were seen.

:meth:`UiNotes.read` is lenient: a missing, foreign or damaged file reads as
no notes (the damage is logged). :meth:`UiNotes.update` rewrites the file
atomically under the home's lock, stamped with its format and version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pqcall.client.home import Home
from pqcall.client.privatefile import LOCK_NAME, FileLock, read_bounded, write_atomic
from pqcall.exceptions import KeystoreError

logger = logging.getLogger(__name__)

UI_FILE_NAME = "ui.json"
"""The UI's own notes in the home: suspicious contacts, when missed calls were last seen."""
UI_FILE_FORMAT = "pqcall ui"
UI_FILE_VERSION = 1
MAX_UI_FILE_BYTES = 1024 * 1024


class UiNotes:
    """The notes file of the account in ``home``."""

    def __init__(self, home: Home) -> None:
        self._home = home  # whose notes

    @property
    def path(self) -> Path:
        """Where the notes are."""
        return self._home.path / UI_FILE_NAME

    def read(self) -> dict[str, Any]:
        """The notes (``{}`` when there are none, or none this version can read)."""
        try:
            data = read_bounded(self.path, "UI notes", MAX_UI_FILE_BYTES)
        except KeystoreError as exc:
            logger.warning("%s", exc)
            return {}
        if data is None:
            return {}
        try:
            value = json.loads(data)
        except ValueError:
            return {}
        if not isinstance(value, dict) or value.get("format") != UI_FILE_FORMAT:
            return {}
        return value

    def update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Replace the notes with ``change(notes)``, under the home's lock."""
        with FileLock(self._home.path / LOCK_NAME).held():
            notes = change(self.read())
            notes.update(format=UI_FILE_FORMAT, version=UI_FILE_VERSION)
            write_atomic(self.path, json.dumps(notes).encode("utf-8"), "UI notes")

    def set_suspicious(self, name: str, suspicious: bool) -> None:
        """Mark contact ``name`` suspicious (a SAS mismatch) or clear the mark."""

        def change(notes: dict[str, Any]) -> dict[str, Any]:
            names = set(notes.get("suspicious", []))
            if suspicious:
                names.add(name)
            else:
                names.discard(name)
            return {**notes, "suspicious": sorted(names)}

        self.update(change)

    def mark_missed_seen(self, now: float) -> None:
        """The user saw the missed calls at ``now`` (unix seconds)."""
        self.update(lambda notes: {**notes, "missed_seen": now})


__all__ = ["UI_FILE_NAME", "UiNotes"]
