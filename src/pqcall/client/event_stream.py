"""The phone's push events: one WebSocket to ``/events`` that outlives drops.

:class:`EventStream` connects to the server's push WebSocket
(``docs/server.md#push-events-get-events-websocket``), hands each
:class:`~pqcall.signaling.messages.Event` to its consumer exactly once, and
reconnects after any drop (server restart, network loss, an expired token)
with capped exponential backoff plus jitter (:data:`INITIAL_BACKOFF_S` doubling
to :data:`MAX_BACKOFF_S`), resuming after the last event it received::

    phone                                           server
      GET /events?resume=<last seq received>  ->    close 4401 when the token is refused:
                                                    a fresh token, connect again at once
                                              <-    stored events after it, in order
                                              <-    {"type": "ready", "heartbeat_s": 20.0}
                                              <-    live events
      {"ack": <seq>}                          ->    events through seq are deleted
                                              <-    {"type": "ping"}
      {"type": "pong"}                        ->

Delivery and acknowledgement:

- Events are yielded in ``seq`` order; one whose ``seq`` is not above the
  highest received (a repeat after a reconnect) is dropped.
- An event is **acknowledged when the consumer asks for the next one**: by
  calling ``__anext__`` again it says it has processed the previous event. A
  consumer that processes events elsewhere (in a task) may call :meth:`ack`
  explicitly; acks never go beyond :attr:`last_seq`, so the server never
  forgets an event the consumer has not been given.
- :attr:`acked_seq` is what a phone saves and passes back as ``resume`` when
  it starts again: every later event is still stored on the server and comes
  again. The event that was being processed when the phone stopped comes
  again too (at least once across restarts, exactly once within one stream).
- Events received but not yet consumed wait in a buffer of at most
  :data:`MAX_BUFFERED_EVENTS`; when it is full the stream stops reading (the
  server then drops the connection, and the stream resumes later; nothing is
  lost).

Heartbeats are the server's JSON ``{"type": "ping"}`` messages (not WebSocket
pings), answered with ``{"type": "pong"}``; a connection that stays silent
for :data:`SILENT_HEARTBEATS` heartbeat intervals is taken for dead and
replaced.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import pydantic
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from pqcall import __version__
from pqcall.exceptions import PqcallError
from pqcall.signaling.messages import Event

logger = logging.getLogger(__name__)


class _RedactAuthorization(logging.Filter):
    """Hides the bearer token in websockets' debug log of the handshake (``> Authorization``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() == "authorization":
            record.args = (args[0], "[redacted]")
        return True


websocket_logger = logging.getLogger(f"{__name__}.websocket")
"""What the WebSocket library logs about our connections (its DEBUG shows the handshake)."""
websocket_logger.addFilter(_RedactAuthorization())

TokenSource = Callable[[], Awaitable[str]]
"""Returns a bearer token, logging in when needed (:meth:`pqcall.client.api.ServerApi.token`)."""
ConnectionCallback = Callable[[bool], None]
"""Called with ``True`` when the stream is connected (ready), ``False`` when it drops or closes."""

USER_AGENT = f"pqcall/{__version__}"

# close codes of the server (docs/server.md)
CLOSE_UNAUTHORIZED = 4401  # missing, invalid or expired token
CLOSE_BAD_MESSAGE = 4400  # bad resume, or a message the server does not understand

INITIAL_BACKOFF_S = 0.2  # first pause before reconnecting
MAX_BACKOFF_S = 5.0  # the pause doubles up to this
BACKOFF_JITTER = 0.5  # each pause is drawn from [(1 - jitter) * delay, delay]
OPEN_TIMEOUT_S = 10.0  # connect and WebSocket handshake; also the silence allowed before ready
DEFAULT_HEARTBEAT_S = 20.0  # when the ready message does not say
SILENT_HEARTBEATS = 2.5  # heartbeat intervals without any message before the link is dead
MAX_BUFFERED_EVENTS = 1000  # received, not yet consumed
CLOSE_TIMEOUT_S = 2.0  # how long a closing handshake may take (the peer may be gone)
ACK_FLUSH_TIMEOUT_S = 1.0  # how long close() tries to send an outstanding ack


def events_url(base_url: str) -> str:
    """``ws(s)://host:port/.../events`` for the server at ``http(s)://host:port/...``.

    Raises:
        ValueError: ``base_url`` is not an ``http://`` or ``https://`` URL.
    """
    base = base_url.rstrip("/")
    for scheme, ws_scheme in (("https://", "wss://"), ("http://", "ws://")):
        if base.lower().startswith(scheme):
            return ws_scheme + base[len(scheme) :] + "/events"
    raise ValueError(f"server URL must start with http:// or https://, not {base_url!r}")


class EventStream:
    """A push-event stream that reconnects and resumes by itself.

    Use it as an async context manager and an async iterator::

        async with EventStream(url, api.token, resume=saved) as stream:
            async for event in stream:
                handle(event)              # acknowledged when the loop asks for the next

    The stream starts on ``async with``, :meth:`start`, the first ``__anext__``
    or :meth:`wait_connected`, and runs until :meth:`close`, after which the
    iteration ends. It never gives up on the server; an error the stream
    cannot recover from (a bug) is raised from ``__anext__``.

    Args:
        base_url: the server's ``http(s)://`` URL (as for the HTTP API).
        token: returns a bearer token; called before every connection.
        resume: the last ``seq`` the phone processed (:attr:`acked_seq` of an
            earlier stream); it is acknowledged on connecting. ``None``: every
            event the server still stores.
        token_refused: called with a token the server refused (close 4401)
            before ``token`` is asked for another, so that it logs in again
            (:meth:`pqcall.client.api.ServerApi.discard_token`).
        on_connection: called with ``True`` when connected, ``False`` when the
            connection drops or the stream closes (for a "reconnecting…" indicator); must not block.
        ssl_context: TLS settings for ``https://`` servers (a pinned certificate).
        open_timeout_s: how long one connection attempt may take.

    Raises:
        ValueError: ``base_url`` is not http(s), or ``resume`` is negative.
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        resume: int | None = None,
        token_refused: Callable[[str], None] | None = None,
        on_connection: ConnectionCallback | None = None,
        ssl_context: ssl.SSLContext | None = None,
        open_timeout_s: float = OPEN_TIMEOUT_S,
    ) -> None:
        if resume is not None and resume < 0:
            raise ValueError("resume must be a non-negative seq")
        self.url = events_url(base_url)  # the WebSocket URL (no token in it)
        self._token = token  # bearer tokens
        self._token_refused = token_refused  # told about a token closed with 4401
        self._on_connection = on_connection  # connected / dropped notifications
        self._ssl = ssl_context if self.url.startswith("wss://") else None  # TLS for wss://
        self._open_timeout_s = open_timeout_s  # per connection attempt
        self._resume = resume  # as given; sent until something is received
        self._received = resume or 0  # highest seq received: the next connection's resume
        self._last_seq = resume  # seq of the last event handed to the consumer
        self._ack_target = resume or 0  # acknowledge events through this seq
        self._auto_ack: int | None = None  # seq to acknowledge at the next __anext__
        self._buffer: collections.deque[Event] = collections.deque()  # received, not consumed
        self._readable = asyncio.Event()  # set: buffer not empty, closed or failed
        self._space = asyncio.Event()  # set: buffer below MAX_BUFFERED_EVENTS
        self._space.set()
        self._ack_wanted = asyncio.Event()  # set: the acker should look at _ack_target
        self._connected = asyncio.Event()  # set while connected (ready received)
        self._ws: ClientConnection | None = None  # the current connection
        self._acked_here = 0  # highest ack sent on the current connection
        self._runner: asyncio.Task[None] | None = None  # connects, reads, reconnects
        self._closed = False  # close() was called
        self._failure: BaseException | None = None  # the error that stopped the runner
        self._reconnects = 0  # connections after the first
        self._ever_connected = False  # whether a connection ever became ready

    # ---------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        """Whether a connection is up and past the server's ``ready`` message."""
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        """How many times the stream connected again after a drop."""
        return self._reconnects

    @property
    def last_seq(self) -> int | None:
        """The ``seq`` of the last event handed to the consumer (else ``resume``)."""
        return self._last_seq

    @property
    def acked_seq(self) -> int:
        """Events through this ``seq`` are acknowledged: what to save as the next ``resume``."""
        return self._ack_target

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Start the stream if needed and wait until it is connected.

        Raises:
            TimeoutError: not connected within ``timeout`` seconds.
        """
        self.start()
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start connecting in the background (idempotent; needs a running loop)."""
        if self._runner is None and not self._closed:
            self._runner = asyncio.create_task(self._run(), name="pqcall-event-stream")

    async def close(self) -> None:
        """Stop: send an outstanding ack if connected, close the socket, end the iteration.

        Every task of the stream has finished when this returns.
        """
        if self._closed:
            return
        self._closed = True
        await self._flush_ack()
        self._readable.set()
        self._space.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def __aenter__(self) -> EventStream:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ---------------------------------------------------------------- consuming

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        """The next event; acknowledges the one returned before.

        Raises:
            StopAsyncIteration: the stream was closed.
        """
        if self._auto_ack is not None:
            self.ack(self._auto_ack)
            self._auto_ack = None
        self.start()
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            if self._failure is not None:
                raise self._failure
            self._readable.clear()
            await self._readable.wait()
        if self._closed:
            raise StopAsyncIteration
        event = self._buffer.popleft()
        if len(self._buffer) < MAX_BUFFERED_EVENTS:
            self._space.set()
        self._last_seq = event.seq
        self._auto_ack = event.seq
        return event

    def ack(self, seq: int) -> None:
        """Acknowledge every event through ``seq`` now (capped at :attr:`last_seq`).

        The server deletes them; a later stream started with ``resume`` at
        :attr:`acked_seq` will not see them again.
        """
        if self._last_seq is None:
            return
        seq = min(seq, self._last_seq)
        if seq > self._ack_target:
            self._ack_target = seq
            self._ack_wanted.set()

    # ---------------------------------------------------------------- connecting

    async def _run(self) -> None:
        try:
            await self._reconnect_forever()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("event stream stopped by an unexpected error")
            self._failure = exc
            self._readable.set()

    async def _reconnect_forever(self) -> None:
        failures = 0  # attempts in a row that did not reach ready
        refusals = 0  # connections in a row closed with 4401
        while True:
            immediate = False  # connect again without a pause
            retry_after: float | None = None  # the pause the server asked for
            try:
                token: str | None = await self._token()
            except PqcallError as exc:
                logger.warning("event stream: no token: %s", exc)
                token = None
            if token is not None:
                try:
                    reached_ready, code = await self._connect(token)
                except InvalidStatus as exc:
                    reached_ready, code = False, None
                    logger.warning(
                        "event stream: the server answered HTTP %d", exc.response.status_code
                    )
                    retry_after = _retry_after(exc)
                except (OSError, TimeoutError, WebSocketException) as exc:
                    reached_ready, code = False, None
                    logger.info("event stream: cannot connect: %s", str(exc) or repr(exc))
                if reached_ready:
                    failures = refusals = 0
                if code == CLOSE_UNAUTHORIZED:
                    # the token expired or was revoked: a fresh one, at once the first time
                    if self._token_refused is not None:
                        self._token_refused(token)
                    immediate = refusals == 0
                    refusals += 1
                else:
                    refusals = 0
            if not immediate:
                failures += 1
                backoff = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** (failures - 1))
                pause = backoff * random.uniform(1 - BACKOFF_JITTER, 1)
                await asyncio.sleep(max(pause, retry_after or 0.0))

    async def _connect(self, token: str) -> tuple[bool, int | None]:
        """Run one connection until it drops: whether it got ready, and the close code."""
        url = self.url if self._received == 0 and self._resume is None else self._resume_url()
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            user_agent_header=USER_AGENT,
            ssl=self._ssl,
            open_timeout=self._open_timeout_s,
            ping_interval=None,  # the server's JSON heartbeats keep the connection checked
            close_timeout=CLOSE_TIMEOUT_S,
            logger=websocket_logger,
        ) as ws:
            self._ws = ws
            self._acked_here = 0
            self._ack_wanted.set()  # acknowledge what was consumed while disconnected
            acker = asyncio.create_task(self._send_acks(ws), name="pqcall-event-acks")
            code: int | None = None  # the server's close code
            try:
                await self._read(ws)
            except ConnectionClosed as exc:
                if exc.rcvd is not None:
                    code = exc.rcvd.code
                    logger.info("event stream closed by the server: %d %s", code, exc.rcvd.reason)
                else:
                    logger.info("event stream: the connection broke")
            except TimeoutError:
                logger.info("event stream: the server went silent; reconnecting")
            finally:
                reached_ready = self.connected
                self._ws = None
                acker.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await acker
                self._set_connected(False)
        return reached_ready, code

    def _resume_url(self) -> str:
        return f"{self.url}?resume={self._received}"

    async def _read(self, ws: ClientConnection) -> None:
        """Read until the connection closes (ConnectionClosed) or goes silent (TimeoutError)."""
        silence_s = self._open_timeout_s
        while True:
            async with asyncio.timeout(silence_s):
                raw = await ws.recv()
            message = _decode(raw)
            if message is None:
                continue
            if "seq" in message:
                await self._receive_event(message)
                continue
            kind = message.get("type")
            if kind == "ping":
                await ws.send('{"type":"pong"}')
            elif kind == "ready":
                heartbeat_s = message.get("heartbeat_s")
                if not isinstance(heartbeat_s, int | float) or heartbeat_s <= 0:
                    heartbeat_s = DEFAULT_HEARTBEAT_S
                silence_s = SILENT_HEARTBEATS * heartbeat_s
                self._set_connected(True)
            else:
                logger.debug("event stream: ignoring a message of type %r", kind)

    async def _receive_event(self, message: dict[str, Any]) -> None:
        try:
            event = Event.model_validate(message)
        except pydantic.ValidationError as exc:
            logger.warning("event stream: ignoring a malformed event: %s", exc.errors()[0]["msg"])
            return
        if event.seq <= self._received:
            return  # delivered before this reconnect
        while len(self._buffer) >= MAX_BUFFERED_EVENTS:
            self._space.clear()
            await self._space.wait()
            if self._closed:
                return
        self._buffer.append(event)
        self._received = event.seq
        self._readable.set()

    async def _send_acks(self, ws: ClientConnection) -> None:
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            target = self._ack_target
            if target > self._acked_here:
                await ws.send(json.dumps({"ack": target}))
                self._acked_here = target

    async def _flush_ack(self) -> None:
        ws = self._ws
        if ws is None or self._ack_target <= self._acked_here:
            return
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(ACK_FLUSH_TIMEOUT_S):
                await ws.send(json.dumps({"ack": self._ack_target}))
                self._acked_here = self._ack_target

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected.is_set():
            return
        if connected:
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._connected.set()
            logger.info("event stream connected")
        else:
            self._connected.clear()
            logger.info("event stream disconnected")
        if self._on_connection is not None:
            try:
                self._on_connection(connected)
            except Exception:
                logger.exception("on_connection callback failed")


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    """A JSON object from the server, or None (logged) for anything else."""
    try:
        message = json.loads(raw)
    except ValueError:
        logger.warning("event stream: ignoring a message that is not JSON")
        return None
    if not isinstance(message, dict):
        logger.warning("event stream: ignoring a message that is not a JSON object")
        return None
    return message


def _retry_after(exc: InvalidStatus) -> float | None:
    """The pause a refused handshake asks for (``Retry-After`` in seconds), if any."""
    value = exc.response.headers.get("Retry-After", "")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
