"""The account panel in Chromium (ui/linked_devices.py, static/account_panel.js, decision 1020).

A real server, real ``pqcall ui`` processes and a second device of alice's
account linked with the client API (what ``pqcall link NAME`` runs on the new
device): alice's page approves it by its code, lists both devices, unlinks the
second after a confirmation, and the server then refuses that device's login.
A registration made in the page shows the recovery words once.
"""

from __future__ import annotations

import asyncio
import queue
import re
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from pqcall.client.account_setup import link_home
from pqcall.client.api import ServerApi
from pqcall.client.home import Home
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.crypto.recovery import normalize_words
from pqcall.exceptions import ApiError
from tests.cli.helpers import PASSPHRASE
from tests.harness import scaled

from .conftest import UiWorld

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LINK_TIMEOUT_S = scaled(60.0)


def _link(home: Home, server_url: str, codes: queue.Queue[str]) -> None:
    asyncio.run(
        link_home(
            home,
            "alice",
            server_url,
            PASSPHRASE,
            codes.put,
            device_name="laptop",
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            timeout_s=LINK_TIMEOUT_S,
        )
    )


def _login(home: Home) -> None:
    async def login() -> None:
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

    asyncio.run(login())


def test_link_list_and_unlink_a_device(world: UiWorld) -> None:
    from playwright.sync_api import expect

    page = world.open("alice")
    panel = page.get_by_test_id("account-panel")
    expect(panel).to_be_visible()
    devices = page.get_by_test_id("linked-devices").locator("li")
    expect(devices).to_have_count(1)
    expect(devices.first.get_by_test_id("this-device")).to_have_text("this device")

    laptop = Home(world.base / "laptop")
    codes: queue.Queue[str] = queue.Queue()
    with ThreadPoolExecutor(max_workers=1) as thread:
        linking: Future[None] = thread.submit(_link, laptop, world.server_url, codes)
        code = codes.get(timeout=LINK_TIMEOUT_S)

        # a wrong code: a clear message, nothing linked
        page.get_by_test_id("link-code").fill("not-a-code")
        page.get_by_test_id("link-approve").click()
        message = page.get_by_test_id("account-message")
        expect(message).to_have_class(re.compile(r"\berror\b"))
        expect(message).to_contain_text("link code")
        expect(devices).to_have_count(1)

        page.get_by_test_id("link-code").fill(code)
        page.get_by_test_id("link-approve").click()
        expect(message).to_contain_text("laptop")
        expect(message).to_contain_text("is now a device of this account")
        linking.result(timeout=LINK_TIMEOUT_S)
        expect(devices).to_have_count(2)
        expect(page.get_by_test_id("linked-devices")).to_contain_text("laptop")
        thread.submit(_login, laptop).result()  # a device of the account: it logs in

        # unlink it, after a confirmation
        row = devices.filter(has_text="laptop")
        short_id = row.get_attribute("data-device-id")
        assert short_id is not None
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id(f"unlink-{short_id[:8]}").click()
        expect(devices).to_have_count(1)
        expect(page.get_by_test_id("linked-devices")).not_to_contain_text("laptop")
        expect(message).to_contain_text("was unlinked")
        with pytest.raises(ApiError) as refused:
            thread.submit(_login, laptop).result()
        assert refused.value.status == 401
    expect(page.get_by_test_id("connection")).to_have_text("online")  # alice's own phone


def test_rotate_this_devices_key(world: UiWorld) -> None:
    from playwright.sync_api import expect

    page = world.open("alice")
    devices = page.get_by_test_id("linked-devices").locator("li")
    message = page.get_by_test_id("account-message")
    expect(devices).to_have_count(1)
    expect(page.get_by_test_id("connection")).to_have_text("online")

    # a new key for this device: the phone restarts with it and is online again
    before = devices.first.get_attribute("data-device-id")
    page.get_by_test_id("rotate-passphrase").fill(PASSPHRASE)
    page.get_by_test_id("rotate-submit").click()
    # the keystore's KDF runs three times (check, save, unlock): seconds on a busy machine
    expect(message).to_contain_text("This device has a new key", timeout=scaled(30_000))
    expect(devices).to_have_count(1)
    expect(devices.first).not_to_have_attribute("data-device-id", before or "")
    expect(devices.first.get_by_test_id("this-device")).to_be_visible()
    # the phone unlocks its keystore again (the KDF) and logs in: seconds on a busy machine
    expect(page.get_by_test_id("connection")).to_have_text("online", timeout=scaled(30_000))


def test_registration_shows_the_recovery_words_once(world: UiWorld) -> None:
    from playwright.sync_api import expect

    world.homes["carol"] = world.base / "carol"  # no account yet: the setup screen
    page = world.open("carol", unlock=False, sample="alice")
    page.get_by_test_id("setup-name").fill("carol")
    page.get_by_test_id("setup-server").fill(world.server_url)
    page.get_by_test_id("setup-passphrase").fill(PASSPHRASE)
    page.get_by_test_id("setup-passphrase-again").fill(PASSPHRASE)
    page.get_by_test_id("setup-weak").check()
    page.get_by_test_id("setup-submit").click()
    expect(page.get_by_test_id("me")).to_have_text("carol", timeout=scaled(30_000))
    box = page.get_by_test_id("recovery-words")
    expect(box).to_be_visible()
    expect(box).to_contain_text("Write these recovery words down")
    words = page.get_by_test_id("recovery-words-text").inner_text()
    assert len(normalize_words(words).split()) == 24  # real BIP-39 words with their checksum
    page.get_by_test_id("recovery-words-done").click()
    expect(box).to_be_hidden()
    page.reload()  # the words were handed out once: not shown again
    expect(page.get_by_test_id("account-panel")).to_be_visible()
    expect(page.get_by_test_id("linked-devices").locator("li")).to_have_count(1)
    expect(box).to_be_hidden()
