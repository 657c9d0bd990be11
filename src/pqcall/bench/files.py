"""File transfer benchmark: ``pqcall bench files [--quick] [--sizes 1,100,1024]``.

For each size (MiB) a file of random bytes is made in a temporary directory and
moved four ways on 127.0.0.1, one after the other, in the same run:

- **pqcall send**: :meth:`FileTransfers.send <pqcall.client.files.FileTransfers.send>`
  as alice to bob: check bob's key, encrypt and sign while uploading to a real
  ``pqcall server`` child process, which writes it to its data directory and
  fsyncs it.
- **pqcall receive**: :meth:`FileTransfers.receive
  <pqcall.client.files.FileTransfers.receive>` as bob: decrypt and verify every
  chunk while downloading into the output folder (fsync), check alice's
  signature, rename, delete it on the server. The result is checked against the
  source's SHA-256 (outside the timing).
- **plain HTTP**: the same bytes uploaded (streaming ``PUT``, written in the same
  1 MiB pieces and fsynced) to and downloaded (``FileResponse`` read and sent in
  the same 1 MiB pieces, written to a file and fsynced) from a minimal uvicorn +
  Starlette server in a child process: the same stack as ``pqcall server``
  without accounts, signatures or encryption.
- **cp**: :func:`shutil.copyfile` to another path, then fsync.

Rates are decimal MB/s (10^6 bytes) of plaintext. Round trip is send + receive
(PUT + GET for plain HTTP). Each size is measured :data:`REPEATS` times
(:data:`LARGE_REPEATS` from :data:`REPEAT_BELOW_MIB` on), the four ways in turn
each time, and the median of each time kept; the "pqcall / plain HTTP" ratio is
the median of the ratios of the same repeat, so a machine whose speed drifts
(other jobs) moves both sides of a ratio alike. Beside wall time, each way's CPU
seconds (this process and both server processes) are kept: on a loaded machine
the CPU ratio says what the wall ratio would be if the work had the cores to
itself. The client runs in this process, the servers in their own; on a 2-core
machine they share the cores. The accounts use the fast test KDF (unlocking is
not timed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pqcall.bench.report import Figure, render_columns
from pqcall.exceptions import PqcallError
from pqcall.safefile import write_all

# httpx, starlette and uvicorn are imported where they are used: ``pqcall`` loads this
# module at every start
if TYPE_CHECKING:
    import httpx
    from starlette.applications import Starlette

HOST = "127.0.0.1"
MIB = 1024 * 1024
MB = 1_000_000  # rates are in decimal MB/s
SIZES_MIB = (1, 100, 1024)
QUICK_SIZES_MIB = (1, 100)
REPEAT_BELOW_MIB = 10  # smaller files are measured REPEATS times, larger LARGE_REPEATS
REPEATS = 5
LARGE_REPEATS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # units of /proc/PID/stat's CPU times
BLOCK_BYTES = 256 * 1024  # plain HTTP client: bytes per piece sent and received
WRITE_BUFFER_BYTES = 1024 * 1024  # plain HTTP server: as pqcall server's disk writes
DOWNLOAD_PIECE_BYTES = 1024 * 1024  # plain HTTP server: as pqcall server's download pieces
START_TIMEOUT_S = 60.0  # a loaded machine starts a server slowly
STOP_TIMEOUT_S = 10.0
RATE_LIMIT_SCALE = 1000.0  # pqcall server's request limits, out of the way
PASSPHRASE = "bench"
PLAIN_HTTP = "plain HTTP (uvicorn + Starlette, no auth, no crypto)"
CP = "cp (shutil.copyfile + fsync)"


@dataclass(frozen=True, slots=True)
class FileRun:
    """Seconds each way of moving one file, all measured in the same run."""

    size: int
    """Plaintext bytes."""
    send_s: float
    """pqcall: encrypt, sign and upload."""
    receive_s: float
    """pqcall: download, verify, decrypt and save."""
    put_s: float
    """Plain HTTP upload."""
    get_s: float
    """Plain HTTP download."""
    copy_s: float
    """Local copy with fsync."""
    pair_ratio: float
    """pqcall round trip rate / plain HTTP round trip rate, median of the repeats' ratios."""
    ours_cpu_s: float
    """CPU seconds of pqcall send + receive: client, and the server process."""
    plain_cpu_s: float
    """CPU seconds of plain HTTP PUT + GET: client, and the plain server process."""

    def rate(self, seconds: float) -> float:
        """MB/s of this file moved in ``seconds``."""
        return self.size / MB / seconds

    @property
    def label(self) -> str:
        """``1 MiB``, ``1 GiB``."""
        mib = self.size / MIB
        return f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib:g} MiB"


def parse_sizes(text: str | None, quick: bool) -> list[int]:
    """The sizes in MiB from ``--sizes`` (or the default for ``--quick``).

    Raises:
        PqcallError: not a comma-separated list of positive whole numbers.
    """
    if text is None:
        return list(QUICK_SIZES_MIB if quick else SIZES_MIB)
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise PqcallError(
            f"--sizes takes whole MiB counts separated by commas, like 1,100 (got {text})"
        )
    return sizes


def run(quick: bool = False, sizes_mib: Sequence[int] | None = None) -> list[Figure]:
    """Measure and return the figures, for ``python -m pqcall.bench``."""
    sizes = list(sizes_mib) if sizes_mib is not None else parse_sizes(None, quick)
    return figures(measure(sizes))


def measure(sizes_mib: Sequence[int]) -> list[FileRun]:
    """One :class:`FileRun` per size, against servers started for the run."""
    return asyncio.run(_measure(sizes_mib))


def figures(runs: Sequence[FileRun]) -> list[Figure]:
    """Each size's send, receive and round trip next to plain HTTP, and round trip next to cp."""
    result = []
    for run in runs:
        pqcall_round_trip = run.rate(run.send_s + run.receive_s)
        result += [
            Figure(
                f"{run.label} send (encrypt + sign + upload)",
                run.rate(run.send_s),
                "MB/s",
                f"{PLAIN_HTTP}: upload",
                run.rate(run.put_s),
            ),
            Figure(
                f"{run.label} receive (download + verify + decrypt)",
                run.rate(run.receive_s),
                "MB/s",
                f"{PLAIN_HTTP}: download",
                run.rate(run.get_s),
            ),
            Figure(
                f"{run.label} round trip",
                pqcall_round_trip,
                "MB/s",
                f"{PLAIN_HTTP}: upload + download",
                run.rate(run.put_s + run.get_s),
            ),
            Figure(
                f"{run.label} round trip vs cp", pqcall_round_trip, "MB/s", CP, run.rate(run.copy_s)
            ),
            Figure(
                f"{run.label} round trip CPU (client + server)",
                run.ours_cpu_s,
                "s",
                f"{PLAIN_HTTP}: upload + download",
                run.plain_cpu_s,
            ),
        ]
    return result


def render(runs: Sequence[FileRun]) -> str:
    """The table: one row per size, MB/s each way, and pqcall's round trip over plain HTTP's."""
    header = [
        "size",
        "pqcall send",
        "pqcall receive",
        "pqcall round trip",
        "plain HTTP round trip",
        "cp",
        "pqcall / plain HTTP",
        "CPU s: pqcall / plain",
    ]
    rows = []
    for run in runs:
        ours, plain = run.rate(run.send_s + run.receive_s), run.rate(run.put_s + run.get_s)
        cpu = f"{run.ours_cpu_s:.2f} / {run.plain_cpu_s:.2f}"
        rows.append(
            [
                run.label,
                f"{run.rate(run.send_s):,.1f}",
                f"{run.rate(run.receive_s):,.1f}",
                f"{ours:,.1f}",
                f"{plain:,.1f}",
                f"{run.rate(run.copy_s):,.1f}",
                f"{run.pair_ratio:.2f}x",
                f"{cpu} ({run.plain_cpu_s / run.ours_cpu_s:.2f}x)",
            ]
        )
    notes = [
        "MB/s (10^6 bytes of plaintext per second), loopback, median of"
        f" {REPEATS} runs under {REPEAT_BELOW_MIB} MiB, of {LARGE_REPEATS} from there;"
        " pqcall / plain HTTP: median of each run's ratio.",
        "CPU s: CPU seconds of the round trip (client and server processes); (Nx): plain"
        " / pqcall, the ratio the round trip would reach if CPU were all it waited for.",
        "round trip: send + receive; plain HTTP: the same stack (uvicorn + Starlette"
        " streaming PUT, FileResponse GET, 1 MiB pieces as pqcall's, fsync) without accounts,"
        " signatures or encryption.",
    ]
    return render_columns("pqcall bench files", header, rows) + "\n\n" + "\n".join(notes)


# ---------------------------------------------------------------- measuring


async def _measure(sizes_mib: Sequence[int]) -> list[FileRun]:
    from pqcall.client.home import Home
    from pqcall.client.phone import register
    from pqcall.client.transfers import open_transfers
    from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS

    runs = []
    with tempfile.TemporaryDirectory(prefix="pqcall-bench-files-") as scratch:
        base = Path(scratch)
        with (
            _child(base / "pqcall-server", _pqcall_server_command) as (pqcall_url, pqcall_pid),
            _child(base / "plain-server", _plain_server_command) as (plain_url, plain_pid),
        ):
            homes = {name: Home(base / name) for name in ("alice", "bob")}
            for name, home in homes.items():
                await register(
                    home, name, pqcall_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
                )
            configs = {name: home.load_config() for name, home in homes.items()}
            assert configs["alice"] is not None and configs["bob"] is not None
            async with (
                open_transfers(homes["alice"], PASSPHRASE, configs["alice"]) as alice,
                open_transfers(homes["bob"], PASSPHRASE, configs["bob"]) as bob,
            ):
                import httpx

                async with httpx.AsyncClient(base_url=plain_url, timeout=None) as http:
                    for mib in sizes_mib:
                        source = base / f"bench-{mib}MiB.bin"
                        digest = await asyncio.to_thread(_write_random, source, mib * MIB)
                        _say(f"{mib} MiB: cp, plain HTTP, pqcall")

                        async def once(source: Path = source, digest: str = digest) -> FileRun:
                            copy_s = await asyncio.to_thread(_copy, source, base / "copy.bin")
                            cpu = _cpu_seconds(plain_pid)
                            put_s, get_s = await _plain_round_trip(http, source, base / "got.bin")
                            plain_cpu_s = _cpu_seconds(plain_pid) - cpu
                            cpu = _cpu_seconds(pqcall_pid)
                            started = time.monotonic()
                            sent = await alice.send("bob", source)
                            send_s = time.monotonic() - started
                            started = time.monotonic()
                            received = await bob.receive(sent.file_id, base / "received")
                            receive_s = time.monotonic() - started
                            ours_cpu_s = _cpu_seconds(pqcall_pid) - cpu
                            if await asyncio.to_thread(_sha256, received.path) != digest:
                                raise PqcallError("the received file differs from the one sent")
                            received.path.unlink()
                            return FileRun(
                                source.stat().st_size,
                                send_s,
                                receive_s,
                                put_s,
                                get_s,
                                copy_s,
                                (put_s + get_s) / (send_s + receive_s),
                                ours_cpu_s,
                                plain_cpu_s,
                            )

                        repeats = REPEATS if mib < REPEAT_BELOW_MIB else LARGE_REPEATS
                        runs.append(_median([await once() for _ in range(repeats)]))
                        source.unlink()
    return runs


def _median(runs: Sequence[FileRun]) -> FileRun:
    return FileRun(
        runs[0].size,
        *(
            statistics.median(getattr(run, field) for run in runs)
            for field in FileRun.__dataclass_fields__
            if field != "size"
        ),
    )


def _cpu_seconds(server_pid: int) -> float:
    """CPU seconds so far of this process (every thread) and of the server ``server_pid``."""
    ours = resource.getrusage(resource.RUSAGE_SELF)
    with open(f"/proc/{server_pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after the command's name
    theirs = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return ours.ru_utime + ours.ru_stime + theirs


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        written = 0
        while written < size:
            block = os.urandom(min(4 * MIB, size - written))
            file.write(block)
            digest.update(block)
            written += len(block)
        file.flush()
        os.fsync(file.fileno())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def _copy(source: Path, target: Path) -> float:
    started = time.monotonic()
    shutil.copyfile(source, target)
    with open(target, "rb+") as file:
        os.fsync(file.fileno())
    seconds = time.monotonic() - started
    target.unlink()
    return seconds


async def _plain_round_trip(
    http: httpx.AsyncClient, source: Path, target: Path
) -> tuple[float, float]:
    """Seconds to PUT ``source`` to the plain server and GET it back into ``target``."""

    async def pieces() -> AsyncIterator[bytes]:
        with open(source, "rb") as file:
            while piece := file.read(BLOCK_BYTES):
                yield piece

    size = source.stat().st_size
    started = time.monotonic()
    answer = await http.put("/blob", content=pieces(), headers={"Content-Length": str(size)})
    answer.raise_for_status()
    put_s = time.monotonic() - started
    started = time.monotonic()
    with open(target, "wb") as file:
        async with http.stream("GET", "/blob") as response:
            response.raise_for_status()
            async for piece in response.aiter_bytes(BLOCK_BYTES):
                file.write(piece)
        file.flush()
        os.fsync(file.fileno())
    get_s = time.monotonic() - started
    if target.stat().st_size != size:
        raise PqcallError("the plain HTTP server sent back a different size")
    target.unlink()
    return put_s, get_s


# ---------------------------------------------------------------- child servers


def _pqcall_server_command(port: int, data_dir: Path) -> list[str]:
    relay_port = _free_port(socket.SOCK_DGRAM)
    return [
        *(sys.executable, "-m", "pqcall", "server", "--host", HOST, "--port", str(port)),
        *("--relay-port", str(relay_port), "--data-dir", str(data_dir), "--no-mdns"),
        *("--name", "bench.pqcall", "--log-level", "warning"),
        *("--rate-limit-scale", str(RATE_LIMIT_SCALE)),
    ]


def _plain_server_command(port: int, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "pqcall.bench.files", HOST, str(port), str(data_dir)]


@contextlib.contextmanager
def _child(data_dir: Path, command: Callable[[int, Path], list[str]]) -> Iterator[tuple[str, int]]:
    """Run a server child process on a free port until the block ends; its base URL and pid."""
    import httpx

    data_dir.mkdir(mode=0o700)  # pqcall server refuses a data directory others can read
    port = _free_port(socket.SOCK_STREAM)
    url = f"http://{HOST}:{port}"
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command(port, data_dir), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise PqcallError(f"a benchmark server exited at start:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise PqcallError(f"a benchmark server did not start in {START_TIMEOUT_S:g} s")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _say(message: str) -> None:
    print(f"pqcall bench files: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the plain HTTP server


def _plain_app(directory: Path) -> Starlette:
    """PUT /blob streams the body to a file (fsync); GET /blob sends it back; GET /health.

    Disk writes and download pieces are 1 MiB, as in pqcall server, so the
    comparison is of what pqcall adds, not of how the stack is tuned.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, PlainTextResponse, Response
    from starlette.routing import Route

    blob = directory / "blob"

    async def put(request: Request) -> Response:
        fd = os.open(blob, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER_BYTES:
                    data, buffer = bytes(buffer), bytearray()
                    await asyncio.to_thread(write_all, fd, data)
            await asyncio.to_thread(write_all, fd, bytes(buffer))
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        return Response(status_code=204)

    async def get(request: Request) -> Response:
        response = FileResponse(blob, media_type="application/octet-stream")
        response.chunk_size = DOWNLOAD_PIECE_BYTES  # as pqcall server's (Starlette's: 64 KiB)
        return response

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/blob", put, methods=["PUT"]),
            Route("/blob", get, methods=["GET"]),
            Route("/health", health),
        ]
    )


def _serve_plain(host: str, port: int, directory: Path) -> None:
    import uvicorn

    uvicorn.run(
        _plain_app(directory),
        host=host,
        port=port,
        log_level="warning",
        server_header=False,
        access_log=False,
    )


if __name__ == "__main__":
    _serve_plain(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
