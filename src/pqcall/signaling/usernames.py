"""Account names: one canonical spelling per name, ASCII only.

A name is normalized with Unicode NFKC and case folding, then must consist of
3 to 32 characters from ``a-z 0-9 . _ -`` that start and end with a letter or
digit. Normalizing first makes ``Alice``, ``ALICE`` and ``Alice`` typed in
fullwidth letters (U+FF21...) the same account; allowing only ASCII afterwards
refuses the basic homoglyph trick (a Cyrillic ``a``, U+0430, in ``alice``),
because such a name cannot be registered at all. Confusables within ASCII
(``rn`` for ``m``) are left to the contacts' pinned identities and safety
numbers, which no spelling can fake.

The server stores and compares only normalized names; a client signs the
normalized name (see :func:`pqcall.signaling.messages.register_signed_data`).
"""

from __future__ import annotations

import re
import unicodedata

from pqcall.exceptions import PqcallError

MIN_USERNAME_LENGTH = 3
MAX_USERNAME_LENGTH = 32
MAX_RAW_USERNAME_LENGTH = 128  # characters before normalization; longer input is refused unread

_ALLOWED = re.compile(r"[a-z0-9._-]*")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")

LENGTH_MESSAGE = f"username must be {MIN_USERNAME_LENGTH} to {MAX_USERNAME_LENGTH} characters"
CHARSET_MESSAGE = "username may contain only a-z, 0-9, '.', '_' and '-'"
EDGE_MESSAGE = "username must start and end with a letter or digit"
TYPE_MESSAGE = "username must be a string"


class InvalidUsername(PqcallError, ValueError):
    """A name that cannot be an account name; the message says which rule it breaks.

    It is a :class:`ValueError` too, so schema validators report it as a
    validation error with this message.
    """


def normalize(name: str) -> str:
    """Return the canonical form of ``name``.

    Checks, in this order: length, allowed characters, first and last character.

    Raises:
        InvalidUsername: ``name`` breaks a rule; the message names the rule.
    """
    if not isinstance(name, str):
        raise InvalidUsername(TYPE_MESSAGE)
    if len(name) > MAX_RAW_USERNAME_LENGTH:
        raise InvalidUsername(LENGTH_MESSAGE)
    folded = unicodedata.normalize("NFKC", name).casefold()
    if not MIN_USERNAME_LENGTH <= len(folded) <= MAX_USERNAME_LENGTH:
        raise InvalidUsername(LENGTH_MESSAGE)
    if not _ALLOWED.fullmatch(folded):
        raise InvalidUsername(CHARSET_MESSAGE)
    if folded[0] not in _ALNUM or folded[-1] not in _ALNUM:
        raise InvalidUsername(EDGE_MESSAGE)
    return folded


def is_valid(name: str) -> bool:
    """Whether ``name`` normalizes to an account name."""
    try:
        normalize(name)
    except InvalidUsername:
        return False
    return True
