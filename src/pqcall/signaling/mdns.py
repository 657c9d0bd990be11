"""LAN discovery of signaling servers with mDNS / DNS-SD (RFC 6762, 6763): what both sides share.

A server announces one DNS-SD instance of ``_pqcall._tcp.local.`` (its HTTP API) with
these TXT keys (all strings; unknown keys are ignored, missing ones take defaults)::

    txtvers  "1"          version of this TXT layout (RFC 6763 section 6.7)
    version  "0.1.0"      the server's pqcall version
    api      "/"          path of the API on that host and port
    tls      "0" | "1"    "1": the API is served over HTTPS
    relay    "5001"       UDP port of the media relay (absent: no relay)

The server announces it (:mod:`pqcall.server.discovery`); phones browse for it
(:mod:`pqcall.client.discovery`). This module holds what both need: the service type,
the layout version, and opening zeroconf's sockets.

Trust: mDNS is unauthenticated; anyone on the LAN can announce a server. A found server
is a convenience for the first connection, nothing more: identities are still pinned and
verified end to end (and a self-signed TLS certificate should still be pinned).

Where multicast does not work (no interface, no multicast route, a sandbox) both sides
raise :class:`DiscoveryUnavailable` with the reason instead of crashing or hanging.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

import ifaddr
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncZeroconf

from pqcall.exceptions import ServerError

__all__ = [
    "SERVICE_TYPE",
    "TXT_LAYOUT_VERSION",
    "UNAVAILABLE_ERRORS",
    "DiscoveryUnavailable",
    "open_zeroconf",
]

SERVICE_TYPE: Final = "_pqcall._tcp.local."
TXT_LAYOUT_VERSION: Final = "1"

UNAVAILABLE_ERRORS: Final = (OSError, RuntimeError, ZeroconfError)
"""What zeroconf raises when mDNS cannot run here."""


class DiscoveryUnavailable(ServerError):
    """mDNS cannot be used here (no multicast-capable interface, or sockets refused)."""


def open_zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    """Open zeroconf's sockets on ``interfaces`` (local addresses; None: all).

    Raises:
        DiscoveryUnavailable: if mDNS cannot run here.
    """
    # zeroconf leaks a socket when told to use an address this host does not have
    if interfaces is not None:
        ours = _host_addresses()
        for interface in interfaces:
            if _normalized(interface) not in ours:
                raise DiscoveryUnavailable(
                    f"mDNS is not available here: {interface} is not an address of this host"
                )
    try:
        if interfaces is None:
            return AsyncZeroconf()
        return AsyncZeroconf(interfaces=list(interfaces))
    except UNAVAILABLE_ERRORS as exc:
        raise DiscoveryUnavailable(f"mDNS is not available here: {exc}") from exc


def _host_addresses() -> set[str]:
    addresses: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addresses.add(_normalized(ip.ip if isinstance(ip.ip, str) else ip.ip[0]))
    return addresses


def _normalized(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
