"""The call screen in the terminal (issue 21).

The status line's markers (our ``MUTED``, the peer's) in process; then real
``pqcall`` processes on a pty (``test_pty_*``, marked e2e and slow in
tests/conftest.py): single keys, the ring bell, Ctrl-C in ``listen``, the
passphrase tries and Ctrl-C at the prompt, and presence in ``contacts``.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from pqcall.cli.calls import RING_BELL_INTERVAL_S, SECOND_INTERRUPT_S, live_status
from pqcall.cli.info import presence_text
from tests.cli.helpers import COMMAND_TIMEOUT_S, PASSPHRASE, child_env, one_json, pqcall_command
from tests.harness import scaled
from tests.server.test_runner import _free_port, _start, _stop, _wait_for_health

READY_TIMEOUT_S = scaled(20.0)  # until a phone prints what it should
RING_TIMEOUT_S = scaled(30.0)  # the server's: long enough to hear the bell repeat
PEER_SEES_S = 2.0  # the media channel carries the mute; the status line is redrawn twice a second
QUIET = ("--audio-in", "silence", "--audio-out", "null")  # no sound card needed


@dataclass
class MutedCall:
    """What :func:`live_status` reads of a call, before any statistics."""

    is_muted: bool
    is_peer_muted: bool = False
    peer: str = "bob"
    answered: float | None = None
    path: Any = None

    def stats(self) -> None:
        return None

    def processing_report(self) -> None:
        return None


def test_muted_marker_leads_the_status_line() -> None:
    assert live_status(cast(Any, MutedCall(is_muted=True))).startswith("MUTED  00:00")
    assert not live_status(cast(Any, MutedCall(is_muted=False))).startswith("MUTED")


def test_peer_muted_shows_in_the_status_line() -> None:
    line = live_status(cast(Any, MutedCall(is_muted=False, is_peer_muted=True)))
    assert line.startswith("bob MUTED  00:00")


@pytest.mark.parametrize(
    ("state", "ago_s", "text"),
    [
        pytest.param("online", None, "online", id="online"),
        pytest.param("unknown", None, "unknown", id="not-shared"),
        pytest.param("offline", None, "offline", id="never-seen"),
        pytest.param("offline", 60.0, "last seen 5 min ago", id="minutes"),
        pytest.param("offline", 1_500.0, "last seen 25 min ago", id="rounded"),
        pytest.param("offline", 3 * 3600.0, "last seen 3 h ago", id="hours"),
        pytest.param("offline", 5 * 86400.0, "last seen 5 days ago", id="days"),
    ],
)
def test_presence_text(state: str, ago_s: float | None, text: str) -> None:
    now = 1_800_000_000.0
    last_seen = None if ago_s is None else now - ago_s
    assert presence_text(state, last_seen, now=now) == text


# ---------------------------------------------------------------- in a terminal
# Real processes: ``pqcall server`` and phones whose stdin/stdout/stderr is a pty
# (its controlling terminal, in the foreground), typed at as a person types.


@dataclass
class World:
    url: str  # the server's base URL
    homes: dict[str, Path]  # each user's --home
    env: dict[str, str]  # PQCALL_PASSPHRASE set


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("screen")
    port = _free_port()
    server = _start(
        base,
        port,
        *("--no-mdns", "--relay-port", str(_free_port()), "--log-level", "warning"),
        *("--ring-timeout", str(RING_TIMEOUT_S)),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(f"{url}/health")
        env = child_env()
        homes = {name: base / name for name in ("alice", "bob")}
        for name, home in homes.items():
            done = subprocess.run(
                pqcall_command(home, "register", name, "--server", url),
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        yield World(url, homes, env)
    finally:
        _stop(server)


class Terminal:
    """``pqcall ARGS`` with a pty as its controlling terminal; everything it prints is kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, self.slave = os.openpty()  # ours, and the child's terminal
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            preexec_fn=_take_terminal,
        )
        self._output = bytearray()  # all it printed
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        with self._lock:
            return self._output.decode("utf-8", "replace")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, text: str, *, count: int = 1, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.output.count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (x{count}) in time:\n{self.output}")
            if self.process.poll() is not None and self.output.count(text) < count:
                time.sleep(0.2)  # the last bytes
                if self.output.count(text) < count:
                    raise AssertionError(f"exited before {text!r}:\n{self.output}")
            time.sleep(0.05)

    def echo_is_on(self) -> bool:
        return bool(termios.tcgetattr(self.slave)[3] & termios.ECHO)

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"did not exit:\n{self.output}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.slave)
        self._reader.join(timeout=5)
        os.close(self.master)

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child and our slave end are gone
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk


def _take_terminal() -> None:
    """In the child: a session of its own, with stdin (the pty) as its controlling terminal."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        terminal.close()


def in_terminal(
    terminals: list[Terminal],
    world: World,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> Terminal:
    terminal = Terminal(pqcall_command(world.homes[name], *args), env or world.env)
    terminals.append(terminal)
    return terminal


def call(world: World, caller: str, callee: str, *args: str) -> subprocess.Popen[str]:
    """``pqcall call`` with stdin closed (line commands, none given), output kept in pipes."""
    return subprocess.Popen(
        pqcall_command(world.homes[caller], "call", callee, *QUIET, *args),
        env=world.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out + err


def test_pty_single_keys_bell_and_peer_mute(world: World, terminals: list[Terminal]) -> None:
    bob = in_terminal(terminals, world, "bob", "listen", "--once", *QUIET)
    bob.wait_for("listening as bob")
    alice = call(world, "alice", "bob", "--duration", "60")
    try:
        bob.wait_for("accept? [y/N]")
        # the bell repeats every 2 s while it rings: the first with the line, then two more
        bob.wait_for("\a", count=3, timeout_s=scaled(2 * RING_BELL_INTERVAL_S + 4))
        bob.type("y\r")
        bob.wait_for("SAS: read this aloud")
        bob.wait_for("keys: m mute/unmute")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while bob.echo_is_on():  # cbreak without echo from the first key read
            assert time.monotonic() < deadline, bob.output
            time.sleep(0.05)
        bob.type("m")  # no Enter
        bob.wait_for("muted: the peer hears silence")
        time.sleep(scaled(PEER_SEES_S))  # alice's screen says so
        bob.type("z")  # not a key: the list, and no "z" drawn anywhere
        bob.wait_for("keys: m mute/unmute", count=2)
        bob.type("m")
        bob.wait_for("unmuted")
        time.sleep(scaled(PEER_SEES_S))
        bob.type("h")
        bob.wait_for("hanging up")
        assert bob.wait() == 0, bob.output
    finally:
        code, alice_text = finished(alice)
    assert code == 0, alice_text
    assert "bob muted\n" in alice_text, alice_text
    assert alice_text.index("bob muted\n") < alice_text.index("bob unmuted\n"), alice_text
    assert "call with alice ended after" in bob.output
    assert "z" not in bob.output.split("muted: the peer hears silence")[1]
    assert bob.echo_is_on(), "the terminal's settings were not restored"


def test_pty_ctrl_c_hangs_up_and_listen_goes_on(world: World, terminals: list[Terminal]) -> None:
    bob = in_terminal(terminals, world, "bob", "listen", "--auto-answer", *QUIET)
    bob.wait_for("listening as bob")
    first = call(world, "alice", "bob", "--duration", "60")
    try:
        bob.wait_for("SAS: read this aloud")
        time.sleep(0.5)
        bob.type("\x03")  # Ctrl-C: SIGINT from the terminal, in cbreak mode too
        bob.wait_for("still listening as bob (Ctrl-C again to quit)")
    finally:
        code, first_text = finished(first)
    assert code == 0, first_text  # for alice, bob hung up
    assert bob.echo_is_on(), "the terminal's settings were not restored"
    time.sleep(SECOND_INTERRUPT_S)
    second = call(world, "alice", "bob", "--duration", "1")
    code, second_text = finished(second)
    assert code == 0, second_text
    bob.wait_for("call with alice ended after", count=2)
    bob.type("\x03")  # idle: quits
    assert bob.wait() == 130, bob.output


def test_pty_listen_in_the_background_never_touches_the_terminal(
    world: World, terminals: list[Terminal]
) -> None:
    # `listen &` from a shell with job control: its own process group, not the foreground one
    listen = shlex.join(pqcall_command(world.homes["bob"], "listen", "--auto-answer", *QUIET))
    shell = Terminal(["bash", "-c", f"set -m; {listen} & echo pid=$!; wait"], world.env)
    terminals.append(shell)
    shell.wait_for("pid=")
    pid = int(shell.output.split("pid=")[1].split()[0])
    try:
        shell.wait_for("listening as bob")
        code, text = finished(call(world, "alice", "bob", "--duration", "1"))
        assert code == 0, text
        # answered and ended: neither stopped by SIGTTIN/SIGTTOU nor showing the keys
        shell.wait_for("call with alice ended after")
        assert "keys:" not in shell.output
        assert "during the call" not in shell.output
        assert shell.echo_is_on()
    finally:
        os.kill(pid, signal.SIGTERM)  # its own process group: killing bash leaves it
        shell.wait()


def test_pty_three_passphrase_tries(world: World, terminals: list[Terminal]) -> None:
    prompted = {key: value for key, value in world.env.items() if key != "PQCALL_PASSPHRASE"}
    bob = in_terminal(terminals, world, "bob", "listen", *QUIET, env=prompted)
    for _ in range(2):
        bob.wait_for("Passphrase: ", count=_ + 1)
        bob.type("wrong\r")
        bob.wait_for("wrong passphrase, try again", count=_ + 1)
    bob.wait_for("Passphrase: ", count=3)
    bob.type(f"{PASSPHRASE}\r")
    bob.wait_for("listening as bob")
    bob.type("\x03")
    assert bob.wait() == 130, bob.output

    wrong = in_terminal(terminals, world, "bob", "listen", *QUIET, env=prompted)
    for attempt in range(1, 4):
        wrong.wait_for("Passphrase: ", count=attempt)
        wrong.type("wrong\r")
    assert wrong.wait() == 1, wrong.output
    assert wrong.output.count("wrong passphrase, try again") == 2
    assert "(3 tries)" in wrong.output

    # from the environment: one try, one line
    from_env = dict(prompted, PQCALL_PASSPHRASE="wrong")
    once = in_terminal(terminals, world, "bob", "listen", *QUIET, env=from_env)
    assert once.wait() == 1, once.output
    assert "Passphrase:" not in once.output
    assert once.output.strip().splitlines() == [
        f"pqcall: wrong passphrase for the account in {world.homes['bob']}"
    ]


def test_pty_ctrl_c_at_the_prompt_ends_its_line(world: World, terminals: list[Terminal]) -> None:
    prompted = {key: value for key, value in world.env.items() if key != "PQCALL_PASSPHRASE"}
    bob = in_terminal(terminals, world, "bob", "listen", *QUIET, env=prompted)
    bob.wait_for("Passphrase: ")
    bob.type("\x03")
    assert bob.wait() == 130, bob.output
    assert "Passphrase: \r\npqcall: interrupted" in bob.output.replace("^C", ""), repr(bob.output)


def test_pty_contacts_show_presence(world: World, terminals: list[Terminal]) -> None:
    bob = in_terminal(terminals, world, "bob", "listen", "--auto-answer", *QUIET)
    bob.wait_for("listening as bob")
    code, text = finished(call(world, "alice", "bob", "--duration", "1"))
    assert code == 0, text
    contacts = subprocess.run(
        pqcall_command(world.homes["alice"], "contacts"),
        env=world.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert contacts.returncode == 0, contacts.stdout + contacts.stderr
    bob_row = next(line for line in contacts.stdout.splitlines() if line.startswith("bob "))
    assert "online" in bob_row, contacts.stdout
    listed = subprocess.run(
        pqcall_command(world.homes["alice"], "contacts", "--json"),
        env=world.env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert one_json(listed.stdout)["presence"] == "online", listed.stdout


def test_pty_demo_shows_a_live_line(terminals: list[Terminal], tmp_path: Path) -> None:
    # issue 21: `make demo` (pqcall demo on a terminal) redraws a status line during the call
    env = {key: value for key, value in os.environ.items() if not key.startswith("PQCALL_")}
    terminal = Terminal(
        pqcall_command(None, "demo", "--duration", "3", "--out", str(tmp_path)), env
    )
    terminals.append(terminal)
    assert terminal.wait() == 0, terminal.output
    shown = terminal.output
    live = [part for part in shown.split("\r") if "kbit/s" in part and "MOS" in part]
    assert len(live) >= 2, shown  # redrawn in place, not printed once
    assert all(part.lstrip().startswith("00:0") for part in live), live  # the call's clock
    assert shown.index("SAS") < shown.index(live[0]) < shown.index("alice hangs up"), shown
