"""When and how a phone takes its call through TURN: a UDP probe, then selection over TURN.

Scope: the phone-side policy on top of :mod:`pqcall.transport.turn`. With a relay grant
that carries TURN credentials (``RelayGrant.turn``), the phone first checks that UDP
reaches the server at all (:func:`udp_reaches_relay`: one relay bind from a throwaway
socket; the relay's challenge proves the round trip, and since nobody answers it,
nothing is bound). If it does, the call goes on as before (direct or pqcall's relay on
the media socket). If not (a network that blocks UDP), the phone allocates on the
first TURN server that works (:func:`allocate_turn`; over TCP or TLS first then, as UDP
is what failed) and runs path selection over the allocation
(:func:`establish_path_over_turn`), with the pqcall relay still a fallback: reached
through TURN, its bind is challenged at the relayed address and answered through it.

Calling it from the softphone (``client/call.py``, ``_media_phase``)::

    turn = await turn_for(grant, relay)            # None: use the media socket
    choice = await (establish_path(sock, ...) if turn is None
                    else establish_path_over_turn(turn, keys, role, remote, relay, ...))
    await session.open(sock=sock) if turn is None else session.open(endpoint=turn.endpoint)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
from collections.abc import Sequence
from typing import Final, Protocol, cast

from aioice.stun import TransactionFailed

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import LocalProtocolError
from pqcall.transport.candidates import HostPort
from pqcall.transport.connect import resolve_candidates
from pqcall.transport.path_choice import PathChoice
from pqcall.transport.path_messages import PathRole
from pqcall.transport.pathcheck import DIRECT_TIMEOUT_S, PATH_TIMEOUT_S, PathSelection
from pqcall.transport.relay_wire import RelayTarget
from pqcall.transport.turn import TurnRelay, TurnUrl, run_path_selection_over_turn

__all__ = [
    "UDP_PROBE_TIMEOUT_S",
    "allocate_turn",
    "establish_path_over_turn",
    "through_turn",
    "turn_for",
    "udp_reaches_relay",
]

logger = logging.getLogger(__name__)


class TurnCredentials(Protocol):
    """What a relay grant's ``turn`` carries (``signaling.messages.TurnGrant``)."""

    @property
    def urls(self) -> Sequence[str]: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...


UDP_PROBE_TIMEOUT_S: Final = 1.0
"""No answer from the relay by then: UDP is taken to be blocked (tries twice in it)."""


async def udp_reaches_relay(relay: RelayTarget, timeout_s: float = UDP_PROBE_TIMEOUT_S) -> bool:
    """Whether a relay bind from a throwaway UDP socket gets any answer from the relay.

    The answer is the relay's challenge (or a refusal): it proves UDP both ways. The
    challenge is never answered, so nothing is bound; the bind uses the grant's next
    counter, which keeps the media socket's later binds fresh.
    """
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)
        try:
            probe.bind(("0.0.0.0", 0))
            for _ in range(2):
                probe.sendto(relay.bind, relay.address)
                with contextlib.suppress(TimeoutError):
                    _, addr = await asyncio.wait_for(loop.sock_recvfrom(probe, 2048), timeout_s / 2)
                    if (str(addr[0]), int(addr[1])) == tuple(relay.address):
                        return True
        except OSError as exc:  # e.g. EPERM: a local firewall drops UDP
            logger.info("path: UDP to the relay fails here: %s", exc)
            return False
    return False


async def allocate_turn(
    grant: TurnCredentials, *, udp_blocked: bool = True, timeout_s: float = 5.0
) -> TurnRelay | None:
    """An allocation on the first of ``grant``'s servers that gives one (None: none did).

    With ``udp_blocked`` the TCP and TLS URLs are tried first (a UDP one could only time
    out). Each failure is logged, never raised.
    """
    urls: list[TurnUrl] = []
    for text in grant.urls:
        try:
            urls.append(TurnUrl.parse(text))
        except LocalProtocolError as exc:
            logger.warning("path: ignoring TURN server %r: %s", text, exc)
    if udp_blocked:
        urls.sort(key=lambda url: url.transport == "udp")
    for url in urls:
        try:
            return await TurnRelay.allocate(
                url, grant.username, grant.password, timeout_s=timeout_s
            )
        except (OSError, TimeoutError, TransactionFailed, ConnectionError) as exc:
            logger.info("path: no TURN allocation on %s: %s", url, exc)
    return None


async def turn_for(
    turn: TurnCredentials | None,
    relay: RelayTarget | None,
    *,
    probe_timeout_s: float = UDP_PROBE_TIMEOUT_S,
) -> TurnRelay | None:
    """The TURN allocation to take this call through, or None to use the media socket.

    None without TURN credentials, when UDP reaches the relay, or when no TURN server
    gave an allocation (the call then tries the media socket anyway).
    """
    if turn is None:
        return None
    if relay is not None:
        resolved = await resolve_candidates([relay.address])
        probe = None if not resolved else RelayTarget(resolved[0], relay.token, relay.sequence)
        if probe is not None and await udp_reaches_relay(probe, probe_timeout_s):
            return None
    logger.info("path: UDP to the server gets no answer; trying TURN")
    return await allocate_turn(turn, udp_blocked=True)


async def establish_path_over_turn(
    turn: TurnRelay,
    keys: CallKeys,
    role: PathRole,
    remote: Sequence[HostPort | tuple[str, int]],
    relay: RelayTarget | None,
    *,
    direct_timeout_s: float = DIRECT_TIMEOUT_S,
    timeout_s: float = PATH_TIMEOUT_S,
) -> PathChoice:
    """:func:`pqcall.transport.connect.establish_path`, over a TURN allocation.

    The peer learns our relayed address from our checks (peer-reflexive), so it need
    not have been offered; the pqcall relay, if granted, is reached through TURN too.

    Raises:
        PathFailed: no path within ``timeout_s``.
    """
    addresses = await resolve_candidates(remote)
    target = None
    if relay is not None:
        resolved = await resolve_candidates([relay.address])
        if resolved:
            target = RelayTarget(resolved[0], relay.token, relay.sequence)
    selection = PathSelection(
        keys,
        role,
        addresses,
        target,
        token_source=secrets.token_bytes,
        direct_timeout_s=direct_timeout_s,
        timeout_s=timeout_s,
    )
    return await run_path_selection_over_turn(turn, selection)


async def through_turn(
    sock: socket.socket,
    keys: CallKeys,
    role: PathRole,
    remote: Sequence[HostPort | tuple[str, int]],
    relay: RelayTarget,
    *,
    direct_timeout_s: float = DIRECT_TIMEOUT_S,
    timeout_s: float = PATH_TIMEOUT_S,
) -> PathChoice | None:
    """The call's path through TURN for the media socket ``sock``, or None to use ``sock``
    as it is (no TURN credentials in ``relay.turn``, UDP works, or no TURN server).

    Path selection runs over the allocation; then a :class:`TurnProxy` on loopback
    stands in for the peer: the returned choice's ``peer`` is the proxy, so the media
    session on ``sock`` needs no change; its ``turn`` names the TURN server (what is
    shown: ``PathChoice.label``, ``shown_address``). The proxy deletes the allocation once media
    stopped for its idle timeout.

    Raises:
        PathFailed: no path within ``timeout_s`` (the allocation is deleted).
    """
    from pqcall.transport.turn_proxy import TurnProxy  # it imports this module's peers

    turn = await turn_for(cast("TurnCredentials | None", relay.turn), relay)
    if turn is None:
        return None
    try:
        choice = await establish_path_over_turn(
            turn,
            keys,
            role,
            remote,
            relay,
            direct_timeout_s=direct_timeout_s,
            timeout_s=timeout_s,
        )
        proxy = await TurnProxy.start(turn, int(sock.getsockname()[1]), choice.peer)
    except BaseException:
        await turn.close()
        raise
    logger.info("path: %s through TURN %s, media via %s:%d", choice.kind, turn.url, *proxy.address)
    # shown as turn-<transport> at the TURN server, not as the loopback proxy (issue 17)
    return dataclasses.replace(choice, peer=proxy.address, turn=turn.route)
