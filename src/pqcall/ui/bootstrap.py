"""One-time links that open the page without putting its access token in a URL.

``pqcall ui`` hands the browser ``http://127.0.0.1:PORT/#code=CODE``; the page
trades the code for the session token by ``POST /api/session`` and keeps the
token in its ``sessionStorage``. A code works once and only for
:data:`LINK_LIFETIME_S` seconds, so the link a browser got on its command line
(readable by every local user in ``/proc/PID/cmdline``) is dead by the time
anyone else could replay it, and the session token itself is never in a URL
that leaves the process.

The clock is a parameter (``now``, in the seconds of one monotonic clock).
"""

from __future__ import annotations

import hmac
import secrets

LINK_LIFETIME_S = 60.0
"""How long a link's code may be traded for the token."""
CODE_BYTES = 24
"""Random bytes in a link's code."""
MAX_OPEN_CODES = 8
"""Codes not yet used or expired that are kept; issuing more drops the oldest."""


class BootstrapCodes:
    """Single-use, short-lived codes that stand for the session token.

    An empty instance (the zero value) knows no code, so every
    :meth:`redeem` fails until :meth:`issue` is called.
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}  # open code -> when it stops working

    def issue(self, *, now: float, lifetime_s: float = LINK_LIFETIME_S) -> str:
        """A new code that :meth:`redeem` accepts once before ``now + lifetime_s``."""
        self._forget_expired(now)
        while len(self._expiry) >= MAX_OPEN_CODES:
            del self._expiry[next(iter(self._expiry))]
        code = secrets.token_urlsafe(CODE_BYTES)
        self._expiry[code] = now + lifetime_s
        return code

    def redeem(self, candidate: str, *, now: float) -> bool:
        """Whether ``candidate`` is an open code; it is spent either way it matched."""
        self._forget_expired(now)
        given = candidate.encode("utf-8")
        for code in list(self._expiry):
            if hmac.compare_digest(code.encode("utf-8"), given):
                del self._expiry[code]
                return True
        return False

    def _forget_expired(self, now: float) -> None:
        for code, expiry in list(self._expiry.items()):
            if now >= expiry:
                del self._expiry[code]
