"""Push events: stored first, then delivered live over each phone's WebSocket.

:class:`EventHub` is the :class:`~pqcall.server.context.Component` that owns
every push connection of this process (``context.extras["events"]``). An event
for an account is written to storage (:meth:`EventStore.add_event` gives it its
``seq``) and then handed to each of the account's open connections (a person
may run several phones). A phone that was offline, or whose connection broke,
gets what it missed when it reconnects with ``resume=<last seq it saw>``; it
acknowledges with ``{"ack": seq}`` so storage forgets what was delivered
(per device, issue 22: an account of several devices keeps an event until
every device has acknowledged it).

One connection, as :class:`PushConnection` runs it::

    phone                                      server
      GET /events?resume=41  (WebSocket)  ->   authenticate, else close 4401
                                          <-   every stored event with seq > 41
                                          <-   {"type": "ready", "heartbeat_s": 20.0}
                                          <-   live events as they happen
      {"ack": 57}                         ->   events it sent through 57 deleted
                                          <-   {"type": "ping"} every heartbeat_s
      {"type": "pong"}                    ->   (any message counts as a pong)

Messages with a ``seq`` are events (:class:`~pqcall.signaling.messages.Event`);
``ready`` and ``ping`` are the only others. A connection that sends nothing
through two pings in a row is closed (4408), as is one whose token expires
(4401, at the next ping) or is revoked (4401 "logged out", at once: the hub
listens to :class:`~pqcall.server.auth.Revocations`), or that falls
:data:`MAX_QUEUED_EVENTS` behind (1013; it resumes on reconnect, nothing is
lost).

Presence: when an account's first connection opens or its last one closes,
``last_seen`` is updated and a ``presence`` event (``last_seen`` rounded to 5
minutes) goes to the accounts that may see its presence, those it has called
or whose call it answered, that are online right now; a stranger who only
rang it gets nothing. An
offline contact learns presence from ``GET /presence`` when it comes back, so
presence events never pile up for absent phones. While connected, accounts'
``last_seen`` is refreshed every heartbeat interval, which is what the call
sweeper reads to tell a vanished party from one connected to another process.

Ordering: within one process, one account's events are stored and pushed
under a per-account lock, so a phone receives them in ``seq`` order. With
several nodes, each event is also sent over the bus (:mod:`pqcall.server.bus`)
and the node holding the phone's socket pushes it (:meth:`EventHub.deliver_remote`);
two nodes' events may cross it out of order, so there a connection sends in
``seq`` order from storage (:class:`~pqcall.server.bus.SentEvents`); presence counts all nodes.

A request that changes something and announces it writes both in one
transaction (:meth:`EventHub.transaction`): the events are queued on an
:class:`Outbox`, inserted in one statement just before the commit, and pushed
after it. Acks delete exactly the events this connection delivered up to the
acked seq, never an undelivered one with a lower seq; the deletes of all
connections are batched (:data:`ACK_FLUSH_S`), one statement per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.websockets import WebSocket

from pqcall.server.auth import Revocation, revocations
from pqcall.server.bus import SentEvents, node_link
from pqcall.server.context import AppContext
from pqcall.server.metrics import METRICS_EXTRA, ServerMetrics
from pqcall.server.presence import rounded_last_seen
from pqcall.server.storage import AccountRecord
from pqcall.signaling.messages import EVENT_PRESENCE, Event, Presence

logger = logging.getLogger(__name__)

EVENTS_EXTRA = "events"  # context.extras key of the EventHub

# WebSocket close codes (RFC 6455 section 7.4; 4000-4999 are the application's)
CLOSE_BAD_MESSAGE = 4400  # a query parameter or message the server cannot use
CLOSE_UNAUTHORIZED = 4401  # missing, invalid or expired token
CLOSE_HEARTBEAT_TIMEOUT = 4408  # two pings went unanswered
CLOSE_TOO_SLOW = 1013  # "try again later": the phone fell too far behind
CLOSE_SERVER_STOPPING = 1012  # "service restart"

MISSED_HEARTBEATS_ALLOWED = 2  # unanswered pings in a row before the connection is dropped
MAX_QUEUED_EVENTS = 1000  # live events waiting for one slow connection
MAX_CLIENT_MESSAGE_BYTES = 1024  # an ack or a pong is a few bytes
BACKLOG_PAGE = 100  # stored events read per query when a phone resumes
STOP_TIMEOUT_S = 5.0  # how long stop() waits for connections to finish
ACK_FLUSH_S = 0.2  # acks wait at most this long to be deleted together
MAX_UNACKED = 10_000  # delivered seqs a connection remembers for exact acks


class ConnectionClosing(Exception):
    """Ends a push connection with a WebSocket close code and a reason for the phone."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code  # WebSocket close code
        self.reason = reason  # one sentence for the phone


def event_hub(context: AppContext) -> EventHub:
    """The running :class:`EventHub` of this process.

    Raises:
        RuntimeError: the hub is not running (not installed, or the app stopped).
    """
    hub = context.extras.get(EVENTS_EXTRA)
    if not isinstance(hub, EventHub):
        raise RuntimeError("the event hub is not running")
    return hub


class _AccountLocks:
    """One lock per account, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # account id -> (lock, users)

    @contextlib.asynccontextmanager
    async def hold(self, account_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(account_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[account_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[account_id]
            if users == 1:
                del self._locks[account_id]
            else:
                self._locks[account_id] = (lock, users - 1)


@dataclass
class Outbox:
    """Events a transaction will store and push; see :meth:`EventHub.transaction`."""

    connection: AsyncConnection
    """The open transaction: pass it to the store methods (``connection=``)."""
    queued: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, account_id: int, type: str, payload: dict[str, Any]) -> None:
        """Store (at commit) and then push this event; ``payload`` must be JSON."""
        self.queued.append((account_id, type, payload))


class EventHub:
    """Stores and pushes events, and serves every push WebSocket of this process.

    A :class:`~pqcall.server.context.Component`: :meth:`start` publishes it as
    ``context.extras["events"]``; :meth:`stop` closes every connection (1012)
    and waits for them to finish while storage is still open.
    """

    def __init__(self) -> None:
        self._context: AppContext | None = None  # set by start
        self._connections: dict[int, set[PushConnection]] = {}  # account id -> open sockets
        self._locks = _AccountLocks()  # one publisher at a time per account
        self._refresher: asyncio.Task[None] | None = None  # refreshes last_seen of the online
        # (account id, device id, seq) acknowledged, not deleted; acks are per device (issue 22)
        self._acks: set[tuple[int, bytes | None, int]] = set()
        self._through: dict[tuple[int, bytes | None], int] = {}  # -> resumed-from seq
        self._ack_due = asyncio.Event()  # set when _acks is not empty
        self._ack_flusher: asyncio.Task[None] | None = None  # deletes acknowledged events
        self.ack_flush_s = ACK_FLUSH_S  # how long acks gather before one delete
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, once started
        self.ordered = False  # several nodes: connections send in seq order from storage

    # ------------------------------------------------------------ component

    async def start(self, context: AppContext) -> None:
        self._context = context
        self.ordered = bool(context.settings.bus_url)
        context.extras[EVENTS_EXTRA] = self
        revocations(context).subscribe(self.revoked)
        self._refresher = asyncio.create_task(self._refresh_last_seen(), name="pqcall-last-seen")
        self._ack_flusher = asyncio.create_task(self._flush_acks(), name="pqcall-acks")
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        if self._context is not None:
            revocations(self._context).unsubscribe(self.revoked)
        if self._ack_flusher is not None:
            self._ack_flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ack_flusher
            self._ack_flusher = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        connections = list(self._all_connections())
        for connection in connections:
            connection.close(CLOSE_SERVER_STOPPING, "server is shutting down")
        if connections:
            finished = [asyncio.ensure_future(c.finished.wait()) for c in connections]
            _, pending = await asyncio.wait(finished, timeout=STOP_TIMEOUT_S)
            for waiter in pending:
                waiter.cancel()
        if self._context is not None:
            with contextlib.suppress(Exception):  # storage is still open; else phones re-ack
                await self.delete_acknowledged()
            self._context.extras.pop(EVENTS_EXTRA, None)
        self._context = None

    @property
    def context(self) -> AppContext:
        """The context of the running server."""
        if self._context is None:
            raise RuntimeError("the event hub is not running")
        return self._context

    @property
    def connection_count(self) -> int:
        """Open push connections in this process."""
        return sum(len(group) for group in self._connections.values())

    # ------------------------------------------------------------ events

    async def publish(self, account_id: int, type: str, payload: dict[str, Any]) -> Event:
        """Store an event for ``account_id``, then push it to the account's open connections.

        ``payload`` must be JSON (``model_dump(mode="json")`` of a message).
        """
        context = self.context
        async with self._locks.hold(account_id):
            now = context.now()
            seq = await context.storage.events.add_event(account_id, type, payload, now)
            event = Event(seq=seq, type=type, payload=payload, created=now)
            self._deliver(account_id, event)
        return event

    @contextlib.asynccontextmanager
    async def transaction(self, account_ids: Iterable[int]) -> AsyncIterator[Outbox]:
        """One database transaction whose events commit with it and are pushed after it.

        Write through ``outbox.connection`` and queue events with
        ``outbox.publish``, for the accounts in ``account_ids`` only; at the end
        of the block the events are inserted (one statement), the transaction
        commits, and they are pushed. The accounts' locks are taken together, in
        id order, *before* the transaction begins, as :meth:`publish` takes its
        one: no task waits for a lock while it holds the database (SQLite's
        single writer would otherwise stall until its busy timeout). An
        exception rolls everything back and pushes nothing.
        """
        context = self.context
        accounts = sorted(set(account_ids))
        async with contextlib.AsyncExitStack() as locks:
            for account_id in accounts:
                await locks.enter_async_context(self._locks.hold(account_id))
            async with context.storage.transaction() as connection:
                outbox = Outbox(connection)
                yield outbox
                if not outbox.queued:
                    return
                strays = {account for account, _, _ in outbox.queued} - set(accounts)
                if strays:
                    raise ValueError(f"events for accounts not locked: {sorted(strays)}")
                now = context.now()
                seqs = await context.storage.events.add_events(connection, outbox.queued, now)
            for (account_id, kind, payload), seq in zip(outbox.queued, seqs, strict=True):
                event = Event(seq=seq, type=kind, payload=payload, created=now)
                self._deliver(account_id, event)

    def _deliver(self, account_id: int, event: Event) -> None:
        """Push a stored event to the account's sockets here, and over the bus to other nodes'."""
        self.deliver_remote(account_id, event)
        if (link := node_link(self.context)) is not None:
            link.event_committed(account_id, event)

    def deliver_remote(self, account_id: int, event: Event) -> None:
        """Push a stored event (this node's, or another's from the bus) to its sockets here."""
        for connection in self._connections.get(account_id, ()):
            connection.push(event)

    def acknowledge(
        self, account_id: int, seqs: list[int], through: int = 0, device_id: bytes | None = None
    ) -> None:
        """Forget these events of the account (the phone has them), within :attr:`ack_flush_s`.

        ``through``: also those up to this seq (where the phone resumed from).
        ``device_id``: the phone's device; an account of several devices keeps an
        event until each has it (:meth:`EventStore.acknowledge`).
        """
        self._acks.update((account_id, device_id, seq) for seq in seqs)
        if through > self._through.get((account_id, device_id), 0):
            self._through[(account_id, device_id)] = through
        if self._acks or self._through:
            self._ack_due.set()

    async def delete_acknowledged(self) -> int:
        """Delete every acknowledged event now (one statement per batch); how many went."""
        acks, self._acks = self._acks, set()
        through, self._through = self._through, {}
        self._ack_due.clear()
        return await self.context.storage.events.acknowledge(acks, through)

    async def _flush_acks(self) -> None:
        while True:
            await self._ack_due.wait()
            await asyncio.sleep(self.ack_flush_s)
            try:
                await self.delete_acknowledged()
            except Exception:  # they stay stored; retention deletes them, a resume skips them
                logger.warning("deleting acknowledged events failed", exc_info=True)

    def is_connected(self, account_id: int) -> bool:
        """Whether the account has an open push connection in this process."""
        return account_id in self._connections

    # ------------------------------------------------------------ connections

    def revoked(self, revocation: Revocation) -> None:
        """Close every connection opened with a token ``revocation`` covers (4401)."""
        for connection in list(self._all_connections()):
            if revocation.covers(connection.token_hash, connection.account.id):
                connection.close(CLOSE_UNAUTHORIZED, "logged out")

    async def serve(
        self,
        websocket: WebSocket,
        account: AccountRecord,
        resume: int,
        expires_at: float,
        token_hash: bytes,
    ) -> None:
        """Run one accepted, authenticated push connection until it closes.

        Args:
            websocket: accepted; closed by this method.
            account: whose events it carries.
            resume: the last ``seq`` the phone saw (0: none).
            expires_at: when the connection's token expires (app clock).
            token_hash: the hash of the token it authenticated with (for revocation).
        """
        context = self.context
        connection = PushConnection(
            self,
            websocket,
            account,
            resume,
            expires_at,
            context.settings.heartbeat_interval_s,
            token_hash,
        )
        # register before reading the backlog, so no event falls between the two
        self._connections.setdefault(account.id, set()).add(connection)
        # a logout between the handshake's check and now was announced before we listened
        token = await context.storage.logins.token_info(token_hash)
        if token is None:
            connection.close(CLOSE_UNAUTHORIZED, "logged out")
        else:
            connection.device_id = token.device_id  # whose acks these are (issue 22)
        came_online = context.presence.connect(account.id)
        metrics = context.extras.get(METRICS_EXTRA)
        tracking = (
            metrics.connected_phones.track_inprogress()
            if isinstance(metrics, ServerMetrics)
            else contextlib.nullcontext()
        )
        closing: ConnectionClosing | None = None
        try:
            with tracking:
                try:
                    await context.storage.accounts.touch_last_seen(account.id, context.now())
                    if came_online:
                        await self._announce(account.id, online=True)
                    closing = await connection.run()
                finally:
                    group = self._connections.get(account.id, set())
                    group.discard(connection)
                    if not group:
                        self._connections.pop(account.id, None)
                    went_offline = context.presence.disconnect(account.id)
                    try:
                        await context.storage.accounts.touch_last_seen(account.id, context.now())
                        if went_offline:
                            await self._announce(account.id, online=False)
                    except Exception:
                        logger.exception("presence update for %s failed", account.username)
            if closing is not None:
                with contextlib.suppress(Exception):
                    await websocket.close(closing.code, closing.reason)
        finally:
            connection.finished.set()

    async def _announce(self, account_id: int, *, online: bool) -> None:
        """Tell the online accounts that may see its presence that it came or went."""
        context = self.context
        watchers = await context.storage.calls.list_presence_watchers(account_id)
        listeners = [watcher for watcher in watchers if context.presence.is_online(watcher)]
        if not listeners:
            return
        account = await context.storage.accounts.get_account(account_id)
        if account is None:
            return
        presence = Presence(
            username=account.username, online=online, last_seen=rounded_last_seen(account.last_seen)
        )
        payload = presence.model_dump(mode="json")
        for partner in listeners:
            await self.publish(partner, EVENT_PRESENCE, payload)

    async def _refresh_last_seen(self) -> None:
        context = self.context
        while True:
            await asyncio.sleep(context.settings.heartbeat_interval_s)
            online = list(self._connections)
            if not online:
                continue
            try:
                await context.storage.accounts.touch_accounts(online, context.now())
            except Exception:
                logger.exception("refreshing last_seen failed")

    def _all_connections(self) -> Iterator[PushConnection]:
        for group in self._connections.values():
            yield from group


class PushConnection:
    """One phone's push WebSocket: backlog, live events, acks and heartbeats.

    Created and run by :meth:`EventHub.serve`; :meth:`run` returns how the
    server wants the socket closed, or ``None`` when the phone left.
    """

    def __init__(
        self,
        hub: EventHub,
        websocket: WebSocket,
        account: AccountRecord,
        resume: int,
        expires_at: float,
        heartbeat_s: float,
        token_hash: bytes,
    ) -> None:
        self.hub = hub  # storage, acks
        self.websocket = websocket  # accepted
        self.account = account  # whose events
        self.resume = resume  # the last seq the phone had when it connected
        self.expires_at = expires_at  # token expiry, app clock
        self.heartbeat_s = heartbeat_s  # seconds between pings
        self.token_hash = token_hash  # the token it opened with; revoking it closes us
        self.device_id: bytes | None = None  # the token's device, set by serve (issue 22)
        self.finished = asyncio.Event()  # set when serve() is done with this connection
        self._queue: asyncio.Queue[Event] = asyncio.Queue(MAX_QUEUED_EVENTS)  # live events
        self._closing: asyncio.Future[ConnectionClosing] = (
            asyncio.get_running_loop().create_future()
        )  # resolved by close()
        self._unacked: list[int] = []  # seqs sent on this connection, not yet acknowledged
        self._sent = SentEvents(resume) if hub.ordered else None  # several nodes: in seq order
        self._resumed = resume  # deleted through at the first ack (the phone had them)
        self._heard = True  # the phone sent something since the last ping
        self._missed = 0  # pings in a row that went unanswered

    def push(self, event: Event) -> None:
        """Queue a live event; a connection too far behind is closed (it will resume)."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.close(CLOSE_TOO_SLOW, "too many undelivered events; reconnect with resume")

    def close(self, code: int, reason: str) -> None:
        """Ask :meth:`run` to end with this close code (the first request wins)."""
        if not self._closing.done():
            self._closing.set_result(ConnectionClosing(code, reason))

    async def run(self) -> ConnectionClosing | None:
        """Serve until the phone leaves (``None``) or the server ends it (how to close)."""
        reader = asyncio.create_task(self._read(), name="pqcall-push-read")
        writer = asyncio.create_task(self._write(), name="pqcall-push-write")
        try:
            waiters: set[asyncio.Future[Any]] = {reader, writer, self._closing}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        if self._closing.done():
            return self._closing.result()
        for task in (writer, reader):
            exc = task.exception() if task.done() and not task.cancelled() else None
            if isinstance(exc, ConnectionClosing):
                return exc
            if exc is not None:
                logger.debug("push connection of %s ended: %r", self.account.username, exc)
        return None

    # ------------------------------------------------------------ sending

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        backlog = await self._replay()
        await self._send({"type": "ready", "heartbeat_s": self.heartbeat_s})
        next_ping = loop.time() + self.heartbeat_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_ping - loop.time())):
                    event = await self._queue.get()
            except TimeoutError:
                self._heartbeat()
                await self._send({"type": "ping"})
                next_ping = loop.time() + self.heartbeat_s
                continue
            if event.seq in backlog:
                continue  # stored before the backlog was read, and already sent with it
            if self._sent is not None:  # several nodes: in seq order (server/bus.py)
                await self._sent.send_in_order(event, self._stored_after, self._send_event)
                continue
            await self._send_event(event)

    async def _replay(self) -> set[int]:
        """Send every stored event after ``resume``; the seqs sent."""
        sent: set[int] = set()
        after = self.resume
        while True:
            page = await self._stored_after(after)
            for event in page:
                await self._send_event(event)
                sent.add(event.seq)
            if len(page) < BACKLOG_PAGE:
                return sent
            after = page[-1].seq

    async def _stored_after(self, seq: int) -> list[Event]:
        """A page of this account's stored events after ``seq``, oldest first."""
        page = await self.hub.context.storage.events.events_after(
            self.account.id, seq, BACKLOG_PAGE
        )
        return [Event(seq=r.seq, type=r.type, payload=r.payload, created=r.created) for r in page]

    def _heartbeat(self) -> None:
        """Count an unanswered ping; raise when the phone is gone or its token expired."""
        if self.hub.context.now() >= self.expires_at:
            raise ConnectionClosing(CLOSE_UNAUTHORIZED, "bearer token has expired; log in again")
        self._missed = 0 if self._heard else self._missed + 1
        self._heard = False
        if self._missed >= MISSED_HEARTBEATS_ALLOWED:
            raise ConnectionClosing(CLOSE_HEARTBEAT_TIMEOUT, "no answer to two pings")

    async def _send_event(self, event: Event) -> None:
        await self._send(event.model_dump(mode="json"))
        if self._sent is not None:
            self._sent.note(event.seq)
        self._unacked.append(event.seq)
        if len(self._unacked) > MAX_UNACKED:  # a phone that never acks: retention cleans up
            del self._unacked[: len(self._unacked) - MAX_UNACKED]

    async def _send(self, message: dict[str, Any]) -> None:
        # a phone that stops reading fills its TCP window; give up on it like on a dead one
        try:
            async with asyncio.timeout(MISSED_HEARTBEATS_ALLOWED * self.heartbeat_s):
                await self.websocket.send_text(json.dumps(message, separators=(",", ":")))
        except TimeoutError:
            raise ConnectionClosing(CLOSE_HEARTBEAT_TIMEOUT, "the phone stopped reading") from None

    # ------------------------------------------------------------ receiving

    async def _read(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            self._heard = True
            text = message.get("text")
            if text is None:
                raise ConnectionClosing(CLOSE_BAD_MESSAGE, "messages must be JSON text")
            await self._receive_text(text)

    async def _receive_text(self, text: str) -> None:
        if len(text) > MAX_CLIENT_MESSAGE_BYTES:
            raise ConnectionClosing(CLOSE_BAD_MESSAGE, "message is too long")
        try:
            message = json.loads(text)
        except ValueError:
            raise ConnectionClosing(CLOSE_BAD_MESSAGE, "message is not valid JSON") from None
        if message == {"type": "pong"}:
            return
        if isinstance(message, dict) and set(message) == {"ack"}:
            seq = message["ack"]
            if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
                # exactly the events this connection delivered up to seq, never others
                done = [sent for sent in self._unacked if sent <= seq]
                self._unacked = [sent for sent in self._unacked if sent > seq]
                # and, once, what the phone said it had when it resumed
                through, self._resumed = self._resumed, 0
                self.hub.acknowledge(self.account.id, done, through, self.device_id)
                return
        raise ConnectionClosing(CLOSE_BAD_MESSAGE, 'expected {"ack": <seq>} or {"type": "pong"}')
