"""The topologies of :mod:`tests.netns` as data: hosts, links, routes, NAT rules.

:func:`plan_of` turns a topology name (:data:`TOPOLOGIES`, or ``wan:ALICE,BOB`` with
each one of :data:`NAT_KINDS`) into the :class:`Plan` that
:meth:`tests.netns.Network.create` builds; :func:`nat_rules` is the nftables ruleset
of one router. The drawings are in :mod:`tests.netns`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["NAT_KINDS", "TOPOLOGIES", "Link", "Plan", "nat_rules", "plan_of"]

TOPOLOGIES: Final = ("lan", "isolated", "nat", "wan")
"""The topologies :meth:`Network.create` builds (``wan`` also as ``wan:ALICE,BOB``)."""
NAT_KINDS: Final = ("cone-accept", "cone-drop", "symmetric-accept", "symmetric-drop")
"""A ``wan`` router's NAT: port mapping (cone, symmetric) and unsolicited input (accept, drop)."""


@dataclass(frozen=True)
class Link:
    """A veth pair: ``(host, interface, address/prefix or "")`` at each end."""

    a: tuple[str, str, str]
    b: tuple[str, str, str]


@dataclass(frozen=True)
class Plan:
    """What to build: hosts and their main address, links, bridges, routes, options."""

    hosts: dict[str, str]  # role -> main address ("" for a switch)
    links: list[Link]
    bridges: dict[str, list[str]]  # role -> its bridge br0's ports
    routes: dict[str, str]  # role -> default gateway
    forwarding: dict[str, bool]  # role -> net.ipv4.ip_forward
    masquerade: dict[str, str]  # role -> interface to masquerade out of
    nat_kinds: dict[str, str] = field(default_factory=dict)  # role -> one of NAT_KINDS
    seen_as: dict[tuple[str, str], str] = field(default_factory=dict)  # (to, from) -> address


def plan_of(topology: str) -> Plan:
    if topology == "lan":
        return Plan(
            hosts={
                "switch": "",
                "server": "10.201.0.1",
                "alice": "10.201.0.2",
                "bob": "10.201.0.3",
            },
            links=[
                Link((role, "eth0", f"{address}/24"), ("switch", f"p-{role}", ""))
                for role, address in (
                    ("server", "10.201.0.1"),
                    ("alice", "10.201.0.2"),
                    ("bob", "10.201.0.3"),
                )
            ],
            bridges={"switch": ["p-server", "p-alice", "p-bob"]},
            routes={"alice": "10.201.0.1", "bob": "10.201.0.1"},
            forwarding={"server": False},
            masquerade={},
        )
    if topology == "isolated":
        return Plan(
            hosts={"server": "10.202.1.1", "alice": "10.202.1.2", "bob": "10.202.2.2"},
            links=[
                Link(("alice", "eth0", "10.202.1.2/24"), ("server", "eth1", "10.202.1.1/24")),
                Link(("bob", "eth0", "10.202.2.2/24"), ("server", "eth2", "10.202.2.1/24")),
            ],
            bridges={},
            routes={"alice": "10.202.1.1", "bob": "10.202.2.1"},
            forwarding={"server": False},
            masquerade={},
            seen_as={("server", "alice"): "10.202.1.1", ("server", "bob"): "10.202.2.1"},
        )
    if topology == "nat":
        return Plan(
            hosts={
                "switch": "",
                "server": "10.203.0.1",
                "nat-alice": "10.203.0.2",
                "nat-bob": "10.203.0.3",
                "alice": "192.168.1.2",
                "bob": "192.168.2.2",
            },
            links=[
                Link(("server", "eth0", "10.203.0.1/24"), ("switch", "p-server", "")),
                Link(("nat-alice", "wan", "10.203.0.2/24"), ("switch", "p-alice", "")),
                Link(("nat-bob", "wan", "10.203.0.3/24"), ("switch", "p-bob", "")),
                Link(("alice", "eth0", "192.168.1.2/24"), ("nat-alice", "lan", "192.168.1.1/24")),
                Link(("bob", "eth0", "192.168.2.2/24"), ("nat-bob", "lan", "192.168.2.1/24")),
            ],
            bridges={"switch": ["p-server", "p-alice", "p-bob"]},
            routes={"alice": "192.168.1.1", "bob": "192.168.2.1"},
            forwarding={"server": False, "nat-alice": True, "nat-bob": True},
            masquerade={"nat-alice": "wan", "nat-bob": "wan"},
        )
    if topology == "wan" or topology.startswith("wan:"):
        return wan_plan(topology)
    raise ValueError(f"unknown topology {topology!r} (one of {', '.join(TOPOLOGIES)})")


def wan_plan(topology: str) -> Plan:
    kinds = (topology.partition(":")[2] or "cone-accept,cone-accept").split(",")
    if len(kinds) != 2 or not set(kinds) <= set(NAT_KINDS):
        raise ValueError(f"{topology!r}: expected wan:ALICE,BOB with each one of {NAT_KINDS}")
    return Plan(
        hosts={
            "internet": "10.204.0.1",
            "server": "10.204.0.2",
            "nat-alice": "10.204.1.2",
            "nat-bob": "10.204.2.2",
            "alice": "192.168.1.2",
            "bob": "192.168.2.2",
        },
        links=[
            Link(("server", "eth0", "10.204.0.2/24"), ("internet", "p-server", "10.204.0.1/24")),
            Link(("nat-alice", "wan", "10.204.1.2/24"), ("internet", "p-alice", "10.204.1.1/24")),
            Link(("nat-bob", "wan", "10.204.2.2/24"), ("internet", "p-bob", "10.204.2.1/24")),
            Link(("alice", "eth0", "192.168.1.2/24"), ("nat-alice", "lan", "192.168.1.1/24")),
            Link(("bob", "eth0", "192.168.2.2/24"), ("nat-bob", "lan", "192.168.2.1/24")),
        ],
        bridges={},
        routes={
            "alice": "192.168.1.1",
            "bob": "192.168.2.1",
            "nat-alice": "10.204.1.1",
            "nat-bob": "10.204.2.1",
            "server": "10.204.0.1",
        },
        forwarding={"server": False, "internet": True, "nat-alice": True, "nat-bob": True},
        masquerade={"nat-alice": "wan", "nat-bob": "wan"},
        nat_kinds={"nat-alice": kinds[0], "nat-bob": kinds[1]},
    )


def nat_rules(interface: str, kind: str) -> str:
    """nftables rules of a router that masquerades out of ``interface`` (a :data:`NAT_KINDS`)."""
    mapping, _, unsolicited = kind.partition("-")
    flags = " fully-random" if mapping == "symmetric" else ""
    rules = (
        "table ip nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{interface}" masquerade{flags}\n'
        "  }\n"
        "}\n"
    )
    if unsolicited == "drop":
        rules += (
            "table ip filter {\n"
            "  chain input {\n"
            "    type filter hook input priority filter; policy drop;\n"
            "    ct state established,related accept\n"
            f'    iifname != "{interface}" accept\n'
            "  }\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy drop;\n"
            "    ct state established,related accept\n"
            f'    iifname != "{interface}" accept\n'
            "  }\n"
            "}\n"
        )
    return rules
