"""``pqcall server``: clear one-line failures, a fast start, a clean stop on SIGTERM/SIGINT."""

import argparse
import os
import signal
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from pqcall.cli import main
from pqcall.server.runner import add_arguments, settings_from_args
from pqcall.server.settings import MIB
from tests.harness import TIMEOUT_SCALE, free_port
from tests.server.certs import self_signed

START_TIMEOUT_S = 30.0 * TIMEOUT_SCALE  # imports and migrations: 4.5-8 s at load 8-10, >10 s at 14


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--db", "mysql://u@h/db"],
            "pqcall: database URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            " (got mysql://)",
            id="unsupported-db",
        ),
        pytest.param(
            ["--db", "postgresql+asyncpg://nobody@127.0.0.1:1/none"],
            "pqcall: cannot open database postgresql+asyncpg://nobody@127.0.0.1:1/none: ",
            id="unreachable-db",
        ),
        pytest.param(
            ["--tls-cert", "cert.pem"],
            "pqcall: TLS needs both a certificate and a key",
            id="tls-half",
        ),
        pytest.param(
            ["--tls-cert", "nope.pem", "--tls-key", "nope.key"],
            "pqcall: TLS file not found: nope.pem",
            id="tls-missing",
        ),
        pytest.param(["--port", "70000"], "pqcall: port 70000 is out of range", id="port"),
        pytest.param(
            ["--max-file-size", "0"],
            "pqcall: --max-file-size must be a positive number of MiB",
            id="max-file-size",
        ),
        pytest.param(
            ["--file-quota", "nan"],
            "pqcall: --file-quota must be a positive number of MiB",
            id="file-quota",
        ),
        pytest.param(
            ["--file-ttl", "-1"],
            "pqcall: --file-ttl must be between 0 and 87600 hours",
            id="file-ttl",
        ),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, argv, message):
    code = main(["server", "--data-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(message)
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_file_limits_from_options(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = settings_from_args(parser.parse_args(["--data-dir", str(tmp_path)]))
    assert defaults.max_file_bytes == 2048 * MIB
    assert defaults.file_quota_bytes == 4096 * MIB
    assert defaults.file_ttl_s == 168 * 3600.0
    given = settings_from_args(
        parser.parse_args(["--max-file-size", "1.5", "--file-quota", "10", "--file-ttl", "0.5"])
    )
    assert given.max_file_bytes == 3 * MIB // 2
    assert given.file_quota_bytes == 10 * MIB
    assert given.file_ttl_s == 1800.0


_free_port = free_port  # the name tests/cli, tests/ui and tests/security import from here


def _start(tmp_path, port, *options):
    env = dict(os.environ, PQCALL_HOME=str(tmp_path))
    command = [sys.executable, "-m", "pqcall", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--name", "runner.test", "--log-level", "info", *options]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_health(url, **client_options):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=1, **client_options)
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not answer")


def _stop(process, signum=signal.SIGTERM):
    try:
        process.send_signal(signum)
        _, err = process.communicate(timeout=START_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_and_stops_cleanly(tmp_path, signum):
    port = _free_port()
    process = _start(tmp_path, port)
    try:
        health = _wait_for_health(f"http://127.0.0.1:{port}/health")
        assert health.json()["server_name"] == "runner.test"
        assert (tmp_path / "server" / "pqcall.db").exists()
    finally:
        err = _stop(process, signum)
    # uvicorn shuts down gracefully, then lets the signal take its usual effect
    expected = 130 if signum == signal.SIGINT else -signal.SIGTERM
    assert process.returncode == expected, err.decode()
    assert b"pqcall server stopped" in err
    assert b"Application shutdown complete" in err
    assert b"Traceback" not in err


def test_tls_with_a_pinned_self_signed_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    port = _free_port()
    process = _start(tmp_path, port, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        pinned = ssl.create_default_context(cafile=str(cert))
        health = _wait_for_health(f"https://127.0.0.1:{port}/health", verify=pinned)
        assert health.json()["status"] == "ok"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=1)  # system CAs only
    finally:
        _stop(process)
