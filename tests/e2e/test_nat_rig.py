"""The ``wan`` topology's NAT kinds behave as :mod:`tests.netns` says (real sockets, no pqcall).

What the NAT matrix (:mod:`tests.e2e.test_nat_matrix`) relies on: a cone router keeps
the port for every destination, a symmetric one does not; a router that accepts
unsolicited input keeps an entry for it that makes it map its phone's later packet
to that source to another port (the failure the NAT openers avoid), one that drops
it does not.
"""

from __future__ import annotations

import socket

from tests.harness import TIMEOUT_SCALE
from tests.netns import Host

RECEIVE_TIMEOUT_S = 5.0


def udp(host: Host, address: str = "0.0.0.0") -> socket.socket:
    sock = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(RECEIVE_TIMEOUT_S * TIMEOUT_SCALE)
    return sock


def seen_from(receiver: socket.socket) -> tuple[str, int]:
    _, addr = receiver.recvfrom(2048)
    return (str(addr[0]), int(addr[1]))


def test_cone_keeps_the_port_and_an_accepting_router_remaps_after_an_early_probe(make_network):
    net = make_network("wan:cone-drop,cone-accept")
    router_a, router_b = net.hosts["nat-alice"].address, net.hosts["nat-bob"].address
    with (
        udp(net.server, net.server.address) as first,
        udp(net.server, net.server.address) as second,
        udp(net.alice) as alice,
        udp(net.bob) as bob,
    ):
        port_a, port_b = alice.getsockname()[1], bob.getsockname()[1]
        # an early probe to each router's port before the phone sent anything there
        first.sendto(b"early", (router_a, port_a))
        first.sendto(b"early", (router_b, port_b))
        alice.sendto(b"hello", first.getsockname())
        assert seen_from(first) == (router_a, port_a)  # dropped: no entry was kept
        bob.sendto(b"hello", first.getsockname())
        seen = seen_from(first)
        assert seen[0] == router_b
        assert seen[1] != port_b, "the accepting router kept the probe's entry: another port"
        # cone: the same port towards another destination
        alice.sendto(b"hello", second.getsockname())
        assert seen_from(second) == (router_a, port_a)
        bob.sendto(b"hello", second.getsockname())
        assert seen_from(second) == seen  # the socket's one mapping, even the remapped one


def test_symmetric_maps_each_destination_to_another_port(make_network):
    net = make_network("wan:symmetric-drop,symmetric-accept")
    with (
        udp(net.server, net.server.address) as first,
        udp(net.server, net.server.address) as second,
        udp(net.alice) as alice,
    ):
        alice.sendto(b"hello", first.getsockname())
        alice.sendto(b"hello", second.getsockname())
        one, other = seen_from(first), seen_from(second)
        assert one[0] == other[0] == net.hosts["nat-alice"].address
        assert one[1] != other[1]
