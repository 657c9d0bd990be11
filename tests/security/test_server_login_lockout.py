"""Issue 20 finding 1: anyone could lock any user out of login.

The login limit counted attempts per *username* (5 a minute), junk bodies that
failed validation used it up, and the 429s cost the attacker nothing: five junk
``POST /auth/login {"username": "alice"}`` a minute and alice's real, signed
login got "too many requests" (and once her token expired her phone could not
come back online). A login cannot be guessed, so failures are now limited per
client *address*: the attacker's address slows down, alice's login from hers
succeeds every time.
"""

from __future__ import annotations

from pathlib import Path

from pqcall.signaling.messages import b64encode
from tests.harness import run_async
from tests.server.conftest import migrated_sqlite

from .serverapp import in_process_server, log_in, register

__all__ = ["migrated_sqlite"]  # the fixture, for pytest

ATTACKER = "198.51.100.66"
ALICE = "203.0.113.10"
JUNK = [
    {"username": "alice"},  # 422: fails validation
    {"username": "alice", "challenge": b64encode(bytes(32)), "signature": "AAAA"},  # 401
    {"username": "alice", "challenge": "!!", "signature": "AAAA"},  # 422: bad base64
]


@run_async
async def test_junk_logins_for_alice_never_lock_her_out(migrated_sqlite: Path, tmp_path: Path):
    async with in_process_server(migrated_sqlite, tmp_path) as server:
        attacker = await server.client(ATTACKER)
        alice_phone = await server.client(ALICE)
        alice = await register(alice_phone, "alice")
        statuses: list[int] = []
        # a minute and a half of attack at 4 junk logins a second, alice logging in every 15 s
        for second in range(90):
            for attempt in range(4):
                answer = await attacker.post("/auth/login", json=JUNK[attempt % len(JUNK)])
                statuses.append(answer.status_code)
            if second % 15 == 0:
                logged_in = await log_in(alice_phone, alice, "alice")
                assert logged_in.status_code == 200, (second, logged_in.text)
            server.clock.advance(1.0)
        # the attacker's address is what slowed down: 5 failures, then 429 while it lasts
        assert set(statuses[:5]) <= {401, 422}
        assert statuses.count(429) > 300
        # ... and the same name from another address is not affected either
        bystander = await server.client("192.0.2.1")
        assert (await bystander.post("/auth/login", json=JUNK[1])).status_code == 401


@run_async
async def test_a_flooding_address_waits_at_most_12_s_per_attempt(
    migrated_sqlite: Path, tmp_path: Path
):
    async with in_process_server(migrated_sqlite, tmp_path) as server:
        attacker = await server.client(ATTACKER)
        for _ in range(5):
            assert (await attacker.post("/auth/login", json=JUNK[0])).status_code == 422
        refused = await attacker.post("/auth/login", json=JUNK[0])
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "12"
        assert refused.json() == {"error": "too many requests, retry in 12 s"}
        server.clock.advance(12)
        assert (await attacker.post("/auth/login", json=JUNK[0])).status_code == 422


@run_async
async def test_good_logins_cost_nothing(migrated_sqlite: Path, tmp_path: Path):
    async with in_process_server(migrated_sqlite, tmp_path) as server:
        phone = await server.client(ALICE)
        alice = await register(phone, "alice")
        for _ in range(10):  # twice the failure burst, at once
            assert (await log_in(phone, alice, "alice")).status_code == 200
