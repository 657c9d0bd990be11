"""``pqcall server``: command-line options, and running the app under uvicorn.

Importing this module is cheap; the server's dependencies load in :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pqcall.exceptions import ServerError

if TYPE_CHECKING:
    from pqcall.server.settings import ServerSettings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pqcall server``."""
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=5001, help="TCP port (default: 5001)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="database and stored files (default: $PQCALL_HOME/server or ~/.pqcall/server)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB"
        " (default: a SQLite file in the data directory)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate"
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument(
        "--name", help="server name that logins are bound to (default: this machine's host name)"
    )
    parser.add_argument(
        "--relay-port",
        type=int,
        metavar="PORT",
        help="UDP port of the media relay (default: the same number as --port)",
    )
    parser.add_argument(
        "--relay-host",
        "--public-host",
        dest="relay_host",
        metavar="HOST",
        help="address phones are told to send relayed media to"
        " (default: the address they reached the server at)",
    )
    parser.add_argument(
        "--relay-bind",
        metavar="ADDR",
        help="address the relay's UDP socket binds (default: --host)",
    )
    parser.add_argument(
        "--no-mdns",
        dest="announce_mdns",
        action="store_false",
        help="do not announce the server on the LAN with mDNS",
    )
    parser.add_argument(
        "--ring-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a call rings before it is missed (default: 45)",
    )
    parser.add_argument(
        "--max-file-size",
        type=float,
        default=None,
        metavar="MIB",
        help="largest file a user may send, in MiB of ciphertext (default: 2048)",
    )
    parser.add_argument(
        "--file-quota",
        type=float,
        default=None,
        metavar="MIB",
        help="MiB one sender may have stored or uploading at once (default: 4096)",
    )
    parser.add_argument(
        "--file-ttl",
        type=float,
        default=None,
        metavar="HOURS",
        help="hours a complete file waits for its recipient before it is deleted (default: 168)",
    )
    parser.add_argument(
        "--rate-limit-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply the request rate limits by X; 0 turns them off (load tests only)",
    )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The settings the options of ``pqcall server`` ask for.

    Raises:
        ServerError: an option is out of range (one line).
    """
    from pqcall.server.settings import ServerSettings

    options: dict[str, object] = {
        "host": args.host,
        "port": args.port,
        "db_url": args.db or "",
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "log_level": args.log_level,
        "relay_port": args.relay_port,
        "relay_host": args.relay_host,
        "relay_bind": args.relay_bind,
        "announce_mdns": args.announce_mdns,
        "rate_limit_scale": args.rate_limit_scale,
    }
    if args.data_dir is not None:
        options["data_dir"] = args.data_dir
    if args.name is not None:
        options["server_name"] = args.name
    if args.ring_timeout is not None:
        if not 0 < args.ring_timeout <= 600:
            raise ServerError("--ring-timeout must be between 0 and 600 seconds")
        options["ring_timeout_s"] = args.ring_timeout
    mib = 1024 * 1024
    for flag, value, key in (
        ("--max-file-size", args.max_file_size, "max_file_bytes"),
        ("--file-quota", args.file_quota, "file_quota_bytes"),
    ):
        if value is not None:
            if not 0 < value < 2**40:
                raise ServerError(f"{flag} must be a positive number of MiB")
            options[key] = max(1, int(value * mib))
    if args.file_ttl is not None:
        if not 0 < args.file_ttl <= 24 * 3650:
            raise ServerError("--file-ttl must be between 0 and 87600 hours")
        options["file_ttl_s"] = args.file_ttl * 3600.0
    if not 0 < args.port < 65536:
        raise ServerError(f"port {args.port} is out of range")
    if args.relay_port is not None and not 0 < args.relay_port < 65536:
        raise ServerError(f"relay port {args.relay_port} is out of range")
    try:
        settings = ServerSettings(**options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ServerError(str(exc)) from None
    return settings


def run(args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM.

    Raises:
        ServerError: bad options, TLS files missing, or the database cannot be
            opened or migrated (one line, no traceback).
    """
    import asyncio

    import uvicorn

    from pqcall.server import logs
    from pqcall.server.app import create_app
    from pqcall.server.storage.database import display_url, run_migrations

    settings = settings_from_args(args)
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ServerError(f"TLS file not found: {path}")

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServerError(
            f"cannot create data directory {settings.data_dir}: {exc.strerror}"
        ) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    if settings.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # open and migrate once here, so a bad database is one line, not a traceback
    asyncio.run(run_migrations(settings.db_url))
    _check_relay_port(settings)
    scheme = "https" if settings.uses_tls else "http"
    logging.getLogger("pqcall.server").info(
        "pqcall server %r on %s://%s:%d, media relay on UDP port %d, database %s",
        settings.server_name,
        scheme,
        settings.host,
        settings.port,
        settings.relay_udp_port,
        display_url(settings.db_url),
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        lifespan="on",
        server_header=False,
        access_log=False,  # pqcall.server.access logs requests, without paths or queries
    )
    logs.install_log_redaction()  # uvicorn.Config has just configured its loggers
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


def _check_relay_port(settings: ServerSettings) -> None:
    """One line, not a traceback, when the relay's UDP port is taken (checked once at start)."""
    import socket

    host = settings.relay_bind if settings.relay_bind is not None else settings.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, settings.relay_udp_port))
    except OSError as exc:
        raise ServerError(
            f"cannot open the media relay on UDP {host}:{settings.relay_udp_port}:"
            f" {exc.strerror or exc}"
        ) from None
