"""Issue 20 finding 3: the UI's access token must not be on the browser's command line.

``pqcall ui`` used to open ``http://127.0.0.1:P/#token=TOKEN``: the browser's
argv (``/proc/PID/cmdline``, readable by every local user) then held a token
that controls the softphone for as long as it runs. The link now carries a
code that buys the token once, within a minute; these tests replay it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx

from pqcall.client.home import Home
from pqcall.ui.app import TOKEN_HEADER, create_app
from pqcall.ui.bootstrap import LINK_LIFETIME_S, BootstrapCodes
from pqcall.ui.controller import Controller
from tests.cli.helpers import pqcall_command
from tests.harness import TIMEOUT_SCALE
from tests.server.test_runner import _free_port
from tests.ui.conftest import URL

TOKEN = "the-session-token"
START_TIMEOUT_S = 30.0 * TIMEOUT_SCALE  # until `pqcall ui` prints its link


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _client(tmp_path: Path, codes: BootstrapCodes, clock: FakeClock) -> httpx.AsyncClient:
    app = create_app(Controller(Home(tmp_path / "home")), TOKEN, bootstrap=codes, clock=clock)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


def test_a_link_code_buys_the_token_once(tmp_path: Path) -> None:
    async def attack() -> None:
        codes, clock = BootstrapCodes(), FakeClock()
        code = codes.issue(now=clock())
        async with _client(tmp_path, codes, clock) as client:
            first = await client.post("/api/session", json={"code": code})
            assert first.status_code == 200
            assert first.json() == {"token": TOKEN}
            replay = await client.post("/api/session", json={"code": code})
            assert replay.status_code == 401
            assert replay.json() == {
                "error": "this link was used already or has expired: get a new one from pqcall ui"
            }

    asyncio.run(attack())


def test_a_link_code_expires_unused(tmp_path: Path) -> None:
    async def attack() -> None:
        codes, clock = BootstrapCodes(), FakeClock()
        code = codes.issue(now=clock())
        clock.now += LINK_LIFETIME_S
        async with _client(tmp_path, codes, clock) as client:
            late = await client.post("/api/session", json={"code": code})
            assert late.status_code == 401

    asyncio.run(attack())


def test_no_code_and_a_guessed_code_buy_nothing(tmp_path: Path) -> None:
    async def attack() -> None:
        clock = FakeClock()
        async with _client(tmp_path, BootstrapCodes(), clock) as client:
            guessed = await client.post("/api/session", json={"code": "x" * 32})
            assert guessed.status_code == 401

    asyncio.run(attack())


def test_the_link_pqcall_ui_gives_the_browser_is_dead_after_first_use(tmp_path: Path) -> None:
    """The real command: its link holds no token, works once, and its replay fails."""
    port = _free_port()
    out_path = tmp_path / "ui.out"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQCALL_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = pqcall_command(tmp_path / "home", "ui", "--no-browser", "--port", str(port))
    command += ["--audio-in", "silence", "--audio-out", "null"]
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (match := URL.search(out_path.read_text())) is None:
            assert process.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.05)
        link = match.group(0)
        code = link.split("#code=", 1)[1]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10 * TIMEOUT_SCALE) as client:
            # the person's browser trades the code for the token
            first = client.post("/api/session", json={"code": code})
            assert first.status_code == 200, first.text
            token = first.json()["token"]
            assert token not in link
            assert client.get("/api/state", headers={TOKEN_HEADER: token}).status_code == 200
            # another local user read the link from the browser's argv: too late
            replay = client.post("/api/session", json={"code": code})
            assert replay.status_code == 401
            assert client.get("/api/state", headers={TOKEN_HEADER: code}).status_code == 401
        assert token not in out_path.read_text()
    finally:
        process.terminate()
        process.wait(timeout=10 * TIMEOUT_SCALE)
