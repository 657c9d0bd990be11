"""The browser UI's API end to end: a real server, two UI processes' worth of controllers.

Each UI (alice, bob) is a Controller with its web app under a real uvicorn on
a free port of the test's own event loop (as ``pqcall ui`` runs it), reached
with httpx and a WebSocket; audio comes from tones and goes to WAV files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from pqcall.cli.ui import bound_socket, make_server
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.server.components import RelayComponent
from pqcall.ui.app import TOKEN_HEADER, create_app
from pqcall.ui.controller import Controller
from tests.harness import run_async, scaled

from ..server.conftest import RunningServer, make_settings, run_server

PASSPHRASE = "correct horse battery staple"
STATE_TIMEOUT_S = scaled(10.0)  # for the state to show something
TOKEN = "test-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A signaling server with its media relay, on SQLite."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(replace(settings, relay_port=0), components=(RelayComponent(),)) as running:
        yield running


@dataclass
class Ui:
    """One running UI: its controller, an HTTP client with the token, its URL."""

    controller: Controller
    client: httpx.AsyncClient
    base_url: str

    async def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(f"/api{path}", json=body or {})

    async def state(self) -> dict[str, Any]:
        response = await self.client.get("/api/state")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def ws_url(self, token: str = TOKEN) -> str:
        return self.base_url.replace("http://", "ws://") + f"/api/ws?token={token}"


@contextlib.asynccontextmanager
async def running_ui(tmp_path: Path, name: str) -> AsyncIterator[Ui]:
    controller = Controller(
        Home(tmp_path / name),
        media=MediaOptions(audio_in="tone:440", audio_out=str(tmp_path / f"{name}.wav")),
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        list_devices=lambda: (["mic"], ["speaker"]),
    )
    await controller.start()
    server = make_server(create_app(controller, TOKEN))
    with bound_socket(0) as sock:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            assert not serving.done(), "the UI server did not start"
            await asyncio.sleep(0.01)
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = httpx.AsyncClient(base_url=base_url, headers={TOKEN_HEADER: TOKEN}, timeout=30)
        try:
            yield Ui(controller, client, base_url)
        finally:
            await client.aclose()
            await controller.close()
            server.should_exit = True
            await serving


async def registered(ui: Ui, name: str, server: RunningServer) -> dict[str, Any]:
    response = await ui.post(
        "/register", {"name": name, "server_url": server.base_url, "passphrase": PASSPHRASE}
    )
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def until(ui: Ui, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Follow the WebSocket until its state satisfies ``predicate``."""
    async with websockets.connect(ui.ws_url()) as ws, asyncio.timeout(STATE_TIMEOUT_S):
        while True:
            message = json.loads(await ws.recv())
            assert message["type"] == "state"
            if predicate(message["state"]):
                state: dict[str, Any] = message["state"]
                return state


def call_state(state: dict[str, Any]) -> str | None:
    return state["call"]["state"] if state["call"] else None


def contact(state: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(entry for entry in state["contacts"] if entry["name"] == name)
    return found


async def alice_calls_and_bob_answers(alice: Ui, bob: Ui) -> None:
    assert (await alice.post("/call", {"name": "bob"})).status_code == 200
    await until(bob, lambda s: call_state(s) == "incoming")
    assert (await bob.post("/call/accept")).status_code == 200


@contextlib.asynccontextmanager
async def pair(server: RunningServer, tmp_path: Path) -> AsyncIterator[tuple[Ui, Ui]]:
    async with running_ui(tmp_path, "alice") as alice, running_ui(tmp_path, "bob") as bob:
        await registered(alice, "alice", server)
        await registered(bob, "bob", server)
        for ui in (alice, bob):
            assert ui.controller.phone is not None
            await ui.controller.phone.wait_connected(STATE_TIMEOUT_S)
        yield alice, bob


# ---------------------------------------------------------------- account


@run_async
async def test_setup_register_then_unlock(server: RunningServer, tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        state = await alice.state()
        assert state["phase"] == "setup" and state["account"] is None
        assert state["devices"]["inputs"] == ["mic"]
        state = await registered(alice, "Alice", server)
        assert state["phase"] == "ready"
        assert state["account"]["username"] == "alice"
        assert state["account"]["server_url"] == server.base_url
        assert len(state["account"]["fingerprint"]) == 39
        # another home cannot take the name
        async with running_ui(tmp_path, "mallory") as mallory:
            response = await mallory.post(
                "/register",
                {"name": "alice", "server_url": server.base_url, "passphrase": PASSPHRASE},
            )
            assert response.status_code == 409
            assert "taken" in response.json()["error"]
    # the next run finds the account locked
    async with running_ui(tmp_path, "alice") as alice:
        assert (await alice.state())["phase"] == "locked"
        response = await alice.post("/unlock", {"passphrase": "not it"})
        assert response.status_code == 401
        assert response.json() == {"error": "wrong passphrase"}
        response = await alice.post("/unlock", {"passphrase": PASSPHRASE})
        assert response.status_code == 200 and response.json()["phase"] == "ready"


@run_async
async def test_unreachable_server(tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        response = await alice.post(
            "/register", {"name": "alice", "server_url": "127.0.0.1:9", "passphrase": PASSPHRASE}
        )
        assert response.status_code == 502
        assert response.json()["error"]
        assert (await alice.state())["phase"] == "setup"


@run_async
async def test_token_is_required(tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        async with httpx.AsyncClient(base_url=alice.base_url) as anonymous:
            response = await anonymous.get("/api/state")
            assert response.status_code == 401
            assert "token" in response.json()["error"]
            response = await anonymous.get("/api/state", headers={TOKEN_HEADER: "wrong"})
            assert response.status_code == 401
            response = await anonymous.post("/api/unlock", json={"passphrase": PASSPHRASE})
            assert response.status_code == 401
            # the page itself loads without one
            response = await anonymous.get("/")
            assert response.status_code == 200 and "pqcall" in response.text
            assert response.headers["x-frame-options"] == "DENY"
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(alice.ws_url("wrong")):
                pass
        response = await alice.post("/unlock", {})
        assert response.status_code == 400 and "passphrase" in response.json()["error"]
        # a page on another origin that rebinds its DNS name to 127.0.0.1 names its own host
        async with httpx.AsyncClient(base_url=alice.base_url) as rebinding:
            response = await rebinding.get(
                "/api/state", headers={TOKEN_HEADER: TOKEN, "Host": "evil.example"}
            )
            assert response.status_code == 400


# ---------------------------------------------------------------- calls


@run_async
async def test_call_accept_mute_and_sas_mismatch(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, bob):
        before = (await alice.state())["version"]
        response = await alice.post("/contacts", {"name": "bob"})
        assert response.status_code == 200, response.text
        assert contact(response.json(), "bob")["verified"] is False
        # every change raises the version: the page keeps the newest of socket and answers
        assert response.json()["version"] > before

        response = await alice.post("/call", {"name": "bob"})
        assert response.status_code == 200, response.text
        assert call_state(response.json()) == "outgoing"
        ringing = await until(bob, lambda s: call_state(s) == "incoming")
        assert ringing["call"]["peer"] == "alice"
        assert ringing["call"]["direction"] == "incoming"

        assert (await bob.post("/call/accept")).status_code == 200
        alice_active = await until(alice, lambda s: call_state(s) == "active")
        bob_active = await until(bob, lambda s: call_state(s) == "active")
        sas = alice_active["call"]["sas"]
        assert sas and sas == bob_active["call"]["sas"]
        assert alice_active["call"]["path"] == "direct"
        with_stats = await until(
            bob, lambda s: bool(s["call"]["stats"] and s["call"]["stats"]["packets_received"] > 10)
        )
        stats = with_stats["call"]["stats"]
        assert set(stats) >= {"rtt_ms", "loss_percent", "jitter_ms", "mos", "tx_kbps"}

        response = await alice.post("/call/mute", {"muted": True})
        assert response.json()["call"]["muted"] is True
        assert alice.controller.phone is not None
        call = alice.controller.phone.current_call
        assert call is not None and call.is_muted

        response = await bob.post("/call/sas", {"matches": False})
        assert response.status_code == 200, response.text
        state = response.json()
        assert state["call"] is None
        assert state["last_call"]["result"] == "ended"
        assert contact(state, "alice")["suspicious"] is True
        assert state["warnings"][0]["peer"] == "alice"
        ended = await until(alice, lambda s: s["call"] is None)
        assert ended["last_call"]["result"] == "ended"
        assert ended["history"][0]["call_id"] == ringing["call"]["call_id"]
        assert (await alice.post("/call/hangup")).status_code == 409


@run_async
async def test_sas_match_verifies_and_reject(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, bob):
        await alice_calls_and_bob_answers(alice, bob)
        await until(alice, lambda s: call_state(s) == "active")
        response = await alice.post("/call/sas", {"matches": True})
        state = response.json()
        assert state["call"]["sas_confirmed"] is True
        assert contact(state, "bob")["verified"] is True
        await alice.post("/call/hangup")
        await until(bob, lambda s: s["call"] is None)

        # bob declines the next one; both see it in history
        assert (await alice.post("/call", {"name": "bob"})).status_code == 200
        await until(bob, lambda s: call_state(s) == "incoming")
        response = await bob.post("/call/reject")
        assert response.status_code == 200
        assert response.json()["history"][0]["result"] == "rejected"
        state = await until(alice, lambda s: s["call"] is None)
        assert state["last_call"]["result"] == "rejected"


@run_async
async def test_call_errors(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, _bob):
        response = await alice.post("/call", {"name": "nobody"})
        assert response.status_code == 404
        assert response.json()["error"] == "no user named nobody on this server"
        response = await alice.post("/call", {"name": "alice"})
        assert response.status_code == 409
        assert response.json()["error"] == "you cannot call yourself"
        assert (await alice.post("/call/accept")).status_code == 409


@run_async
async def test_key_change_is_refused_with_a_warning(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, _bob):
        # alice pinned another key for bob earlier: the server's key differs now
        assert alice.controller.phone is not None
        alice.controller.phone.contacts.check("bob", IdentityPrivateKey.generate().public_key())
        response = await alice.post("/call", {"name": "bob"})
        assert response.status_code == 409
        body = response.json()
        assert body["key_changed"] is True and "not the one you saved" in body["error"]
        state = await alice.state()
        assert state["call"] is None
        assert state["warnings"][0]["peer"] == "bob"
        assert contact(state, "bob")["key_changed"] is True

        response = await alice.client.get("/api/contacts/bob/safety-number")
        numbers = response.json()
        assert numbers["changed_safety_number"] != numbers["safety_number"]
        assert len(numbers["safety_number"].replace(" ", "")) == 60
        assert (await alice.post("/contacts/bob/verify")).status_code == 409

        response = await alice.post("/contacts/bob/accept-key")
        assert response.status_code == 200
        assert contact(response.json(), "bob")["key_changed"] is False
        response = await alice.post("/contacts/bob/verify")
        assert contact(response.json(), "bob")["verified"] is True
        assert (await alice.post("/contacts/carol/verify")).status_code == 404


# ---------------------------------------------------------------- devices and files


@run_async
async def test_devices_for_the_next_call(server: RunningServer, tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        response = await alice.post("/devices", {"audio_in": "silence", "audio_out": "null"})
        assert response.status_code == 200
        assert response.json()["devices"]["audio_in"] == "silence"
        assert alice.controller.media.audio_out == "null"
        response = await alice.post("/devices", {"audio_in": str(tmp_path / "missing.wav")})
        assert response.status_code == 400


def wav_samples(path: Path) -> np.ndarray[Any, np.dtype[np.float64]]:
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        rate = wav.getframerate()
    assert rate == 48_000
    return np.frombuffer(frames, dtype=np.int16).astype(np.float64)


def dominant_hz(samples: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum)) * 48_000 / len(samples)


@run_async
async def test_devices_change_during_a_call(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, bob):
        await alice_calls_and_bob_answers(alice, bob)
        await until(bob, lambda s: bool(s["call"] and s["call"]["stats"]))
        await asyncio.sleep(0.5)  # bob hears alice's 440 Hz for a while

        speaker = tmp_path / "headset.wav"
        response = await alice.post("/devices", {"audio_in": "tone:880", "audio_out": str(speaker)})
        assert response.status_code == 200, response.text
        assert response.json()["devices"]["audio_in"] == "tone:880"
        call = alice.controller.phone.current_call if alice.controller.phone else None
        assert call is not None and call.state == "active"  # the call went on
        await asyncio.sleep(0.8)
        bad = await alice.post("/devices", {"audio_in": str(tmp_path / "missing.wav")})
        assert bad.status_code == 400
        await alice.post("/call/hangup")
        await until(bob, lambda s: s["call"] is None)

        heard = wav_samples(tmp_path / "bob.wav")  # bob's sink, closed with the call
        assert dominant_hz(heard[48_000 // 10 : 48_000 // 2]) == pytest.approx(440, abs=5)
        assert dominant_hz(heard[-24_000:]) == pytest.approx(880, abs=5)
        # alice's first speaker was closed as a whole file; the new one got bob's 440 Hz
        assert len(wav_samples(tmp_path / "alice.wav")) > 48_000 // 4
        assert dominant_hz(wav_samples(speaker)[-24_000:]) == pytest.approx(440, abs=5)


@run_async
async def test_send_and_receive_a_file(server: RunningServer, tmp_path: Path) -> None:
    async with pair(server, tmp_path) as (alice, bob):
        content = os.urandom(50_000)
        response = await alice.client.post(
            "/api/files/send",
            data={"to": "bob"},
            files={"file": ("notes.bin", content, "application/octet-stream")},
        )
        assert response.status_code == 202, response.text
        transfer_id = response.json()["id"]
        sent = await until(
            alice,
            lambda s: any(t["id"] == transfer_id and t["state"] == "done" for t in s["transfers"]),
        )
        assert sent["transfers"][0]["name"] == "notes.bin"
        waiting = await until(bob, lambda s: bool(s["inbox"]))
        file_id = waiting["inbox"][0]["file_id"]
        assert waiting["inbox"][0]["sender"] == "alice"

        response = await bob.post(f"/files/{file_id}/receive")
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "notes.bin"
        async with httpx.AsyncClient(base_url=bob.base_url) as browser:
            download = await browser.get(f"/api/files/{file_id}/download?token={TOKEN}")
            assert download.status_code == 200 and download.content == content
            again = await browser.get(f"/api/files/{file_id}/download?token={TOKEN}")
            assert again.status_code == 404
        assert not list((tmp_path / "alice" / "ui-uploads").iterdir())
