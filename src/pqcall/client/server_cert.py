"""The signaling server's TLS certificate, pinned in the home on first use.

A phone pins a server's certificate as it pins contacts' identities (trust on
first use): at registration, an ``https://`` server whose certificate no
certificate authority vouches for (``pqcall server --tls-self-signed``) has
it saved as ``server-cert.pem`` in the home (0600), and from then on every
connection trusts that certificate and nothing else
(:class:`~pqcall.client.http.PinnedCertificate`): a server presenting another
is refused loudly. A certificate that the system's authorities vouch for (a
reverse proxy with Let's Encrypt) is not pinned, so its renewals pass.

:func:`server_verify` is what every connection of a registered home uses;
:func:`pin_on_first_use` runs once, before registering; ``pqcall register``
prints :func:`pinned_fingerprint` to compare with the one the server logs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pqcall.client.home import Home
from pqcall.client.http import DEFAULT_TIMEOUT_S, PinnedCertificate, Verify
from pqcall.client.privatefile import write_atomic
from pqcall.exceptions import ServerUnreachable

logger = logging.getLogger(__name__)

PIN_NAME = "server-cert.pem"


def pin_path(home: Home) -> Path:
    """Where ``home`` keeps its server's pinned certificate."""
    return home.path / PIN_NAME


def server_verify(home: Home) -> Verify:
    """The TLS verification for ``home``'s server: its pinned certificate, else the usual CAs."""
    path = pin_path(home)
    return PinnedCertificate(path) if path.is_file() else True


def pinned_fingerprint(home: Home) -> str | None:
    """The SHA-256 fingerprint (``AB:CD:...``) of ``home``'s pinned certificate, if it has one."""
    path = pin_path(home)
    if not path.is_file():
        return None
    return _fingerprint(x509.load_pem_x509_certificate(path.read_bytes()))


async def pin_on_first_use(home: Home, url: str) -> Verify:
    """Pin the certificate of the server at ``url`` if it needs pinning; the verification to use.

    Nothing happens for ``http://``, for a home that already pinned one, or for
    a certificate the system's authorities vouch for. Otherwise the server's
    certificate is saved in the home (and its fingerprint logged).

    Raises:
        ServerUnreachable: the server cannot be reached, or its TLS fails for
            another reason than an unknown issuer (one line).
    """
    current = server_verify(home)
    parsed = urllib.parse.urlsplit(url)
    if isinstance(current, PinnedCertificate) or parsed.scheme.lower() != "https":
        return current
    host, port = parsed.hostname or "", parsed.port or 443
    try:
        await _handshake(host, port, ssl.create_default_context())
        return True  # an authority vouches for it: renewals must pass, so no pin
    except ssl.SSLCertVerificationError:
        pass
    except (OSError, TimeoutError) as exc:
        raise ServerUnreachable(f"cannot reach the server at {url}: {exc}") from None
    unchecked = ssl.create_default_context()
    unchecked.check_hostname = False
    unchecked.verify_mode = ssl.CERT_NONE  # only to read the certificate we are about to pin
    try:
        der = await _handshake(host, port, unchecked)
    except (OSError, TimeoutError) as exc:
        raise ServerUnreachable(f"cannot reach the server at {url}: {exc}") from None
    certificate = x509.load_der_x509_certificate(der)
    path = pin_path(home)
    write_atomic(path, certificate.public_bytes(serialization.Encoding.PEM), "server certificate")
    logger.warning(
        "pinned the server's TLS certificate, SHA-256 %s, in %s: compare it with the"
        " fingerprint the server logged at start",
        _fingerprint(certificate),
        path,
    )
    return PinnedCertificate(path)


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


async def _handshake(host: str, port: int, context: ssl.SSLContext) -> bytes:
    """Complete a TLS handshake with ``host:port``; the server's certificate (DER)."""
    async with asyncio.timeout(DEFAULT_TIMEOUT_S):
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise ssl.SSLError("the server sent no certificate")
        return bytes(der)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
