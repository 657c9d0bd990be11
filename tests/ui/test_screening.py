"""The page's block list, "silence strangers" switch and Block button on a ringing call."""

from __future__ import annotations

from pathlib import Path

from tests.harness import run_async
from tests.ui.test_app import call_state, pair, server, until

from ..server.conftest import RunningServer

__all__ = ["server"]  # the fixture, for pytest


@run_async
async def test_block_a_ringing_caller_then_unblock(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, bob):
        state = await bob.state()
        assert state["screening"] == {"waiting": [], "blocked": [], "silence_strangers": False}
        assert (await alice.post("/call", {"name": "bob"})).status_code == 200
        await until(bob, lambda s: call_state(s) == "incoming")
        response = await bob.post("/block", {"name": "alice"})  # the ringing screen's Block
        assert response.status_code == 200, response.text
        assert response.json()["screening"]["blocked"] == ["alice"]
        ended = await until(alice, lambda s: s["call"] is None)
        assert ended["last_call"]["result"] == "rejected"  # a decline, nothing more
        assert bob.controller.phone is not None
        assert bob.controller.phone.screening.is_blocked("alice")

        response = await bob.post("/unblock", {"name": "alice"})
        assert response.json()["screening"]["blocked"] == []
        response = await bob.post("/silence-strangers", {"on": True})
        assert response.json()["screening"]["silence_strangers"] is True
        assert bob.controller.phone.screening.silence_strangers
        assert (await bob.post("/block", {"name": "not a name"})).status_code == 400
        assert (await bob.post("/call/answer", {"call_id": "00" * 16})).status_code == 409
