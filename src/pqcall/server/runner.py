"""``pqcall server``: command-line options, and running the app under uvicorn.

Importing this module is cheap; the server's dependencies load in :func:`run`.
Before serving, :func:`run` makes the process's files private (umask 077; the
data directory 0700, a group- or world-accessible one refused), raises the
open-file limit to its hard limit, and warns in one line when it serves plain
HTTP beyond loopback. It refuses, in one line, a SQLite database another
server uses (a lock file held for the process life), an empty or damaged one
(:mod:`pqcall.server.storage.database`), and logs storage failures one line
per change of state (:mod:`pqcall.server.faults`). :func:`uvicorn_config` is
the one uvicorn configuration (timeouts and connection limits of
:mod:`pqcall.server.connections`), shared with the tests.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pqcall.exceptions import ServerError

if TYPE_CHECKING:
    import logging

    import uvicorn

    from pqcall.server.settings import ServerSettings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
PRIVATE_UMASK = 0o077  # every file the server creates is 0600, every directory 0700
FILES_RESERVED = 64  # descriptors kept for the database, stored files, the relay and logs
MAX_HEADER_BYTES = 16 * 1024  # h11's largest request line plus headers (uvicorn's default)


def _logger() -> logging.Logger:
    """The server's logger; :mod:`logging` loads here, not on ``pqcall --help`` (decision 0040)."""
    import logging

    return logging.getLogger("pqcall.server")


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
        "--bus",
        metavar="URL",
        help="Redis that several server nodes on one PostgreSQL share (redis://HOST:6379/0):"
        " push, presence, logouts and the login limit across nodes (docs/server.md)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate"
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--tls-self-signed",
        action="store_true",
        help="serve HTTPS with a self-signed certificate made once and kept in the data"
        " directory (phones pin it on first use)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request and WebSocket session (off by default: a server"
        " started with & in a terminal would print over the phones' prompts)",
    )
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
        "--relay-url",
        action="append",
        default=[],
        metavar="udp://HOST:PORT",
        help="a separate `pqcall relay` on this database, used instead of the in-server relay"
        " (repeatable: calls are spread over them; udp://:PORT: the host phones reach us at)",
    )
    parser.add_argument(
        "--turn",
        action="append",
        default=[],
        metavar="URL",
        help="a TURN server phones may use too (turn:HOST[:PORT][?transport=udp|tcp] or"
        " turns:HOST[:PORT]; repeatable), with --turn-secret-file",
    )
    parser.add_argument(
        "--turn-secret-file",
        type=Path,
        metavar="FILE",
        help="the secret shared with the TURN servers (coturn: use-auth-secret,"
        " static-auth-secret); readable by its owner only",
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
        "--header-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close a connection that has not sent a complete request line and headers"
        " in this time (default: 10)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="open connections, WebSockets included, above which new ones are closed"
        " (default: 4096, lowered to fit the open-file limit)",
    )
    parser.add_argument(
        "--rate-limit-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply the request rate limits by X; 0 turns them off (load tests only)",
    )
    from pqcall.server import release  # `pqcall server release-user NAME` (issue 22)

    release.add_parser(parser)


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
        "bus_url": getattr(args, "bus", None) or "",
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "log_level": args.log_level,
        "relay_port": args.relay_port,
        "relay_host": args.relay_host,
        "relay_bind": args.relay_bind,
        "relay_urls": tuple(args.relay_url),
        "turn_urls": tuple(args.turn),
        "turn_secret_file": args.turn_secret_file,
        "announce_mdns": args.announce_mdns,
        "rate_limit_scale": args.rate_limit_scale,
    }
    if args.data_dir is not None:
        options["data_dir"] = args.data_dir
    if args.tls_self_signed and (args.tls_cert is not None or args.tls_key is not None):
        raise ServerError("--tls-self-signed and --tls-cert/--tls-key exclude each other")
    if args.header_timeout is not None:
        options["header_timeout_s"] = args.header_timeout
    if args.max_connections is not None:
        options["max_connections"] = args.max_connections
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
        ServerError: bad options, TLS files missing, a data directory others
            may read, or the database cannot be opened or migrated (one line,
            no traceback).
    """
    settings = settings_from_args(args)
    previous_umask = os.umask(PRIVATE_UMASK)  # the database, -wal, -shm, stored files: owner only
    try:
        return _serve(args, settings)
    finally:
        os.umask(previous_umask)  # a caller in the same process (tests) gets its own back


def _serve(args: argparse.Namespace, settings: ServerSettings) -> int:
    import asyncio
    import logging
    from dataclasses import replace

    import uvicorn

    from pqcall.server import faults, logs
    from pqcall.server.app import create_app
    from pqcall.server.storage.database import display_url, hold_sqlite_lock, run_migrations

    prepare_data_dir(settings.data_dir)
    lock = hold_sqlite_lock(settings.db_url)  # a second server on this SQLite file is refused
    if args.tls_self_signed:
        from pqcall.server.tls import self_signed_certificate

        cert, key = self_signed_certificate(settings.data_dir, settings.host)
        settings = replace(settings, tls_cert=cert, tls_key=key)
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ServerError(f"TLS file not found: {path}")

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    if settings.log_level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # open and migrate once here, so a bad database is one line, not a traceback
    asyncio.run(run_migrations(settings.db_url))
    if not settings.relay_urls:
        _check_relay_port(settings)
    settings = _fit_open_file_limit(settings)
    scheme = "https" if settings.uses_tls else "http"
    _logger().info(
        "pqcall server %r on %s://%s:%d, media relay on UDP port %d, database %s",
        settings.server_name,
        scheme,
        settings.host,
        settings.port,
        settings.relay_udp_port,
        display_url(settings.db_url),
    )
    warn_if_plain_http(settings)
    if args.tls_self_signed and settings.tls_cert is not None:
        from pqcall.server.tls import fingerprint

        _logger().info(
            "self-signed TLS certificate %s, SHA-256 %s: phones pin it on first use;"
            " compare this fingerprint by another channel",
            settings.tls_cert,
            fingerprint(settings.tls_cert),
        )
    app = create_app(settings)
    config = uvicorn_config(settings, app, log_level=settings.log_level)
    logs.install_log_redaction()  # uvicorn.Config has just configured its loggers
    faults.install_log_filter(app.state.context.storage_status)
    if not args.access_log:
        logs.quiet_access_log()
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        if lock is not None:
            lock.close()
    return 0 if server.started else 1


def uvicorn_config(settings: ServerSettings, app: Any, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration for ``app``: TLS, timeouts and connection limits.

    ``options`` are passed on to ``uvicorn.Config`` (tests set ``log_level``).
    The limits are documented in docs/server.md ("Connection limits").
    """
    import uvicorn

    from pqcall.server.connections import guarded_protocol

    protocol = guarded_protocol(
        header_timeout_s=settings.header_timeout_s,
        max_pending_per_address=settings.max_pending_per_address,
        max_connections=settings.max_connections,
    )
    return uvicorn.Config(
        app,
        **{
            "host": settings.host,
            "port": settings.port,
            "ssl_certfile": settings.tls_cert,
            "ssl_keyfile": settings.tls_key,
            "lifespan": "on",
            "server_header": False,
            "access_log": False,  # pqcall.server.access logs requests, without paths or queries
            "http": protocol,
            "timeout_keep_alive": int(settings.keep_alive_timeout_s),
            "limit_concurrency": settings.max_connections,
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "ws_per_message_deflate": False,  # ~41 KiB per phone for a few small events (0900)
            **options,
        },
    )


def prepare_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 if missing; refuse one that group or others may access.

    Raises:
        ServerError: it cannot be created, is not a directory, or is shared
            (one line ending with the ``chmod`` that fixes it, as the keystore's).
    """
    from pqcall.safefile import DIRECTORY_MODE, shared_access

    try:
        data_dir.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        info = data_dir.stat()
    except OSError as exc:
        raise ServerError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    if not data_dir.is_dir():
        raise ServerError(f"data directory {data_dir} is not a directory")
    problem = shared_access(info, data_dir, "data directory")
    if problem is not None:
        raise ServerError(problem)


def warn_if_plain_http(settings: ServerSettings) -> bool:
    """Log one warning when the API is served without TLS beyond loopback; whether it did."""
    if settings.uses_tls or settings.is_loopback_only:
        return False
    _logger().warning(
        "serving plain HTTP on %s: logins, tokens and call metadata cross the network"
        " unencrypted; use --tls-self-signed, --tls-cert/--tls-key or a TLS reverse proxy"
        " (docs/server.md)",
        settings.host,
    )
    return True


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit (soft) to its hard limit; the soft limit after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError):
        return soft
    return wanted


def _fit_open_file_limit(settings: ServerSettings) -> ServerSettings:
    """``settings`` with ``max_connections`` lowered to fit the (raised) open-file limit."""
    limit = raise_open_file_limit() - FILES_RESERVED
    if limit >= settings.max_connections:
        return settings
    fitted = max(1, limit)
    _logger().warning(
        "open-file limit allows %d connections, not %d: raise it (ulimit -n) for more",
        fitted,
        settings.max_connections,
    )
    from dataclasses import replace

    return replace(settings, max_connections=fitted)


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
