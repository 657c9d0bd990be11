"""Finding signaling servers on the LAN with mDNS (the phone's side of discovery).

Phones call :func:`find_servers` to list what answers on the LAN; the service and its
TXT layout are :mod:`pqcall.signaling.mdns`, the announcer is the server's
(:mod:`pqcall.server.discovery`). Everything read here came from the network and is
parsed defensively; a found server is a convenience, not a trust decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from pqcall.signaling.mdns import (
    SERVICE_TYPE,
    UNAVAILABLE_ERRORS,
    DiscoveryUnavailable,
    open_zeroconf,
)

__all__ = ["FIND_TIMEOUT_S", "DiscoveryUnavailable", "FoundServer", "find_servers"]

FIND_TIMEOUT_S = 2.0
MIN_RESOLVE_TIMEOUT_MS = 100  # zeroconf needs a little time even for cached answers

logger = logging.getLogger(__name__)


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
    zeroconf = open_zeroconf(interfaces)
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
    except UNAVAILABLE_ERRORS as exc:
        raise DiscoveryUnavailable(f"cannot browse the LAN (mDNS): {exc}") from exc
    finally:
        with contextlib.suppress(*UNAVAILABLE_ERRORS):
            await zeroconf.async_close()
    return sorted(found.values(), key=lambda server: server.name)


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


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536
