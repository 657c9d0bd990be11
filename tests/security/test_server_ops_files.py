"""Issue 20, finding 7: the server's data is readable by its owner only.

The attack: another local user reads the server's database (call metadata,
both parties' addresses). Before the fix the data directory was 0755 and the
database 0644. Now ``pqcall server`` runs with umask 077 (every file 0600,
SQLite's ``-wal`` and ``-shm`` included, every directory 0700) and refuses a
data directory that group or others may access, in one line.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys

from pqcall.client.home import Home
from pqcall.client.registration import register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from tests.harness import EVENT_TIMEOUT_S
from tests.security.server_process import running_server

PASSPHRASE = "correct horse battery staple"


def test_every_file_in_a_fresh_data_dir_is_private(tmp_path):
    data_dir = tmp_path / "server"
    with running_server(data_dir) as server:
        # some writes: an account, so the database has a -wal and a -shm
        home = Home(tmp_path / "alice")
        asyncio.run(
            register(home, "alice", server.url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
        )
        names = {path.name for path in data_dir.rglob("*")}
        assert {"pqcall.db", "pqcall.db-wal", "pqcall.db-shm"} <= names
        wrong = {
            str(path): f"{stat.S_IMODE(path.stat().st_mode):04o}"
            for path in [data_dir, *data_dir.rglob("*")]
            if stat.S_IMODE(path.stat().st_mode) != (0o700 if path.is_dir() else 0o600)
        }
    assert wrong == {}


def test_a_shared_data_dir_is_refused(tmp_path):
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    command = [sys.executable, "-m", "pqcall", "server", "--host", "127.0.0.1", "--no-mdns"]
    result = subprocess.run(
        [*command, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=EVENT_TIMEOUT_S * 3,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"pqcall: data directory {data_dir} is accessible by others (mode 0755);"
        f" run: chmod 700 {data_dir}\n"
    )
    assert list(data_dir.iterdir()) == []  # refused before the database was created
