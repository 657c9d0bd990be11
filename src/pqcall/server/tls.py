"""``pqcall server --tls-self-signed``: a certificate made once and kept in the data directory.

:func:`self_signed_certificate` returns ``tls-cert.pem`` and ``tls-key.pem``
from the data directory, creating them on the first start (ECDSA P-256,
valid :data:`CERT_LIFETIME_DAYS`, the key written 0600). Phones do not check
it against certificate authorities: they pin it on first use
(:mod:`pqcall.client.server_cert`), so it must stay the same across restarts;
a new one (files deleted) is refused by every phone that pinned the old one.
:func:`fingerprint` is what an operator reads out to compare by another channel.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pqcall.exceptions import KeystoreError, ServerError
from pqcall.safefile import replace_file, shared_access

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"
CERT_LIFETIME_DAYS = 3650  # pinned, not renewed: a new certificate means re-pinning every phone


def self_signed_certificate(data_dir: Path, host: str) -> tuple[Path, Path]:
    """The kept certificate and key in ``data_dir``, created on first use.

    Args:
        data_dir: the server's data directory (it exists, mode 0700).
        host: the listening address; named in the certificate when it is an IP
            address (with this machine's host name, ``localhost`` and loopback).

    Raises:
        ServerError: only one of the two files exists, the key is readable by
            others, or they cannot be written (one line).
    """
    cert_path, key_path = data_dir / CERT_NAME, data_dir / KEY_NAME
    if cert_path.exists() and key_path.exists():
        problem = shared_access(key_path.stat(), key_path, "TLS key")
        if problem is not None:
            raise ServerError(problem)
        return cert_path, key_path
    if cert_path.exists() or key_path.exists():
        raise ServerError(
            f"{data_dir} holds only one of {CERT_NAME} and {KEY_NAME}: restore the other,"
            " or delete it to make a new certificate (phones will have to pin it again)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _build(key, host)
    try:
        replace_file(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "TLS key",
        )
        replace_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), "certificate")
    except KeystoreError as exc:  # safefile's one-line failure, for the server's kind of error
        raise ServerError(str(exc)) from None
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """The SHA-256 fingerprint ``AB:CD:...``, as ``openssl x509 -fingerprint -sha256`` shows it."""
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _build(key: ec.EllipticCurvePrivateKey, host: str) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"pqcall server {socket.gethostname()}")]
    )
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    addresses = {"127.0.0.1", "::1"}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        names.append(x509.DNSName(host))
    else:
        if not address.is_unspecified:
            addresses.add(str(address))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_LIFETIME_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
