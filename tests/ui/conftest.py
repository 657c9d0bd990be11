"""Fixtures for the browser tests: a real server, two ``pqcall ui`` processes, Chromium.

``world`` starts ``pqcall server`` as a child process on loopback and
registers alice and bob in homes of their own, in-process with the fast test
KDF. A test then calls :meth:`UiWorld.open` for each user: that starts
``pqcall --home H ui --no-browser --port P`` with file audio, reads the URL
with its token from the process's output, opens it in a browser context of
its own (its own sessionStorage) and unlocks the account through the page's
passphrase form, as a person would.

The browser is Debian's Chromium driven by Playwright's sync API
(``playwright install`` cannot download browsers here). Without
``PQCALL_TEST_BROWSER`` a missing Playwright or Chromium skips these tests
with the reason; with it (as in ``.ci/run``) they fail instead.

When a test using ``world`` fails, the failure message ends with the output of
every ``pqcall ui`` process (and the server's), the pages' console messages
and uncaught errors, so a red run says what the softphone side saw.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pqcall.client.home import Home
from pqcall.client.phone import register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from tests.cli.helpers import PASSPHRASE, pqcall_command
from tests.harness import TIMEOUT_SCALE
from tests.server.test_runner import _free_port, _wait_for_health

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Page

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT_WIDTH, VIEWPORT_HEIGHT = 1000, 700  # also the screenshots' size
START_TIMEOUT_S = 30.0 * TIMEOUT_SCALE  # until `pqcall ui` prints its URL
STOP_TIMEOUT_S = 10.0 * TIMEOUT_SCALE  # a child's clean exit after SIGTERM
DEFAULT_RING_TIMEOUT_S = 60.0  # the server's, unless a test parametrizes ring_timeout_s
SAMPLES = Path(__file__).parents[2] / "src" / "pqcall" / "media" / "samples"
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/#code=[A-Za-z0-9_\-.~%]+")
OUTPUT_TAIL_CHARS = 6000  # of each process's output in a failure message


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("PQCALL_TEST_BROWSER"):
            pytest.fail(f"{missing}; PQCALL_TEST_BROWSER is set, so the browser tests must run")
        pytest.skip(f"browser tests skipped: {missing} (PQCALL_TEST_BROWSER=1 makes them run)")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text if len(text) <= OUTPUT_TAIL_CHARS else "[...]\n" + text[-OUTPUT_TAIL_CHARS:]


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Ui:
    """One ``pqcall ui`` process and the page showing it."""

    name: str  # the user
    process: subprocess.Popen[Any]
    out_path: Path  # its stdout
    err_path: Path  # its stderr
    url: str = ""  # printed by the process: http://127.0.0.1:PORT/#code=CODE (one use)
    context: BrowserContext | None = None
    page: Page | None = None
    console: list[str] = field(default_factory=list)  # the page's console messages
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page

    def report(self) -> str:
        return (
            f"--- pqcall ui ({self.name}) exit={self.process.poll()} url={self.url or '?'}\n"
            f"stdout:\n{_tail(self.out_path)}\nstderr:\n{_tail(self.err_path)}\n"
            f"page console:\n" + "\n".join(self.console[-40:]) + "\n"
            "page errors:\n" + "\n".join(self.page_errors) + "\n"
        )

    def wait_for_url(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (match := URL.search(self.out_path.read_text(errors="replace"))) is None:
            if self.process.poll() is not None:
                raise AssertionError(f"pqcall ui ({self.name}) exited before printing its URL")
            if time.monotonic() > deadline:
                raise AssertionError(f"pqcall ui ({self.name}) printed no URL in time")
            time.sleep(0.05)
        self.url = match.group(0)


@dataclass
class UiWorld:
    """A server, alice's and bob's homes, and the ``pqcall ui`` processes started so far."""

    base: Path  # scratch directory
    server_url: str
    server: subprocess.Popen[Any]
    homes: dict[str, Path]  # each user's --home, registered
    browser: Browser
    uis: dict[str, Ui] = field(default_factory=dict)

    def open(
        self,
        name: str,
        *,
        unlock: bool = True,
        viewport: tuple[int, int] = (VIEWPORT_WIDTH, VIEWPORT_HEIGHT),
        device_scale_factor: float = 1.0,
        sample: str | None = None,
        audio_in: str | None = None,
    ) -> Page:
        """Start ``pqcall ui`` for ``name``, open its URL and unlock it in the page.

        The process runs in the scratch directory with its WAV files there
        under short names (``alice.wav`` in, ``alice-heard.wav`` out), which
        is what the device choice shows in the screenshots. ``unlock=False``
        leaves the page on its first screen (unlock, or setup for a home
        without an account); ``viewport`` is in CSS pixels; ``sample`` names
        the WAV file played as the microphone (default: ``name``'s); ``audio_in``
        another source instead (``tone:440``, ``silence``).
        """
        from playwright.sync_api import expect

        port = _free_port()
        out_path = self.base / f"{name}-ui.out"
        err_path = self.base / f"{name}-ui.err"
        env = {key: value for key, value in os.environ.items() if not key.startswith("PQCALL_")}
        env["PYTHONUNBUFFERED"] = "1"  # the URL line must reach the file at once
        if audio_in is None:
            shutil.copyfile(SAMPLES / f"{sample or name}.wav", self.base / f"{name}.wav")
        audio = ("--audio-in", audio_in or f"{name}.wav", "--audio-out", f"{name}-heard.wav")
        command = pqcall_command(self.homes[name], "ui", "--no-browser", "--port", str(port))
        with open(out_path, "w") as out, open(err_path, "w") as err:
            process = subprocess.Popen(
                [*command, *audio],
                cwd=self.base,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        ui = self.uis[name] = Ui(name, process, out_path, err_path)
        ui.wait_for_url()
        assert ui.url.startswith(f"http://127.0.0.1:{port}/#code="), ui.url
        width, height = viewport
        ui.context = self.browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=device_scale_factor
        )
        page = ui.page = ui.context.new_page()
        page.set_default_timeout(15_000 * TIMEOUT_SCALE)
        page.on("console", lambda message: _console(ui, message))
        page.on("pageerror", lambda error: _page_error(ui, error))
        page.goto(ui.url)
        if not unlock:
            return page
        page.get_by_test_id("unlock-passphrase").fill(PASSPHRASE)
        page.get_by_test_id("unlock-submit").click()
        expect(page.get_by_test_id("me")).to_have_text(name)
        expect(page.get_by_test_id("connection")).to_have_text("online")
        return page

    def report(self) -> str:
        parts = [ui.report() for ui in self.uis.values()]
        parts.append(f"--- pqcall server stderr:\n{_tail(self.base / 'server.err')}")
        return "\n".join(parts)

    def close(self) -> None:
        for ui in self.uis.values():
            if ui.context is not None:
                ui.context.close()
            _stop(ui.process)
        _stop(self.server)


def _console(ui: Ui, message: ConsoleMessage) -> None:
    ui.console.append(f"{message.type}: {message.text}")


def _page_error(ui: Ui, error: Error) -> None:
    ui.page_errors.append(f"{error.name}: {error.message}\n{error.stack or ''}")


def _register(home: Home, name: str, server_url: str) -> None:
    asyncio.run(register(home, name, server_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS))


@pytest.fixture
def ring_timeout_s() -> float:
    """The server's ring timeout; a test parametrizes it to see a call missed."""
    return DEFAULT_RING_TIMEOUT_S


@pytest.fixture
def world(tmp_path: Path, browser: Browser, ring_timeout_s: float) -> Iterator[UiWorld]:
    port = _free_port()
    env = dict(os.environ, PQCALL_HOME=str(tmp_path))
    command = [sys.executable, "-m", "pqcall", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--name", "ui.test", "--no-mdns"]
    command += ["--relay-port", str(_free_port()), "--log-level", "warning"]
    command += ["--ring-timeout", str(ring_timeout_s)]
    with open(tmp_path / "server.out", "w") as out, open(tmp_path / "server.err", "w") as err:
        server = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    homes = {name: tmp_path / name for name in ("alice", "bob")}
    world = UiWorld(tmp_path, url, server, homes, browser)
    try:
        _wait_for_health(f"{url}/health")
        # Playwright's sync API keeps an event loop running in this thread
        with ThreadPoolExecutor(max_workers=1) as thread:
            for name, home in homes.items():
                thread.submit(_register, Home(home), name, url).result()
        yield world
    finally:
        world.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Append the ui processes' output to any failure of a test using ``world``."""
    try:
        return (yield)
    except Exception as exc:
        world = getattr(item, "funcargs", {}).get("world")
        if not isinstance(world, UiWorld):
            raise
        raise AssertionError(f"{exc}\n\n{world.report()}") from exc
