"""A call whose callee's UDP is blocked by nftables goes through TURN over TCP (issue 17).

Topology ``isolated`` (tests/netns.py): alice 10.202.1.2 and bob 10.202.2.2 reach only
the server's namespace, which does not forward. A real coturn runs there (temp
config, random ports, relayed addresses on alice's side, 10.202.1.1). In bob's
namespace nftables drops every UDP datagram in and out (but on loopback, as a
network that blocks UDP would). Both phones are sockets of
this test process made inside their namespaces: alice an ordinary UDP media socket,
bob only a TCP connection to coturn. The credentials are the ones ``pqcall server
--turn`` hands out (server/turn.py). Path checks find the path (alice learns bob's
relayed address from his checks: peer-reflexive), then SFrame media runs both ways.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pqcall.media.audio import ToneSource
from pqcall.server.turn import TurnService
from pqcall.transport.connect import run_path_selection
from pqcall.transport.path_choice import PathKind
from pqcall.transport.path_messages import PathRole
from pqcall.transport.path_responder import PathResponder
from pqcall.transport.pathcheck import PathSelection
from pqcall.transport.session import MediaSession, MediaSettings
from pqcall.transport.turn import TurnRelay, TurnUrl, run_path_selection_over_turn
from tests.harness import TIMEOUT_SCALE
from tests.netns import Network
from tests.transport.test_session import (
    CALLEE_TONE_HZ,
    CALLER_TONE_HZ,
    MemorySink,
    dominant_hz,
    rms,
    run,
)
from tests.turnserver import Coturn
from tests.utils import handshake_pair, keys_of

from .helpers import call_record, two_phones
from .test_two_hosts import speech_call

CALLER_KEYS, CALLEE_KEYS = keys_of(handshake_pair())
SERVER_FOR_ALICE = "10.202.1.1"
SERVER_FOR_BOB = "10.202.2.1"
ALICE = "10.202.1.2"
BOB = "10.202.2.2"
CALL_S = 2.0 * TIMEOUT_SCALE
PHONE_CALL_S = 6
BLOCK_UDP = """
table inet pqcall_block_udp {
    chain output { type filter hook output priority 0; oifname != "lo" meta l4proto udp drop; }
    chain input { type filter hook input priority 0; iifname != "lo" meta l4proto udp drop; }
}
"""


def nft_path() -> str:
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail("no nft command (install nftables)")
    return found


def start_coturn(net: Network, tmp_path: Path) -> Coturn:
    """coturn in the server's namespace: listening for bob, relaying on alice's side."""
    return Coturn.start(
        Path(tmp_path),
        listen=SERVER_FOR_BOB,
        also_listen=[SERVER_FOR_ALICE],
        relay_ip=SERVER_FOR_ALICE,
        popen=lambda args: net.server.popen(list(args), stderr=subprocess.DEVNULL),
        wait=lambda port: net.bob.wait_for_port(port, SERVER_FOR_BOB, timeout_s=10 * TIMEOUT_SCALE),
    )


def test_bobs_udp_is_blocked_and_the_call_goes_through_turn_over_tcp(make_network, tmp_path):
    net = make_network("isolated")
    coturn = start_coturn(net, tmp_path)
    net.bob.run([nft_path(), "-f", "-"], input=BLOCK_UDP, text=True, check=True)

    async def main() -> None:
        # alice: an ordinary UDP media socket; bob: UDP is dropped, so it cannot reach her
        alice_sock = net.alice.socket(socket.AF_INET, socket.SOCK_DGRAM)
        alice_sock.bind((ALICE, 0))
        alice_at = (ALICE, alice_sock.getsockname()[1])
        probe = net.bob.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):  # nftables drops it on the way out (EPERM)
            probe.sendto(b"is UDP open?", alice_at)
        probe.close()
        # bob allocates on coturn over TCP with the credentials the server hands out
        url = TurnUrl.parse(f"turn:{SERVER_FOR_BOB}:{coturn.port}?transport=tcp")
        grant = TurnService((url,), coturn.secret).grant("f" * 32, is_caller=False)
        tcp = net.bob.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setblocking(False)
        await asyncio.get_running_loop().sock_connect(tcp, (SERVER_FOR_BOB, coturn.port))
        relay = await TurnRelay.allocate(
            url, grant.username, grant.password, sock=tcp, timeout_s=10 * TIMEOUT_SCALE
        )
        assert relay.relayed_address[0] == SERVER_FOR_ALICE
        # path selection: alice offers her address; bob's host candidate is unreachable
        loop = asyncio.get_running_loop()
        started = loop.time()
        alice_choice, bob_choice = await asyncio.gather(
            run_path_selection(
                alice_sock,
                PathSelection(
                    CALLER_KEYS,
                    PathRole.CONTROLLING,
                    [(BOB, 40000)],
                    token_source=secrets.token_bytes,
                ),
            ),
            run_path_selection_over_turn(
                relay,
                PathSelection(
                    CALLEE_KEYS, PathRole.CONTROLLED, [alice_at], token_source=secrets.token_bytes
                ),
            ),
        )
        assert alice_choice.kind is bob_choice.kind is PathKind.DIRECT
        assert alice_choice.peer == relay.relayed_address  # learned from bob's checks
        assert bob_choice.peer == alice_at
        alice_hears, bob_hears = MemorySink(), MemorySink()
        alice = MediaSession(
            CALLER_KEYS,
            ToneSource(CALLER_TONE_HZ),
            alice_hears,
            settings=MediaSettings(media_timeout_s=10.0),
            side_channel=PathResponder(CALLER_KEYS, alice_choice),
        )
        bob = MediaSession(
            CALLEE_KEYS,
            ToneSource(CALLEE_TONE_HZ),
            bob_hears,
            settings=MediaSettings(media_timeout_s=10.0),
            side_channel=PathResponder(CALLEE_KEYS, bob_choice),
        )
        await alice.open(sock=alice_sock)
        await bob.open(endpoint=relay.endpoint)
        alice.connect(alice_choice.peer)
        bob.connect(bob_choice.peer)
        try:
            while bob.snapshot().packets_received == 0 and loop.time() - started < CALL_S:
                await asyncio.sleep(0.005)
            first_audio_ms = (loop.time() - started) * 1000
            await asyncio.sleep(CALL_S)
            print(  # noqa: T201
                f"\nTURN over TCP, bob's UDP dropped: path {alice_choice.kind} via"
                f" {alice_choice.peer[0]}:{alice_choice.peer[1]} (coturn) after"
                f" {alice_choice.elapsed_ms:.0f} ms, first audio at bob {first_audio_ms:.0f} ms"
            )
            assert dominant_hz(bob_hears.tail(0.5)) == pytest.approx(CALLER_TONE_HZ, abs=4)
            assert dominant_hz(alice_hears.tail(0.5)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
            assert rms(bob_hears.tail(0.5)) > 0.25 and rms(alice_hears.tail(0.5)) > 0.25
            for session in (alice, bob):
                stats = session.snapshot()
                assert stats.packets_received >= 50
                assert stats.packets_rejected == 0
        finally:
            await alice.close()
            await bob.close()

    try:
        run(main)
    finally:
        coturn.stop()


def test_a_pqcall_call_with_bobs_udp_blocked_goes_through_turn(make_network, processes, tmp_path):
    """The whole softphone: ``pqcall server --turn ... --turn-secret-file``, two CLI phones;
    bob's namespace drops UDP, so his phone's UDP probe of the relay gets no answer and
    it takes the call through coturn over TCP."""
    net = make_network("isolated")
    coturn = start_coturn(net, tmp_path)
    secret = tmp_path / "turn-secret"
    secret.write_bytes(coturn.secret + b"\n")
    secret.chmod(0o600)
    try:
        phones = two_phones(
            net,
            processes,
            tmp_path,
            *("--turn", f"turn:{SERVER_FOR_BOB}:{coturn.port}?transport=tcp"),
            *("--turn-secret-file", str(secret)),
        )
        net.bob.run([nft_path(), "-f", "-"], input=BLOCK_UDP, text=True, check=True)
        spoken = speech_call(phones, tmp_path, PHONE_CALL_S)
        try:
            assert spoken.listen.returncode == 0, "bob's listen failed"
            ours, theirs = (
                call_record(processes, "alice-call"),
                call_record(processes, "bob-listen"),
            )
            assert ours["result"] == theirs["result"] == "ended"
            # alice sends to bob's relayed address on coturn (to her, bob's address);
            # bob's media goes through coturn over TCP, and his record says so (not his
            # loopback proxy, not "direct")
            assert ours["path"] == "direct" and ours["path_turn_to"] is None
            assert ours["path_address"].startswith(f"{SERVER_FOR_ALICE}:")
            assert theirs["path"] == "turn-tcp"
            assert theirs["path_address"] == f"{SERVER_FOR_BOB}:{coturn.port}"
            assert theirs["path_turn_to"] == "direct"
            spoken.check_both_ways()
            print(  # noqa: T201
                f"\npqcall call, bob's UDP dropped: alice's path {ours['path']} via"
                f" {ours['path_address']}, bob's {theirs['path']} via {theirs['path_address']}"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{processes.report()}") from None
    finally:
        coturn.stop()
