"""The bus between server nodes: pushed events, presence, revocations, cache drops, leadership.

Several ``pqcall server`` processes (nodes) may share one PostgreSQL; the
database is the truth for everything stored. What one node must tell the
others *now* goes over a :class:`Bus` (``pqcall server --bus redis://...``,
:mod:`pqcall.server.bus_redis`); without ``--bus`` the :class:`InProcessBus`
stands in and a single node works as before, with nothing else to install.

Contract of a :class:`Bus`: :meth:`Bus.send` delivers a JSON object under a
topic to every *other* node that is subscribed now (never back to the sender),
at most once, in the order this node sent them (no order between senders);
a message sent while a node is cut off from the bus is lost to it. So every
message here is a hint next to the database: an event is stored before it is
sent (a phone that missed it gets it on ``resume``), a revocation is deleted
from storage before it is sent (and token lookups are trusted 10 s at most).

:class:`NodeLink` (a :class:`~pqcall.server.context.Component`, started before
the event hub, ``context.extras["bus"]``) owns the bus of this process and
carries, by topic:

- ``event``: every event this node committed (``{"account", "seq", "type",
  "payload", "created"}``); the receiving node's hub pushes it to that
  account's sockets there (:meth:`pqcall.server.push.EventHub.deliver_remote`);
- ``presence``: this node's first socket of an account opened or its last
  closed; ``snapshot``: every account online here, each
  :data:`SNAPSHOT_INTERVAL_S` and in answer to ``hello`` (a node starting);
  ``bye``: this node stops. A node not heard for :data:`NODE_TIMEOUT_S` is
  forgotten (its accounts count as offline);
- ``revoke``: token hashes or an account logged out here; the others drop
  them from their token cache and close the sockets opened with them;
- ``account``: an account's keys changed here; the others drop it from their
  name and token caches (issue 22 changes identities: a stale identity on
  another node would be served to callers).

It also holds the :class:`SweepLeader` (``context.extras["sweep-leader"]``):
on PostgreSQL one node at a time, the holder of a session advisory lock, runs
the sweepers (:func:`leads_sweeps`); on SQLite (one node per file) every node
does. And :meth:`NodeLink.rate_check` asks the bus for a shared token bucket
(Redis) for limits that must hold across nodes (failed logins); ``None`` when
the bus has none, and the caller uses its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pqcall.server.auth import Revocation, revocations
from pqcall.server.background import BackgroundTask
from pqcall.server.context import AppContext
from pqcall.server.ratelimit import RateDecision, RateLimit
from pqcall.server.settings import ServerSettings
from pqcall.signaling.messages import Event

logger = logging.getLogger(__name__)

BUS_EXTRA = "bus"  # context.extras key of the NodeLink
LEADER_EXTRA = "sweep-leader"  # context.extras key of the SweepLeader
SNAPSHOT_INTERVAL_S = 5.0  # how often a node tells the others every account online on it
NODE_TIMEOUT_S = 3 * SNAPSHOT_INTERVAL_S  # a node unheard this long is taken for gone
ACCOUNT_REPEAT_S = 1.0  # an account-cache drop is told again this much later (after commit)
BUCKETS_RETRY_S = 5.0  # the shared rate-limit buckets are not asked this long after a failure
MAX_SENT_REMEMBERED = 1000  # seqs a push connection remembers having sent (SentEvents)
OUTBOX_SIZE = 100_000  # messages waiting for the bus; beyond, new ones are dropped (logged)
SWEEP_LOCK_KEY = 0x7071_6361_6C6C_5357  # "pqcallSW": the advisory lock of the sweep leader

Handler = Callable[[str, dict[str, Any]], None]
"""Called on the event loop with (sending node's id, message body); must not block."""

TOPICS = ("event", "presence", "snapshot", "hello", "bye", "revoke", "account")


class Bus(Protocol):
    """Carries JSON objects between the nodes of one deployment (see the module's contract)."""

    node_id: str
    """This node's id, unique per process start."""

    async def start(self, handler: Callable[[str, str, dict[str, Any]], None]) -> None:
        """Connect and subscribe; ``handler(topic, node, body)`` gets every later message.

        Raises:
            ServerError: the bus cannot be reached (the server does not start).
        """

    async def close(self) -> None:
        """Unsubscribe and disconnect."""

    async def send(self, topic: str, body: dict[str, Any]) -> None:
        """Deliver ``body`` under ``topic`` to every other node subscribed now.

        Raises:
            Exception: the bus is unreachable (the message is lost; the caller logs it).
        """

    async def rate_check(
        self, key: str, limit: RateLimit, now: float, *, peek: bool
    ) -> RateDecision | None:
        """A token bucket shared by every node (``None``: this bus has none)."""


class InProcessBus:
    """The bus of a deployment of one node, or of several apps in one process (tests).

    Nodes built with the same ``network`` list hear each other; with none, there
    is nobody to hear and :meth:`send` does nothing.
    """

    def __init__(self, network: list[InProcessBus] | None = None) -> None:
        self.node_id = secrets.token_hex(6)
        self._network = network if network is not None else []  # every bus of the deployment
        self._handler: Callable[[str, str, dict[str, Any]], None] | None = None

    async def start(self, handler: Callable[[str, str, dict[str, Any]], None]) -> None:
        self._handler = handler
        self._network.append(self)

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self._network.remove(self)
        self._handler = None

    async def send(self, topic: str, body: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        for other in list(self._network):
            if other is not self and other._handler is not None:
                loop.call_soon(other._handler, topic, self.node_id, body)

    async def rate_check(
        self, key: str, limit: RateLimit, now: float, *, peek: bool
    ) -> RateDecision | None:
        return None


def open_bus(url: str, namespace: str = "pqcall") -> Bus:
    """The bus of ``--bus URL`` (``redis://`` or ``rediss://``), or the in-process one for ``""``.

    ``namespace`` (the server name) keeps deployments sharing one Redis apart.

    Raises:
        ValueError: a scheme this server does not know.
    """
    if not url:
        return InProcessBus()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from pqcall.server.bus_redis import RedisBus  # loads redis-py only when asked for

        return RedisBus(url, namespace)
    raise ValueError(f"--bus must be a redis:// URL, not {url.split(':', 1)[0]}:")


class NodeLink:
    """This node's side of the bus; see the module docstring for what it carries.

    Args:
        bus: the bus to use (default: :func:`open_bus` of ``settings.bus_url`` at start).
    """

    def __init__(self, bus: Bus | None = None) -> None:
        self._bus = bus  # opened at start when None
        self._context: AppContext | None = None  # set by start
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None  # sent in order
        self._sender = BackgroundTask("pqcall-bus-send")  # drains the outbox
        self._snapshots = BackgroundTask("pqcall-bus-presence")  # snapshots and node expiry
        self._heard: dict[str, float] = {}  # node id -> monotonic time it was last heard
        self._replaying: Revocation | None = None  # a remote revocation being told locally
        self._failing = False  # the last send failed (log one line per change)
        self._overflowing = False  # the outbox was full at the last send (one line per change)
        self._buckets_back_at = 0.0  # monotonic time to ask the shared buckets again
        self.leader: SweepLeader | None = None  # set by start
        self.received = 0  # messages received from other nodes (tests, metrics)

    @property
    def node_id(self) -> str:
        """This node's id on the bus."""
        if self._bus is None:
            raise RuntimeError("the node link is not running")
        return self._bus.node_id

    # ------------------------------------------------------------ component

    async def start(self, context: AppContext) -> None:
        if self._bus is None:
            self._bus = open_bus(context.settings.bus_url, bus_namespace(context.settings))
        self._context = context
        self._outbox = asyncio.Queue(OUTBOX_SIZE)
        context.extras[BUS_EXTRA] = self
        self.leader = SweepLeader(context.storage.engine)
        context.extras[LEADER_EXTRA] = self.leader
        await self._bus.start(self._receive)
        self._sender.start(self._send_loop())
        context.presence.on_change = self._presence_changed
        revocations(context).subscribe(self._revoked_here)
        self._watch_account_cache(context)
        self.send("hello", {})
        self._snapshots.start(self._snapshot_loop(context))

    async def stop(self) -> None:
        context = self._context
        if context is not None:
            context.presence.on_change = None
            revocations(context).unsubscribe(self._revoked_here)
            with contextlib.suppress(AttributeError, RuntimeError):
                del context.storage.accounts.forget_cached  # the class's method again
        await self._snapshots.stop()
        if self._bus is not None:
            self.send("bye", {})
            with contextlib.suppress(TimeoutError):  # what is queued goes out, if it can
                async with asyncio.timeout(2.0):
                    while self._outbox is not None and not self._outbox.empty():
                        await asyncio.sleep(0.01)
        await self._sender.stop()
        if self._bus is not None:
            await self._bus.close()
        if self.leader is not None:
            await self.leader.close()
        if context is not None:
            context.extras.pop(BUS_EXTRA, None)
            context.extras.pop(LEADER_EXTRA, None)
        self._context = None

    # ------------------------------------------------------------ sending

    def send(self, topic: str, body: dict[str, Any]) -> None:
        """Queue a message for the other nodes (sent in order by one task; never blocks)."""
        if self._outbox is None:
            return
        try:
            self._outbox.put_nowait((topic, body))
        except asyncio.QueueFull:
            if not self._overflowing:
                logger.warning("bus outbox full: messages to the other nodes are dropped")
            self._overflowing = True
            return
        self._overflowing = False

    def event_committed(self, account_id: int, event: Event) -> None:
        """Tell the other nodes about an event this node stored (their sockets get it)."""
        self.send(
            "event",
            {
                "account": account_id,
                "seq": event.seq,
                "type": event.type,
                "payload": event.payload,
                "created": event.created,
            },
        )

    async def _send_loop(self) -> None:
        assert self._outbox is not None and self._bus is not None
        while True:
            topic, body = await self._outbox.get()
            try:
                await self._bus.send(topic, body)
            except Exception as exc:
                if not self._failing:
                    logger.warning("the bus is unreachable, messages are lost: %s", exc)
                self._failing = True
                continue
            if self._failing:
                logger.info("the bus is reachable again")
                self._failing = False
                self.send("hello", {})  # the others may have missed our changes

    async def rate_check(
        self, key: str, limit: RateLimit, now: float, *, peek: bool
    ) -> RateDecision | None:
        """A shared token bucket's decision, or ``None`` (no shared store, or it failed).

        After a failure the shared buckets are not asked for
        :data:`BUCKETS_RETRY_S` (a Redis that hangs would hold every login for
        its timeout); the caller uses its own meanwhile.
        """
        if self._bus is None or time.monotonic() < self._buckets_back_at:
            return None
        try:
            decision = await self._bus.rate_check(key, limit, now, peek=peek)
        except Exception as exc:  # the limit falls back to this node's own buckets
            if not self._buckets_back_at:
                logger.warning("shared rate limits unavailable, using this node's: %s", exc)
            self._buckets_back_at = time.monotonic() + BUCKETS_RETRY_S
            return None
        if self._buckets_back_at:
            logger.info("shared rate limits are back")
            self._buckets_back_at = 0.0
        return decision

    # ------------------------------------------------------------ receiving

    def _receive(self, topic: str, node: str, body: dict[str, Any]) -> None:
        context = self._context
        if context is None or (self._bus is not None and node == self._bus.node_id):
            return
        self.received += 1
        if node not in self._heard and topic != "bye":
            self._heard[node] = time.monotonic()
            if topic != "hello":  # a node we did not know: learn what it holds
                self.send("hello", {})
        self._heard[node] = time.monotonic()
        try:
            self._handle(context, topic, node, body)
        except Exception:
            logger.exception("bus message %r from node %s could not be handled", topic, node)

    def _handle(self, context: AppContext, topic: str, node: str, body: dict[str, Any]) -> None:
        presence = context.presence
        if topic == "event":
            from pqcall.server.push import EVENTS_EXTRA, EventHub

            hub = context.extras.get(EVENTS_EXTRA)
            if isinstance(hub, EventHub):
                event = Event(
                    seq=body["seq"],
                    type=body["type"],
                    payload=body["payload"],
                    created=body["created"],
                )
                hub.deliver_remote(int(body["account"]), event)
        elif topic == "presence":
            presence.remote_change(node, int(body["account"]), bool(body["online"]))
        elif topic == "snapshot":
            presence.set_remote(node, (int(a) for a in body["online"]))
        elif topic == "hello":
            self._send_snapshot(context)
        elif topic == "bye":
            presence.forget_node(node)
            self._heard.pop(node, None)
        elif topic == "revoke":
            self._revoked_there(context, body)
        elif topic == "account":
            account_id = int(body["account"])
            accounts = context.storage.accounts
            type(accounts).forget_cached(accounts, account_id)  # not the wrapper: no echo
            context.storage.logins.token_cache.forget_account(account_id)

    def _revoked_there(self, context: AppContext, body: dict[str, Any]) -> None:
        hashes = frozenset(bytes.fromhex(h) for h in body.get("tokens", ()))
        account_id = body.get("account")
        cache = context.storage.logins.token_cache
        for token_hash in hashes:
            cache.forget(token_hash)
        if account_id is not None:
            cache.forget_account(int(account_id))
        revocation = Revocation(
            token_hashes=hashes, account_id=None if account_id is None else int(account_id)
        )
        self._replaying = revocation
        try:
            revocations(context).publish(revocation)  # this node's sockets close
        finally:
            self._replaying = None

    # ------------------------------------------------------------ this node's changes

    def _presence_changed(self, account_id: int, online: bool) -> None:
        self.send("presence", {"account": account_id, "online": online})

    def _revoked_here(self, revocation: Revocation) -> None:
        if revocation is self._replaying:
            return  # it came from another node
        self.send(
            "revoke",
            {
                "tokens": sorted(h.hex() for h in revocation.token_hashes),
                "account": revocation.account_id,
            },
        )

    def _watch_account_cache(self, context: AppContext) -> None:
        """Tell the other nodes whenever this node drops an account from its name cache.

        ``AccountStore.forget_cached`` is what every change of an account's keys
        or identity calls (bundle rotation; recovery and release, issue 22), often
        just before its transaction commits: the other nodes are told at once and
        again :data:`ACCOUNT_REPEAT_S` later, so a lookup there that read the old
        row before the commit is not trusted past the repeat.
        """
        accounts = context.storage.accounts
        forget = type(accounts).forget_cached
        loop = asyncio.get_running_loop()

        def forget_and_tell(account_id: int) -> None:
            forget(accounts, account_id)
            body = {"account": account_id}
            self.send("account", body)
            loop.call_later(ACCOUNT_REPEAT_S, self.send, "account", body)

        accounts.forget_cached = forget_and_tell  # type: ignore[method-assign]

    def _send_snapshot(self, context: AppContext) -> None:
        self.send("snapshot", {"online": sorted(context.presence.online_here())})

    async def _snapshot_loop(self, context: AppContext) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            self._send_snapshot(context)
            now = time.monotonic()
            for node, heard in list(self._heard.items()):
                if now - heard > NODE_TIMEOUT_S:
                    logger.info("node %s is silent: its phones count as offline", node)
                    context.presence.forget_node(node)
                    del self._heard[node]


def bus_namespace(settings: ServerSettings) -> str:
    """What names one deployment on a shared bus: the server name and the database's name.

    Nodes of one deployment share both; two deployments (or two test runs) on
    one Redis differ in one of them, so they never hear each other.
    """
    database = make_url(settings.db_url).database or ""
    return f"{settings.server_name}:{database}"


def node_link(context: AppContext) -> NodeLink | None:
    """The running :class:`NodeLink` of this process, if any."""
    link = context.extras.get(BUS_EXTRA)
    return link if isinstance(link, NodeLink) else None


class SweepLeader:
    """Whether this node runs the sweepers: on PostgreSQL, the holder of a session advisory lock.

    The lock lives on one connection of the pool kept for the purpose; it goes
    when the connection does (the node dies, the database drops it), and another
    node takes it at its next try. On SQLite every node leads (one per file).
    Sweeps are compare-and-sets anyway: two leaders for a moment harm nothing.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine  # the storage's
        self._connection: AsyncConnection | None = None  # holds the lock once taken
        self._held = False  # whether the lock is ours
        self._lock = asyncio.Lock()  # one check at a time (several sweepers ask)

    @property
    def is_postgresql(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    async def leads(self) -> bool:
        """Whether this node should sweep now (takes the lock if free; checks it is still ours)."""
        if not self.is_postgresql:
            return True
        async with self._lock:
            try:
                if self._connection is None:
                    self._connection = await self._engine.connect()
                if self._held:
                    await self._connection.execute(text("SELECT 1"))  # still connected: still ours
                else:
                    result = await self._connection.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": SWEEP_LOCK_KEY}
                    )
                    self._held = bool(result.scalar())
                    if self._held:
                        logger.info("this node runs the sweepers now")
                await self._connection.commit()  # the session lock outlives the transaction
            except Exception:
                await self._drop(broken=True)
                raise
            return self._held

    async def close(self) -> None:
        """Give the lock up (another node takes it at its next try)."""
        async with self._lock:
            await self._drop(broken=False)

    async def _drop(self, *, broken: bool) -> None:
        connection, self._connection = self._connection, None
        held, self._held = self._held, False
        if connection is None:
            return
        try:
            if held and not broken:
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": SWEEP_LOCK_KEY}
                )
                await connection.commit()
                await connection.close()  # back to the pool, the lock released
                return
        except Exception:
            pass
        with contextlib.suppress(Exception):
            await connection.invalidate()  # closed for good: the database drops its locks
        with contextlib.suppress(Exception):
            await connection.close()


async def leads_sweeps(context: AppContext) -> bool:
    """Whether this node runs the sweepers now (no leader known: yes)."""
    leader = context.extras.get(LEADER_EXTRA)
    if not isinstance(leader, SweepLeader):
        return True
    return await leader.leads()


class SentEvents:
    """With several nodes: what one push connection sent, so it sends in ``seq`` order.

    One account's events commit in ``seq`` order (0900), so once an event is
    known every earlier one of its account is stored. Events of two nodes may
    cross the bus out of order; :meth:`send_in_order` first sends, from
    storage, those between the last one sent and the one that arrived. One
    already sent is not sent again; the arrived event goes out even if another
    phone's ack deleted it from storage before the read.
    """

    def __init__(self, resume: int) -> None:
        self.high = resume  # the highest seq sent (or had by the phone)
        self._recent: OrderedDict[int, None] = OrderedDict()  # the last seqs sent

    def note(self, seq: int) -> None:
        """``seq`` was sent."""
        self.high = max(self.high, seq)
        self._recent[seq] = None
        if len(self._recent) > MAX_SENT_REMEMBERED:
            self._recent.popitem(last=False)

    async def send_in_order(
        self,
        event: Event,
        stored_after: Callable[[int], Awaitable[list[Event]]],
        send: Callable[[Event], Awaitable[None]],
    ) -> None:
        """Send the stored events up to ``event``, then ``event``, skipping those sent.

        ``stored_after(seq)``: a page (oldest first) of the account's stored
        events after ``seq``, short at the end; ``send`` sends one and calls :meth:`note`.
        """
        if event.seq in self._recent:
            return
        while self.high < event.seq:
            page = await stored_after(self.high)
            for stored in page:
                if stored.seq not in self._recent:
                    await send(stored)
            if not page or page[-1].seq >= event.seq or self.high < page[-1].seq:
                break
        if event.seq not in self._recent:
            await send(event)
