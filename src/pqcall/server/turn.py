"""Time-limited TURN credentials handed out with each relayed call (coturn's REST scheme).

Scope: ``pqcall server --turn URL [--turn URL ...] --turn-secret-file F`` names one or
more TURN servers (``turn:`` / ``turns:`` URLs, RFC 7065) that share a secret with this
server (coturn: ``use-auth-secret`` and ``static-auth-secret=<the same secret>``).
With each call's relay grant, each party gets its own credentials
(``RelayGrant.turn``)::

    username = "<expiry, UNIX seconds>:<call id>.<c|e>"
    password = base64(HMAC-SHA1(secret, username))

coturn recomputes the password from the username and refuses it after the expiry.
Nothing is stored per call; the secret never leaves the server. The username names
the call's id, not the account (it crosses the network in clear in TURN messages).
The secret file must be readable by its owner only (as the keystore and TLS key):
one line, surrounding white space ignored. :class:`TurnComponent` loads it at start
and publishes a :class:`TurnService` as ``context.extras["turn"]``.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from pqcall.exceptions import LocalProtocolError, ServerError
from pqcall.safefile import shared_access
from pqcall.server.context import AppContext
from pqcall.signaling.messages import TurnGrant
from pqcall.transport.turn import TurnUrl

__all__ = [
    "DEFAULT_TURN_TTL_S",
    "TURN_EXTRA",
    "TurnComponent",
    "TurnService",
    "load_turn_secret",
    "turn_credentials",
]

logger = logging.getLogger(__name__)

TURN_EXTRA: Final = "turn"
"""``context.extras`` key of the running :class:`TurnService`."""
DEFAULT_TURN_TTL_S: Final = 6 * 3600
"""Credentials stay valid this long: the relay's longest call (an allocation is refreshed
with the same credentials, so they must outlive the call)."""
MIN_SECRET_BYTES: Final = 16
MAX_SECRET_BYTES: Final = 1024


def turn_credentials(secret: bytes, user: str, expires_at: int) -> tuple[str, str]:
    """coturn's ``use-auth-secret`` credentials for ``user`` until ``expires_at``.

    Returns:
        ``(username, password)``: ``"<expires_at>:<user>"`` and
        base64(HMAC-SHA1(secret, username)).
    """
    username = f"{expires_at}:{user}"
    h = crypto_hmac.HMAC(secret, hashes.SHA1())  # the TURN REST scheme's choice, not ours
    h.update(username.encode())
    return username, base64.b64encode(h.finalize()).decode("ascii")


def load_turn_secret(path: Path) -> bytes:
    """The shared secret in ``path``, refusing a file others may read.

    Raises:
        ServerError: missing, unreadable, accessible by group or others, empty, too
            short or too long (one line).
    """
    try:
        with path.open("rb") as file:
            problem = shared_access(os.fstat(file.fileno()), path, "TURN secret file")
            if problem is not None:
                raise ServerError(problem)
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ServerError(f"cannot read the TURN secret file {path}: {exc.strerror}") from None
    secret = data.strip()
    if len(data) > MAX_SECRET_BYTES:
        raise ServerError(f"TURN secret file {path} is longer than {MAX_SECRET_BYTES} bytes")
    if len(secret) < MIN_SECRET_BYTES:
        raise ServerError(f"TURN secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


@dataclass(frozen=True, slots=True)
class TurnService:
    """The TURN servers and their shared secret; makes each party's grant."""

    urls: tuple[TurnUrl, ...]
    """Where phones may allocate, in the order to try."""
    secret: bytes = field(repr=False)
    """Shared with the TURN servers (never logged, never sent)."""
    ttl_s: int = DEFAULT_TURN_TTL_S
    """How long credentials stay valid."""
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    """Wall-clock seconds (coturn compares the expiry with its own clock)."""

    def __post_init__(self) -> None:
        if not self.urls:
            raise LocalProtocolError("TURN needs at least one URL")
        if self.ttl_s <= 0:
            raise LocalProtocolError("TURN credential lifetime must be positive")

    def grant(self, call_id: str, is_caller: bool) -> TurnGrant:
        """One party's credentials for ``call_id`` (the two parties' differ)."""
        user = f"{call_id}.{'c' if is_caller else 'e'}"
        expires_at = int(self.clock()) + self.ttl_s
        username, password = turn_credentials(self.secret, user, expires_at)
        return TurnGrant(urls=[str(url) for url in self.urls], username=username, password=password)


def turn_service(context: AppContext) -> TurnService | None:
    """The running TURN service, if the server was started with ``--turn``."""
    service = context.extras.get(TURN_EXTRA)
    return service if isinstance(service, TurnService) else None


class TurnComponent:
    """Loads the TURN secret at start and publishes the :class:`TurnService`.

    Raises (from :meth:`start`):
        ServerError: a bad URL or secret file (the server does not start).
    """

    def __init__(self, urls: tuple[str, ...], secret_file: Path) -> None:
        self._urls = urls  # as given on the command line
        self._secret_file = secret_file  # read at start
        self._context: AppContext | None = None  # where it is published

    async def start(self, context: AppContext) -> None:
        try:
            urls = tuple(TurnUrl.parse(url) for url in self._urls)
        except LocalProtocolError as exc:
            raise ServerError(str(exc)) from None
        service = TurnService(urls, load_turn_secret(self._secret_file))
        context.extras[TURN_EXTRA] = service
        self._context = context
        logger.info("TURN credentials handed out for %s", ", ".join(map(str, urls)))

    async def stop(self) -> None:
        if self._context is not None:
            self._context.extras.pop(TURN_EXTRA, None)
            self._context = None
