"""The operations components every server runs: the media relay and the mDNS announcer.

:func:`pqcall.server.app.create_app` starts :func:`default_components` first:

- :class:`RelayComponent` runs the UDP :class:`~pqcall.server.relay.MediaRelay` on
  ``settings.relay_port`` (default: the HTTP port's number) and publishes it as
  ``context.extras["relay"]``; :func:`relay_endpoint` is the address to give phones.
- :class:`AnnouncerComponent` (only with ``settings.announce_mdns``) announces the
  server on the LAN; if mDNS cannot run, it logs one warning and the server runs on.

For the call code: ``context.extras["relay"]`` is the running ``MediaRelay`` (absent
if it is not running); ``relay.allocate(call_id)`` when a call needs relaying,
``relay.release`` at hang-up, and :func:`relay_endpoint` for the ``(host, port)`` to
send each party.
"""

from __future__ import annotations

import logging
from typing import Any

from pqcall.exceptions import LocalProtocolError, ServerError
from pqcall.server.context import AppContext, Component
from pqcall.server.metrics import METRICS_EXTRA, ServerMetrics
from pqcall.server.relay import MediaRelay
from pqcall.server.settings import ServerSettings

logger = logging.getLogger(__name__)

ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
RELAY_EXTRA = "relay"  # context.extras key of the running MediaRelay


# ---------------------------------------------------------------- media relay


class RelayComponent:
    """Runs the media relay for as long as the server runs.

    Binds UDP ``settings.relay_bind`` (default ``settings.host``) on
    ``settings.relay_udp_port``; port 0 lets the kernel choose (tests). Publishes the
    relay as ``context.extras["relay"]`` and its counters to the metrics. Allocations
    persist in the server's database (:mod:`pqcall.server.relay_store`): a server
    restarted on the same database relays its calls on, from the stored addresses.

    Raises (from :meth:`start`):
        ServerError: the UDP port cannot be bound (the server does not start).
    """

    def __init__(self) -> None:
        self._relay: MediaRelay | None = None  # running between start and stop
        self._context: AppContext | None = None  # where it is published

    async def start(self, context: AppContext) -> None:
        settings = context.settings
        host = settings.relay_bind if settings.relay_bind is not None else settings.host
        from pqcall.server.relay_store import RelayStore  # loads SQLAlchemy: storage did

        try:
            store: RelayStore | None = RelayStore(context.storage.engine)  # its engine
        except RuntimeError:  # no storage (a component test): allocations in memory only
            store = None
        relay: MediaRelay
        if settings.relay_urls and store is not None:  # separate `pqcall relay` processes
            from pqcall.server.relay_store_remote import StoredRelay

            relay = StoredRelay(list(settings.relay_urls), store)
        else:
            relay = MediaRelay(host, settings.relay_udp_port, store=store)
        try:
            await relay.start()
        except OSError as exc:
            raise ServerError(
                f"cannot open the media relay on UDP {host}:{settings.relay_udp_port}:"
                f" {exc.strerror or exc}"
            ) from None
        self._relay = relay
        self._context = context
        context.extras[RELAY_EXTRA] = relay
        metrics = context.extras.get(METRICS_EXTRA)
        if isinstance(metrics, ServerMetrics):
            metrics.watch_relay(relay.stats)

    async def stop(self) -> None:
        if self._context is not None:
            self._context.extras.pop(RELAY_EXTRA, None)
            metrics = self._context.extras.get(METRICS_EXTRA)
            if isinstance(metrics, ServerMetrics):
                metrics.watch_relay(None)
        if self._relay is not None:
            await self._relay.close()
        self._relay = None
        self._context = None


def relay_endpoint(
    context: AppContext, request_host: str | None, call_id: str | None = None
) -> tuple[str, int] | None:
    """Where a phone sends relayed media: ``(host, UDP port)``, or None without a relay.

    Args:
        context: the server's context.
        request_host: the host name the phone reached the API at
            (``request.url.hostname``); used unless ``--relay-host`` was given.
        call_id: the call, to choose among separate relays (``--relay-url``; without
            it, the first).
    """
    relay = context.extras.get(RELAY_EXTRA)
    if not isinstance(relay, MediaRelay):
        return None
    bound_host, port = relay.address
    if call_id is not None and hasattr(relay, "endpoint_for"):  # separate relays
        chosen, port = relay.endpoint_for(call_id)
        host = chosen or context.settings.relay_host or request_host
        return None if not host else (host, port)
    host = context.settings.relay_host or request_host
    if not host:
        host = None if bound_host in ANY_ADDRESS else bound_host
    return None if host is None else (host, port)


# ---------------------------------------------------------------- mDNS


def instance_name(server_name: str) -> str:
    """The mDNS instance name for a server name: one DNS label (no dots, at most 63 bytes)."""
    name = "pqcall on " + server_name.replace(".", "-")
    encoded = name.encode()[:63]
    return encoded.decode(errors="ignore")


class AnnouncerComponent:
    """Announces the server on the LAN with mDNS while it runs.

    Announcing is best effort: if mDNS cannot run here (no multicast, sockets
    refused) one warning is logged and the server runs on without it. Nothing is
    announced when the server listens on loopback only, or on a kernel-chosen port.
    """

    def __init__(self) -> None:
        self._announcer: Any = None  # a ServerAnnouncer while announcing

    async def start(self, context: AppContext) -> None:
        # zeroconf is imported here, so servers without mDNS never load it
        from pqcall.server.discovery import ServerAnnouncer

        settings = context.settings
        if settings.host in ("127.0.0.1", "::1", "localhost") or settings.port == 0:
            logger.info("not announcing on the LAN (mDNS): the server is not reachable there")
            return
        relay = context.extras.get(RELAY_EXTRA)
        relay_port = relay.address[1] if isinstance(relay, MediaRelay) else None
        addresses = None if settings.host in ANY_ADDRESS else [settings.host]
        try:
            announcer = ServerAnnouncer(
                instance_name(settings.server_name),
                settings.port,
                addresses,
                relay_port=relay_port,
                is_tls=settings.uses_tls,
            )
            await announcer.start(wait=False)
        except (ServerError, LocalProtocolError, OSError) as exc:
            # DiscoveryUnavailable is a ServerError
            logger.warning("not announcing the server on the LAN (mDNS): %s", exc)
            return
        self._announcer = announcer

    async def stop(self) -> None:
        announcer, self._announcer = self._announcer, None
        if announcer is not None:
            await announcer.close()


def default_components(settings: ServerSettings) -> list[Component]:
    """The operations components of a server: the relay, then mDNS if enabled."""
    components: list[Component] = [RelayComponent()]
    if settings.turn_secret_file is not None:
        from pqcall.server.turn import TurnComponent

        components.append(TurnComponent(settings.turn_urls, settings.turn_secret_file))
    if settings.announce_mdns:
        components.append(AnnouncerComponent())
    return components
