"""Benchmark: time from answer to first audio per NAT cell, p50/p95 over N real calls.

Run as root from the checkout (it builds network namespaces with :mod:`tests.netns`)::

    .venv/bin/python -m tests.e2e.bench_paths --calls 10
    .venv/bin/python -m tests.e2e.bench_paths --calls 3 --cell cone-accept,cone-accept

Each cell is the NAT matrix's (:mod:`tests.e2e.test_nat_matrix`): one ``wan``
network, one server, bob listening with ``--auto-answer``, alice calling him
``--calls`` times for one second each. Per call: the path, and the seconds from
bob's answer (his phone answers as it rings: his record's ``started_unix``) to the
first audio played at *both* ends (the later of the two ``first_playout_unix``;
the namespaces share one clock). Prints one line per cell; ``--json`` prints the
calls too. Figures on a loaded machine are noisy: say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pqcall.bench.quality import SAMPLES_DIR
from tests.netns import Network

from .conftest import Processes, start_server, wait_until
from .helpers import Phone, json_records

CELLS = (
    ("cone-drop", "cone-drop"),
    ("cone-accept", "cone-accept"),
    ("symmetric-drop", "cone-drop"),
    ("cone-accept", "symmetric-accept"),
    ("symmetric-drop", "symmetric-accept"),
)
CALL_TIMEOUT_S = 60.0


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def run_cell(cell: tuple[str, str], calls: int, work: Path) -> dict[str, Any]:
    """``calls`` calls behind one pair of NATs; their paths and times."""
    with Network.create(f"wan:{cell[0]},{cell[1]}") as net:
        processes = Processes(work / "logs")
        server = start_server(net, processes, work / "server")
        alice = Phone("alice", net.alice, work / "alice", processes)
        bob = Phone("bob", net.bob, work / "bob", processes)
        alice.register(server)
        bob.register(server)
        args = ("listen", "--auto-answer", "--audio-in", str(SAMPLES_DIR / "bob.wav"))
        command = bob.command(*args, "--audio-out", "null", "--json")
        processes.start(net.bob, "bob-listen", command, bob.env)
        wait_until(
            lambda: server.metric("pqcall_connected_phones") >= 1,
            30.0,
            "bob to be online",
            processes.report,
        )
        results = []
        for index in range(calls):
            label = f"alice-call-{index}"
            done = processes.run(
                net.alice,
                label,
                alice.command(
                    *("call", "bob", "--audio-in", str(SAMPLES_DIR / "alice.wav")),
                    *("--audio-out", "null", "--duration", "1", "--json"),
                ),
                alice.env,
                CALL_TIMEOUT_S,
            )
            if done.returncode != 0:
                raise RuntimeError(f"call {index} failed\n{processes.report()}")
            ours = json_records(processes, label)[-1]
            deadline = time.monotonic() + 10.0
            while len(json_records(processes, "bob-listen")) <= index:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bob wrote no record of call {index}")
                time.sleep(0.1)
            theirs = json_records(processes, "bob-listen")[index]
            both = max(ours["first_playout_unix"], theirs["first_playout_unix"])
            results.append(
                {
                    "path": ours["path"],
                    "answer_to_audio_s": round(both - theirs["started_unix"], 3),
                    "path_setup_ms": ours["path_setup_ms"],
                }
            )
    times = [r["answer_to_audio_s"] for r in results]
    return {
        "alice": cell[0],
        "bob": cell[1],
        "paths": sorted({r["path"] for r in results}),
        "p50_s": round(statistics.median(times), 3),
        "p95_s": round(percentile(times, 0.95), 3),
        "max_s": max(times),
        "calls": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.bench_paths", description=__doc__)
    parser.add_argument("--calls", type=int, default=10, help="calls per cell (default 10)")
    parser.add_argument("--cell", action="append", help="ALICE,BOB NAT kinds (default: all)")
    parser.add_argument("--json", action="store_true", help="print every call as JSON")
    args = parser.parse_args(argv)
    cells = [tuple(c.split(",", 1)) for c in args.cell] if args.cell else list(CELLS)
    report = []
    with tempfile.TemporaryDirectory(prefix="pqcall-bench-paths-") as tmp:
        for number, cell in enumerate(cells):
            row = run_cell((cell[0], cell[1]), args.calls, Path(tmp) / str(number))
            report.append(row)
            print(  # noqa: T201
                f"alice {row['alice']:16} bob {row['bob']:16} path {'/'.join(row['paths']):12}"
                f" answer->first audio p50 {row['p50_s']:.3f} s  p95 {row['p95_s']:.3f} s"
                f"  max {row['max_s']:.3f} s  ({len(row['calls'])} calls)",
                flush=True,
            )
    if args.json:
        print(json.dumps(report, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
