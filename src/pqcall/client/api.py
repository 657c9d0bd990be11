"""The signaling server's routes, as one account's softphone calls them (``docs/server.md``).

:class:`ServerApi` speaks every route a phone uses, with the bodies of
:mod:`pqcall.signaling.messages` on both sides: requests are built from the
models, answers are validated by them. It is the one object phone, CLI and UI
hold; the plumbing under it lives in two modules:

- :mod:`pqcall.client.http`: the connection pool, TLS (:func:`~pqcall.client.http.tls_context`),
  a GET repeated when its connection fails, and the mapping of answers to
  :class:`ServerUnreachable`, :class:`UnknownUser`, :class:`ApiError` and
  :class:`ServerError`, each one line.
- :mod:`pqcall.client.login`: the login (challenge-response, lazy, renewed
  before expiry, once more after a 401) and the pinned server name.

The routes, grouped as the server groups them: accounts and the directory
(``/health``, ``/register``, ``/keys/bundle``, ``/users``, ``/presence``),
calls (``/call/...``, ``/calls/history``), files (``/files...``, streamed in
constant memory), and the push events (:meth:`ServerApi.events`). POSTs are
never repeated, except after a 401 (the server did not act on them).

**The server name.** Registration and login signatures cover the server's
name (``docs/server.md#authentication``). A phone passes the pinned
``server_name``, or passes ``None`` once, lets :meth:`ServerApi.register` (from
``/health``) or the first login (from the challenge) fill it in, and saves
:attr:`ServerApi.server_name` in its configuration.

Example::

    async with ServerApi("http://10.0.0.5:5001", "alice", identity) as api:
        await api.register(bundle.encode())       # pins api.server_name
        bob = await api.user("bob")
        async with api.events(resume=saved_seq) as stream:
            async for event in stream:
                ...
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType

import httpx
import pydantic

from pqcall.client.event_stream import ConnectionCallback, EventStream
from pqcall.client.http import DEFAULT_TIMEOUT_S, HttpSession, Verify, describe
from pqcall.client.login import Login
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.exceptions import ServerError, ServerUnreachable
from pqcall.signaling import usernames
from pqcall.signaling.messages import (
    MAX_HISTORY_CALLS,
    AcceptCall,
    CallDetail,
    CallHistory,
    CallView,
    ConfirmCall,
    CreateFile,
    FileView,
    HangupCall,
    HealthResponse,
    Inbox,
    InitiateCall,
    LoginResponse,
    PendingCalls,
    Presence,
    PresenceResponse,
    PutBundleRequest,
    RejectCall,
    UserView,
)

DEFAULT_HISTORY_CALLS = 50
DOWNLOAD_CHUNK_BYTES = 256 * 1024  # most bytes one item of download() holds


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
        verify: TLS verification, as for :func:`~pqcall.client.http.tls_context`.
        timeout_s: how long one request may take.
        device_key: this device's key, which then signs the logins (see
            :class:`~pqcall.client.login.Login`); None: the account key does.

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
        verify: Verify = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        device_key: IdentityPrivateKey | None = None,
    ) -> None:
        self.username = usernames.normalize(username)  # the normalized account name
        self._http = HttpSession(base_url, verify=verify, timeout_s=timeout_s)  # requests
        self._login = Login(
            self._http, self.username, identity, server_name, device_key=device_key
        )  # the token
        self.base_url = self._http.base_url  # where the server is, as given
        self.ssl_context = self._http.ssl_context  # shared with the event stream (wss://)

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
        await self._http.close()

    @property
    def server_name(self) -> str | None:
        """The name signatures are bound to: pinned, or learned at the first register/login."""
        return self._login.server_name

    @property
    def logins(self) -> int:
        """How many times this client has logged in (the first login included)."""
        return self._login.logins

    async def health(self) -> HealthResponse:
        """``GET /health``: the server's status, version and name (no login needed)."""
        response = await self._http.request("GET", "/health")
        return self._http.parse(HealthResponse, response, "GET /health")

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
        if self._login.server_name is None:
            self._login.pin((await self.health()).server_name)
        body = self._login.registration(key_bundle)
        response = await self._http.request("POST", "/register", body=body)
        return self._http.parse(UserView, response, "POST /register")

    async def login(self) -> LoginResponse:
        """Log in now (challenge-response) and keep the new token.

        Other methods log in by themselves when they need to.

        Raises:
            ApiError: 401 when the server's name is not the pinned one, or it
                refused the signature (also when it has no account of this
                name: the server answers both alike).
        """
        return await self._login.login()

    async def token(self) -> str:
        """A bearer token that the server should accept, logging in if needed.

        What the push WebSocket authenticates with; see :meth:`events`.
        """
        return await self._login.token()

    def discard_token(self, token: str) -> None:
        """Forget ``token`` because the server refused it; the next need logs in again.

        A token that is no longer the current one (another task already
        replaced it) is ignored.
        """
        self._login.discard_token(token)

    async def logout(self, *, everywhere: bool = False) -> None:
        """Revoke the current token on the server (if there is one) and forget it.

        ``everywhere``: revoke every token of this account, on every device.
        """
        await self._login.logout(everywhere=everywhere)

    async def authed_request(
        self, method: str, path: str, body: pydantic.BaseModel | None = None
    ) -> httpx.Response:
        """An authenticated request to a route with no method here; a success answer, else raise.

        For the device and link routes, whose bodies :mod:`pqcall.client.account_devices` builds.
        """
        return await self._login.request(method, path, body=body)

    async def public_request(
        self, method: str, path: str, body: pydantic.BaseModel | None = None
    ) -> httpx.Response:
        """An unauthenticated request, whatever its status (the link routes' polling).

        Raises:
            ServerUnreachable: no answer.
        """
        payload = body.model_dump(mode="json") if body is not None else None
        return await self._http.send(method, path, token=None, json=payload)

    def error_of(self, response: httpx.Response) -> ServerError:
        """The error an unsuccessful answer of :meth:`public_request` stands for."""
        return self._http.error(response)

    async def put_bundle(self, key_bundle: bytes) -> UserView:
        """Replace this account's key bundle by a newer one (same identity).

        Raises:
            ApiError: 409 when the bundle is not newer than the stored one, 400
                when it does not verify or names another user.
        """
        body = PutBundleRequest(key_bundle=key_bundle)
        response = await self._login.request("PUT", "/keys/bundle", body=body)
        return self._http.parse(UserView, response, "PUT /keys/bundle")

    async def user(self, name: str) -> UserView:
        """``GET /users/{name}``: a user's identity and current key bundle.

        The answer is what the *server* claims; the caller checks it against
        its pinned contacts.

        Raises:
            InvalidUsername: ``name`` cannot be an account name.
            UnknownUser: no such user on this server.
        """
        username = usernames.normalize(name)
        response = await self._login.request("GET", f"/users/{username}", user=username)
        return self._http.parse(UserView, response, "GET /users")

    async def presence(self, names: Iterable[str]) -> list[Presence]:
        """Online state and last-seen time of ``names``; unknown names are left out.

        Raises:
            ApiError: 422 for more than 100 names or a name that cannot exist.
        """
        wanted = list(names)
        if not wanted:
            return []
        response = await self._login.request("GET", "/presence", params={"names": ",".join(wanted)})
        return self._http.parse(PresenceResponse, response, "GET /presence").users

    # ---------------------------------------------------------------- calls

    async def initiate(self, call: InitiateCall) -> CallView:
        """``POST /call/initiate``: ring ``call.callee`` with the handshake offer.

        Raises:
            UnknownUser: no such callee.
            ApiError: 400 calling oneself, 409 a call id already in use.
        """
        response = await self._login.request("POST", "/call/initiate", body=call, user=call.callee)
        return self._http.parse(CallView, response, "POST /call/initiate")

    async def accept(self, call: AcceptCall) -> CallDetail:
        """``POST /call/accept``: answer a ringing call; the answer holds our relay grant.

        Raises:
            ApiError: 403 not our call, 404 no such call, 409 not ringing any more.
        """
        response = await self._login.request("POST", "/call/accept", body=call)
        return self._http.parse(CallDetail, response, "POST /call/accept")

    async def confirm(self, call: ConfirmCall) -> CallView:
        """``POST /call/confirm``: the caller's handshake confirmation.

        Raises:
            ApiError: 403, 404, or 409 when the call is not active.
        """
        response = await self._login.request("POST", "/call/confirm", body=call)
        return self._http.parse(CallView, response, "POST /call/confirm")

    async def reject(self, call: RejectCall) -> CallView:
        """``POST /call/reject``: refuse a ringing call (declined, busy or failed).

        Raises:
            ApiError: 403, 404, or 409 when the call is not ringing.
        """
        response = await self._login.request("POST", "/call/reject", body=call)
        return self._http.parse(CallView, response, "POST /call/reject")

    async def hangup(self, call: HangupCall) -> CallView:
        """``POST /call/hangup``: end, cancel or decline a call.

        Raises:
            ApiError: 403, 404, or 409 when the call has already ended.
        """
        response = await self._login.request("POST", "/call/hangup", body=call)
        return self._http.parse(CallView, response, "POST /call/hangup")

    async def status(self, call_id: str) -> CallDetail:
        """``GET /call/status/{call_id}``: everything about one of our calls.

        Raises:
            ApiError: 403 not our call, 404 no such call, 422 not a call id.
        """
        response = await self._login.request("GET", f"/call/status/{call_id}")
        return self._http.parse(CallDetail, response, "GET /call/status")

    async def pending(self) -> list[CallDetail]:
        """``GET /call/pending/{me}``: calls ringing for this account, oldest first."""
        response = await self._login.request("GET", f"/call/pending/{self.username}")
        return self._http.parse(PendingCalls, response, "GET /call/pending").calls

    async def history(self, limit: int = DEFAULT_HISTORY_CALLS) -> list[CallView]:
        """``GET /calls/history``: this account's calls as the server saw them, newest first.

        Args:
            limit: how many, 1 to :data:`~pqcall.signaling.messages.MAX_HISTORY_CALLS`.
        """
        if not 1 <= limit <= MAX_HISTORY_CALLS:
            raise ValueError(f"limit must be 1 to {MAX_HISTORY_CALLS}")
        response = await self._login.request("GET", "/calls/history", params={"limit": str(limit)})
        return self._http.parse(CallHistory, response, "GET /calls/history").calls

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
        response = await self._login.request("POST", "/files", body=body, user=name)
        return self._http.parse(FileView, response, "POST /files")

    async def upload(
        self,
        file_id: str,
        offset: int,
        content: AsyncIterable[bytes],
        length: int,
        *,
        create_for: tuple[str, int] | None = None,
        bundle: str | None = None,
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
            create_for: (recipient, size): create file ``file_id`` (an id we drew)
                first if the server has none, instead of :meth:`create_file`.
            bundle: with ``create_for``: the SHA-256 (hex) of the recipient's
                key bundle the file is encrypted to; a server holding another
                bundle refuses with 412.

        Raises:
            ApiError: 409 ``upload is at byte X`` when ``offset`` is not where
                the server is, 401 when the token was refused, 404 no such
                upload, 413 too many bytes, 412 ``bundle`` is not the
                recipient's current key bundle.
            ServerUnreachable: the connection failed (part may have arrived).
        """
        token = await self.token()
        response = await self._http.put_stream(
            f"/files/{file_id}/content",
            token=token,
            params={"offset": str(offset)}
            | ({"recipient": create_for[0], "size": str(create_for[1])} if create_for else {})
            | ({"bundle": bundle} if create_for and bundle else {}),
            content=content,
            length=length,
        )
        if response.status_code == 401:
            self.discard_token(token)
        if not response.is_success:
            raise self._http.error(response)
        return self._http.parse(FileView, response, "PUT /files/content")

    async def file_status(self, file_id: str) -> FileView:
        """``GET /files/{file_id}``: a file we send or receive (how much the server holds).

        Raises:
            ApiError: 404 no such file (or not ours, or expired).
        """
        response = await self._login.request("GET", f"/files/{file_id}")
        return self._http.parse(FileView, response, "GET /files/{file_id}")

    async def inbox(self) -> list[FileView]:
        """``GET /files``: complete files waiting for this account, oldest first."""
        response = await self._login.request("GET", "/files")
        return self._http.parse(Inbox, response, "GET /files").files

    async def download(
        self,
        file_id: str,
        offset: int = 0,
        *,
        on_response: Callable[[httpx.Headers], Awaitable[None]] | None = None,
    ) -> AsyncIterator[bytes]:
        """``GET /files/{file_id}/content``: the ciphertext from byte ``offset`` on, in pieces.

        Use as ``async for piece in api.download(file_id, offset)``; memory use
        is one piece of at most :data:`DOWNLOAD_CHUNK_BYTES`. From a non-zero
        offset the request carries ``Range: bytes=N-``; a server that answers
        with the whole file has its first ``offset`` bytes skipped here.
        ``on_response`` is awaited with a successful answer's headers before
        the first piece (the sender, the length: what to decrypt it with).

        Raises:
            ApiError: 404 no such file, 403 not ours, 416 offset past the end.
            ServerUnreachable: the connection failed (before or during the body).
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        relogged = False
        while True:
            token = await self.token()
            response = await self._http.open_stream(
                f"/files/{file_id}/content", token=token, headers=headers
            )
            try:
                if response.status_code == 401 and not relogged:
                    self.discard_token(token)
                    relogged = True
                    continue
                if not response.is_success:
                    await response.aread()
                    raise self._http.error(response)
                if on_response is not None:
                    await on_response(response.headers)
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
                        f"download from {self.base_url} broke off: {describe(exc)}"
                    ) from None
                return
            finally:
                await response.aclose()

    async def delete_file(self, file_id: str) -> None:
        """``DELETE /files/{file_id}``: the recipient has it, or the sender cancels.

        Raises:
            ApiError: 404 no such file, 403 not ours.
        """
        await self._login.request("DELETE", f"/files/{file_id}")

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
