"""Bob's address changes mid-call and the call goes on (issue 17 part 4, decision 0720).

Topology ``lan`` (tests/netns.py): server, alice and bob on one switch. Two ``pqcall``
phones call each other (alice ``call``, bob ``listen``), each playing a steady tone.
Two seconds into the call bob's interface gets a new address (10.201.0.13) and the old
one (10.201.0.3) is removed, as when a laptop's WiFi hands it a new lease: alice's
media to the old address is lost, bob's now leaves from the new one, which alice has
never sent to. Bob's interface watch sees the change and nominates his new address;
alice checks it (return routability) and moves the call there, with the same keys.
Both calls must end normally after their full length, and the gap in what each side
heard is measured from the received WAVs (20 ms frames below a tenth of the tone's
level) and printed; the bound asserted is :data:`GAP_BOUND_S` (goal 1 s).
"""

from __future__ import annotations

import itertools
import subprocess
import time
import wave
from pathlib import Path

import numpy as np

from tests.harness import TIMEOUT_SCALE

from .conftest import wait_until
from .helpers import call_record, listen_once, two_phones
from .test_turn_netns import nft_path

CALL_DURATION_S = 8
MOVE_AFTER_S = 2.0  # of media, before bob's address changes
BOB_NEW = "10.201.0.13"
BOB_OLD = "10.201.0.3"
ALICE_HZ, BOB_HZ = 440, 660
GAP_BOUND_S = 2.0 * TIMEOUT_SCALE  # the goal is 1 s; a loaded CI machine gets slack
FRAME_S = 0.02
QUIET_FRACTION = 0.1
RELAY_GAP_BOUND_S = 6.0 * TIMEOUT_SCALE  # silence 1 s + re-check 2 s + binds; goal none yet


def longest_quiet_s(path: Path) -> tuple[float, float]:
    """The longest run of quiet 20 ms frames between the first and the last loud one in
    ``path``, in seconds, and when it started (seconds into the file)."""
    with wave.open(str(path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")[::channels]
    size = int(rate * FRAME_S)
    frames = samples[: len(samples) // size * size].astype(np.float64).reshape(-1, size)
    level = np.sqrt(np.mean(frames**2, axis=1))
    loud = level > QUIET_FRACTION * np.median(level[level > 0]) if np.any(level > 0) else level > 1
    indices = np.flatnonzero(loud)
    assert len(indices) > 2 / FRAME_S, f"{path.name}: under 2 s of tone arrived"
    longest, start = 0, 0
    for before, after in itertools.pairwise(indices):
        if after - before - 1 > longest:
            longest, start = int(after - before - 1), int(before + 1)
    return longest * FRAME_S, start * FRAME_S


def test_bobs_address_changes_mid_call_and_the_call_goes_on(make_network, processes, tmp_path):
    net = make_network("lan")
    phones = two_phones(net, processes, tmp_path)
    alice = phones.alice
    out_a, out_b = tmp_path / "alice_heard.wav", tmp_path / "bob_heard.wav"
    listen = listen_once(phones, "-v", "--audio-in", f"tone:{BOB_HZ}", "--audio-out", str(out_b))
    call = processes.start(
        net.alice,
        "alice-call",
        alice.command(
            *("-v", "call", "bob", "--json", "--duration", str(CALL_DURATION_S)),
            *("--audio-in", f"tone:{ALICE_HZ}", "--audio-out", str(out_a)),
        ),
        alice.env,
    )
    wait_until(
        lambda: "SAS" in processes.errors("bob-listen") + processes.output("bob-listen"),
        30 * TIMEOUT_SCALE,
        "the call to connect",
        processes.report,
    )
    time.sleep(MOVE_AFTER_S)
    # a new address on bob's interface, then the old one removed (promote_secondaries
    # keeps the new one, in the same subnet, when the old primary goes)
    for args in (
        ["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
        ["ip", "address", "add", f"{BOB_NEW}/24", "dev", "eth0"],
        ["ip", "address", "del", f"{BOB_OLD}/24", "dev", "eth0"],
    ):
        net.bob.run(args, check=True, capture_output=True)
    shown = net.bob.run(
        ["ip", "-4", "-o", "address", "show", "dev", "eth0"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    assert BOB_NEW in shown and BOB_OLD not in shown, shown
    try:
        call.wait(timeout=(CALL_DURATION_S + 40) * TIMEOUT_SCALE)
        listen.wait(timeout=30 * TIMEOUT_SCALE)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    try:
        assert call.returncode == 0 and listen.returncode == 0, "a phone failed"
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert ours["result"] == theirs["result"] == "ended", (ours["reason"], theirs["reason"])
        assert ours["path"] == theirs["path"] == "direct"
        assert ours["duration_s"] >= CALL_DURATION_S - 1
        # alice moved her media to bob's new address after checking it
        assert f"media moved to {BOB_NEW}:" in processes.errors("alice-call")
        assert "our addresses changed" in processes.errors("bob-listen")
        gap_a, at_a = longest_quiet_s(out_a)
        gap_b, at_b = longest_quiet_s(out_b)
        print(  # noqa: T201  (pytest -s shows the measured gaps)
            f"\nbob's address {BOB_OLD} -> {BOB_NEW} mid-call: alice heard nothing for"
            f" {gap_a:.2f} s (at {at_a:.1f} s), bob for {gap_b:.2f} s (at {at_b:.1f} s);"
            f" packets lost {ours['packets_lost']} / {theirs['packets_lost']}"
        )
        assert gap_a <= GAP_BOUND_S and gap_b <= GAP_BOUND_S
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None


CUT_DIRECT = """
table inet pqcall_cut {
    chain forward { type filter hook forward priority 0;
        ip saddr 10.204.1.2 ip daddr 10.204.2.2 drop;
        ip saddr 10.204.2.2 ip daddr 10.204.1.2 drop; }
}
"""
RELAY_CALL_S = 22
CUT_AFTER_S, CUT_FOR_S = 2.0, 8.0


def test_direct_then_relay_then_direct_behind_nats(make_network, processes, tmp_path):
    """``wan:cone-drop,cone-drop``: the call starts direct between the two NATs; then the
    internet router drops everything between them (the server stays reachable), so
    both phones' re-checks fail, they bind to the pqcall relay and the call goes on
    through it; when the router lets them through again, the re-check on the relay
    finds the direct path and the call moves back. Both calls end normally."""
    net = make_network("wan:cone-drop,cone-drop")
    phones = two_phones(net, processes, tmp_path)
    out_a, out_b = tmp_path / "alice_heard.wav", tmp_path / "bob_heard.wav"
    listen = listen_once(phones, "-v", "--audio-in", f"tone:{BOB_HZ}", "--audio-out", str(out_b))
    call = processes.start(
        net.alice,
        "alice-call",
        phones.alice.command(
            *("-v", "call", "bob", "--json", "--duration", str(RELAY_CALL_S)),
            *("--audio-in", f"tone:{ALICE_HZ}", "--audio-out", str(out_a)),
        ),
        phones.alice.env,
    )
    wait_until(
        lambda: "SAS" in processes.errors("bob-listen") + processes.output("bob-listen"),
        30 * TIMEOUT_SCALE,
        "the call to connect",
        processes.report,
    )
    internet = net.hosts["internet"]
    time.sleep(CUT_AFTER_S)
    internet.run([nft_path(), "-f", "-"], input=CUT_DIRECT, text=True, check=True)
    time.sleep(CUT_FOR_S)
    internet.run([nft_path(), "delete", "table", "inet", "pqcall_cut"], check=True)
    try:
        call.wait(timeout=(RELAY_CALL_S + 40) * TIMEOUT_SCALE)
        listen.wait(timeout=30 * TIMEOUT_SCALE)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    try:
        assert call.returncode == 0 and listen.returncode == 0, "a phone failed"
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert ours["result"] == theirs["result"] == "ended", (ours["reason"], theirs["reason"])
        assert ours["path"] == "direct"  # as chosen at the start
        relay = f"{net.server.address}:5001"
        for label, direct in (("alice-call", "10.204.2.2:"), ("bob-listen", "10.204.1.2:")):
            log = processes.errors(label)
            # (relay): both bound at the relay; or (nominated): the peer got there first
            to_relay = log.find(f"media moved to {relay} (")
            assert to_relay >= 0, f"{label} never moved to the relay"
            assert log.find(f"media moved to {direct}", to_relay) > to_relay, (
                f"{label} did not move back to the direct path"
            )
        gap_a, at_a = longest_quiet_s(out_a)
        gap_b, at_b = longest_quiet_s(out_b)
        print(  # noqa: T201
            f"\ndirect path cut for {CUT_FOR_S:.0f} s mid-call: longest quiet {gap_a:.2f} s"
            f" at alice (at {at_a:.1f} s), {gap_b:.2f} s at bob (at {at_b:.1f} s)"
        )
        assert gap_a <= RELAY_GAP_BOUND_S and gap_b <= RELAY_GAP_BOUND_S
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
