"""Announcing this signaling server on the LAN with mDNS (the server's side of discovery).

:class:`ServerAnnouncer` publishes one DNS-SD instance of the service and TXT layout
that :mod:`pqcall.signaling.mdns` describes, until closed; phones find it with
:mod:`pqcall.client.discovery`. Where multicast does not work it raises
:class:`~pqcall.signaling.mdns.DiscoveryUnavailable` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Sequence

import ifaddr
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from pqcall import __version__
from pqcall.exceptions import LocalProtocolError
from pqcall.signaling.mdns import (
    SERVICE_TYPE,
    TXT_LAYOUT_VERSION,
    UNAVAILABLE_ERRORS,
    DiscoveryUnavailable,
    open_zeroconf,
)

__all__ = ["DiscoveryUnavailable", "ServerAnnouncer", "local_addresses"]

MAX_INSTANCE_NAME_BYTES = 63  # one DNS label (RFC 6763 section 4.1.1)

logger = logging.getLogger(__name__)


class ServerAnnouncer:
    """Announces one signaling server on the LAN until closed.

    Args:
        name: instance name users see (1-63 bytes of UTF-8, no dots).
        port: TCP port of the API.
        addresses: addresses to announce (default: this host's IPv4 and global IPv6
            addresses; loopback only if there is nothing else).
        api_path: path of the API under that port.
        relay_port: UDP port of the media relay, or None.
        is_tls: whether the API is served over HTTPS.
        interfaces: local addresses to send mDNS on (default: all).
    """

    def __init__(
        self,
        name: str,
        port: int,
        addresses: Sequence[str] | None = None,
        *,
        api_path: str = "/",
        relay_port: int | None = None,
        is_tls: bool = False,
        interfaces: Sequence[str] | None = None,
    ) -> None:
        _check_instance_name(name)
        if not 0 < port < 65536:
            raise LocalProtocolError(f"port must be 1-65535, not {port}")
        properties = {
            "txtvers": TXT_LAYOUT_VERSION,
            "version": __version__,
            "api": api_path,
            "tls": "1" if is_tls else "0",
        }
        if relay_port is not None:
            properties["relay"] = str(relay_port)
        self._info = ServiceInfo(  # what is announced
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=port,
            properties=properties,
            server=f"pqcall-{_host_label()}.local.",
            parsed_addresses=list(addresses) if addresses is not None else local_addresses(),
        )
        self._interfaces = interfaces  # where mDNS runs
        self._zeroconf: AsyncZeroconf | None = None  # open between start and close
        self._registration: asyncio.Task[None] | None = None  # probing and announcing

    @property
    def name(self) -> str:
        """The instance name in use (zeroconf appends ``-2`` etc. if the name was taken)."""
        return self._info.name.removesuffix("." + SERVICE_TYPE)

    async def start(self, *, wait: bool = True) -> None:
        """Open mDNS sockets and announce the server.

        Args:
            wait: return only once announced (about 1.7 s of probing, RFC 6762
                section 8); False returns as soon as the sockets are open and
                announces in the background (failures then only logged).

        Raises:
            DiscoveryUnavailable: if mDNS cannot run here, or the announcement failed.
            LocalProtocolError: if already started.
        """
        if self._zeroconf is not None:
            raise LocalProtocolError("announcer already started")
        if not self._info.parsed_addresses():
            raise DiscoveryUnavailable("no network address to announce")
        self._zeroconf = open_zeroconf(self._interfaces)
        self._registration = asyncio.create_task(self._register(self._zeroconf))
        self._registration.add_done_callback(_consume_outcome)
        if wait:
            try:
                await asyncio.shield(self._registration)
            except DiscoveryUnavailable:
                await self.close()
                raise

    async def close(self) -> None:
        """Withdraw the announcement (goodbye packets) and close the sockets. Idempotent."""
        zeroconf, self._zeroconf = self._zeroconf, None
        registration, self._registration = self._registration, None
        if registration is not None and not registration.done():
            registration.cancel()
        if registration is not None:
            with contextlib.suppress(asyncio.CancelledError, DiscoveryUnavailable):
                await registration
        if zeroconf is not None:
            try:
                await zeroconf.async_close()
            except UNAVAILABLE_ERRORS as exc:
                logger.debug("closing mDNS: %s", exc)

    async def _register(self, zeroconf: AsyncZeroconf) -> None:
        try:
            announced = await zeroconf.async_register_service(self._info, allow_name_change=True)
            await announced
        except UNAVAILABLE_ERRORS as exc:
            logger.warning("cannot announce the server on the LAN (mDNS): %s", exc)
            raise DiscoveryUnavailable(f"cannot announce on the LAN (mDNS): {exc}") from exc
        logger.info("announced %r on the LAN (mDNS %s)", self.name, SERVICE_TYPE)


def local_addresses() -> list[str]:
    """This host's IPv4 and global IPv6 addresses (loopback only if there is nothing else)."""
    ipv4: list[str] = []
    ipv6: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ipaddress.ip_address(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
            if address.is_loopback:
                loopback.append(str(address))
            elif address.version == 4:
                ipv4.append(str(address))
            elif not address.is_link_local:
                ipv6.append(str(address))
    return ipv4 + ipv6 or loopback


def _check_instance_name(name: str) -> None:
    encoded = name.encode()
    if not 0 < len(encoded) <= MAX_INSTANCE_NAME_BYTES or "." in name:
        raise LocalProtocolError(
            f"server name must be 1-{MAX_INSTANCE_NAME_BYTES} bytes without dots: {name!r}"
        )


def _host_label() -> str:
    # a DNS label from the host name: letters, digits and hyphens
    label = "".join(c if c.isascii() and c.isalnum() else "-" for c in socket.gethostname())
    return label.strip("-")[:40] or "server"


def _consume_outcome(task: asyncio.Task[None]) -> None:
    # a background announcement's failure is already logged; mark it retrieved
    if not task.cancelled():
        task.exception()
