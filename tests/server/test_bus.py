"""Two server nodes on one database and one Redis bus (issue 18 part 2): what crosses nodes.

Each test runs two real apps under uvicorn (``run_server``) on one database
(a SQLite file, or PostgreSQL where the test asks for ``db_url``), both with
``bus_url`` set to a real Redis, and phones on real WebSockets: alice talks
to node A, bob to node B. Redis is ``PQCALL_TEST_REDIS_URL`` (``.ci/run`` sets
it and starts Redis; there a missing Redis fails the tests), else
``redis://127.0.0.1:6379/0`` if it answers, else the tests are skipped with
the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.server.bus import InProcessBus, NodeLink, SweepLeader, bus_namespace
from pqcall.server.ratelimit import PER_ACCOUNT_LIMIT, PER_IP_LIMIT, RateLimit
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_ENDED,
    EVENT_CALL_INCOMING,
    EVENT_FILE_WAITING,
    EVENT_PRESENCE,
    Event,
    b64decode,
    b64encode,
)
from tests.harness import free_port

from .conftest import FakeClock, RunningServer, make_settings, run_server
from .pushclient import EVENT_TIMEOUT_S, EventSocket, accept, hangup, initiate, register_and_login

REDIS_ENV = "PQCALL_TEST_REDIS_URL"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def redis_required() -> bool:
    return bool(os.environ.get(REDIS_ENV)) or os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis that answers, or skip (fail where it is required)."""
    url = os.environ.get(REDIS_ENV) or DEFAULT_REDIS
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if redis_required():
            pytest.fail(f"Redis at {url} does not answer ({exc}); it is required here")
        pytest.skip(f"no Redis at {url} ({exc}); set {REDIS_ENV}")
    return url


@pytest.fixture
def two_nodes(
    server_db_url: str, tmp_path: Path, redis_url: str
) -> Callable[..., contextlib.AbstractContextManager[tuple[RunningServer, RunningServer]]]:
    """``with two_nodes(**overrides) as (a, b):`` two nodes on one database and the bus."""

    @contextlib.contextmanager
    def start(
        *, one_data_dir: bool = False, **overrides: Any
    ) -> Iterator[tuple[RunningServer, RunningServer]]:
        clock = FakeClock()
        options = {"bus_url": redis_url, **overrides}
        settings_a = make_settings(server_db_url, tmp_path / "data-a", **options)
        data_b = tmp_path / ("data-a" if one_data_dir else "data-b")
        settings_b = make_settings(server_db_url, data_b, **options)
        with run_server(settings_a, clock) as a, run_server(settings_b, clock) as b:
            wait_for(lambda: _link(a).received > 0 and _link(b).received > 0, "nodes to meet")
            yield a, b

    return start


def _link(server: RunningServer) -> NodeLink:
    link = server.app.state.context.extras["bus"]
    assert isinstance(link, NodeLink)
    return link


def wait_for(condition: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- push across nodes


def test_a_call_between_phones_on_two_nodes_is_pushed_live(two_nodes, db_url):
    with two_nodes() as (a, b):
        _, alice_token = register_and_login(a, "alice")
        _, bob_token = register_and_login(b, "bob")
        alice_events = EventSocket(a, alice_token)
        bob_events = EventSocket(b, bob_token)
        with a.client(alice_token) as alice, b.client(bob_token) as bob:
            call_id, answer = initiate(alice, "bob")  # on A; bob's socket is on B
            sent = time.monotonic()
            assert answer.status_code == 201, answer.text
            incoming = bob_events.expect(EVENT_CALL_INCOMING)
            assert incoming["payload"]["call_id"] == call_id
            assert time.monotonic() - sent < 1.0, "pushed live, not on a reconnect"
            assert accept(bob, call_id).status_code == 200  # on B; alice's socket is on A
            assert alice_events.expect(EVENT_CALL_ACCEPTED)["payload"]["call_id"] == call_id
            bob_events.expect(EVENT_CALL_ACCEPTED)  # the echo to bob's own phones
            assert hangup(alice, call_id).status_code == 200
            ended = bob_events.expect(EVENT_CALL_ENDED, ignore=(EVENT_PRESENCE,))
            assert ended["payload"]["call_id"] == call_id
            alice_events.expect(EVENT_CALL_ENDED, ignore=(EVENT_PRESENCE,))
            # each event reached its phone once: nothing more comes
            bob_events.assert_quiet()
        alice_events.close()
        bob_events.close()


def test_presence_is_seen_across_nodes(two_nodes):
    with two_nodes() as (a, b):
        _, alice_token = register_and_login(a, "alice")
        _, bob_token = register_and_login(b, "bob")
        with a.client(alice_token) as alice, b.client(bob_token) as bob:
            # a call between them lets each see the other's presence
            call_id, _ = initiate(alice, "bob")
            assert accept(bob, call_id).status_code == 200
            assert hangup(alice, call_id).status_code == 200
            assert (
                alice.get("/presence", params={"names": "bob"}).json()["users"][0]["online"]
                is False
            )
            alice_events = EventSocket(a, alice_token)
            bob_events = EventSocket(b, bob_token)  # bob comes online on B
            came = alice_events.expect(
                EVENT_PRESENCE, ignore=(EVENT_CALL_ENDED, EVENT_CALL_ACCEPTED)
            )
            assert (came["payload"]["username"], came["payload"]["online"]) == ("bob", True)
            wait_for(lambda: _link(a).node_id in b.app.state.context.presence.nodes(), "A known")
            seen = alice.get("/presence", params={"names": "bob"}).json()["users"][0]
            assert seen["online"] is True  # asked on A, bob is on B
            bob_events.close()  # bob leaves B
            went = alice_events.expect(EVENT_PRESENCE, ignore=(EVENT_CALL_ENDED,))
            assert (went["payload"]["username"], went["payload"]["online"]) == ("bob", False)
            assert (
                alice.get("/presence", params={"names": "bob"}).json()["users"][0]["online"]
                is False
            )
            assert bob.get("/presence", params={"names": "alice"}).status_code == 200
        alice_events.close()


def test_a_file_sent_through_one_node_is_announced_and_served_by_the_other(two_nodes):
    with two_nodes(one_data_dir=True) as (a, b):  # the nodes share their files directory
        _, alice_token = register_and_login(a, "alice")
        _, bob_token = register_and_login(b, "bob")
        bob_events = EventSocket(b, bob_token)
        data = os.urandom(100_000)
        with a.client(alice_token) as alice, b.client(bob_token) as bob:
            created = alice.post("/files", json={"recipient": "bob", "size": len(data)})
            assert created.status_code == 201, created.text
            file_id = created.json()["file_id"]
            stored = alice.put(
                f"/files/{file_id}/content",
                params={"offset": 0},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert stored.status_code == 200, stored.text
            waiting = bob_events.expect(EVENT_FILE_WAITING)  # pushed on B, sent through A
            assert waiting["payload"]["file_id"] == file_id
            download = bob.get(f"/files/{file_id}/content")  # served by B
            assert download.status_code == 200 and download.content == data
        bob_events.close()


# ---------------------------------------------------------------- revocation and caches


def test_logout_on_one_node_closes_the_socket_on_the_other_at_once(two_nodes):
    with two_nodes() as (a, b):
        _, bob_token = register_and_login(a, "bob")
        with b.client(bob_token) as on_b:
            assert on_b.get("/calls/history").status_code == 200  # B caches the token
        bob_events = EventSocket(b, bob_token)
        with a.client(bob_token) as on_a:
            logged_out = on_a.post("/auth/logout")
            assert logged_out.status_code == 204
        started = time.monotonic()
        code, reason = bob_events.wait_closed(timeout=2.0)
        assert (code, reason) == (4401, "logged out")
        assert time.monotonic() - started < 2.0
        with b.client(bob_token) as on_b:  # B's token cache was dropped: refused at once
            assert on_b.get("/calls/history").status_code == 401


def test_a_key_change_on_one_node_drops_the_name_cache_of_the_other(two_nodes, server_db_url):
    with two_nodes() as (a, b):
        _, alice_token = register_and_login(a, "alice")
        register_and_login(b, "bob")
        with a.client(alice_token) as alice:
            before = alice.get("/users/bob").json()["identity"]  # A caches bob by name
            # bob's identity changes in the database and node B drops its cache (as a
            # change made on B does: server/bus.py wraps forget_cached)
            replacement = b64encode(IdentityPrivateKey.generate().public_key().encode())
            bob_id = asyncio.run(_swap_identity(server_db_url, "bob", replacement))
            context_b = b.app.state.context
            context_b.extras["events"].loop.call_soon_threadsafe(
                context_b.storage.accounts.forget_cached, bob_id
            )
            wait_for(
                lambda: alice.get("/users/bob").json()["identity"] == replacement,
                "A to serve bob's new identity",
                timeout=2.0,  # the token cache's 10 s and the name cache's never are longer
            )
            assert before != replacement


async def _swap_identity(db_url: str, username: str, identity_b64: str) -> int:
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import create_async_engine

    from pqcall.server.storage.models import accounts

    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(
                update(accounts)
                .where(accounts.c.username == username)
                .values(identity=b64decode(identity_b64))
                .returning(accounts.c.id)
            )
            return int(result.scalar_one())
    finally:
        await engine.dispose()


# ---------------------------------------------------------------- shared limits, one sweeper


def test_failed_logins_are_counted_across_nodes(two_nodes):
    with two_nodes(rate_limit_scale=1.0) as (a, b):
        register_and_login(a, "carol")
        with a.client() as on_a:
            for _ in range(5):  # the address's five failures, all on A
                answer = on_a.post(
                    "/auth/login",
                    json={"username": "carol", "challenge": "AAAA", "signature": "AAAA"},
                )
                assert answer.status_code in (401, 422), answer.text
        with b.client() as on_b:  # B refuses the address too: the bucket is shared
            refused = on_b.post(
                "/auth/login", json={"username": "carol", "challenge": "AAAA", "signature": "AAAA"}
            )
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 12


def test_request_limits_are_counted_across_nodes(two_nodes):
    """An account's requests and an address's are one bucket for every node, not one each."""
    with two_nodes(rate_limit_scale=1.0) as (a, b):  # the clock stands still: no refill
        _, token = register_and_login(a, "erin")
        burst = int(PER_ACCOUNT_LIMIT.burst)
        with a.client(token) as on_a, b.client(token) as on_b:
            for index in range(burst):  # half on A, half on B: the account's whole burst
                answer = (on_a, on_b)[index % 2].get("/presence", params={"names": "erin"})
                assert answer.status_code == 200, (index, answer.text)
            for node in (on_a, on_b):  # per node, each would still have half its burst
                refused = node.get("/presence", params={"names": "erin"})
                assert refused.status_code == 429, refused.text
                assert int(refused.headers["Retry-After"]) >= 1
        with a.client() as on_a, b.client() as on_b:  # the address: no token
            answered = 0
            while answered <= PER_IP_LIMIT.burst:
                if (on_a, on_b)[answered % 2].get("/health").status_code == 429:
                    break
                answered += 1
        # registration, login and the requests above took from the same address bucket
        assert answered < PER_IP_LIMIT.burst - burst, answered


def test_one_node_at_a_time_leads_the_sweepers(db_url):
    async def main() -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        engines = [create_async_engine(db_url), create_async_engine(db_url)]
        first, second = (SweepLeader(engine) for engine in engines)
        try:
            if not db_url.startswith("postgresql"):  # one node per SQLite file: it leads
                assert await first.leads() is True and await second.leads() is True
                return
            assert await first.leads() is True
            assert await second.leads() is False
            assert await first.leads() is True  # still ours
            await first.close()
            assert await second.leads() is True  # taken over at its next try
            assert await first.leads() is False
        finally:
            await first.close()
            await second.close()
            for engine in engines:
                await engine.dispose()

    asyncio.run(main())


# ---------------------------------------------------------------- the buses themselves


def test_redis_bus_delivers_to_the_others_only_and_shares_buckets(redis_url):
    from pqcall.server.bus_redis import RedisBus

    async def main() -> None:
        namespace = f"test-{os.getpid()}-{time.monotonic_ns()}"
        buses = [RedisBus(redis_url, namespace) for _ in range(3)]
        heard: list[list[tuple[str, str, dict[str, Any]]]] = [[], [], []]
        for bus, inbox in zip(buses, heard, strict=True):
            await bus.start(functools.partial(_note, inbox))
        try:
            for n in range(20):
                await buses[0].send("event", {"n": n})
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while len(heard[1]) < 20 or len(heard[2]) < 20:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert heard[0] == []  # never back to the sender
            for inbox in heard[1:]:
                assert [body["n"] for _, _, body in inbox] == list(range(20))  # in order
                assert {node for _, node, _ in inbox} == {buses[0].node_id}
            limit = RateLimit(rate_per_s=0.01, burst=3.0)
            now = time.time()
            decisions = [
                await buses[n % 3].rate_check("k", limit, now, peek=False) for n in range(4)
            ]
            assert [d.allowed for d in decisions if d is not None] == [True, True, True, False]
            last = decisions[-1]
            assert last is not None and 90 < last.retry_after_s <= 100
            peeked = await buses[1].rate_check("k", limit, now, peek=True)
            assert peeked is not None and not peeked.allowed
            fresh = await buses[1].rate_check("other", limit, now, peek=True)
            assert fresh is not None and fresh.allowed
        finally:
            for bus in buses:
                await bus.close()

    asyncio.run(main())


def _note(inbox: list[tuple[str, str, dict[str, Any]]], topic: str, node: str, body: Any) -> None:
    inbox.append((topic, node, body))


def test_in_process_bus_alone_sends_to_nobody():
    async def main() -> None:
        network: list[InProcessBus] = []
        one, two = InProcessBus(network), InProcessBus(network)
        got: list[str] = []
        await one.start(lambda topic, node, body: got.append(f"one:{topic}"))
        await two.start(lambda topic, node, body: got.append(f"two:{topic}"))
        await one.send("hello", {})
        await asyncio.sleep(0)
        assert got == ["two:hello"]
        alone = InProcessBus()
        await alone.start(lambda topic, node, body: got.append("alone"))
        await alone.send("hello", {})
        await asyncio.sleep(0)
        assert got == ["two:hello"]
        assert await alone.rate_check("k", RateLimit(1.0, 1.0), 0.0, peek=False) is None

    asyncio.run(main())


def test_deployments_on_one_redis_are_kept_apart(tmp_path):
    one = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", tmp_path)
    two = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", tmp_path)
    assert bus_namespace(one) != bus_namespace(two)
    assert bus_namespace(one) == bus_namespace(one)


# ---------------------------------------------------------------- Redis going away


class PrivateRedis:
    """A redis-server of one test's own, on one port however often it restarts."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.directory = directory  # its working directory (nothing is saved)
        self.url = f"redis://127.0.0.1:{free_port()}/0"
        self.process: subprocess.Popen[bytes] | None = None  # while running

    def start(self) -> None:
        import redis

        port = self.url.rsplit(":", 1)[1].split("/")[0]
        self.process = subprocess.Popen(
            [self.binary, "--port", port, "--bind", "127.0.0.1", "--save", ""],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    if not Path(server.binary).exists():
        if redis_required():
            pytest.fail("redis-server is required here")
        pytest.skip("no redis-server to start")
    server.start()
    yield server
    server.stop()


def test_nodes_go_on_alone_while_redis_is_away_and_meet_again(
    private_redis, server_db_url, tmp_path
):
    clock = FakeClock()
    settings_a = make_settings(server_db_url, tmp_path / "data-a", bus_url=private_redis.url)
    settings_b = make_settings(server_db_url, tmp_path / "data-b", bus_url=private_redis.url)
    with run_server(settings_a, clock) as a, run_server(settings_b, clock) as b:
        wait_for(lambda: _link(a).received > 0 and _link(b).received > 0, "nodes to meet")
        _, alice_token = register_and_login(a, "alice")
        _, bob_token = register_and_login(b, "bob")
        bob_on_a = EventSocket(a, bob_token)
        bob_on_b = EventSocket(b, bob_token)
        with a.client(alice_token) as alice:
            private_redis.stop()  # Redis goes away: A still serves the sockets it holds
            call_id, answer = initiate(alice, "bob")
            assert answer.status_code == 201, answer.text
            assert bob_on_a.expect(EVENT_CALL_INCOMING)["payload"]["call_id"] == call_id
            bob_on_b.assert_quiet(0.5)  # nothing crosses without the bus
            assert hangup(alice, call_id).status_code == 200
            private_redis.start()  # back on the same address: the nodes meet again
            heard = _link(b).received
            wait_for(lambda: _link(b).received > heard, "B to hear A again", timeout=10.0)
            call_id, answer = initiate(alice, "bob")
            assert answer.status_code == 201, answer.text
            event = bob_on_b.next_event()
            while (
                event["payload"].get("call_id") != call_id or event["type"] != EVENT_CALL_INCOMING
            ):
                event = bob_on_b.next_event()  # what came before is not for this call
        bob_on_a.close()
        bob_on_b.close()


# ---------------------------------------------------------------- order across nodes


def test_events_that_cross_the_bus_out_of_order_reach_the_phone_in_order(two_nodes, db_url):
    with two_nodes() as (a, b):
        _, bob_token = register_and_login(b, "bob")
        bob_events = EventSocket(b, bob_token)
        context_b = b.app.state.context
        hub_b = context_b.extras["events"]

        async def store_two() -> list[Event]:
            # two events for bob, as two other nodes commit them (seq order = commit order)
            account = await context_b.storage.accounts.get_account_by_name("bob")
            stored = []
            for n in (1, 2):
                now = context_b.now()
                seq = await context_b.storage.events.add_event(account.id, "test.n", {"n": n}, now)
                stored.append(Event(seq=seq, type="test.n", payload={"n": n}, created=now))
            return stored

        first, second = asyncio.run_coroutine_threadsafe(store_two(), hub_b.loop).result(
            EVENT_TIMEOUT_S
        )
        bob_id = (
            asyncio.run_coroutine_threadsafe(
                context_b.storage.accounts.get_account_by_name("bob"), hub_b.loop
            )
            .result(EVENT_TIMEOUT_S)
            .id
        )
        # the second arrives over the bus before the first
        hub_b.loop.call_soon_threadsafe(hub_b.deliver_remote, bob_id, second)
        got = [bob_events.next_event(), bob_events.next_event()]
        assert [event["seq"] for event in got] == [first.seq, second.seq]
        assert [event["payload"]["n"] for event in got] == [1, 2]
        hub_b.loop.call_soon_threadsafe(hub_b.deliver_remote, bob_id, first)  # late: not again
        bob_events.assert_quiet()
        bob_events.close()
        assert a is not b
