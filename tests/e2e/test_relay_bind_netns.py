"""Two hosts, relayed: an attacker who saw alice's relay binds replays them mid-call (issue 17).

Topology ``isolated`` (tests/netns.py): each phone reaches only the server, so the
call between two ``pqcall`` CLI phones goes through the server's relay. A sniffer in
the server's namespace (a packet socket) keeps every relay bind alice sends; once
media flows, eve, a socket on alice's host with another port (another address),
sends all of them to the relay, several times. With bind version 1 this moved
bob's media to eve (issue 17). Now: the relay counts them as ``replayed``, eve
receives nothing, and both phones still hear each other's speech to the end.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading
import time

from pqcall.bench.quality import SAMPLES_DIR
from tests.harness import TIMEOUT_SCALE
from tests.netns import _CLONE_NEWNET, NETNS_DIR, Host

from .conftest import SERVER_PORT, wait_until
from .helpers import call_record, listen_once, two_phones
from .test_two_hosts import check_received

CALL_DURATION_S = 8
CALL_TIMEOUT_S = 60.0 + CALL_DURATION_S
LISTEN_EXIT_TIMEOUT_S = 30.0
ETH_P_IP = 0x0800
BIND_V2 = b"PQRB\x02"
REPLAY_ROUNDS = 5
REPLAYED = 'pqcall_relay_dropped_packets_total{reason="replayed"}'


def packet_socket(host: Host) -> socket.socket:
    """A packet socket (IPv4, link header removed) of this process in ``host``'s namespace."""
    made: list[socket.socket] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(NETNS_DIR / host.ns, os.O_RDONLY)
        try:
            assert libc.setns(fd, _CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)
        made.append(socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP)))

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    return made[0]


class Sniffer(threading.Thread):
    """Keeps the UDP payloads from ``source`` to ``port`` that start with ``prefix``."""

    def __init__(self, sock: socket.socket, source: str, port: int, prefix: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.source, self.port, self.prefix = sock, source, port, prefix
        self.seen: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        self.sock.settimeout(0.1)
        wanted = socket.inet_aton(self.source)
        while not self.stop.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            header = (packet[0] & 0x0F) * 4
            if packet[9] != socket.IPPROTO_UDP or packet[12:16] != wanted:
                continue
            (dst_port,) = struct.unpack_from("!H", packet, header + 2)
            payload = packet[header + 8 :]
            if dst_port == self.port and payload.startswith(self.prefix):
                if payload not in self.seen:
                    self.seen.append(payload)


def test_replayed_binds_mid_call_are_refused_and_the_call_goes_on(
    make_network, processes, tmp_path
):
    net = make_network("isolated")
    phones = two_phones(net, processes, tmp_path)
    server, alice = phones.server, phones.alice
    alice_wav, bob_wav = SAMPLES_DIR / "alice.wav", SAMPLES_DIR / "bob.wav"
    out_a, out_b = tmp_path / "out_a.wav", tmp_path / "out_b.wav"
    relay_at = (net.address_of(net.server, net.alice), SERVER_PORT)
    sniffer = Sniffer(packet_socket(net.server), net.alice.address, SERVER_PORT, BIND_V2)
    sniffer.start()
    eve = net.alice.socket(socket.AF_INET, socket.SOCK_DGRAM)
    eve.bind((net.alice.address, 0))
    eve.settimeout(0.05)

    listen = listen_once(phones, "--audio-in", str(bob_wav), "--audio-out", str(out_b))
    call = processes.start(
        net.alice,
        "alice-call",
        alice.command(
            *("call", "bob", "--audio-in", str(alice_wav), "--audio-out", str(out_a)),
            *("--duration", str(CALL_DURATION_S), "--json"),
        ),
        alice.env,
    )
    eve_got: list[bytes] = []
    sent = 0
    try:
        # media flows through the relay: now eve replays every bind alice sent
        wait_until(
            lambda: server.metric("pqcall_relay_forwarded_packets_total") >= 100,
            CALL_TIMEOUT_S,
            "relayed media",
            processes.report,
        )
        assert sniffer.seen, "the sniffer saw no bind of alice's"
        for _ in range(REPLAY_ROUNDS):
            for data in list(sniffer.seen):
                eve.sendto(data, relay_at)
                sent += 1
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                try:
                    eve_got.append(eve.recv(65535))
                except TimeoutError:
                    pass

        def replayed_count() -> float:
            return server.metrics().get(REPLAYED, 0.0)

        wait_until(
            lambda: replayed_count() >= sent, 10.0, "the replays to be counted", processes.report
        )
        replayed = replayed_count()
        call.wait(timeout=CALL_TIMEOUT_S * TIMEOUT_SCALE)
        listen.wait(timeout=LISTEN_EXIT_TIMEOUT_S * TIMEOUT_SCALE)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    finally:
        sniffer.stop.set()
        sniffer.join()
        eve.close()
    try:
        assert call.returncode == 0 and listen.returncode == 0, "a phone failed"
        ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
        assert ours["path"] == theirs["path"] == "relay"
        assert eve_got == [], "the relay answered or forwarded to eve"
        assert replayed >= sent, f"{replayed} of {sent} replays counted"
        for record in (ours, theirs):
            assert record["result"] == "ended"
            assert record["duration_s"] >= CALL_DURATION_S / 2
        check_received(out_b, sent=alice_wav, other=bob_wav)
        check_received(out_a, sent=bob_wav, other=alice_wav)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    print(  # noqa: T201
        f"\nrelay bind replay: {len(sniffer.seen)} binds of alice's seen, {sent} sent again"
        f" from another port of her host, {replayed:.0f} refused as replays; the call went on"
    )
