"""The server benchmark runs end to end and reports sane figures (no timing asserts).

SQLite always; PostgreSQL too when ``PQCALL_TEST_DATABASE_URL`` is set.
"""

import json
import math
import os

import pytest

from pqcall.bench import server
from pqcall.cli import main

METRICS = (
    "push WebSockets open after 0.5 s",
    "server memory (RSS) with the phones connected",
    f"call setups per second, {server.QUICK.pairs} concurrent pairs",
    "call setup latency p50",
    "call setup latency p99",
    "server CPU per call setup (server process only)",
)
DATABASES = ["SQLite"] + (["PostgreSQL"] if os.environ.get(server.PG_ENV) else [])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "server.json"
    assert main(["bench", "server", "--quick", "--json", str(out)]) == 0
    return {figure["name"]: figure for figure in json.loads(out.read_text())}


def test_quick_run_has_every_figure_for_each_database(quick_run):
    expected = {f"{database}: {metric}" for database in DATABASES for metric in METRICS}
    relay = {name for name in quick_run if name.startswith("relay forwarding")}
    separate = {name for name in quick_run if name.startswith("the same, relay as `pqcall relay`")}
    assert set(quick_run) == expected | relay | separate
    assert len(relay) == 1
    assert len(separate) == 1


def test_quick_run_figures_are_positive_and_finite(quick_run):
    for name, figure in quick_run.items():
        assert figure["value"] > 0 and math.isfinite(figure["value"]), name
        assert figure["baseline"] > 0 and math.isfinite(figure["baseline"]), name
        assert math.isclose(figure["ratio"], figure["value"] / figure["baseline"]), name


def test_every_quick_phone_stays_connected(quick_run):
    for database in DATABASES:
        figure = quick_run[f"{database}: push WebSockets open after 0.5 s"]
        assert figure["value"] == figure["baseline"] == server.QUICK.phones


def test_db_is_refused_where_it_does_not_apply(capsys):
    assert main(["bench", "crypto", "--db", "postgresql+asyncpg://x@127.0.0.1/x"]) == 1
    assert capsys.readouterr().err == "pqcall: --db applies only to the server benchmark\n"
    assert main(["bench", "server", "--quick", "--db", "mysql://x@127.0.0.1/x"]) == 1
    assert capsys.readouterr().err == (
        "pqcall: --db takes a postgresql+asyncpg:// URL (SQLite always runs)\n"
    )


def test_memory_per_phone_connects_every_phone():
    import asyncio

    from pqcall.bench import server_memory

    connected, per_phone = asyncio.run(server_memory.measure(4))
    assert connected == 4
    assert math.isfinite(per_phone)  # four phones are too few for a meaningful figure
