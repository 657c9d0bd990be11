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
  message and the status in ``status``; a 429 says how long to wait; a 503 or
  507 without a reason of the server's (a proxy's page) gets one clear line.
- :class:`ServerError`: a success status whose body does not match its schema
  (:meth:`HttpSession.parse`).

A GET whose connection fails (not one that times out) is repeated up to
:data:`GET_RETRIES` times; other methods are never repeated here. Tokens
never appear in messages or logs.

Transport security (issue 20, finding 10): :func:`refuse_plain_http` refuses
an ``http://`` URL to an address beyond loopback and private networks unless
the person said ``--insecure``, before any connection; a
:class:`PinnedCertificate` trusts exactly one server certificate (pinned on
first use, :mod:`pqcall.client.server_cert`), and a server presenting another
is refused with one loud line.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
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
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",  # link-local
        "fc00::/7",  # RFC 4193 unique local
        "fe80::/10",  # link-local
    )
)  # where plain http:// is accepted (with loopback); ipaddress's is_private is wider

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


@dataclass(frozen=True, slots=True)
class PinnedCertificate:
    """Trust exactly the server certificate in ``path``, whatever name the server was reached by.

    Only the holder of that certificate's private key can complete the TLS
    handshake, so the host name adds nothing (and a LAN server's address may
    change); the certificate's validity period is still checked.
    """

    path: Path
    """The PEM file of the pinned certificate (in the home, 0600)."""


Verify = bool | str | PinnedCertificate
"""TLS verification of the server, as :func:`tls_context` takes it."""


def tls_context(verify: Verify) -> ssl.SSLContext:
    """The TLS context for ``verify``: the default trust store, a pinned certificate, or none.

    Args:
        verify: ``True`` for the usual certificate authorities, a path to a PEM
            file to trust that certificate (or CA) and nothing else, a
            :class:`PinnedCertificate`, ``False`` to check nothing (tests only).
    """
    if isinstance(verify, PinnedCertificate):
        context = ssl.create_default_context(cafile=str(verify.path))
        context.check_hostname = False  # the certificate itself is the pin
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def refuse_plain_http(url: str, *, insecure: bool) -> None:
    """Refuse ``http://`` to a public address unless ``insecure``; checked before any connection.

    Plain HTTP is accepted to loopback, private (RFC 1918, RFC 4193) and
    link-local addresses, ``localhost``, ``.local`` (mDNS) names and names
    without a dot (a LAN's own), where the network is the person's own; any
    other host name is not resolved here, so it counts as public.

    Raises:
        ServerError: one line naming the URL and the two ways out.
    """
    parsed = urllib.parse.urlsplit(url)
    if insecure or parsed.scheme.lower() != "http":
        return
    host = (parsed.hostname or "").lower()
    if ("." not in host and ":" not in host) or host.endswith((".localhost", ".local")):
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and (
        address.is_loopback or any(address in network for network in LOCAL_NETWORKS)
    ):
        return
    raise ServerError(
        f"refusing plain http:// to {host or url}, which is not on this machine or a private"
        " network: logins and call metadata would cross the internet unencrypted; use https://,"
        " or --insecure if you accept that"
    )


class HttpSession:
    """Requests to one server over one connection pool.

    Args:
        base_url: ``http://host:port`` or ``https://...`` of the server.
        verify: TLS verification, as for :func:`tls_context`.
        timeout_s: how long one request may take.
    """

    def __init__(
        self, base_url: str, *, verify: Verify = True, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.base_url = base_url.rstrip("/")  # where the server is, as given
        self.ssl_context = tls_context(verify)  # shared with the event stream (wss://)
        self.pinned = verify if isinstance(verify, PinnedCertificate) else None  # for messages
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
        """The error for a request that got no answer; loud when a pinned certificate changed."""
        if self.pinned is not None and _certificate_refused(exc):
            path = self.pinned.path
            return ServerUnreachable(
                f"the server at {self.base_url} presents a TLS certificate other than the one"
                f" pinned in {path}: someone may be intercepting the connection. If its operator"
                " replaced the certificate, compare its fingerprint by another channel, then"
                f" delete {path} to pin the new one"
            )
        return ServerUnreachable(f"cannot reach the server at {self.base_url}: {describe(exc)}")

    def error(self, response: httpx.Response, *, user: str | None = None) -> ApiError:
        """The exception for an error response, with the server's reason."""
        status = response.status_code
        try:
            reason = ErrorResponse.model_validate_json(response.content).error
        except pydantic.ValidationError:
            reason = f"the server answered {status} {response.reason_phrase}".rstrip()
            reason = _STORAGE_REASONS.get(status, reason)  # e.g. a proxy's HTML page
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


_STORAGE_REASONS = {
    503: "the server is unavailable, try again shortly",
    507: "the server's disk is full, try again later",
}


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


def _certificate_refused(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _authorization(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}
