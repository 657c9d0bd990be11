"""Issue 20 findings 3 and 12 in Chromium: a replayed link, an injected inline script.

Like ``tests/ui/test_browser.py`` these run with ``PQCALL_TEST_BROWSER=1``
(mandatory in CI) against real ``pqcall ui`` processes.
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import expect

from pqcall.ui.app import CONTENT_SECURITY_POLICY
from tests.ui.conftest import UiWorld

INJECTED = """() => {
    window.injected = false;
    const script = document.createElement("script");
    script.textContent = "window.injected = true;";
    document.body.appendChild(script);
    const style = document.createElement("div");
    style.setAttribute("onclick", "window.injected = true;");
    document.body.appendChild(style);
    style.click();
    return window.injected;
}"""


def test_a_replayed_link_opens_nothing(world: UiWorld) -> None:
    """Another local user who read the link from the browser's argv gets a dead page."""
    alice = world.open("alice")
    token = alice.evaluate("sessionStorage.getItem('pqcall-token')")
    ui = world.uis["alice"]
    assert token and token not in ui.url
    assert alice.url.endswith("/")  # the code left the address bar at once
    # the attacker opens the same link in a browser of their own
    mallory = world.browser.new_context()
    try:
        page = mallory.new_page()
        page.goto(ui.url)
        expect(page.locator("#no-token")).to_be_visible()
        expect(page.locator("#error")).to_have_text(
            "this link was used already or has expired: get a new one from pqcall ui"
        )
        assert page.evaluate("sessionStorage.getItem('pqcall-token')") is None
        expect(page.locator("#who")).to_be_hidden()
    finally:
        mallory.close()
    # the person's page still works after a reload (the token is in its sessionStorage)
    alice.reload()
    expect(alice.get_by_test_id("connection")).to_have_text("online")


def test_the_page_runs_under_its_csp_and_refuses_inline_script(world: UiWorld) -> None:
    page = world.open("alice")  # the page works: unlock, WebSocket state, online
    ui = world.uis["alice"]
    response = page.request.get(ui.url.split("#", 1)[0])
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text))
    assert page.evaluate(INJECTED) is False
    assert any("Content Security Policy" in text for text in violations), violations
    # the live WebSocket still pushes state under connect-src 'self'
    expect(page.get_by_test_id("connection")).to_have_text("online")
