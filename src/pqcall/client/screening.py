"""Call screening settings of one home: the block list and "silence strangers".

:class:`Screening` keeps, in ``HOME/screening.json`` beside the contacts (0600,
atomic writes under the home's lock, every read from the file so ``pqcall
block`` takes effect at once in a running ``pqcall listen``):

- the callers the user blocked: their calls never ring and are not answered
  (the caller sees a call nobody picks up, the same as an unanswered one);
- whether calls from strangers (callers with no pin in the contacts) are
  silenced: they do not ring, and are recorded as missed.

A damaged file raises :class:`~pqcall.exceptions.KeystoreError` (the CLI shows
it); the phone logs it and lets calls ring rather than lose them.

File format (JSON)::

    {"format": "pqcall screening", "version": 1,
     "blocked": {"mallory": 1700000000.0}, "silence_strangers": false}

``blocked`` maps each normalized username to the Unix time it was blocked.

:class:`CallScreen` is the phone's decision, before a call rings, from this file,
the ring limit (:mod:`pqcall.client.ringlimit`) and the contacts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pqcall.client.privatefile import LOCK_NAME, FileLock, read_bounded, write_atomic
from pqcall.client.ringlimit import RING_LIMIT_UNANSWERED, RingLimiter
from pqcall.exceptions import KeystoreError
from pqcall.signaling.usernames import normalize

logger = logging.getLogger(__name__)

SCREENING_NAME = "screening.json"
"""The file in the home."""
SCREENING_FORMAT = "pqcall screening"
SCREENING_VERSION = 1
MAX_SCREENING_FILE_BYTES = 4 * 1024 * 1024
"""A larger file is refused (about 40 bytes a blocked name)."""


@dataclass(frozen=True, slots=True)
class ScreeningState:
    """What the screening file holds."""

    blocked: dict[str, float] = field(default_factory=dict)
    """Blocked usernames and when each was blocked (Unix seconds)."""
    silence_strangers: bool = False
    """Calls from callers not in the contacts do not ring."""


class Screening:
    """The screening file of one home.

    Args:
        path: the JSON file (``HOME/screening.json``).
        clock: Unix time, for when a name was blocked.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)  # the JSON file
        self._lock = FileLock(self.path.parent / LOCK_NAME)  # shared with the home's files
        self._clock = clock

    def load(self) -> ScreeningState:
        """The whole file (defaults when it does not exist).

        Raises:
            KeystoreError: the file is damaged or unreadable.
        """
        data = read_bounded(self.path, "screening file", MAX_SCREENING_FILE_BYTES)
        if data is None:
            return ScreeningState()
        return _decode(data, self.path)

    def is_blocked(self, name: str) -> bool:
        """Whether calls from ``name`` are blocked."""
        return normalize(name) in self.load().blocked

    def blocked(self) -> dict[str, float]:
        """Blocked names (sorted) and when each was blocked."""
        return dict(sorted(self.load().blocked.items()))

    def block(self, name: str) -> bool:
        """Block calls from ``name``; False if it was blocked already.

        Raises:
            InvalidUsername: ``name`` is not a valid username.
            KeystoreError: the file is damaged or cannot be written.
        """
        name = normalize(name)
        with self._lock.held():
            state = self.load()
            if name in state.blocked:
                return False
            self._save(replace(state, blocked={**state.blocked, name: self._clock()}))
            return True

    def unblock(self, name: str) -> bool:
        """Let ``name`` ring again; False if it was not blocked.

        Raises:
            InvalidUsername: ``name`` is not a valid username.
            KeystoreError: the file is damaged or cannot be written.
        """
        name = normalize(name)
        with self._lock.held():
            state = self.load()
            if name not in state.blocked:
                return False
            blocked = {key: when for key, when in state.blocked.items() if key != name}
            self._save(replace(state, blocked=blocked))
            return True

    @property
    def silence_strangers(self) -> bool:
        """Whether calls from callers not in the contacts are silenced."""
        return self.load().silence_strangers

    def set_silence_strangers(self, silence: bool) -> None:
        """Silence (True) or ring (False) calls from callers not in the contacts.

        Raises:
            KeystoreError: the file is damaged or cannot be written.
        """
        with self._lock.held():
            state = self.load()
            if state.silence_strangers != silence:
                self._save(replace(state, silence_strangers=silence))

    def _save(self, state: ScreeningState) -> None:
        value = {
            "format": SCREENING_FORMAT,
            "version": SCREENING_VERSION,
            "blocked": state.blocked,
            "silence_strangers": state.silence_strangers,
        }
        data = json.dumps(value, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        write_atomic(self.path, data, "screening file")


def _decode(data: bytes, path: Path) -> ScreeningState:
    damaged = KeystoreError(f"screening file {path} is damaged; repair or remove it")
    try:
        value = json.loads(data)
    except ValueError:
        raise damaged from None
    if not isinstance(value, dict) or value.get("format") != SCREENING_FORMAT:
        raise damaged
    if value.get("version") != SCREENING_VERSION:
        raise KeystoreError(f"screening file {path} has an unknown version; upgrade pqcall")
    blocked = value.get("blocked", {})
    silence = value.get("silence_strangers", False)
    if not isinstance(blocked, dict) or not isinstance(silence, bool):
        raise damaged
    for name, when in blocked.items():
        is_time = isinstance(when, int | float) and not isinstance(when, bool)
        if not isinstance(name, str) or not is_time or not math.isfinite(when):
            raise damaged
    return ScreeningState(
        blocked={name: float(when) for name, when in blocked.items()}, silence_strangers=silence
    )


@dataclass(frozen=True, slots=True)
class TurnAway:
    """A call that must not ring, and what the phone does with it instead."""

    result: str
    """The history record's ``result``: ``blocked``, ``busy`` or ``missed``."""
    reason: str
    """The history record's ``reason``, for the user."""
    answer_busy: bool
    """Answer the caller *busy* (True) or leave the call unanswered until it times out."""


class CallScreen:
    """Decides whether an incoming call may ring: block list, ring limit, strangers.

    Args:
        screening: the home's block list and settings (read at every call).
        limiter: who rang unanswered too often (the phone feeds it).
        silence_strangers: silence strangers whatever the home's setting says.
    """

    def __init__(
        self, screening: Screening, limiter: RingLimiter, *, silence_strangers: bool = False
    ) -> None:
        self.screening = screening
        self.limiter = limiter
        self.silence_strangers = silence_strangers

    def before_offer(self, caller: str, now: float) -> TurnAway | None:
        """Whether a call from ``caller`` is turned away before its offer is even checked."""
        try:
            blocked = self.screening.is_blocked(caller)
        except KeystoreError as exc:  # ring rather than lose calls; the CLI shows the error
            logger.warning("%s", exc)
            blocked = False
        if blocked:
            return TurnAway("blocked", f"blocked: {caller} is on your block list", False)
        if self.limiter.is_cooling_down(caller, now):
            reason = f"not rung: {RING_LIMIT_UNANSWERED} calls from {caller} went unanswered"
            return TurnAway("busy", reason, True)
        return None

    def for_stranger(self, caller: str, *, is_contact: bool) -> TurnAway | None:
        """Whether a (checked) call from ``caller`` is silenced as a stranger's."""
        try:
            silence = self.silence_strangers or self.screening.silence_strangers
        except KeystoreError as exc:
            logger.warning("%s", exc)
            silence = self.silence_strangers
        if silence and not is_contact:
            return TurnAway("missed", "silenced: not a contact", False)
        return None
