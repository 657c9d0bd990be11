"""LAN discovery of signaling servers with mDNS / DNS-SD (RFC 6762, RFC 6763).

A server announces one DNS-SD instance of ``_pqcall._tcp.local.`` (its HTTP API) with
these TXT keys (all strings; unknown keys are ignored, missing ones take defaults)::

    txtvers  "1"          version of this TXT layout (RFC 6763 section 6.7)
    version  "0.1.0"      the server's pqcall version
    api      "/"          path of the API on that host and port
    tls      "0" | "1"    "1": the API is served over HTTPS
    relay    "5001"       UDP port of the media relay (absent: no relay)

Phones call :func:`find_servers` to list what answers on the LAN.

Trust: mDNS is unauthenticated; anyone on the LAN can announce a server. A found server
is a convenience for the first connection, nothing more: identities are still pinned and
verified end to end (and a self-signed TLS certificate should still be pinned).

Where multicast does not work (no interface, no multicast route, a sandbox) both sides
raise :class:`DiscoveryUnavailable` with the reason instead of crashing or hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr
from zeroconf import Error as ZeroconfError
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from pqcall import __version__
from pqcall.exceptions import LocalProtocolError, ServerError

SERVICE_TYPE = "_pqcall._tcp.local."
TXT_LAYOUT_VERSION = "1"
MAX_INSTANCE_NAME_BYTES = 63  # one DNS label (RFC 6763 section 4.1.1)
FIND_TIMEOUT_S = 2.0
MIN_RESOLVE_TIMEOUT_MS = 100  # zeroconf needs a little time even for cached answers

logger = logging.getLogger(__name__)

_UNAVAILABLE_ERRORS = (OSError, RuntimeError, ZeroconfError)  # what zeroconf raises then


class DiscoveryUnavailable(ServerError):
    """mDNS cannot be used here (no multicast-capable interface, or sockets refused)."""


@dataclass(frozen=True, slots=True)
class FoundServer:
    """A signaling server that answered on the LAN."""

    name: str
    """Its instance name (e.g. ``"pqcall on kitchen-pc"``)."""
    url: str
    """Base URL of its API, on its first address (``http://192.168.1.20:5001``)."""
    addresses: tuple[str, ...]
    """All addresses it announced (IPv4 first)."""
    port: int
    """TCP port of the API."""
    version: str
    """Its pqcall version ("" if it did not say)."""
    relay_port: int | None
    """UDP port of its media relay, if it has one."""


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
        self._zeroconf = _open_zeroconf(self._interfaces)
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
            except _UNAVAILABLE_ERRORS as exc:
                logger.debug("closing mDNS: %s", exc)

    async def _register(self, zeroconf: AsyncZeroconf) -> None:
        try:
            announced = await zeroconf.async_register_service(self._info, allow_name_change=True)
            await announced
        except _UNAVAILABLE_ERRORS as exc:
            logger.warning("cannot announce the server on the LAN (mDNS): %s", exc)
            raise DiscoveryUnavailable(f"cannot announce on the LAN (mDNS): {exc}") from exc
        logger.info("announced %r on the LAN (mDNS %s)", self.name, SERVICE_TYPE)


async def find_servers(
    timeout_s: float = FIND_TIMEOUT_S, *, interfaces: Sequence[str] | None = None
) -> list[FoundServer]:
    """Browse the LAN for signaling servers for ``timeout_s`` seconds.

    Args:
        timeout_s: how long to listen (mDNS has no "that was all"; answers trickle in).
        interfaces: local addresses to query on (default: all).

    Returns:
        Every server that answered and resolved in time, sorted by name.

    Raises:
        DiscoveryUnavailable: if mDNS cannot run here.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    zeroconf = _open_zeroconf(interfaces)
    found: dict[str, FoundServer] = {}
    resolving: dict[str, asyncio.Task[None]] = {}

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        remaining_ms = int((deadline - loop.time()) * 1000)
        if await info.async_request(zeroconf.zeroconf, max(MIN_RESOLVE_TIMEOUT_MS, remaining_ms)):
            server = _found_server(info)
            if server is not None:
                found[name] = server

    def on_service_state_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
        elif name not in resolving or resolving[name].done():
            resolving[name] = asyncio.create_task(resolve(name))

    try:
        browser = AsyncServiceBrowser(
            zeroconf.zeroconf, SERVICE_TYPE, handlers=[on_service_state_change]
        )
        try:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            await browser.async_cancel()
            for task in resolving.values():
                task.cancel()
            results = await asyncio.gather(*resolving.values(), return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    logger.debug("resolving a server failed: %s", result)
    except _UNAVAILABLE_ERRORS as exc:
        raise DiscoveryUnavailable(f"cannot browse the LAN (mDNS): {exc}") from exc
    finally:
        with contextlib.suppress(*_UNAVAILABLE_ERRORS):
            await zeroconf.async_close()
    return sorted(found.values(), key=lambda server: server.name)


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


def _open_zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
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
    except _UNAVAILABLE_ERRORS as exc:
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


def _found_server(info: AsyncServiceInfo) -> FoundServer | None:
    # everything here came from the network: parse defensively
    addresses = info.parsed_scoped_addresses()
    if not addresses or not info.port:
        return None
    addresses.sort(key=lambda a: ":" in a)  # IPv4 first
    properties = info.decoded_properties
    scheme = "https" if properties.get("tls") == "1" else "http"
    api_path = properties.get("api") or "/"
    if not api_path.startswith("/"):
        api_path = "/"
    relay = properties.get("relay") or ""
    host = addresses[0]
    if ":" in host:
        host = f"[{host}]"
    return FoundServer(
        name=info.name.removesuffix("." + SERVICE_TYPE),
        url=f"{scheme}://{host}:{info.port}{api_path.rstrip('/')}",
        addresses=tuple(addresses),
        port=info.port,
        version=properties.get("version") or "",
        relay_port=int(relay) if _is_port(relay) else None,
    )


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


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536
