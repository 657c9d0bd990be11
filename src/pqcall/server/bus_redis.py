"""The Redis bus between server nodes (``pqcall server --bus redis://HOST:6379/0``).

:class:`RedisBus` implements :class:`pqcall.server.bus.Bus` on Redis pub/sub:
every node publishes to and subscribes to one channel per deployment,
``pqcall:<server name>:bus``, each message a JSON envelope ``{"n": node id,
"t": topic, "b": body}``; a node drops its own. Pub/sub is fire-and-forget, as
the bus contract allows: a node cut off from Redis misses what was sent
meanwhile; when its subscription comes back it sends ``hello`` so the others
tell it their presence again (pushed events it missed wait in the database
for the phones' ``resume``).

Shared rate limits (:meth:`RedisBus.rate_check`) are token buckets kept in
Redis hashes (``pqcall:<server name>:rl:<key>``, fields ``tokens`` and ``at``,
expiring once full again), taken and refilled by one Lua script, so every node
draws from the same bucket atomically. The buckets' clock is the caller's
``now`` (the server's unix clock: nodes on several machines need NTP).

Why Redis and not NATS (both run here): publish→receive latency measured the
same (p50 ~150 µs, p99 ~270 µs, 2,000 sequential ~300-byte messages on
loopback, each client in one process); Redis also keeps the shared rate-limit
buckets, which NATS core cannot, so one part does both
(docs/decisions/0920-redis-bus-between-nodes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pqcall.exceptions import ServerError
from pqcall.server.background import BackgroundTask
from pqcall.server.ratelimit import RateDecision, RateLimit

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # to reach Redis at start, and per command
RESUBSCRIBE_PAUSE_S = 1.0  # between attempts while Redis is away

# KEYS[1]: the bucket; ARGV: rate per s, burst, now, cost, peek ("1": take nothing)
# returns the wait in seconds as a string (0 when allowed), Lua numbers lose fractions
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local peek = ARGV[5] == "1"
local state = redis.call("HMGET", KEYS[1], "tokens", "at")
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  if peek then return "0" end
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local wait = 0
if cost - tokens - 1e-9 > 0 then
  wait = (cost - tokens) / rate
end
if not peek then
  if wait == 0 then
    tokens = math.max(0, tokens - cost)
  end
  redis.call("HSET", KEYS[1], "tokens", tostring(tokens), "at", tostring(at))
  redis.call("PEXPIRE", KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
return tostring(wait)
"""


class RedisBus:
    """The bus over one Redis (or a Redis-compatible server such as Valkey).

    Args:
        url: ``redis://[user:password@]HOST:PORT/DB`` (``rediss://`` for TLS).
        namespace: names this deployment's channel and keys (the server name),
            so several deployments may share one Redis.
    """

    def __init__(self, url: str, namespace: str = "pqcall") -> None:
        self.node_id = secrets.token_hex(6)
        self.url = url  # where Redis is
        self.channel = f"pqcall:{namespace}:bus"  # every node's messages
        self.key_prefix = f"pqcall:{namespace}:rl:"  # shared rate-limit buckets
        self._client: aioredis.Redis | None = None  # commands and publishing
        self._pubsub: Any = None  # the subscription (redis.asyncio.client.PubSub)
        self._reader = BackgroundTask("pqcall-bus-redis")  # reads the subscription
        self._handler: Callable[[str, str, dict[str, Any]], None] | None = None
        self._bucket: Any = None  # the registered token-bucket script
        self.sent = 0  # messages published
        self.received = 0  # messages from other nodes

    async def start(self, handler: Callable[[str, str, dict[str, Any]], None]) -> None:
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=30,
        )
        try:
            await client.ping()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(self.channel)
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise ServerError(f"cannot reach the bus at {_display(self.url)}: {exc}") from None
        self._client = client
        self._pubsub = pubsub
        self._handler = handler
        self._bucket = client.register_script(TOKEN_BUCKET_LUA)
        self._reader.start(self._read())
        logger.info("bus: Redis at %s, node %s", _display(self.url), self.node_id)

    async def close(self) -> None:
        await self._reader.stop()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None
        self._handler = None

    async def send(self, topic: str, body: dict[str, Any]) -> None:
        if self._client is None:
            raise RuntimeError("the Redis bus is not running")
        envelope = json.dumps({"n": self.node_id, "t": topic, "b": body}, separators=(",", ":"))
        await self._client.publish(self.channel, envelope)
        self.sent += 1

    async def rate_check(
        self, key: str, limit: RateLimit, now: float, *, peek: bool
    ) -> RateDecision | None:
        if self._bucket is None:
            return None
        cost = 1.0
        waited = await self._bucket(
            keys=[self.key_prefix + key],
            args=[repr(limit.rate_per_s), repr(limit.burst), repr(now), repr(cost), int(peek)],
        )
        wait_s = float(waited)
        if not math.isfinite(wait_s) or wait_s < 0:
            wait_s = limit.refill_s
        return RateDecision(allowed=wait_s == 0.0, retry_after_s=wait_s)

    async def _read(self) -> None:
        failing = False
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("bus: lost Redis (%s); retrying every second", exc)
                failing = True
                await asyncio.sleep(RESUBSCRIBE_PAUSE_S)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe(self.channel)
                continue
            if failing:
                failing = False
                logger.info("bus: Redis is back")
                with contextlib.suppress(Exception):
                    await self.send("hello", {})  # the others tell us their presence again
            if message is None or message.get("type") != "message":
                continue
            self._dispatch(message["data"])

    def _dispatch(self, data: bytes) -> None:
        try:
            envelope = json.loads(data)
            node, topic, body = envelope["n"], envelope["t"], envelope["b"]
        except (ValueError, KeyError, TypeError):
            logger.warning("bus: a message that is not ours on %s", self.channel)
            return
        if node == self.node_id or self._handler is None:
            return
        self.received += 1
        self._handler(str(topic), str(node), body)


def _display(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
