"""The softphone's HTTP client of the signaling server (``docs/server.md``).

:class:`ServerApi` speaks every route a phone uses, with the bodies of
:mod:`pqcall.signaling.messages` on both sides: requests are built from the
models, answers are validated by them. It owns the account's login::

    phone                                     server
      POST /auth/challenge {username}    ->   challenge, server_name
      POST /auth/login {signature}       ->   token, expires
      GET /users/bob  (Bearer token)     ->   ...
      ...                                <-   401: token expired or revoked
      POST /auth/challenge, /auth/login  ->   a new token, and the request once more

Authentication is lazy: the first call that needs a token logs in, a token is
renewed :data:`RENEW_BEFORE_S` before the expiry the server gave it, and a 401
(a token revoked, expired early, or lost with its database) discards the token,
logs in again and repeats the request once. A 401 means the server did not act
on the request, so repeating a POST then is safe; POSTs are otherwise never
repeated. GETs are repeated up to :data:`GET_RETRIES` times when the
connection fails (not when it times out).

**The server name.** Registration and login signatures cover the server's
name (``docs/server.md#authentication``), so a signature made for one server
is useless at another. A phone pins the name: it passes the pinned
``server_name``, or passes ``None`` once, lets :meth:`ServerApi.register` (from
``/health``) or the first login (from the challenge) fill it in, and saves
:attr:`ServerApi.server_name` in its configuration. A server that later claims
another name is refused before anything is signed for it (:class:`ApiError`
401, naming both names).

Errors (:mod:`pqcall.exceptions`), each one line:

- :class:`ServerUnreachable`: no answer at all (connection refused, name not
  resolved, timeout, TLS failure): ``cannot reach the server at
  http://10.0.0.5:5001: connection refused``.
- :class:`UnknownUser`: no account of that name (404 from ``/users`` or
  ``/call/initiate``, or our own account from ``/auth/challenge``).
- :class:`ApiError`: any other error status, with the server's reason as the
  message and the status in ``status``; a 429 says how long to wait.
- :class:`ServerError`: a success status whose body does not match its schema.

Neither tokens nor keys ever appear in messages or logs.

Example::

    async with ServerApi("http://10.0.0.5:5001", "alice", identity) as api:
        await api.register(bundle.encode())       # pins api.server_name
        bob = await api.user("bob")
        async with api.events(resume=saved_seq) as stream:
            async for event in stream:
                ...
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx
import pydantic

from pqcall import __version__
from pqcall.client.events import ConnectionCallback, EventStream
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import ApiError, ServerError, ServerUnreachable, UnknownUser
from pqcall.signaling import usernames
from pqcall.signaling.messages import (
    LOGIN_CONTEXT,
    MAX_HISTORY_CALLS,
    REGISTER_CONTEXT,
    AcceptCall,
    CallDetail,
    CallHistory,
    CallView,
    ChallengeRequest,
    ChallengeResponse,
    ConfirmCall,
    CreateFile,
    ErrorResponse,
    FileView,
    HangupCall,
    HealthResponse,
    Inbox,
    InitiateCall,
    LoginRequest,
    LoginResponse,
    PendingCalls,
    Presence,
    PresenceResponse,
    PutBundleRequest,
    RegisterRequest,
    RejectCall,
    UserView,
    login_signed_data,
    register_signed_data,
)

logger = logging.getLogger(__name__)

USER_AGENT = f"pqcall/{__version__}"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_HISTORY_CALLS = 50
RENEW_BEFORE_S = 60.0  # log in again this long before the token's expiry
MIN_TOKEN_REUSE_S = 10.0  # never renew a token sooner than this after getting it (clock skew)
GET_RETRIES = 2  # repeats of a GET whose connection failed
GET_RETRY_DELAYS_S = (0.2, 0.5)  # pause before each repeat
MAX_REASON_CHARS = 300  # of an error text quoted into an exception
DOWNLOAD_CHUNK_BYTES = 256 * 1024  # most bytes one item of download() holds

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context for ``verify``: the default trust store, a pinned certificate, or none.

    Args:
        verify: ``True`` for the usual certificate authorities, a path to a PEM
            file to trust that certificate (or CA) and nothing else, ``False``
            to check nothing (tests only).
    """
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


class ServerApi:
    """The signaling server's HTTP API, as one account uses it.

    Safe to share between tasks of one event loop: logins are serialized, and
    a token refused by the server is replaced once, however many requests saw
    it refused.

    Args:
        base_url: ``http://host:port`` or ``https://...`` of the server.
        username: the account's name as typed; normalized here.
        identity: the account's signing identity.
        server_name: the name pinned for this server; ``None`` to pin the one
            the server gives at the first registration or login.
        verify: TLS verification, as for :func:`tls_context`.
        timeout_s: how long one request may take.

    Raises:
        InvalidUsername: ``username`` cannot be an account name.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        identity: IdentityPrivateKey,
        *,
        server_name: str | None = None,
        verify: bool | str = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")  # where the server is, as given
        self.username = usernames.normalize(username)  # the normalized account name
        self.ssl_context = tls_context(verify)  # shared with the event stream (wss://)
        self._identity = identity  # signs registration and logins
        self._server_name = server_name  # pinned name; None until learned
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            verify=self.ssl_context,
            timeout=timeout_s,
            headers={"User-Agent": USER_AGENT},
        )  # one connection pool for every request
        self._token: str | None = None  # current bearer token
        self._renew_at = 0.0  # time.monotonic() after which the token is renewed
        self._login_lock = asyncio.Lock()  # one login at a time
        self._logins = 0  # successful logins so far

    async def __aenter__(self) -> ServerApi:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (the token stays valid on the server)."""
        await self._client.aclose()

    @property
    def server_name(self) -> str | None:
        """The name signatures are bound to: pinned, or learned at the first register/login."""
        return self._server_name

    @property
    def logins(self) -> int:
        """How many times this client has logged in (the first login included)."""
        return self._logins

    # ---------------------------------------------------------------- operations

    async def health(self) -> HealthResponse:
        """``GET /health``: the server's status, version and name (no login needed)."""
        response = await self._request("GET", "/health", auth=False)
        return self._parse(HealthResponse, response, "GET /health")

    # ---------------------------------------------------------------- accounts

    async def register(self, key_bundle: bytes) -> UserView:
        """Claim the username for this identity, or repeat the registration.

        Repeating it with the same identity is harmless and uploads the key
        bundle if it is newer than the stored one. Without a pinned server
        name, the name from ``/health`` is pinned first.

        Args:
            key_bundle: an encoded :class:`~pqcall.crypto.filekey.KeyBundle`
                signed by this identity for this username.

        Raises:
            ApiError: 409 ``username is taken`` (by another identity), or 400
                with what is wrong with the bundle or signature.
        """
        if self._server_name is None:
            self._server_name = (await self.health()).server_name
            logger.info("pinned server name %r", self._server_name)
        identity = self._identity.public_key().encode()
        signature = self._identity.sign(
            register_signed_data(self._server_name, self.username, identity),
            context=REGISTER_CONTEXT,
        )
        body = RegisterRequest(
            username=self.username, identity=identity, key_bundle=key_bundle, signature=signature
        )
        response = await self._request("POST", "/register", body=body, auth=False)
        return self._parse(UserView, response, "POST /register")

    async def login(self) -> LoginResponse:
        """Log in now (challenge-response) and keep the new token.

        Other methods log in by themselves when they need to.

        Raises:
            UnknownUser: the server has no account of this name.
            ApiError: 401 when the server's name is not the pinned one, or it
                refused the signature.
        """
        async with self._login_lock:
            return await self._login()

    async def token(self) -> str:
        """A bearer token that the server should accept, logging in if needed.

        What the push WebSocket authenticates with; see :meth:`events`.
        """
        token = self._current_token()
        if token is not None:
            return token
        async with self._login_lock:
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

    async def logout(self) -> None:
        """Revoke the current token on the server (if there is one) and forget it."""
        token = self._token
        if token is None:
            return
        self._token = None
        response = await self._send("POST", "/auth/logout", token=token)
        if response.status_code not in (204, 401):  # 401: it was no longer valid anyway
            raise self._error(response)

    async def put_bundle(self, key_bundle: bytes) -> UserView:
        """Replace this account's key bundle by a newer one (same identity).

        Raises:
            ApiError: 409 when the bundle is not newer than the stored one, 400
                when it does not verify or names another user.
        """
        body = PutBundleRequest(key_bundle=key_bundle)
        response = await self._request("PUT", "/keys/bundle", body=body)
        return self._parse(UserView, response, "PUT /keys/bundle")

    async def user(self, name: str) -> UserView:
        """``GET /users/{name}``: a user's identity and current key bundle.

        The answer is what the *server* claims; the caller checks it against
        its pinned contacts.

        Raises:
            InvalidUsername: ``name`` cannot be an account name.
            UnknownUser: no such user on this server.
        """
        username = usernames.normalize(name)
        response = await self._request("GET", f"/users/{username}", user=username)
        return self._parse(UserView, response, "GET /users")

    async def presence(self, names: Iterable[str]) -> list[Presence]:
        """Online state and last-seen time of ``names``; unknown names are left out.

        Raises:
            ApiError: 422 for more than 100 names or a name that cannot exist.
        """
        wanted = list(names)
        if not wanted:
            return []
        response = await self._request("GET", "/presence", params={"names": ",".join(wanted)})
        return self._parse(PresenceResponse, response, "GET /presence").users

    # ---------------------------------------------------------------- calls

    async def initiate(self, call: InitiateCall) -> CallView:
        """``POST /call/initiate``: ring ``call.callee`` with the handshake offer.

        Raises:
            UnknownUser: no such callee.
            ApiError: 400 calling oneself, 409 a call id already in use.
        """
        response = await self._request("POST", "/call/initiate", body=call, user=call.callee)
        return self._parse(CallView, response, "POST /call/initiate")

    async def accept(self, call: AcceptCall) -> CallDetail:
        """``POST /call/accept``: answer a ringing call; the answer holds our relay grant.

        Raises:
            ApiError: 403 not our call, 404 no such call, 409 not ringing any more.
        """
        response = await self._request("POST", "/call/accept", body=call)
        return self._parse(CallDetail, response, "POST /call/accept")

    async def confirm(self, call: ConfirmCall) -> CallView:
        """``POST /call/confirm``: the caller's handshake confirmation.

        Raises:
            ApiError: 403, 404, or 409 when the call is not active.
        """
        response = await self._request("POST", "/call/confirm", body=call)
        return self._parse(CallView, response, "POST /call/confirm")

    async def reject(self, call: RejectCall) -> CallView:
        """``POST /call/reject``: refuse a ringing call (declined, busy or failed).

        Raises:
            ApiError: 403, 404, or 409 when the call is not ringing.
        """
        response = await self._request("POST", "/call/reject", body=call)
        return self._parse(CallView, response, "POST /call/reject")

    async def hangup(self, call: HangupCall) -> CallView:
        """``POST /call/hangup``: end, cancel or decline a call.

        Raises:
            ApiError: 403, 404, or 409 when the call has already ended.
        """
        response = await self._request("POST", "/call/hangup", body=call)
        return self._parse(CallView, response, "POST /call/hangup")

    async def status(self, call_id: str) -> CallDetail:
        """``GET /call/status/{call_id}``: everything about one of our calls.

        Raises:
            ApiError: 403 not our call, 404 no such call, 422 not a call id.
        """
        response = await self._request("GET", f"/call/status/{call_id}")
        return self._parse(CallDetail, response, "GET /call/status")

    async def pending(self) -> list[CallDetail]:
        """``GET /call/pending/{me}``: calls ringing for this account, oldest first."""
        response = await self._request("GET", f"/call/pending/{self.username}")
        return self._parse(PendingCalls, response, "GET /call/pending").calls

    async def history(self, limit: int = DEFAULT_HISTORY_CALLS) -> list[CallView]:
        """``GET /calls/history``: this account's calls as the server saw them, newest first.

        Args:
            limit: how many, 1 to :data:`~pqcall.signaling.messages.MAX_HISTORY_CALLS`.
        """
        if not 1 <= limit <= MAX_HISTORY_CALLS:
            raise ValueError(f"limit must be 1 to {MAX_HISTORY_CALLS}")
        response = await self._request("GET", "/calls/history", params={"limit": str(limit)})
        return self._parse(CallHistory, response, "GET /calls/history").calls

    # ---------------------------------------------------------------- files

    async def create_file(self, recipient: str, size: int) -> FileView:
        """``POST /files``: announce an encrypted file of ``size`` bytes for ``recipient``.

        Raises:
            InvalidUsername: ``recipient`` cannot be an account name.
            UnknownUser: no such recipient.
            ApiError: 413 when the file is too large or over our quota (the
                reason says which), 400 sending to ourselves.
        """
        name = usernames.normalize(recipient)
        body = CreateFile(recipient=name, size=size)
        response = await self._request("POST", "/files", body=body, user=name)
        return self._parse(FileView, response, "POST /files")

    async def upload(
        self, file_id: str, offset: int, content: AsyncIterable[bytes], length: int
    ) -> FileView:
        """``PUT /files/{file_id}/content?offset=N``: stream ``length`` bytes from ``offset``.

        The body is streamed from ``content`` as it is iterated (constant
        memory) and cannot be sent twice: unlike other requests, a refused
        token is not retried here. After any failure, ask :meth:`file_status`
        where the server is and upload again from there.

        Args:
            file_id: from :meth:`create_file`.
            offset: the server's ``received`` (where the bytes go).
            content: exactly ``length`` bytes, in pieces.
            length: the number of bytes ``content`` yields (``Content-Length``).

        Raises:
            ApiError: 409 ``upload is at byte X`` when ``offset`` is not where
                the server is, 401 when the token was refused, 404 no such
                upload, 413 too many bytes.
            ServerUnreachable: the connection failed (part may have arrived).
        """
        token = await self.token()
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
        }
        try:
            response = await self._client.put(
                f"/files/{file_id}/content",
                params={"offset": str(offset)},
                content=content,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach the server at {self.base_url}: {_describe(exc)}"
            ) from None
        logger.debug("PUT /files/%s/content: %d", file_id, response.status_code)
        if response.status_code == 401:
            self.discard_token(token)
        if not response.is_success:
            raise self._error(response)
        return self._parse(FileView, response, "PUT /files/content")

    async def file_status(self, file_id: str) -> FileView:
        """``GET /files/{file_id}``: a file we send or receive (how much the server holds).

        Raises:
            ApiError: 404 no such file (or not ours, or expired).
        """
        response = await self._request("GET", f"/files/{file_id}")
        return self._parse(FileView, response, "GET /files/{file_id}")

    async def inbox(self) -> list[FileView]:
        """``GET /files``: complete files waiting for this account, oldest first."""
        response = await self._request("GET", "/files")
        return self._parse(Inbox, response, "GET /files").files

    async def download(self, file_id: str, offset: int = 0) -> AsyncIterator[bytes]:
        """``GET /files/{file_id}/content``: the ciphertext from byte ``offset`` on, in pieces.

        Use as ``async for piece in api.download(file_id, offset)``; memory use
        is one piece of at most :data:`DOWNLOAD_CHUNK_BYTES`. From a non-zero
        offset the request carries ``Range: bytes=N-``; a server that answers
        with the whole file has its first ``offset`` bytes skipped here.

        Raises:
            ApiError: 404 no such file, 403 not ours, 416 offset past the end.
            ServerUnreachable: the connection failed (before or during the body).
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        relogged = False
        while True:
            token = await self.token()
            request = self._client.build_request(
                "GET",
                f"/files/{file_id}/content",
                headers={**headers, "Authorization": f"Bearer {token}"},
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise ServerUnreachable(
                    f"cannot reach the server at {self.base_url}: {_describe(exc)}"
                ) from None
            try:
                if response.status_code == 401 and not relogged:
                    self.discard_token(token)
                    relogged = True
                    continue
                if not response.is_success:
                    await response.aread()
                    raise self._error(response)
                skip = offset if offset and response.status_code == 200 else 0
                try:
                    async for piece in response.aiter_bytes(DOWNLOAD_CHUNK_BYTES):
                        if skip:
                            dropped = min(skip, len(piece))
                            skip -= dropped
                            piece = piece[dropped:]
                        if piece:
                            yield piece
                except httpx.TransportError as exc:
                    raise ServerUnreachable(
                        f"download from {self.base_url} broke off: {_describe(exc)}"
                    ) from None
                return
            finally:
                await response.aclose()

    async def delete_file(self, file_id: str) -> None:
        """``DELETE /files/{file_id}``: the recipient has it, or the sender cancels.

        Raises:
            ApiError: 404 no such file, 403 not ours.
        """
        await self._request("DELETE", f"/files/{file_id}")

    # ---------------------------------------------------------------- push events

    def events(
        self,
        *,
        resume: int | None = None,
        on_connection: ConnectionCallback | None = None,
    ) -> EventStream:
        """This account's push events, authenticated by this client's tokens.

        A token the WebSocket refuses (close code 4401) is discarded, so the
        stream's next connection logs in again.

        Args:
            resume: the last ``seq`` this phone processed, as saved from an
                earlier stream's :attr:`EventStream.acked_seq`; ``None``:
                every event the server still stores.
            on_connection: called with ``True``/``False`` as the stream connects
                and drops.
        """
        return EventStream(
            self.base_url,
            self.token,
            resume=resume,
            token_refused=self.discard_token,
            on_connection=on_connection,
            ssl_context=self.ssl_context,
        )

    # ---------------------------------------------------------------- login

    def _current_token(self) -> str | None:
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token
        return None

    async def _login(self) -> LoginResponse:
        """Challenge, sign, log in; the caller holds ``_login_lock``."""
        request = ChallengeRequest(username=self.username)
        try:
            response = await self._request(
                "POST", "/auth/challenge", body=request, auth=False, user=self.username
            )
        except UnknownUser:
            raise UnknownUser(
                404, f"no account named {self.username} on this server; register first"
            ) from None
        challenge = self._parse(ChallengeResponse, response, "POST /auth/challenge")
        if self._server_name is None:
            self._server_name = challenge.server_name
            logger.info("pinned server name %r", self._server_name)
        elif challenge.server_name != self._server_name:
            raise ApiError(
                401,
                f"the server calls itself {challenge.server_name!r}, but this phone pinned"
                f" {self._server_name!r}; not logging in (pin the new name if it was renamed)",
            )
        signature = self._identity.sign(
            login_signed_data(self._server_name, self.username, challenge.challenge),
            context=LOGIN_CONTEXT,
        )
        body = LoginRequest(
            username=self.username, challenge=challenge.challenge, signature=signature
        )
        response = await self._request("POST", "/auth/login", body=body, auth=False)
        answer = self._parse(LoginResponse, response, "POST /auth/login")
        # the lifetime on the server's clock: its Date header against the expiry it gave
        lifetime = answer.expires - _server_time(response)
        now = time.monotonic()
        self._renew_at = now + max(lifetime - RENEW_BEFORE_S, lifetime / 2, MIN_TOKEN_REUSE_S)
        self._token = answer.token
        self._logins += 1
        logger.info("logged in as %s", self.username)
        return answer

    # ---------------------------------------------------------------- requests

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: pydantic.BaseModel | None = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
        user: str | None = None,
    ) -> httpx.Response:
        """Send a request (with a token if ``auth``); a success response, else raise.

        ``user`` names the user a 404 is about (:class:`UnknownUser`).
        """
        payload = body.model_dump(mode="json") if body is not None else None
        relogged = False
        while True:
            token = await self.token() if auth else None
            response = await self._send(method, path, token=token, json=payload, params=params)
            if response.status_code == 401 and token is not None and not relogged:
                # refused before the route ran: log in again and repeat it once
                logger.info("%s %s: token refused, logging in again", method, path)
                self.discard_token(token)
                relogged = True
                continue
            if response.is_success:
                return response
            raise self._error(response, user=user)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request; a GET is repeated when its connection fails."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        attempt = 0
        while True:
            try:
                response = await self._client.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if (
                    method == "GET"
                    and attempt < GET_RETRIES
                    and not isinstance(exc, httpx.TimeoutException)
                ):
                    await asyncio.sleep(GET_RETRY_DELAYS_S[attempt])
                    attempt += 1
                    continue
                raise ServerUnreachable(
                    f"cannot reach the server at {self.base_url}: {_describe(exc)}"
                ) from None
            logger.debug("%s %s: %d", method, path, response.status_code)
            return response

    def _error(self, response: httpx.Response, *, user: str | None = None) -> ApiError:
        """The exception for an error response, with the server's reason."""
        status = response.status_code
        try:
            reason = ErrorResponse.model_validate_json(response.content).error
        except pydantic.ValidationError:
            reason = f"the server answered {status} {response.reason_phrase}".rstrip()
        reason = _one_line(reason)
        if status == 404 and user is not None:
            return UnknownUser(404, f"no user named {user} on this server")
        if status == 429:
            retry_after = response.headers.get("retry-after", "").strip()
            if retry_after and retry_after not in reason:
                reason = f"{reason} (retry after {retry_after} s)"
        return ApiError(status, reason)

    @staticmethod
    def _parse(model: type[_Model], response: httpx.Response, what: str) -> _Model:
        """Validate a success answer against its model."""
        try:
            return model.model_validate_json(response.content)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise ServerError(
                f"the server's answer to {what} is not valid: {where}: {first['msg']}"
            ) from None


def _server_time(response: httpx.Response) -> float:
    """The server's clock when it answered (its ``Date`` header), else ours."""
    header = response.headers.get("date")
    if header:
        try:
            return email.utils.parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text


def _describe(exc: httpx.TransportError) -> str:
    """What went wrong with a connection, in a few words."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        cause = cause.__cause__ or cause.__context__
    return _one_line(str(exc)) or type(exc).__name__
