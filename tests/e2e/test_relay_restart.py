"""Two hosts, relayed, and the relay killed mid-call (issue 18 part 3).

Topology ``isolated`` (tests/netns.py): each phone reaches only the server, so the call
between two ``pqcall`` CLI phones goes through the relay. Once media flows, the
process running the relay gets SIGKILL and is started again on the same database: the
in-server relay (``pqcall server`` restarted on its data dir), or a separate ``pqcall
relay`` process (the server started with ``--relay-url``). The restarted relay
restores the allocation with both parties' proved addresses
(:mod:`pqcall.server.relay_store`) and forwards again without any bind from the
phones. Checked: the call runs its whole ``--duration`` on the relay path, speech
arrives in the seconds after the restart (not only before), and the gap (the kill to
the first packet the new process forwards) is measured and printed.
"""

from __future__ import annotations

import signal
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, resample
from tests.harness import TIMEOUT_SCALE

from .conftest import PYTHON, PqcallServer, Processes, start_server, wait_until
from .helpers import Phone, call_record
from .test_two_hosts import ONLINE_TIMEOUT_S, active_seconds, check_received, read_wav

CALL_DURATION_S = 16
CALL_TIMEOUT_S = 60.0 + CALL_DURATION_S
LISTEN_EXIT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
TAIL_S = 5.0  # the last seconds of received audio: after the restart
FORWARDED = "pqcall_relay_forwarded_packets_total"
RELAY_PORT = 5002  # the separate relay's UDP port
FORWARDING_LINE = "forwarding "  # what `pqcall relay` prints at its first forwarded packet


def _forwarded(server: PqcallServer) -> float:
    try:
        return server.metric(FORWARDED)
    except OSError:
        return 0.0


def _relayed_call(
    net: Any,
    processes: Processes,
    tmp_path: Path,
    server: PqcallServer,
    relay_forwards: Callable[[], bool],
    restart: Callable[[], Callable[[], bool]],
) -> tuple[float, list[float], list[int]]:
    """A relayed call of ``CALL_DURATION_S``; once ``relay_forwards()``, ``restart()``
    kills and restarts the relay and returns a check that it forwards again. Checks
    the call; returns (gap in s, speech s in each side's tail, packets lost by each)."""
    alice = Phone("alice", net.alice, tmp_path / "alice", processes)
    bob = Phone("bob", net.bob, tmp_path / "bob", processes)
    alice_wav, bob_wav = SAMPLES_DIR / "alice.wav", SAMPLES_DIR / "bob.wav"
    out_a, out_b = tmp_path / "out_a.wav", tmp_path / "out_b.wav"
    alice.register(server)
    bob.register(server)
    listen = processes.start(
        net.bob,
        "bob-listen",
        bob.command(
            *("listen", "--auto-answer", "--once"),
            *("--audio-in", str(bob_wav), "--audio-out", str(out_b), "--json"),
        ),
        bob.env,
    )
    wait_until(
        lambda: server.metric("pqcall_connected_phones") >= 1,
        ONLINE_TIMEOUT_S,
        "bob to be online",
        processes.report,
    )
    call = processes.start(
        net.alice,
        "alice-call",
        alice.command(
            *("call", "bob", "--audio-in", str(alice_wav), "--audio-out", str(out_a)),
            *("--duration", str(CALL_DURATION_S), "--json"),
        ),
        alice.env,
    )
    try:
        wait_until(relay_forwards, CALL_TIMEOUT_S, "relayed media", processes.report)
        killed_at = time.monotonic()
        forwards_again = restart()
        assert call.poll() is None and listen.poll() is None, "the call ended with the relay"
        wait_until(forwards_again, 15.0, "the restarted relay to forward", processes.report)
        gap_s = time.monotonic() - killed_at  # an upper bound: polled every 50 ms
        call.wait(timeout=CALL_TIMEOUT_S * TIMEOUT_SCALE)
        listen.wait(timeout=LISTEN_EXIT_TIMEOUT_S * TIMEOUT_SCALE)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    try:
        assert call.returncode == 0 and listen.returncode == 0, "a phone failed"
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert ours["path"] == theirs["path"] == "relay"
        assert ours["reason"] == "hung up", "alice's call did not run its --duration"
        assert ours["duration_s"] >= CALL_DURATION_S - 0.5
        tails = []
        for out, sent, other in ((out_b, alice_wav, bob_wav), (out_a, bob_wav, alice_wav)):
            # only the seconds after the restart: the speech sent then, not the other voice
            samples, rate = read_wav(out)
            tail = resample(samples, rate, REFERENCE_RATE_HZ)[-int(TAIL_S * REFERENCE_RATE_HZ) :]
            tail_path = out.with_name("tail_" + out.name)
            with wave.open(str(tail_path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(REFERENCE_RATE_HZ)
                wav.writeframes(tail.astype("<i2").tobytes())
            tails.append(active_seconds(tail))
            check_received(tail_path, sent=sent, other=other)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    return gap_s, tails, [ours["packets_lost"], theirs["packets_lost"]]


def test_relayed_call_survives_sigkill_of_the_in_server_relay(make_network, processes, tmp_path):
    net = make_network("isolated")
    data_dir = tmp_path / "server"
    servers = [start_server(net, processes, data_dir)]

    def restart() -> Callable[[], bool]:
        servers[0].process.send_signal(signal.SIGKILL)
        servers[0].process.wait(timeout=STOP_TIMEOUT_S * TIMEOUT_SCALE)
        servers[0] = start_server(net, processes, data_dir, label="server-restarted")
        return lambda: _forwarded(servers[0]) >= 1

    gap_s, tails, lost = _relayed_call(
        net, processes, tmp_path, servers[0], lambda: _forwarded(servers[0]) >= 100, restart
    )
    forwarded_after = _forwarded(servers[0])
    assert forwarded_after >= 50 * (CALL_DURATION_S / 4), "little media after the restart"
    print(  # noqa: T201
        f"\nin-server relay SIGKILL mid-call: forwarding again {gap_s:.2f} s after the kill"
        f" (the server's start is most of it), {forwarded_after:.0f} packets forwarded by the"
        f" restarted process, packets lost (alice, bob) {lost},"
        f" speech in the last {TAIL_S:.0f} s: {np.round(tails, 1).tolist()} s"
    )


def test_relayed_call_survives_sigkill_of_a_separate_relay(make_network, processes, tmp_path):
    net = make_network("isolated")
    data_dir = tmp_path / "server"
    url = f"sqlite+aiosqlite:///{data_dir / 'pqcall.db'}"
    relay_url = f"udp://:{RELAY_PORT}"  # the address each phone reaches the server at
    server = start_server(net, processes, data_dir, "--relay-url", relay_url)
    command = [PYTHON, "-m", "pqcall", "relay", "--port", str(RELAY_PORT), "--db", url]
    relays = [processes.start(net.server, "relay", command)]

    def forwarding(label: str) -> bool:
        return FORWARDING_LINE in processes.output(label)

    def restart() -> Callable[[], bool]:
        relays[0].send_signal(signal.SIGKILL)
        relays[0].wait(timeout=STOP_TIMEOUT_S * TIMEOUT_SCALE)
        relays[0] = processes.start(net.server, "relay-restarted", command)
        return lambda: forwarding("relay-restarted")

    gap_s, tails, lost = _relayed_call(
        net, processes, tmp_path, server, lambda: forwarding("relay"), restart
    )
    restored = processes.output("relay-restarted").split("allocations restored")[0]
    assert restored.rstrip().endswith(" 1"), f"the restarted relay said: {restored!r}"
    assert _forwarded(server) == 0  # the server relayed nothing itself
    relays[0].send_signal(signal.SIGTERM)
    assert relays[0].wait(timeout=STOP_TIMEOUT_S * TIMEOUT_SCALE) == 0
    print(  # noqa: T201
        f"\nseparate relay SIGKILL mid-call: forwarding again {gap_s:.2f} s after the kill"
        f" (the relay's start is most of it), packets lost (alice, bob) {lost},"
        f" speech in the last {TAIL_S:.0f} s: {np.round(tails, 1).tolist()} s"
    )
