"""The account panel's routes (ui/linked_devices.py) over HTTP: a real server, real devices.

Alice registers in a UI (its controller behind the real web app, as in
test_app.py); a second device joins her account with the client API
(:func:`~pqcall.client.account_setup.link_home`, what ``pqcall link`` runs),
approved through ``POST /api/account/devices/approve``. The panel's list then
shows both; unlinking the second removes it and the server refuses its login.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pqcall.client.account_setup import link_home
from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.crypto.recovery import recovery_key
from pqcall.exceptions import ApiError
from tests.harness import run_async, scaled

from ..server.conftest import RunningServer, make_settings, run_server
from .test_app import PASSPHRASE, Ui, registered, running_ui

pytestmark = pytest.mark.slow  # registrations, links and a phone restart: seconds each

LINK_TIMEOUT_S = scaled(60.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A signaling server on SQLite."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(settings) as running:
        yield running


async def link_second_device(ui: Ui, tmp_path: Path, server_url: str) -> Home:
    """Link a new home as alice's "laptop", approved through the panel's route."""
    home = Home(tmp_path / "laptop")
    code: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    linking = asyncio.create_task(
        link_home(
            home,
            "alice",
            server_url,
            PASSPHRASE,
            code.set_result,
            device_name="laptop",
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            timeout_s=LINK_TIMEOUT_S,
        )
    )
    response = await ui.post("/account/devices/approve", {"code": await code})
    assert response.status_code == 200, response.text
    assert response.json()["linked"]["name"] == "laptop"
    await asyncio.wait_for(linking, LINK_TIMEOUT_S)
    return home


async def device_login(home: Home) -> None:
    """Log in as the device in ``home`` (raises ApiError when refused)."""
    config = home.load_config()
    assert config is not None
    secrets = home.unlock(PASSPHRASE)
    async with ServerApi(
        config.server_url,
        config.username,
        secrets.identity,
        server_name=config.server_name,
        device_key=secrets.device_key,
    ) as api:
        await api.login()


@run_async
async def test_list_link_unlink_and_recovery_words(server: RunningServer, tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        # before unlocking, nothing
        response = await alice.client.get("/api/account/devices")
        assert response.status_code == 409
        await registered(alice, "alice", server)

        # the recovery words, once: they make the recovery key the list carries
        response = await alice.post("/account/recovery-words")
        words = response.json()["words"]
        assert isinstance(words, str) and len(words.split()) == 24
        assert (await alice.post("/account/recovery-words")).json() == {"words": None}
        recovery_public = recovery_key(words).public_key()
        stored = Home(tmp_path / "alice").load_device_list(
            alice.controller.account.identity.public_key(),  # type: ignore[union-attr]
            "alice",
        )
        assert stored is not None and stored.device_list.recovery == recovery_public

        response = await alice.client.get("/api/account/devices")
        assert response.status_code == 200, response.text
        first = response.json()
        assert first["username"] == "alice" and first["recovery_set"] is True
        assert [d["this_device"] for d in first["devices"]] == [True]
        this_id = first["devices"][0]["device_id"]
        assert first["devices"][0]["short_id"] == this_id[:8]

        # bad codes: a clear 4xx with the reason, nothing linked
        response = await alice.post("/account/devices/approve", {"code": "hello"})
        assert response.status_code == 400
        assert "link code" in response.json()["error"]
        response = await alice.post(
            "/account/devices/approve",
            {"code": "abcdefghijklmnop-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA"},
        )
        assert response.status_code in (400, 404), response.text
        assert response.json()["error"]

        laptop = await link_second_device(alice, tmp_path, server.base_url)
        await device_login(laptop)  # the laptop is a device of the account now
        listed = (await alice.client.get("/api/account/devices")).json()
        assert "laptop" in [d["name"] for d in listed["devices"]]
        assert len(listed["devices"]) == 2 and listed["version"] == first["version"] + 1
        laptop_id = next(d["device_id"] for d in listed["devices"] if not d["this_device"])

        # this device cannot unlink itself here; an unknown device is 404
        response = await alice.post("/account/devices/unlink", {"device": this_id})
        assert response.status_code == 409
        response = await alice.post("/account/devices/unlink", {"device": "ffffffff"})
        assert response.status_code == 404

        response = await alice.post("/account/devices/unlink", {"device": laptop_id})
        assert response.status_code == 200, response.text
        assert [d["device_id"] for d in response.json()["devices"]] == [this_id]
        with pytest.raises(ApiError) as refused:
            await device_login(laptop)
        assert refused.value.status == 401
        # alice's own phone still works
        assert (await alice.state())["phase"] == "ready"


@run_async
async def test_rotate_restarts_the_phone_with_the_new_key(
    server: RunningServer, tmp_path: Path
) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        await registered(alice, "alice", server)
        before = (await alice.client.get("/api/account/devices")).json()
        response = await alice.post("/account/devices/rotate", {"passphrase": "not it"})
        assert response.status_code == 401
        response = await alice.post("/account/devices/rotate", {"passphrase": PASSPHRASE})
        assert response.status_code == 200, response.text
        after = response.json()
        assert after["version"] == before["version"] + 1
        assert [d["this_device"] for d in after["devices"]] == [True]
        assert after["devices"][0]["device_id"] != before["devices"][0]["device_id"]
        state = await alice.state()
        assert state["phase"] == "ready"
        # the restarted phone logs in with the new key: the list is readable again
        response = await alice.client.get("/api/account/devices")
        assert response.status_code == 200 and response.json()["version"] == after["version"]
        await device_login(Home(tmp_path / "alice"))
