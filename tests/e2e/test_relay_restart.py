"""Two hosts, relayed, and the relay killed mid-call (issue 18 part 3).

Topology ``isolated`` (tests/netns.py): each phone reaches only the server, so the call
between two ``pqcall`` CLI phones goes through the relay. Once media flows, the
process running the relay gets SIGKILL and is started again on the same database: the
in-server relay (``pqcall server`` restarted on its data dir). The restarted relay
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

import numpy as np

from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, resample
from tests.harness import TIMEOUT_SCALE

from .conftest import PqcallServer, start_server, wait_until
from .helpers import Phone, call_record
from .test_two_hosts import ONLINE_TIMEOUT_S, active_seconds, check_received, read_wav

CALL_DURATION_S = 16
CALL_TIMEOUT_S = 60.0 + CALL_DURATION_S
LISTEN_EXIT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
TAIL_S = 4.0  # the last seconds of received audio: after the restart
MIN_TAIL_SPEECH_S = 1.0  # speech in them, at least (alice.wav and bob.wav talk ~60 %)
FORWARDED = "pqcall_relay_forwarded_packets_total"


def _forwarded(server: PqcallServer) -> float:
    try:
        return server.metric(FORWARDED)
    except OSError:
        return 0.0


def test_relayed_call_survives_sigkill_of_the_in_server_relay(make_network, processes, tmp_path):
    net = make_network("isolated")
    data_dir = tmp_path / "server"
    server = start_server(net, processes, data_dir)
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
        wait_until(
            lambda: _forwarded(server) >= 100,
            CALL_TIMEOUT_S,
            "relayed media",
            processes.report,
        )
        server.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        server.process.wait(timeout=STOP_TIMEOUT_S * TIMEOUT_SCALE)
        assert call.poll() is None and listen.poll() is None, "the call ended with the relay"
        server = start_server(net, processes, data_dir, label="server-restarted")
        started_at = time.monotonic()
        wait_until(
            lambda: _forwarded(server) >= 1,
            10.0,
            "the restarted relay to forward",
            processes.report,
        )
        gap_s = time.monotonic() - killed_at  # an upper bound: metrics polled every 50 ms
        call.wait(timeout=CALL_TIMEOUT_S * TIMEOUT_SCALE)
        listen.wait(timeout=LISTEN_EXIT_TIMEOUT_S * TIMEOUT_SCALE)
        forwarded_after = _forwarded(server)
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
            check_received(out, sent=sent, other=other)
            samples, rate = read_wav(out)
            tail = resample(samples, rate, REFERENCE_RATE_HZ)[-int(TAIL_S * REFERENCE_RATE_HZ) :]
            tails.append(active_seconds(tail))
            assert tails[-1] >= MIN_TAIL_SPEECH_S, f"{out.name}: no speech after the restart"
        assert forwarded_after >= 50 * (CALL_DURATION_S / 4), "little media after the restart"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    lost = [record["packets_lost"] for record in (ours, theirs)]
    print(  # noqa: T201
        f"\nin-server relay SIGKILL mid-call: forwarding again {gap_s:.2f} s after the kill"
        f" (server start {started_at - killed_at:.2f} s of it), {forwarded_after:.0f} packets"
        f" forwarded by the restarted process, packets lost (alice, bob) {lost},"
        f" speech in the last {TAIL_S:.0f} s: {np.round(tails, 1).tolist()} s"
    )
