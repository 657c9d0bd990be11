"""Issue 20, finding 10: plain HTTP beyond loopback, and TLS made easy.

The attacks: a server on 0.0.0.0 without TLS gave no warning, and a phone
sent its logins and call metadata in clear to any ``http://`` address. Now
the server warns in one line, the client refuses ``http://`` to a public
address before any connection unless told ``--insecure``, and
``pqcall server --tls-self-signed`` makes (once) a certificate that phones pin
on first use: a server presenting another is refused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import stat

import pytest

from pqcall.cli import main
from pqcall.client.home import Home
from pqcall.client.http import refuse_plain_http
from pqcall.client.phone import Phone
from pqcall.client.registration import register
from pqcall.client.server_cert import PIN_NAME
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.exceptions import ServerError, ServerUnreachable
from pqcall.server.runner import warn_if_plain_http
from pqcall.server.settings import ServerSettings
from pqcall.server.tls import fingerprint
from tests.harness import free_port
from tests.security.server_process import running_server

PASSPHRASE = "correct horse battery staple"
PUBLIC_URL = "http://203.0.113.5:5001"  # TEST-NET-3: a public address as far as we know


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [
        pytest.param("0.0.0.0", False, True, id="all-interfaces-plain"),
        pytest.param("192.168.1.20", False, True, id="lan-plain"),
        pytest.param("0.0.0.0", True, False, id="all-interfaces-tls"),
        pytest.param("127.0.0.1", False, False, id="loopback-plain"),
        pytest.param("::1", False, False, id="loopback6-plain"),
    ],
)
def test_the_server_warns_when_it_serves_plain_http_beyond_loopback(
    tmp_path, caplog, host, tls, warned
):
    cert = tmp_path / "cert.pem" if tls else None
    settings = ServerSettings(host=host, data_dir=tmp_path, tls_cert=cert, tls_key=cert)
    with caplog.at_level(logging.WARNING, logger="pqcall.server"):
        assert warn_if_plain_http(settings) is warned
    messages = [record.getMessage() for record in caplog.records]
    if warned:
        assert messages == [
            f"serving plain HTTP on {host}: logins, tokens and call metadata cross the network"
            " unencrypted; use --tls-self-signed, --tls-cert/--tls-key or a TLS reverse proxy"
            " (docs/server.md)"
        ]
    else:
        assert messages == []


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to resolve a name or open a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


REFUSAL = (
    "refusing plain http:// to 203.0.113.5, which is not on this machine or a private network:"
    " logins and call metadata would cross the internet unencrypted; use https://,"
    " or --insecure if you accept that"
)


def test_register_refuses_plain_http_to_a_public_address(tmp_path, capsys, no_network, monkeypatch):
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)
    home = tmp_path / "alice"
    code = main(["register", "alice", "--server", PUBLIC_URL, "--home", str(home)])
    assert code == 1
    assert capsys.readouterr().err == f"pqcall: {REFUSAL}\n"
    assert not home.exists()  # no identity made, nothing written


def test_the_library_refuses_it_before_any_file_or_connection(tmp_path, no_network):
    home = Home(tmp_path / "alice")
    with pytest.raises(ServerError) as refused:
        asyncio.run(register(home, "alice", PUBLIC_URL, PASSPHRASE))
    assert str(refused.value) == REFUSAL
    assert not home.path.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5001",
        "http://[::1]:5001",
        "http://localhost:5001",
        "http://192.168.1.20:5001",
        "http://10.0.0.5:5001",
        "http://172.16.4.2:5001",
        "http://[fd00::5]:5001",
        "http://pqcall-box.local:5001",
        "https://203.0.113.5:5001",
    ],
)
def test_loopback_private_and_https_urls_are_accepted(url, no_network):
    refuse_plain_http(url, insecure=False)


def test_insecure_accepts_a_public_address(no_network):
    refuse_plain_http(PUBLIC_URL, insecure=True)
    with pytest.raises(ServerError):
        refuse_plain_http("http://pqcall.example.org:5001", insecure=False)


async def _phone_logs_in(home: Home) -> str:
    async with Phone(home, passphrase=PASSPHRASE) as phone:
        return phone.username


def test_a_self_signed_certificate_is_pinned_and_another_refused(tmp_path):
    port = free_port()
    first, second = tmp_path / "server-a", tmp_path / "server-b"
    home = Home(tmp_path / "alice")
    with running_server(first, "--tls-self-signed", port=port, tls=True) as server:
        key = first / "tls-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        asyncio.run(
            register(home, "alice", server.url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
        )
        pinned = home.path / PIN_NAME
        assert pinned.read_bytes() == (first / "tls-cert.pem").read_bytes()
        assert stat.S_IMODE(pinned.stat().st_mode) == 0o600
    # the certificate is kept: the same server restarted is still trusted
    with running_server(first, "--tls-self-signed", port=port, tls=True) as server:
        assert asyncio.run(_phone_logs_in(home)) == "alice"
    assert "SHA-256" in server.log and "phones pin it on first use" in server.log
    # another certificate on the same address: refused loudly
    with running_server(second, "--tls-self-signed", port=port, tls=True) as server:
        with pytest.raises(ServerUnreachable) as refused:
            asyncio.run(_phone_logs_in(home))
    assert str(refused.value) == (
        f"the server at https://127.0.0.1:{port} presents a TLS certificate other than the one"
        f" pinned in {pinned}: someone may be intercepting the connection. If its operator"
        " replaced the certificate, compare its fingerprint by another channel, then"
        f" delete {pinned} to pin the new one"
    )
    assert pinned.read_bytes() == (first / "tls-cert.pem").read_bytes()  # the pin stays


def test_register_prints_the_fingerprint_the_server_logs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PQCALL_PASSPHRASE", PASSPHRASE)
    Home(tmp_path / "a").create_account(PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    data_dir = tmp_path / "server"
    with running_server(data_dir, "--tls-self-signed", tls=True) as server:
        code = main(["register", "alice", "--server", server.url, "--home", str(tmp_path / "a")])
    assert code == 0
    expected = fingerprint(data_dir / "tls-cert.pem")
    assert f"server certificate pinned, SHA-256 {expected}" in capsys.readouterr().out
    assert f"SHA-256 {expected}: phones pin it on first use" in server.log
