"""The server benchmark runs end to end and reports sane figures (no timing asserts).

SQLite, and PostgreSQL too when ``PQCALL_TEST_DATABASE_URL`` is set; when
``PQCALL_TEST_REDIS_URL`` is set as well (both are in ``.ci/run``), ``--processes 2``:
PostgreSQL with one server process and with two nodes on a Redis bus (no SQLite).
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
    "call setups per server CPU-second",
    "load generator CPU during the call setups",
)
POSTGRES = bool(os.environ.get(server.PG_ENV))
NODES = POSTGRES and bool(os.environ.get(server.REDIS_ENV))
TWO_NODES = "PostgreSQL, 2 nodes on a Redis bus"
DATABASES = (
    ["PostgreSQL", TWO_NODES] if NODES else ["SQLite"] + (["PostgreSQL"] if POSTGRES else [])
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "server.json"
    processes = ["--processes", "2"] if NODES else []
    assert main(["bench", "server", "--quick", "--json", str(out), *processes]) == 0
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


def test_generator_cpu_and_setups_per_cpu_second_are_measured(quick_run):
    for database in DATABASES:
        per_cpu = quick_run[f"{database}: call setups per server CPU-second"]
        rate = quick_run[
            f"{database}: call setups per second, {server.QUICK.pairs} concurrent pairs"
        ]
        assert per_cpu["value"] > 0 and per_cpu["baseline"] > 0
        generator = quick_run[f"{database}: load generator CPU during the call setups"]
        assert 0 < generator["value"] < (os.cpu_count() or 1) + 0.5
        assert 0 < generator["baseline"] < (os.cpu_count() or 1) + 0.5
        assert rate["value"] > 0


@pytest.mark.skipif(not NODES, reason=f"needs {server.PG_ENV} and {server.REDIS_ENV}")
def test_two_nodes_hold_every_phone_and_set_calls_up_across_them(quick_run):
    phones = quick_run[f"{TWO_NODES}: push WebSockets open after 0.5 s"]
    assert phones["value"] == phones["baseline"] == server.QUICK.phones
    memory = quick_run[f"{TWO_NODES}: server memory (RSS) with the phones connected"]
    one = quick_run["PostgreSQL: server memory (RSS) with the phones connected"]
    assert memory["baseline"] > 1.5 * one["baseline"]  # two server processes measured


def test_processes_need_postgresql_and_the_server_benchmark(capsys, monkeypatch):
    monkeypatch.delenv(server.PG_ENV, raising=False)
    assert main(["bench", "server", "--quick", "--processes", "2"]) == 1
    assert capsys.readouterr().err == (
        "pqcall: --processes above 1 needs PostgreSQL (--db or $PQCALL_TEST_DATABASE_URL)\n"
    )
    assert main(["bench", "crypto", "--processes", "2"]) == 1
    assert capsys.readouterr().err == (
        "pqcall: --processes and --bus apply only to the server benchmark\n"
    )
    assert main(["bench", "server", "--quick", "--processes", "0"]) == 1
    assert capsys.readouterr().err == "pqcall: --processes must be 1 or more\n"


def test_memory_per_phone_connects_every_phone():
    import asyncio

    from pqcall.bench import server_memory

    connected, per_phone = asyncio.run(server_memory.measure(4))
    assert connected == 4
    assert math.isfinite(per_phone)  # four phones are too few for a meaningful figure
