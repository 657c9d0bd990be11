"""Storage on SQLite and PostgreSQL: migrations, restarts, and every repository method."""

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from pqcall.exceptions import ServerError
from pqcall.server.storage import (
    CallExists,
    ChallengeUse,
    Storage,
    UsernameTaken,
)
from pqcall.server.storage.database import (
    HEAD_REVISION,
    create_engine,
    display_url,
    migrate,
    parse_url,
    run_migrations,
)
from pqcall.server.storage.models import metadata
from pqcall.signaling.callstate import Action, Party, State, outcome
from tests.harness import run_async

from .conftest import PG_ENV, reset_postgresql

NOW = 1_750_000_000.123456
TABLES = {"accounts", "key_bundles", "tokens", "challenges", "calls", "events", "stored_files"}
TABLES |= {"relay_allocations"}  # server/relay_store.py
TABLES |= {"devices", "event_acks", "link_requests"}  # issue 22: accounts with devices
CANDIDATES = [{"host": "192.168.1.20", "port": 40000}, {"host": "fe80::1", "port": 40001}]


async def _open(db_url):
    return await Storage.open(db_url)


async def _two_accounts(storage):
    alice = await storage.accounts.create_account("alice", b"alice-id", b"alice-bundle", 1, NOW)
    bob = await storage.accounts.create_account("bob", b"bob-id", b"bob-bundle", 1, NOW + 1)
    return alice, bob


# ---------------------------------------------------------------- migrations


@run_async
async def test_migrations_create_the_schema_and_are_idempotent(db_url):
    await run_migrations(db_url)
    await run_migrations(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).all()
        assert TABLES | {"alembic_version"} == names
        assert version == [(HEAD_REVISION,)]
    finally:
        await engine.dispose()


def _diff(connection):
    context = MigrationContext.configure(connection)
    return compare_metadata(context, metadata)


@run_async
async def test_migrations_match_the_models(db_url):
    await run_migrations(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == []


@run_async
async def test_migrate_through_an_engine(db_url):
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        await migrate(engine)
    finally:
        await engine.dispose()


@run_async
async def test_unreachable_database_is_one_line():
    with pytest.raises(ServerError) as exc:
        await run_migrations("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    message = str(exc.value)
    assert message.startswith("cannot open database postgresql+asyncpg://nobody@127.0.0.1:1/none: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("nope", "database URL 'nope' is not a valid URL", id="not-a-url"),
        pytest.param(
            "mysql://x/y",
            "database URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            " (got mysql://)",
            id="mysql",
        ),
        pytest.param(
            "sqlite:///x.db",
            "database URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            " (got sqlite://)",
            id="sync-sqlite",
        ),
        pytest.param(
            "sqlite+aiosqlite://",
            "SQLite database URL needs a file path (sqlite+aiosqlite:///path.db)",
            id="no-path",
        ),
    ],
)
def test_bad_urls(url, message):
    with pytest.raises(ServerError) as exc:
        parse_url(url)
    assert str(exc.value) == message


def test_display_url_hides_the_password():
    shown = display_url("postgresql+asyncpg://user:secret@db/pqcall")
    assert "secret" not in shown
    assert shown == "postgresql+asyncpg://user:***@db/pqcall"


# ---------------------------------------------------------------- restart


@run_async
async def test_data_survives_restart(db_url):
    storage = await _open(db_url)
    alice, bob = await _two_accounts(storage)
    await storage.logins.create_token(b"h" * 32, alice.id, NOW + 3600)
    await storage.calls.create_call(
        "a" * 32, alice.id, bob.id, b"offer", CANDIDATES, "1.2.3.4:5", NOW
    )
    seq = await storage.events.add_event(bob.id, "call.incoming", {"call_id": "a" * 32}, NOW)
    await storage.close()

    storage = await _open(db_url)
    try:
        assert await storage.accounts.get_account_by_name("alice") == alice
        assert (await storage.accounts.current_bundle(bob.id)).bundle == b"bob-bundle"
        assert await storage.logins.account_for_token(b"h" * 32) == (alice, NOW + 3600)
        call = await storage.calls.get_call("a" * 32)
        assert call.state is State.RINGING
        assert call.caller_candidates == CANDIDATES
        events = await storage.events.events_after(bob.id, 0)
        assert [(e.seq, e.type, e.payload) for e in events] == [
            (seq, "call.incoming", {"call_id": "a" * 32})
        ]
    finally:
        await storage.close()


# ---------------------------------------------------------------- accounts and bundles


@run_async
async def test_accounts(db_url):
    storage = await _open(db_url)
    try:
        alice, _ = await _two_accounts(storage)
        assert alice.username == "alice"
        assert alice.identity == b"alice-id"
        assert alice.created == NOW  # exact float round trip on both databases
        assert alice.last_seen is None
        assert await storage.accounts.get_account(alice.id) == alice
        assert await storage.accounts.get_account(10_000) is None
        assert await storage.accounts.get_account_by_name("carol") is None
        found = await storage.accounts.get_accounts_by_names(["bob", "carol", "alice", "bob"])
        assert [a.username for a in found] == ["alice", "bob"]
        assert await storage.accounts.get_accounts_by_names([]) == []
        with pytest.raises(UsernameTaken):
            await storage.accounts.create_account("alice", b"other", b"bundle", 1, NOW)
        await storage.accounts.touch_last_seen(alice.id, NOW + 5)
        assert (await storage.accounts.get_account(alice.id)).last_seen == NOW + 5
    finally:
        await storage.close()


@run_async
async def test_bundles(db_url):
    storage = await _open(db_url)
    try:
        alice, _ = await _two_accounts(storage)
        first = await storage.accounts.current_bundle(alice.id)
        assert (first.bundle, first.bundle_created, first.received) == (b"alice-bundle", 1, NOW)
        await storage.accounts.put_bundle(alice.id, b"second", 2, NOW + 10)
        second = await storage.accounts.current_bundle(alice.id)
        assert (second.bundle, second.bundle_created, second.received) == (b"second", 2, NOW + 10)
        assert await storage.accounts.current_bundle(10_000) is None
    finally:
        await storage.close()


# ---------------------------------------------------------------- challenges and tokens


@run_async
async def test_challenges(db_url):
    storage = await _open(db_url)
    try:
        await storage.logins.create_challenge("alice", b"c" * 32, NOW + 60)
        assert await storage.logins.use_challenge("bob", b"c" * 32, NOW) is ChallengeUse.UNKNOWN
        assert await storage.logins.use_challenge("alice", b"d" * 32, NOW) is ChallengeUse.UNKNOWN
        assert (
            await storage.logins.use_challenge("alice", b"c" * 32, NOW + 60) is ChallengeUse.EXPIRED
        )
        assert await storage.logins.use_challenge("alice", b"c" * 32, NOW) is ChallengeUse.OK
        assert await storage.logins.use_challenge("alice", b"c" * 32, NOW) is ChallengeUse.USED
    finally:
        await storage.close()


@run_async
async def test_challenge_used_once_under_concurrency(db_url):
    storage = await _open(db_url)
    try:
        await storage.logins.create_challenge("alice", b"c" * 32, NOW + 60)
        results = await asyncio.gather(
            *(storage.logins.use_challenge("alice", b"c" * 32, NOW) for _ in range(8))
        )
        assert results.count(ChallengeUse.OK) == 1
        assert results.count(ChallengeUse.USED) == 7
    finally:
        await storage.close()


@run_async
async def test_tokens_and_purge(db_url):
    storage = await _open(db_url)
    try:
        alice, _ = await _two_accounts(storage)
        await storage.logins.create_token(b"a" * 32, alice.id, NOW + 10)
        await storage.logins.create_token(b"b" * 32, alice.id, NOW + 100)
        await storage.logins.create_challenge("alice", b"c" * 32, NOW + 10)
        assert await storage.logins.account_for_token(b"z" * 32) is None
        assert await storage.logins.purge_expired(NOW + 50) == 2
        assert await storage.logins.account_for_token(b"a" * 32) is None
        assert await storage.logins.account_for_token(b"b" * 32) == (alice, NOW + 100)
        assert await storage.logins.delete_token(b"b" * 32)
        assert not await storage.logins.delete_token(b"b" * 32)
    finally:
        await storage.close()


# ---------------------------------------------------------------- calls


@run_async
async def test_call_lifecycle(db_url):
    storage = await _open(db_url)
    try:
        alice, bob = await _two_accounts(storage)
        call_id = "0123456789abcdef" * 2
        call = await storage.calls.create_call(
            call_id, alice.id, bob.id, b"offer", CANDIDATES, None, NOW
        )
        assert (call.caller, call.callee, call.state, call.offer) == (
            "alice",
            "bob",
            State.RINGING,
            b"offer",
        )
        assert (call.answer, call.confirm, call.answered, call.ended, call.ended_by) == (None,) * 5
        assert call.callee_candidates == []
        with pytest.raises(CallExists):
            await storage.calls.create_call(call_id, alice.id, bob.id, b"offer", [], None, NOW)

        assert [c.call_id for c in await storage.calls.list_pending_calls_for(bob.id)] == [call_id]
        assert await storage.calls.list_pending_calls_for(alice.id) == []

        accepted = outcome(call.state, Action.ACCEPT, Party.CALLEE)
        active = await storage.calls.update_call_state(
            call_id,
            expected_state=State.RINGING,
            new_state=accepted.state,
            answer=b"answer",
            callee_candidates=CANDIDATES[:1],
            callee_seen_address="10.0.0.2:5000",
            answered_at=NOW + 2,
        )
        assert active.state is State.ACTIVE
        assert (active.answer, active.answered, active.callee_seen_address) == (
            b"answer",
            NOW + 2,
            "10.0.0.2:5000",
        )
        assert active.callee_candidates == CANDIDATES[:1]
        assert active.offer == b"offer"  # untouched
        assert await storage.calls.list_pending_calls_for(bob.id) == []

        # a second accept loses the compare-and-set
        assert (
            await storage.calls.update_call_state(
                call_id, expected_state=State.RINGING, new_state=State.ACTIVE
            )
            is None
        )
        assert (
            await storage.calls.update_call_state(
                "f" * 32, expected_state=State.RINGING, new_state=State.ACTIVE
            )
            is None
        )

        ended = await storage.calls.update_call_state(
            call_id,
            expected_state=State.ACTIVE,
            new_state=State.ENDED,
            reason="hangup",
            ended_by="callee",
            ended_at=NOW + 60,
        )
        assert (ended.state, ended.reason, ended.ended_by, ended.ended) == (
            State.ENDED,
            "hangup",
            "callee",
            NOW + 60,
        )
        assert await storage.calls.get_call(call_id) == ended
        assert await storage.calls.get_call("e" * 32) is None
    finally:
        await storage.close()


@run_async
async def test_call_queries(db_url):
    storage = await _open(db_url)
    try:
        alice, bob = await _two_accounts(storage)
        carol = await storage.accounts.create_account("carol", b"c", b"c", 1, NOW)
        ids = [f"{i:032x}" for i in range(4)]
        await storage.calls.create_call(ids[0], alice.id, bob.id, b"o", [], None, NOW)
        await storage.calls.create_call(ids[1], bob.id, alice.id, b"o", [], None, NOW + 10)
        await storage.calls.create_call(ids[2], carol.id, bob.id, b"o", [], None, NOW + 20)
        await storage.calls.create_call(ids[3], alice.id, carol.id, b"o", [], None, NOW + 30)
        await storage.calls.update_call_state(
            ids[3], expected_state=State.RINGING, new_state=State.ACTIVE
        )

        ringing = await storage.calls.list_calls_in_state(State.RINGING)
        assert [c.call_id for c in ringing] == ids[:3]
        old = await storage.calls.list_calls_in_state(State.RINGING, created_before=NOW + 15)
        assert [c.call_id for c in old] == ids[:2]
        assert [
            c.call_id for c in await storage.calls.list_calls_in_state(State.RINGING, limit=1)
        ] == ids[:1]

        history = await storage.calls.list_calls_for(alice.id)
        assert [c.call_id for c in history] == [ids[3], ids[1], ids[0]]
        active = await storage.calls.list_calls_for(alice.id, states=[State.ACTIVE])
        assert [c.call_id for c in active] == [ids[3]]
        assert [c.call_id for c in await storage.calls.list_pending_calls_for(bob.id)] == [
            ids[0],
            ids[2],
        ]

        counts = await storage.calls.count_calls_by_state()
        assert counts[State.RINGING] == 3
        assert counts[State.ACTIVE] == 1
        assert counts[State.FAILED] == 0
    finally:
        await storage.close()


# ---------------------------------------------------------------- events


@run_async
async def test_events(db_url):
    storage = await _open(db_url)
    try:
        alice, bob = await _two_accounts(storage)
        seqs = [
            await storage.events.add_event(
                alice.id, "call.incoming", {"n": i, "nested": {"ok": True}}, NOW + i
            )
            for i in range(5)
        ]
        other = await storage.events.add_event(bob.id, "presence", {"online": ["alice"]}, NOW)
        assert seqs == sorted(seqs)
        assert other > seqs[-1]

        everything = await storage.events.events_after(alice.id, 0)
        assert [e.seq for e in everything] == seqs
        assert everything[2].payload == {"n": 2, "nested": {"ok": True}}
        assert everything[2].created == NOW + 2
        assert everything[2].type == "call.incoming"
        assert [e.seq for e in await storage.events.events_after(alice.id, seqs[1])] == seqs[2:]
        assert [e.seq for e in await storage.events.events_after(alice.id, 0, limit=2)] == seqs[:2]

        assert await storage.events.delete_events_through(alice.id, seqs[2]) == 3
        assert [e.seq for e in await storage.events.events_after(alice.id, 0)] == seqs[3:]
        assert await storage.events.delete_events_before(NOW + 4) == 2  # alice's 4th and bob's
        assert [e.seq for e in await storage.events.events_after(alice.id, 0)] == seqs[4:]
        assert await storage.events.events_after(bob.id, 0) == []
    finally:
        await storage.close()


@run_async
async def test_ping(db_url):
    storage = await _open(db_url)
    try:
        assert await storage.ping()
    finally:
        await storage.close()


def test_concurrent_migrations_on_postgresql(pg_session_url):
    # PostgreSQL only: SQLite is one file for one server process (a lock file refuses a second)
    if pg_session_url is None:
        pytest.skip(f"{PG_ENV} not set")
    reset_postgresql(pg_session_url)

    async def migrate_at_once() -> None:
        await asyncio.gather(*(run_migrations(pg_session_url) for _ in range(3)))
        await run_migrations(pg_session_url)

    asyncio.run(migrate_at_once())


def test_head_revision_is_the_newest_migration():
    from alembic.script import ScriptDirectory

    from pqcall.server.storage.database import HEAD_REVISION, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD_REVISION]


@run_async
async def test_current_revision(db_url):
    from pqcall.server.storage.database import current_revision

    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) is None
        await migrate(engine)
        assert await current_revision(engine) == HEAD_REVISION
    finally:
        await engine.dispose()
