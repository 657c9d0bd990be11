"""Issue 20 finding 11: username enumeration and public metrics.

``POST /auth/challenge`` answered 404 for a name without an account, so anyone
could list who uses a server; ``GET /metrics`` told anyone how many phones are
connected and how many calls are ringing or active. Now an unknown name gets a
challenge like any other and its login fails as a wrong signature does, and
``/metrics`` answers loopback only unless ``PQCALL_METRICS_ALLOW`` says more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import ServerError
from pqcall.signaling.messages import b64decode
from tests.harness import run_async
from tests.server.conftest import migrated_sqlite

from .serverapp import LOOPBACK, in_process_server, log_in, register

__all__ = ["migrated_sqlite"]  # the fixture, for pytest

STRANGER = "198.51.100.66"


@run_async
async def test_an_unknown_name_is_answered_like_a_known_one(
    migrated_sqlite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    verified: list[bytes] = []
    verify = IdentityPublicKey.verify

    def counting_verify(self: IdentityPublicKey, *args: object, **kwargs: object) -> None:
        verified.append(self.encode())
        verify(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(IdentityPublicKey, "verify", counting_verify)
    async with in_process_server(migrated_sqlite, tmp_path, rate_limit_scale=0.0) as server:
        client = await server.client(STRANGER)
        await register(client, "alice")
        verified.clear()
        answers = {}
        for name in ("alice", "nobody"):
            # the stranger asks for a challenge and signs it with a key of its own
            answer = await log_in(client, IdentityPrivateKey.generate(), name)
            answers[name] = (answer.status_code, answer.json())
        assert (
            answers["alice"]
            == answers["nobody"]
            == (401, {"error": "login signature does not verify"})
        )
        assert len(verified) == 2  # the same work: one signature check each
        # the challenges themselves have the same shape
        shapes = []
        for name in ("alice", "nobody"):
            issued = await client.post("/auth/challenge", json={"username": name})
            assert issued.status_code == 200
            body = issued.json()
            shapes.append((sorted(body), len(b64decode(body["challenge"])), body["expires"]))
        assert shapes[0] == shapes[1]
        # a used or unknown challenge fails alike too
        for name in ("alice", "nobody"):
            replay = await client.post(
                "/auth/login",
                json={"username": name, "challenge": "A" * 43, "signature": "AAAA"},
            )
            assert (replay.status_code, replay.json()) == (
                401,
                {"error": "challenge is unknown; request a new one"},
            )


@run_async
async def test_metrics_answer_loopback_only(migrated_sqlite: Path, tmp_path: Path):
    async with in_process_server(migrated_sqlite, tmp_path) as server:
        outsider = await server.client(STRANGER)
        refused = await outsider.get("/metrics")
        assert refused.status_code == 404
        assert refused.json() == {"error": "no such endpoint: GET /metrics"}
        for address in (LOOPBACK, "::1", "::ffff:127.0.0.1"):
            local = await server.client(address)
            answer = await local.get("/metrics")
            assert answer.status_code == 200, address
            assert "pqcall_connected_phones" in answer.text


@run_async
async def test_metrics_can_be_opened_to_a_monitoring_network(
    migrated_sqlite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PQCALL_METRICS_ALLOW", "10.0.0.0/8, 2001:db8::/32")
    async with in_process_server(migrated_sqlite, tmp_path) as server:
        for address, status in (
            ("10.1.2.3", 200),
            ("2001:db8::7", 200),
            (LOOPBACK, 404),  # the list replaces loopback; name it to keep it
            (STRANGER, 404),
        ):
            client = await server.client(address)
            assert (await client.get("/metrics")).status_code == status, address


def test_a_bad_metrics_network_is_one_line(migrated_sqlite: Path, tmp_path: Path, monkeypatch):
    from pqcall.server.app import create_app
    from tests.server.conftest import make_settings

    monkeypatch.setenv("PQCALL_METRICS_ALLOW", "10.0.0.0/8,monitoring")
    with pytest.raises(ServerError) as caught:
        create_app(make_settings("sqlite+aiosqlite:///unused", tmp_path))
    assert str(caught.value) == (
        "PQCALL_METRICS_ALLOW='10.0.0.0/8,monitoring': not a list of networks"
    )


@run_async
async def test_login_still_works_for_the_owner(migrated_sqlite: Path, tmp_path: Path):
    async with in_process_server(migrated_sqlite, tmp_path) as server:
        client = await server.client(STRANGER)
        alice = await register(client, "alice")
        assert (await log_in(client, alice, "alice")).status_code == 200
