"""``python -m pqcall.bench NAME [--quick] [--json PATH] [--db URL] [--processes N] [--bus URL]
[--sizes MIB,...] [--corpus] [--cpu-hog N]``.

Importing this module is cheap (``pqcall --help`` builds its parser): a benchmark's
module, with numpy, Opus or the server behind it, loads only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pqcall.exceptions import PqcallError

BENCHMARKS = (
    "audio",
    "codec",
    "crypto",
    "curve",
    "files",
    "group",
    "media",
    "privacy",
    "relay",
    "server",
)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark, print its table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m pqcall.bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark arguments, shared with ``pqcall bench``."""
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write figures as JSON")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="server benchmark: also run on this PostgreSQL, in a scratch database"
        " (default: $PQCALL_TEST_DATABASE_URL)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="server benchmark: also run N server nodes on one PostgreSQL and a Redis bus",
    )
    parser.add_argument(
        "--bus",
        metavar="URL",
        help="server benchmark: the Redis bus of --processes (default: $PQCALL_TEST_REDIS_URL,"
        " else redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--sizes",
        metavar="MIB,...",
        help="files benchmark: file sizes in MiB (default: 1,100,1024; --quick: 1,100)",
    )
    parser.add_argument(
        "--corpus",
        action=argparse.BooleanOptionalAction,
        help="codec, curve and media benchmarks: play the speech corpus's voices"
        " (default: if espeak-ng can build it, else the two samples)",
    )
    parser.add_argument(
        "--cpu-hog",
        type=int,
        default=0,
        metavar="N",
        help="media benchmark: run N busy processes beside the calls (a busy machine)",
    )
    parser.add_argument(
        "--bottleneck",
        metavar="KBPS,...",
        help="media benchmark: only the bottleneck scenario, at these rates (kbit/s on the wire)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark named in ``args``."""
    if args.db and args.name != "server":
        raise PqcallError("--db applies only to the server benchmark")
    if (args.processes != 1 or args.bus) and args.name != "server":
        raise PqcallError("--processes and --bus apply only to the server benchmark")
    if args.sizes and args.name != "files":
        raise PqcallError("--sizes applies only to the files benchmark")
    if args.corpus is not None and args.name not in ("codec", "curve", "media"):
        raise PqcallError("--corpus applies only to the codec and media benchmarks")
    if args.bottleneck and args.name != "media":
        raise PqcallError("--bottleneck applies only to the media benchmark")
    if args.cpu_hog and args.name != "media":
        raise PqcallError("--cpu-hog applies only to the media benchmark")
    if args.cpu_hog < 0:
        raise PqcallError("--cpu-hog must be 0 or more")
    from pqcall.bench.report import render_table, to_json  # not on `pqcall --help`'s path

    benchmark = importlib.import_module(f"pqcall.bench.{args.name}")  # only the one run
    if args.name == "files":
        runs = benchmark.measure(benchmark.parse_sizes(args.sizes, args.quick))
        figures = benchmark.figures(runs)
        print(benchmark.render(runs))
    else:
        options: dict[str, object] = {}
        if args.name == "server":
            options = {"db_url": args.db, "processes": args.processes, "bus_url": args.bus}
        if args.name in ("codec", "curve", "media"):
            options["corpus"] = args.corpus
        if args.name == "media":
            options["cpu_hogs"] = args.cpu_hog
            options["bottleneck"] = [float(k) for k in (args.bottleneck or "").split(",") if k]
        figures = benchmark.run(quick=args.quick, **options)
        print(render_table(f"pqcall bench {args.name}", figures))
    if args.json:
        args.json.write_text(to_json(figures) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
