"""The phone's HTTP plumbing to the signaling server: one connection pool, TLS, errors.

:class:`HttpSession` sends one request and turns what comes back into either
a success response or one of the errors of :mod:`pqcall.exceptions`, each one
line; it knows nothing of tokens or routes (:mod:`pqcall.client.login` adds
the token, :mod:`pqcall.client.api` the routes):

- :class:`ServerUnreachable`: no answer at all (connection refused, name not
  resolved, timeout, TLS failure): ``cannot reach the server at
  http://10.0.0.5:5001: connection refused``.
- :class:`UnknownUser`: a 404 about a user the caller names.
- :class:`ApiError`: any other error status, with the server's reason as the
  message and the status in ``status``; a 429 says how long to wait.
- :class:`ServerError`: a success status whose body does not match its schema
  (:meth:`HttpSession.parse`).

A GET whose connection fails (not one that times out) is repeated up to
:data:`GET_RETRIES` times; other methods are never repeated here. Tokens
never appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterable
from typing import Any, TypeVar

import httpx
import pydantic

from pqcall import __version__
from pqcall.exceptions import ApiError, ServerError, ServerUnreachable, UnknownUser
from pqcall.signaling.messages import ErrorResponse

logger = logging.getLogger(__name__)

USER_AGENT = f"pqcall/{__version__}"
DEFAULT_TIMEOUT_S = 10.0
GET_RETRIES = 2  # repeats of a GET whose connection failed
GET_RETRY_DELAYS_S = (0.2, 0.5)  # pause before each repeat
MAX_REASON_CHARS = 300  # of an error text quoted into an exception

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


class HttpSession:
    """Requests to one server over one connection pool.

    Args:
        base_url: ``http://host:port`` or ``https://...`` of the server.
        verify: TLS verification, as for :func:`tls_context`.
        timeout_s: how long one request may take.
    """

    def __init__(
        self, base_url: str, *, verify: bool | str = True, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.base_url = base_url.rstrip("/")  # where the server is, as given
        self.ssl_context = tls_context(verify)  # shared with the event stream (wss://)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            verify=self.ssl_context,
            timeout=timeout_s,
            headers={"User-Agent": USER_AGENT},
        )  # one connection pool for every request

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: pydantic.BaseModel | None = None,
        params: dict[str, str] | None = None,
        user: str | None = None,
    ) -> httpx.Response:
        """Send one request; a success response, else raise its error.

        ``user`` names the user a 404 is about (:class:`UnknownUser`).
        """
        payload = body.model_dump(mode="json") if body is not None else None
        response = await self.send(method, path, token=token, json=payload, params=params)
        if response.is_success:
            return response
        raise self.error(response, user=user)

    async def send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request, whatever its status; a GET is repeated when its connection fails.

        Raises:
            ServerUnreachable: no answer.
        """
        headers = _authorization(token)
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
                raise self.unreachable(exc) from None
            logger.debug("%s %s: %d", method, path, response.status_code)
            return response

    async def put_stream(
        self,
        path: str,
        *,
        token: str,
        params: dict[str, str],
        content: AsyncIterable[bytes],
        length: int,
    ) -> httpx.Response:
        """``PUT`` a body of ``length`` bytes streamed from ``content``, once; any status.

        Raises:
            ServerUnreachable: the connection failed (part may have arrived).
        """
        headers = {
            **_authorization(token),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
        }
        try:
            response = await self._client.put(path, params=params, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        logger.debug("PUT %s: %d", path, response.status_code)
        return response

    async def open_stream(
        self, path: str, *, token: str, headers: dict[str, str]
    ) -> httpx.Response:
        """``GET`` with the body left unread; the caller reads it and must ``aclose()`` it.

        Raises:
            ServerUnreachable: no answer.
        """
        request = self._client.build_request(
            "GET", path, headers={**headers, **_authorization(token)}
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        """The error for a request that got no answer."""
        return ServerUnreachable(f"cannot reach the server at {self.base_url}: {describe(exc)}")

    def error(self, response: httpx.Response, *, user: str | None = None) -> ApiError:
        """The exception for an error response, with the server's reason."""
        status = response.status_code
        try:
            reason = ErrorResponse.model_validate_json(response.content).error
        except pydantic.ValidationError:
            reason = f"the server answered {status} {response.reason_phrase}".rstrip()
        reason = one_line(reason)
        if status == 404 and user is not None:
            return UnknownUser(404, f"no user named {user} on this server")
        if status == 429:
            retry_after = response.headers.get("retry-after", "").strip()
            if retry_after and retry_after not in reason:
                reason = f"{reason} (retry after {retry_after} s)"
        return ApiError(status, reason)

    @staticmethod
    def parse(model: type[_Model], response: httpx.Response, what: str) -> _Model:
        """Validate a success answer against its model.

        Raises:
            ServerError: the body does not match, naming ``what`` and the first defect.
        """
        try:
            return model.model_validate_json(response.content)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise ServerError(
                f"the server's answer to {what} is not valid: {where}: {first['msg']}"
            ) from None


def server_time(response: httpx.Response) -> float:
    """The server's clock when it answered (its ``Date`` header), else ours."""
    header = response.headers.get("date")
    if header:
        try:
            return email.utils.parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


def one_line(text: str) -> str:
    """``text`` on one line, at most :data:`MAX_REASON_CHARS` characters."""
    text = " ".join(text.split())
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return text


def describe(exc: httpx.TransportError) -> str:
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
    return one_line(str(exc)) or type(exc).__name__


def _authorization(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}
