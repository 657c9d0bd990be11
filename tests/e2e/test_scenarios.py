"""Call scenarios between hosts: the ways a call goes other than "answered, talked, hung up".

Each test runs ``pqcall server`` and ``pqcall`` phones as separate processes
in the ``lan`` topology (see :mod:`tests.netns`): the server, alice and bob
on three hosts of one network; a third account (carol, dave) runs on alice's
host with a home of its own. Checked, from the outside as a user sees them
(exit codes, the lines on stderr, the one JSON record per call):

- ring timeout: the server gives up on an unanswered call; both phones
  record it as missed, and ``listen --once`` exits;
- busy: a second caller is refused while a call is active, which goes on;
- the server restarted in the middle of a call (SIGTERM or SIGKILL): the
  audio, peer to peer, never stops; both phones reconnect to the new server
  while the call is still running;
- a man in the middle at the server, which swaps bob's identity key and key
  bundle for mallory's in its database: a caller that pinned bob refuses to
  call (key-change warning); a first-time caller is given mallory's key,
  and bob's phone refuses the offer (the caller expected another key for
  him) with a warning;
- the callee hangs up (Ctrl-C in ``listen``): the caller's call ends normally.

:mod:`tests.cli.test_end_to_end` runs the plain cases (answered, declined,
Ctrl-C, offline, unknown user, wrong passphrase) over loopback, and
:mod:`tests.e2e.test_two_hosts` a full call in each topology. Every failure
message carries all the processes' output.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pqcall.crypto.account import Device, DeviceList, SignedDeviceList
from pqcall.crypto.filekey import FilePrivateKey, KeyBundle
from pqcall.crypto.identity import IdentityPrivateKey
from tests.harness import TIMEOUT_SCALE
from tests.netns import Host, Network

from .conftest import PqcallServer, Processes, start_server, wait_until
from .helpers import UNANSWERED_FIELDS, Phone, call_record, json_records

ONLINE_TIMEOUT_S = 30.0  # until phones are connected to the server (push events)
ACTIVE_TIMEOUT_S = 30.0  # from starting a call to its SAS on screen
COMMAND_TIMEOUT_S = 60.0  # a whole `pqcall call` run
EXIT_TIMEOUT_S = 30.0  # a process's exit once its call is over
SERVER_STOP_TIMEOUT_S = 15.0  # the server's exit after SIGTERM
SAS_LINE = "SAS: read this aloud: "  # what a phone shows once the call is active
QUIET = ("--audio-in", "silence", "--audio-out", "null")

RING_TIMEOUT_S = 3  # --ring-timeout of the server in the ring-timeout test
RING_SLACK_S = 15.0  # start-up, login, the server's sweep interval
BUSY_CALL_S = 8  # the call carol interrupts (she needs a few seconds to start)
RESTART_CALL_S = 12  # the call the server restarts under
RESTART_PAUSE_S = 2.0  # the server is down this long
PACKETS_PER_S = 50  # 20 ms frames
MIN_DELIVERED = 0.8  # of the packets a call's duration should have brought
MAX_LOST = 0.02  # of the packets received
TONE_MIN_RMS = 1000.0  # int16 RMS of a second of received tone (the sources peak near 16000)


# ---------------------------------------------------------------- the rig


@dataclass
class Lan:
    """The ``lan`` network, its server and the test's processes."""

    net: Network
    """The three hosts."""
    processes: Processes
    """Everything started, with its output."""
    tmp_path: Path
    """The test's directory: homes, the server's data, received audio."""

    @property
    def data_dir(self) -> Path:
        """The server's ``--data-dir`` (kept across a restart)."""
        return self.tmp_path / "server"

    @property
    def database(self) -> Path:
        """The server's SQLite database."""
        return self.data_dir / "pqcall.db"

    def start_server(self, *options: str, label: str = "server") -> PqcallServer:
        """``pqcall server`` on the server host (``label`` names its output files)."""
        return start_server(self.net, self.processes, self.data_dir, *options, label=label)

    def phone(self, name: str, host: Host) -> Phone:
        """Account ``name`` on ``host``, with its own home directory."""
        return Phone(name, host, self.tmp_path / name, self.processes)

    @contextlib.contextmanager
    def reported(self) -> Iterator[None]:
        """Add every process's output to a check failing (or a command timing out) in the block."""
        try:
            yield
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            raise AssertionError(f"{exc}\n{self.processes.report()}") from None


@pytest.fixture
def lan(make_network: Callable[[str], Network], processes: Processes, tmp_path: Path) -> Lan:
    """The ``lan`` topology, torn down (with every process in it) after the test."""
    return Lan(make_network("lan"), processes, tmp_path)


# ---------------------------------------------------------------- phones and processes


def register(server: PqcallServer, *phones: Phone) -> None:
    """Register every phone at ``server``, all at once (each waits for its KDF)."""
    processes = phones[0].processes
    started = [
        (
            phone,
            processes.start(
                phone.host,
                f"{phone.name}-register",
                phone.command("register", phone.name, "--server", server.url_for(phone.host)),
                phone.env,
            ),
        )
        for phone in phones
    ]
    for phone, process in started:
        code = wait_exit(process, COMMAND_TIMEOUT_S, f"{phone.name}'s register")
        assert code == 0, f"{phone.name} could not register"


def start_listen(
    phone: Phone, *options: str, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``pqcall listen OPTIONS`` in the background (output labelled ``NAME-listen``)."""
    return phone.processes.start(
        phone.host, f"{phone.name}-listen", phone.command("listen", *options), phone.env, stdin
    )


def start_call(phone: Phone, peer: str, *options: str, label: str) -> subprocess.Popen[bytes]:
    """``pqcall call PEER OPTIONS`` in the background."""
    return phone.processes.start(
        phone.host, label, phone.command("call", peer, *options), phone.env
    )


def run_call(
    phone: Phone, peer: str, *options: str, label: str
) -> subprocess.CompletedProcess[str]:
    """``pqcall call PEER OPTIONS`` to the end."""
    return phone.processes.run(
        phone.host, label, phone.command("call", peer, *options), phone.env, COMMAND_TIMEOUT_S
    )


def wait_exit(process: subprocess.Popen[Any], timeout_s: float, what: str) -> int:
    """Wait for ``process`` to exit; its exit code.

    Raises:
        AssertionError: still running after ``timeout_s`` (scaled).
    """
    try:
        return process.wait(timeout=timeout_s * TIMEOUT_SCALE)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not exit within {timeout_s:.0f} s") from None


def wait_for_line(
    processes: Processes, label: str, text: str, process: subprocess.Popen[Any]
) -> None:
    """Wait until the stderr of ``label`` (human text with ``--json``) has ``text``.

    Raises:
        AssertionError: ``process`` exited first, or :data:`ACTIVE_TIMEOUT_S` passed.
    """

    def seen() -> bool:
        if text in processes.errors(label):
            return True
        assert process.poll() is None, f"{label} exited ({process.returncode}) before {text!r}"
        return False

    wait_until(seen, ACTIVE_TIMEOUT_S, f"{text!r} from {label}", lambda: "")


def connected_phones(server: PqcallServer) -> float:
    """The server's ``pqcall_connected_phones`` (0 while it does not answer)."""
    try:
        return server.metric("pqcall_connected_phones")
    except OSError:
        return 0.0


def wait_connected(server: PqcallServer, count: int, *running: subprocess.Popen[Any]) -> None:
    """Wait until ``count`` phones hold a push connection to ``server``.

    Raises:
        AssertionError: one of ``running`` exited first, or :data:`ONLINE_TIMEOUT_S` passed.
    """

    def online() -> bool:
        for process in running:
            code = process.poll()
            assert code is None, f"a phone exited ({code}) while waiting for {count} online"
        return connected_phones(server) >= count

    wait_until(online, ONLINE_TIMEOUT_S, f"{count} phones online", lambda: "")


def levels_per_second(path: Path) -> list[float]:
    """The RMS level (int16 units) of each whole second of a received WAV file."""
    assert path.is_file(), f"no received audio at {path}"
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")[::channels]
    pieces = samples[: len(samples) // rate * rate].astype(np.float64).reshape(-1, rate)
    return [float(level) for level in np.sqrt(np.mean(pieces**2, axis=1))]


def check_tone_throughout(path: Path, duration_s: float) -> None:
    """Assert ``path`` holds about ``duration_s`` of received tone, with no quiet second."""
    levels = levels_per_second(path)
    assert len(levels) >= MIN_DELIVERED * duration_s, f"{path.name}: {len(levels)} s of audio"
    quiet = [second for second, level in enumerate(levels) if level < TONE_MIN_RMS]
    assert not quiet, f"{path.name}: quiet seconds {quiet} (levels {[round(x) for x in levels]})"


# ---------------------------------------------------------------- 1. ring timeout


def test_ring_timeout_is_missed_on_both_sides(lan: Lan) -> None:
    processes = lan.processes
    with lan.reported():
        server = lan.start_server("--ring-timeout", str(RING_TIMEOUT_S))
        alice, bob = lan.phone("alice", lan.net.alice), lan.phone("bob", lan.net.bob)
        register(server, alice, bob)
        # bob is asked, and never answers: his stdin stays open and empty
        listen = start_listen(bob, "--once", "--json", *QUIET, stdin=subprocess.PIPE)
        try:
            wait_connected(server, 1, listen)
            started = time.monotonic()
            call = run_call(alice, "bob", "--json", *QUIET, label="alice-call")
            rang_s = time.monotonic() - started
            listen_code = wait_exit(listen, EXIT_TIMEOUT_S, "bob's listen --once")
        finally:
            assert listen.stdin is not None
            listen.stdin.close()

        assert call.returncode == 1, "alice's unanswered call did not fail"
        assert "no answer from bob" in call.stderr.splitlines()
        assert RING_TIMEOUT_S <= rang_s <= RING_TIMEOUT_S + RING_SLACK_S, f"rang {rang_s:.1f} s"
        ours = call_record(processes, "alice-call", UNANSWERED_FIELDS)
        theirs = call_record(processes, "bob-listen", UNANSWERED_FIELDS)
        assert ours["call_id"] == theirs["call_id"]
        assert (ours["peer"], ours["direction"], ours["result"]) == ("bob", "outgoing", "missed")
        assert (theirs["peer"], theirs["direction"], theirs["result"]) == (
            "alice",
            "incoming",
            "missed",
        )
        assert ours["answered_unix"] is None and theirs["answered_unix"] is None

        bob_says = processes.errors("bob-listen")
        assert "incoming call from alice" in bob_says
        assert "accept? [y/N]" in bob_says, "bob was not asked"
        assert "missed call from alice" in bob_says
        assert listen_code == 1, "listen --once after a missed call"


# ---------------------------------------------------------------- 2. busy


def test_busy_while_in_a_call(lan: Lan) -> None:
    processes = lan.processes
    with lan.reported():
        server = lan.start_server()
        alice, bob = lan.phone("alice", lan.net.alice), lan.phone("bob", lan.net.bob)
        carol = lan.phone("carol", lan.net.alice)
        register(server, alice, bob, carol)
        listen = start_listen(bob, "--auto-answer", "--once", "--json", *QUIET)
        wait_connected(server, 1, listen)
        first = start_call(
            alice,
            "bob",
            *("--duration", str(BUSY_CALL_S), "--json", "--audio-in", "tone:440"),
            *("--audio-out", "null"),
            label="alice-call",
        )
        wait_for_line(processes, "alice-call", SAS_LINE, first)

        second = run_call(carol, "bob", "--json", *QUIET, label="carol-call")
        assert first.poll() is None, "alice's call was over before carol's ended"
        alice_code = wait_exit(first, BUSY_CALL_S + EXIT_TIMEOUT_S, "alice's call")
        listen_code = wait_exit(listen, EXIT_TIMEOUT_S, "bob's listen --once")

        # carol: refused at once, as busy
        assert second.returncode == 1, "carol's call to a busy bob did not fail"
        assert "bob is busy" in second.stderr.splitlines()
        refused = call_record(processes, "carol-call", UNANSWERED_FIELDS)
        assert (refused["peer"], refused["result"]) == ("bob", "busy")

        # alice and bob: one call, untouched by carol's
        assert alice_code == 0 and listen_code == 0
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert refused["call_id"] != ours["call_id"]
        assert ours["call_id"] == theirs["call_id"]
        assert ours["result"] == theirs["result"] == "ended"
        assert ours["reason"] == "hung up", "alice's call did not run its --duration"
        assert ours["sas"] == theirs["sas"]
        assert ours["duration_s"] >= BUSY_CALL_S - 0.5
        expected = ours["duration_s"] * PACKETS_PER_S
        assert theirs["packets_received"] >= MIN_DELIVERED * expected, "bob lost alice's audio"


# ---------------------------------------------------------------- 3. server restart


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_server_restarted_during_a_call(lan: Lan, signum: signal.Signals) -> None:
    processes = lan.processes
    out_a, out_b = lan.tmp_path / "out_a.wav", lan.tmp_path / "out_b.wav"
    with lan.reported():
        server = lan.start_server()
        alice, bob = lan.phone("alice", lan.net.alice), lan.phone("bob", lan.net.bob)
        register(server, alice, bob)
        listen = start_listen(
            bob,
            *("--auto-answer", "--once", "--json"),
            *("--audio-in", "tone:660", "--audio-out", str(out_b)),
        )
        wait_connected(server, 1, listen)
        call = start_call(
            alice,
            "bob",
            *("--duration", str(RESTART_CALL_S), "--json"),
            *("--audio-in", "tone:440", "--audio-out", str(out_a)),
            label="alice-call",
        )
        wait_for_line(processes, "alice-call", SAS_LINE, call)
        wait_for_line(processes, "bob-listen", SAS_LINE, listen)
        wait_connected(server, 2, call, listen)  # both phones' push connections

        server.process.send_signal(signum)
        wait_exit(server.process, SERVER_STOP_TIMEOUT_S, f"the server after {signum.name}")
        time.sleep(RESTART_PAUSE_S)
        assert call.poll() is None and listen.poll() is None, "the call ended with the server"
        server = lan.start_server(label="server-restarted")

        def reconnected() -> bool:
            assert call.poll() is None, "the call ended before both phones reconnected"
            return connected_phones(server) >= 2

        wait_until(reconnected, ONLINE_TIMEOUT_S, "both phones to reconnect", lambda: "")

        alice_code = wait_exit(call, RESTART_CALL_S + EXIT_TIMEOUT_S, "alice's call")
        listen_code = wait_exit(listen, EXIT_TIMEOUT_S, "bob's listen --once")
        assert alice_code == 0 and listen_code == 0
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert ours["call_id"] == theirs["call_id"]
        assert ours["result"] == theirs["result"] == "ended"
        assert ours["reason"] == "hung up", "alice's call did not run its --duration"
        assert ours["sas"] and ours["sas"] == theirs["sas"]
        assert ours["duration_s"] >= RESTART_CALL_S - 0.5
        for name, record in (("alice", ours), ("bob", theirs)):
            expected = ours["duration_s"] * PACKETS_PER_S
            received, lost = record["packets_received"], record["packets_lost"]
            assert received >= MIN_DELIVERED * expected, f"{name} got {received} of ~{expected}"
            assert lost <= MAX_LOST * received, f"{name} lost {lost} packets"
        for path in (out_a, out_b):
            check_tone_throughout(path, RESTART_CALL_S)


# ---------------------------------------------------------------- 4. man in the middle


def swap_identity(database: Path, username: str) -> IdentityPrivateKey:
    """Do what a compromised server would: give ``username`` another identity; its key.

    The account's identity and current key bundle become those of a fresh
    identity ("mallory"), with a bundle and a device list properly signed by
    mallory for the name ``username``: everything a client can check on the directory entry
    itself verifies. The server caches a name's account, so the caller
    restarts the server afterwards to serve the new entry.
    """
    mallory = IdentityPrivateKey.generate()
    created = int(time.time())
    bundle = KeyBundle.create(mallory, username, FilePrivateKey.generate().public_key(), created)
    # and a device list signed by mallory's key, listing mallory as the one device (issue 22)
    devices = DeviceList(username, 1_000, (Device.of(mallory.public_key(), "mallory"),))
    signed = SignedDeviceList.sign(devices, mallory)
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as db, db:
        (account_id,) = db.execute(
            "SELECT id FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        db.execute(
            "UPDATE accounts SET identity = ?, device_list = ?, device_list_version = ?"
            " WHERE id = ?",
            (mallory.public_key().encode(), signed.encode(), devices.version, account_id),
        )
        changed = db.execute(
            "UPDATE key_bundles SET bundle = ?, bundle_created = ?"
            " WHERE account_id = ? AND is_current",
            (bundle.encode(), created, account_id),
        ).rowcount
        assert changed == 1, f"{username} has {changed} current key bundles"
    return mallory


def calls_in_database(database: Path) -> int:
    """How many calls the server has ever recorded."""
    with contextlib.closing(sqlite3.connect(database, timeout=10)) as db:
        (count,) = db.execute("SELECT count(*) FROM calls").fetchone()
    return int(count)


def test_man_in_the_middle_at_the_server(lan: Lan) -> None:
    processes = lan.processes
    with lan.reported():
        server = lan.start_server()
        alice, bob = lan.phone("alice", lan.net.alice), lan.phone("bob", lan.net.bob)
        dave = lan.phone("dave", lan.net.alice)
        register(server, alice, bob, dave)
        # bob logs in before the swap (his login proves the identity the server stores)
        listen = start_listen(bob, "--auto-answer", "--json", *QUIET)
        wait_connected(server, 1, listen)

        # alice calls bob once: she pins his real key
        first = run_call(alice, "bob", "--duration", "1", "--json", *QUIET, label="alice-call-1")
        assert first.returncode == 0, "alice's first call failed"
        assert call_record(processes, "alice-call-1")["result"] == "ended"

        swap_identity(lan.database, "bob")
        # the server caches a name's identity (in the product it never changes), so the
        # compromised server is restarted on the swapped entry and serves it consistently
        server.process.send_signal(signal.SIGTERM)
        wait_exit(server.process, SERVER_STOP_TIMEOUT_S, "the server before the swap")
        server = lan.start_server(label="server-swapped")
        wait_connected(server, 1, listen)
        calls_before = calls_in_database(lan.database)

        # (a) a known contact: alice refuses to call the new key
        second = run_call(alice, "bob", "--json", *QUIET, label="alice-call-2")
        assert second.returncode == 1, "alice called bob under a swapped key"
        warning = [line for line in second.stderr.splitlines() if "SECURITY WARNING" in line]
        assert warning, "no security warning for alice"
        assert "bob's identity key is not the one you saved" in warning[0]
        assert not json_records(processes, "alice-call-2"), "a call was placed"
        assert calls_in_database(lan.database) == calls_before, "a call was placed"
        assert processes.errors("bob-listen").count("incoming call from alice") == 1

        # (b) first contact: dave is given mallory's key; bob's phone refuses the offer
        third = run_call(dave, "bob", "--json", *QUIET, label="dave-call")
        assert third.returncode == 1, "dave's call to a substituted key did not fail"
        refused = call_record(processes, "dave-call", UNANSWERED_FIELDS)
        assert refused["result"] == "failed"
        assert "identity keys do not match" in refused["reason"]
        assert refused["answered_unix"] is None and refused["sas"] is None
        assert not refused.get("packets_received"), "audio was exchanged"
        assert "call failed: bob's phone refused the call" in third.stderr
        wait_for_line(processes, "bob-listen", "refused a call from dave", listen)
        bob_says = processes.errors("bob-listen")
        assert "!!! SECURITY WARNING: refused a call from dave" in bob_says
        assert "possible key substitution by the server" in bob_says
        assert "incoming call from dave" not in bob_says, "bob's phone rang for dave"

        listen.send_signal(signal.SIGINT)
        assert wait_exit(listen, EXIT_TIMEOUT_S, "bob's listen after Ctrl-C") == 130
        taken = json_records(processes, "bob-listen")
        assert [record["peer"] for record in taken] == ["alice"], "bob took another call"


# ---------------------------------------------------------------- 5. callee hangs up


def test_callee_hangs_up(lan: Lan) -> None:
    processes = lan.processes
    with lan.reported():
        server = lan.start_server()
        alice, bob = lan.phone("alice", lan.net.alice), lan.phone("bob", lan.net.bob)
        register(server, alice, bob)
        listen = start_listen(
            bob,
            *("--auto-answer", "--once", "--json"),
            *("--audio-in", "tone:660", "--audio-out", "null"),
        )
        wait_connected(server, 1, listen)
        # no --duration: only bob's hang-up ends alice's call
        call = start_call(
            alice,
            "bob",
            *("--json", "--audio-in", "tone:440", "--audio-out", "null"),
            label="alice-call",
        )
        wait_for_line(processes, "alice-call", SAS_LINE, call)
        wait_for_line(processes, "bob-listen", SAS_LINE, listen)
        time.sleep(1.0)

        listen.send_signal(signal.SIGINT)
        hung_up = time.monotonic()
        listen_code = wait_exit(listen, EXIT_TIMEOUT_S, "bob's listen after Ctrl-C")
        alice_code = wait_exit(call, EXIT_TIMEOUT_S, "alice's call after bob hung up")
        took_s = time.monotonic() - hung_up

        assert listen_code == 130, "bob's listen after Ctrl-C"
        assert alice_code == 0, "alice's call did not end normally"
        assert took_s < 10.0, f"alice's call ended {took_s:.1f} s after bob hung up"
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert ours["call_id"] == theirs["call_id"]
        assert ours["result"] == theirs["result"] == "ended"
        assert ours["reason"] == "peer hung up"
        assert ours["sas"] and ours["sas"] == theirs["sas"]
        for record in (ours, theirs):
            assert record["packets_received"] >= PACKETS_PER_S // 2
        assert "(peer hung up)" in processes.errors("alice-call")
