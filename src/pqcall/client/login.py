"""One account's login at the signaling server: the pinned server name and the bearer token.

:class:`Login` keeps the token every authenticated request carries
(``docs/server.md#authentication``)::

    phone                                     server
      POST /auth/challenge {username}    ->   challenge, server_name
      POST /auth/login {signature}       ->   token, expires
      GET /users/bob  (Bearer token)     ->   ...
      ...                                <-   401: token expired or revoked
      POST /auth/challenge, /auth/login  ->   a new token, and the request once more

Authentication is lazy: the first request that needs a token logs in, a token
is renewed :data:`RENEW_BEFORE_S` before the expiry the server gave it, and a
401 (a token revoked, expired early, or lost with its database) discards the
token, logs in again and repeats the request once (:meth:`Login.request`). A
401 means the server did not act on the request, so repeating a POST then is
safe.

**The server name.** Registration and login signatures cover the server's
name, so a signature made for one server is useless at another. The name is
pinned: given at construction, or learned once (:meth:`Login.pin`, or the
first login's challenge). A server that later claims another name is refused
before anything is signed for it (:class:`ApiError` 401, naming both names).

Safe to share between tasks of one event loop: logins are serialized, and a
token refused by the server is replaced once, however many requests saw it
refused. Neither tokens nor keys ever appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pydantic

from pqcall.client.http import HttpSession, server_time
from pqcall.crypto.account import device_id
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import ApiError, LocalProtocolError
from pqcall.signaling.messages import (
    LOGIN_CONTEXT,
    REGISTER_CONTEXT,
    ChallengeRequest,
    ChallengeResponse,
    LoginRequest,
    LoginResponse,
    RegisterRequest,
    login_signed_data,
    register_signed_data,
)

logger = logging.getLogger(__name__)

RENEW_BEFORE_S = 60.0  # log in again this long before the token's expiry
MIN_TOKEN_REUSE_S = 10.0  # never renew a token sooner than this after getting it (clock skew)


class Login:
    """The account's credentials at one server: signs for it, logs in, keeps the token.

    Args:
        http: the server connection.
        username: the account's normalized name.
        identity: the account's signing identity.
        server_name: the name pinned for this server; ``None`` until learned.
        device_key: this device's own key; when given, logins are signed by it
            and name its device id (the server checks it is in the account's
            device list). ``None``: logins are signed by the account key.
    """

    def __init__(
        self,
        http: HttpSession,
        username: str,
        identity: IdentityPrivateKey,
        server_name: str | None,
        *,
        device_key: IdentityPrivateKey | None = None,
    ) -> None:
        self._http = http  # where requests go
        self._username = username  # the normalized account name
        self._identity = identity  # signs registration (and logins without a device key)
        self._device_key = device_key  # signs logins when set
        self._server_name = server_name  # pinned name; None until learned
        self._token: str | None = None  # current bearer token
        self._renew_at = 0.0  # time.monotonic() after which the token is renewed
        self._lock = asyncio.Lock()  # one login at a time
        self._logins = 0  # successful logins so far

    @property
    def server_name(self) -> str | None:
        """The name signatures are bound to: pinned, or learned at the first register/login."""
        return self._server_name

    @property
    def logins(self) -> int:
        """How many times this account has logged in here (the first login included)."""
        return self._logins

    @property
    def device_id(self) -> str | None:
        """This device's id in hex when logins are signed by a device key, else None."""
        if self._device_key is None:
            return None
        return device_id(self._device_key.public_key()).hex()

    def pin(self, server_name: str) -> None:
        """Pin ``server_name`` if no name is pinned yet; a pinned name is kept."""
        if self._server_name is None:
            self._server_name = server_name
            logger.info("pinned server name %r", self._server_name)

    def registration(self, key_bundle: bytes) -> RegisterRequest:
        """The signed ``POST /register`` body claiming the username for our identity.

        Raises:
            LocalProtocolError: no server name is pinned yet (call :meth:`pin` first).
        """
        if self._server_name is None:
            raise LocalProtocolError("pin the server's name before signing a registration")
        identity = self._identity.public_key().encode()
        signature = self._identity.sign(
            register_signed_data(self._server_name, self._username, identity),
            context=REGISTER_CONTEXT,
        )
        return RegisterRequest(
            username=self._username, identity=identity, key_bundle=key_bundle, signature=signature
        )

    async def login(self) -> LoginResponse:
        """Log in now (challenge-response) and keep the new token.

        Raises:
            ApiError: 401 when the server's name is not the pinned one, or it
                refused the signature (also when it has no account of this
                name: the server answers both alike).
        """
        async with self._lock:
            return await self._login()

    async def token(self) -> str:
        """A bearer token that the server should accept, logging in if needed."""
        token = self._current_token()
        if token is not None:
            return token
        async with self._lock:
            token = self._current_token()
            if token is None:
                token = (await self._login()).token
            return token

    def discard_token(self, token: str) -> None:
        """Forget ``token`` because the server refused it; the next need logs in again.

        A token that is no longer the current one (another task already
        replaced it) is ignored.
        """
        if token == self._token:
            self._token = None

    async def logout(self, *, everywhere: bool = False) -> None:
        """Revoke the current token on the server (if there is one) and forget it.

        With ``everywhere``, revoke every token of the account (other phones and
        browser sessions; their push sockets close at once), logging in first if
        needed. A device that holds the identity key can log in again.
        """
        token = await self.token() if everywhere else self._token
        if token is None:
            return
        self._token = None
        path = "/auth/logout/everywhere" if everywhere else "/auth/logout"
        response = await self._http.send("POST", path, token=token)
        if response.status_code not in (204, 401):  # 401: it was no longer valid anyway
            raise self._http.error(response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: pydantic.BaseModel | None = None,
        params: dict[str, str] | None = None,
        user: str | None = None,
    ) -> httpx.Response:
        """Send a request with a token; a success response, else raise.

        A refused token is replaced and the request repeated once. ``user``
        names the user a 404 is about (:class:`UnknownUser`).
        """
        payload = body.model_dump(mode="json") if body is not None else None
        relogged = False
        while True:
            token = await self.token()
            response = await self._http.send(method, path, token=token, json=payload, params=params)
            if response.status_code == 401 and not relogged:
                # refused before the route ran: log in again and repeat it once
                logger.info("%s %s: token refused, logging in again", method, path)
                self.discard_token(token)
                relogged = True
                continue
            if response.is_success:
                return response
            raise self._http.error(response, user=user)

    def _current_token(self) -> str | None:
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token
        return None

    async def _login(self) -> LoginResponse:
        """Log in with the device key, else (401) the account key; the caller holds ``_lock``.

        The account key is tried second for a device whose list has not reached
        the server yet (a registration that could not publish it): the server
        accepts it only while the account key is itself one of the account's
        devices, so an unlinked device gains nothing by it.
        """
        if self._device_key is None:
            return await self._login_with(self._identity, None)
        try:
            return await self._login_with(self._device_key, self.device_id)
        except ApiError as exc:
            if exc.status != 401:
                raise
            logger.info("this device's key was refused; logging in with the account key")
            try:
                return await self._login_with(self._identity, None)
            except ApiError:
                raise exc from None

    async def _login_with(self, signer: IdentityPrivateKey, device_id: str | None) -> LoginResponse:
        """Challenge, sign with ``signer`` for ``device_id``, log in."""
        http = self._http
        request = ChallengeRequest(username=self._username)
        response = await http.request("POST", "/auth/challenge", body=request)
        challenge = http.parse(ChallengeResponse, response, "POST /auth/challenge")
        if self._server_name is None:
            self.pin(challenge.server_name)
        elif challenge.server_name != self._server_name:
            raise ApiError(
                401,
                f"the server calls itself {challenge.server_name!r}, but this phone pinned"
                f" {self._server_name!r}; not logging in (pin the new name if it was renamed)",
            )
        server_name = challenge.server_name
        signature = signer.sign(
            login_signed_data(server_name, self._username, challenge.challenge),
            context=LOGIN_CONTEXT,
        )
        body = LoginRequest(
            username=self._username,
            challenge=challenge.challenge,
            signature=signature,
            device_id=device_id,
        )
        response = await http.request("POST", "/auth/login", body=body)
        answer = http.parse(LoginResponse, response, "POST /auth/login")
        # the lifetime on the server's clock: its Date header against the expiry it gave
        lifetime = answer.expires - server_time(response)
        now = time.monotonic()
        self._renew_at = now + max(lifetime - RENEW_BEFORE_S, lifetime / 2, MIN_TOKEN_REUSE_S)
        self._token = answer.token
        self._logins += 1
        logger.info("logged in as %s", self._username)
        return answer
