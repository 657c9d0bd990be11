"""The server's settings: one frozen object, filled from the command line.

The connection limits (``header_timeout_s``, ``keep_alive_timeout_s``,
``max_connections``, ``max_pending_per_address``) bound what a client that
opens connections and never finishes a request can hold; docs/server.md
("Connection limits") gives the numbers and why.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 5001
DEFAULT_RING_TIMEOUT_S = 45.0
DEFAULT_HEARTBEAT_INTERVAL_S = 20.0
DEFAULT_SWEEP_INTERVAL_S = 1.0
DEFAULT_TOKEN_TTL_S = 3600.0
DEFAULT_CHALLENGE_TTL_S = 60.0
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
MIB = 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 2048 * MIB
DEFAULT_FILE_QUOTA_BYTES = 4096 * MIB
DEFAULT_FILE_TTL_S = 168 * 3600.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_PENDING_PER_ADDRESS = 64
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def default_data_dir() -> Path:
    """``$PQCALL_HOME/server``, or ``~/.pqcall/server``."""
    home = os.environ.get("PQCALL_HOME")
    base = Path(home) if home else Path.home() / ".pqcall"
    return base / "server"


def sqlite_url(data_dir: Path) -> str:
    """The default database: a SQLite file in ``data_dir``."""
    return f"sqlite+aiosqlite:///{data_dir / 'pqcall.db'}"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the server needs to know at start. Immutable once built."""

    host: str = "0.0.0.0"
    """Address to listen on; the default lets other machines on the LAN reach it."""
    port: int = DEFAULT_PORT
    """TCP port of the HTTP API."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Directory for the SQLite database and stored files (``files/`` in it)."""
    db_url: str = ""
    """SQLAlchemy async URL; empty means a SQLite file in ``data_dir``."""
    bus_url: str = ""
    """The bus between server nodes (``redis://HOST:PORT/DB``, :mod:`pqcall.server.bus`);
    empty: one node, nothing shared beyond the database."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key``, the API is served over HTTPS."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    log_level: str = "info"
    """uvicorn/logging level name."""
    ring_timeout_s: float = DEFAULT_RING_TIMEOUT_S
    """How long a call rings before it is missed."""
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    """Seconds between pings on a push WebSocket; one that misses two is dropped."""
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    """Seconds between passes of the call sweeper (ring timeouts, vanished parties)."""
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    """Lifetime of a bearer token."""
    challenge_ttl_s: float = DEFAULT_CHALLENGE_TTL_S
    """Lifetime of a login challenge."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """Largest accepted request body; larger ones get 413."""
    relay_port: int | None = None
    """UDP port of the media relay; ``None`` means the same number as ``port``."""
    relay_host: str | None = None
    """Address of the relay told to phones; ``None`` means the address they reached us at."""
    relay_bind: str | None = None
    """Address the relay's UDP socket binds; ``None`` means ``host``."""
    relay_urls: tuple[str, ...] = ()
    """Separate ``pqcall relay`` processes (``udp://HOST:PORT``, ``--relay-url``) on this
    database, used instead of the in-server relay; empty: the in-server relay."""
    turn_urls: tuple[str, ...] = ()
    """TURN servers handed to phones with each relay grant (``--turn``; server/turn.py)."""
    turn_secret_file: Path | None = None
    """The secret shared with those TURN servers (``--turn-secret-file``, mode 0600)."""
    announce_mdns: bool = True
    """Announce the server on the LAN with mDNS."""
    server_name: str = field(default_factory=socket.gethostname)
    """The name logins and registrations are bound to, so they cannot be replayed elsewhere."""
    rate_limit_scale: float = 1.0
    """Multiplies every request rate limit (rate and burst); 0 turns them off (load tests)."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Largest stored file (ciphertext bytes); a larger one is refused before any byte is sent."""
    file_quota_bytes: int = DEFAULT_FILE_QUOTA_BYTES
    """Bytes one sender may have stored or uploading at once, in files not yet deleted."""
    file_ttl_s: float = DEFAULT_FILE_TTL_S
    """How long a complete file waits for its recipient before it is deleted."""
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    """Seconds a connection may take to send a request's line and headers, then it is closed."""
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    """Seconds an idle keep-alive connection stays open between requests."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections (WebSockets included) above which new ones are closed at once."""
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS
    """Connections one client address may have that have not finished their headers yet."""

    def __post_init__(self) -> None:
        if not self.db_url:
            object.__setattr__(self, "db_url", sqlite_url(self.data_dir))
        if self.relay_port is None:
            object.__setattr__(self, "relay_port", self.port)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if bool(self.turn_urls) != (self.turn_secret_file is not None):
            raise ValueError("--turn and --turn-secret-file go together")
        if not 0 < len(self.server_name) <= 64:
            raise ValueError("server name must be 1 to 64 characters")
        if not 0 <= self.rate_limit_scale < float("inf"):
            raise ValueError("rate limit scale must be a finite number, 0 or more")
        if self.max_file_bytes < 1 or self.file_quota_bytes < 1:
            raise ValueError("the file size limit and the file quota must be at least 1 byte")
        if not 0 < self.file_ttl_s < float("inf"):
            raise ValueError("the file lifetime must be a positive number of seconds")
        if not (0 < self.header_timeout_s <= 600 and 0 < self.keep_alive_timeout_s <= 600):
            raise ValueError("the header and keep-alive timeouts must be between 0 and 600 seconds")
        if self.bus_url and not self.bus_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--bus must be a redis://, rediss:// or unix:// URL")
        if self.max_connections < 1 or self.max_pending_per_address < 1:
            raise ValueError("the connection limits must be at least 1")

    @property
    def relay_udp_port(self) -> int:
        """The relay's UDP port, resolved (``relay_port`` or ``port``)."""
        return self.port if self.relay_port is None else self.relay_port

    @property
    def uses_tls(self) -> bool:
        """Whether the API is served over HTTPS."""
        return self.tls_cert is not None

    @property
    def is_loopback_only(self) -> bool:
        """Whether only this machine can reach the API (``host`` is a loopback address)."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")
