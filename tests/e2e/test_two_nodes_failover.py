"""A phone behind a load balancer moves to node B when its node A dies mid-call.

Issue 18 part 2, "kill node A mid-call: alice reconnects to B and the call's
audio continues". Two ``pqcall server`` processes on one PostgreSQL and one
Redis bus (as in ``test_two_nodes.py``); alice reaches the servers only
through :class:`Balancer`, a TCP proxy standing in for a load balancer, which
sends new connections to A until A dies and to B from then on. bob listens on
B. Node A is SIGKILLed one second into the call. Checked: the direct-path call
runs its whole duration with speech in the last 2 s on both sides; alice's
push stream reconnects (through the balancer, to B) within a few seconds of
the kill; her hang-up reaches B, which ends the call there; and her phone
ends on time (the call does not hang on a connection that died with A).

Loopback only (the place under tests/e2e marks it netns like its neighbours).
Needs ``PQCALL_TEST_DATABASE_URL`` and Redis (``PQCALL_TEST_REDIS_URL``), both
set by ``.ci/run``, where it is mandatory; elsewhere skipped with the reason.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time

from tests.cli.helpers import COMMAND_TIMEOUT_S, child_env, one_json, pqcall_command
from tests.e2e.test_two_nodes import (
    LEADER_LINE,
    MIN_RMS,
    READY_TIMEOUT_S,
    SAMPLES,
    Node,
    database,  # noqa: F401 (the fixture)
    rms,
    run,
)
from tests.harness import scaled
from tests.server.test_bus import redis_url  # noqa: F401 (the fixture)
from tests.server.test_runner import _free_port

CALL_S = 8  # --duration of alice's call
KILL_AFTER_S = 1.0  # of media before node A is killed
RECONNECT_S = scaled(8.0)  # from the kill until alice's push stream is up again (on B)
LATE_END_S = scaled(6.0)  # allowed beyond the call's duration for alice's phone to finish


class Balancer:
    """A TCP proxy standing in for a load balancer: every new connection goes to ``target``.

    Runs its own event loop in a thread; :meth:`point_to` changes where new
    connections go (those open stay where they are until their node dies, and
    then both halves of the proxied connection are closed, as a balancer does).
    """

    def __init__(self, target: int) -> None:
        self.target = target  # the port new connections go to
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[int] = []  # the target of every connection made, in order
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10.0), "the balancer did not start"

    def point_to(self, target: int) -> None:
        self.target = target

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.target
        self.connections.append(target)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                # either side gone: close both, so the other half never waits on a dead peer
                sink.close()
                writer.close()
                up_writer.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_alice_moves_to_node_b_when_node_a_dies(database, redis_url, tmp_path):  # noqa: F811
    nodes: list[Node] = []
    balancer: Balancer | None = None
    listen: subprocess.Popen[str] | None = None
    call: subprocess.Popen[str] | None = None
    try:
        for label in ("node-a", "node-b"):
            nodes.append(Node(label, tmp_path, database, redis_url))
        a, b = nodes
        deadline = time.monotonic() + READY_TIMEOUT_S
        while LEADER_LINE not in a.log():  # A started first: it leads
            assert time.monotonic() < deadline, f"A never led the sweepers:\n{a.log()}"
            time.sleep(0.1)
        balancer = Balancer(a.port)  # alice's server: A until it dies, then B
        homes = {name: tmp_path / name for name in ("alice", "bob")}
        for name, url in (("alice", balancer.url), ("bob", b.url)):
            done = run(homes[name], "register", name, "--server", url)
            assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        received = {name: tmp_path / f"{name}-received.wav" for name in homes}
        listen_out, listen_err = tmp_path / "bob-listen.out", tmp_path / "bob-listen.err"
        with open(listen_out, "w") as out, open(listen_err, "w") as err:
            listen = subprocess.Popen(
                pqcall_command(
                    homes["bob"],
                    *("listen", "--auto-answer", "--once", "--json"),
                    *("--audio-in", str(SAMPLES / "bob.wav"), "--audio-out", str(received["bob"])),
                ),
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "listening as " not in listen_err.read_text():
            assert listen.poll() is None, f"bob's listener exited: {listen_err.read_text()}"
            assert time.monotonic() < deadline, f"bob never listened: {listen_err.read_text()}"
            time.sleep(0.05)
        call_out, call_err = tmp_path / "alice-call.out", tmp_path / "alice-call.err"
        with open(call_out, "w") as out, open(call_err, "w") as err:
            call = subprocess.Popen(
                pqcall_command(
                    homes["alice"],
                    *("call", "bob", "--duration", str(CALL_S), "--json", "-v"),
                    *("--audio-in", str(SAMPLES / "alice.wav")),
                    *("--audio-out", str(received["alice"])),
                ),
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "SAS: read this aloud" not in call_err.read_text():
            assert call.poll() is None, f"alice's call ended: {call_err.read_text()}"
            assert time.monotonic() < deadline, f"no SAS: {call_err.read_text()}"
            time.sleep(0.05)
        time.sleep(KILL_AFTER_S)  # media flows
        balancer.point_to(b.port)  # the balancer sends new connections to B from now
        a.process.kill()  # SIGKILL: no goodbye on the bus, the advisory lock goes with it
        a.process.wait()
        killed_at = time.monotonic()
        reconnected_s: float | None = None
        while call.poll() is None:
            if reconnected_s is None and call_err.read_text().count("event stream connected") >= 2:
                reconnected_s = time.monotonic() - killed_at
            assert time.monotonic() - killed_at < CALL_S + LATE_END_S, (
                f"alice's phone did not finish in time:\n{call_err.read_text()}"
                f"\nnode B:\n{b.log()[-3000:]}"
            )
            time.sleep(0.05)
        bob_code = listen.wait(timeout=COMMAND_TIMEOUT_S)
        report = (
            f"alice:\n{call_out.read_text()}{call_err.read_text()}\nbob:\n"
            f"{listen_out.read_text()}{listen_err.read_text()}\nnode B:\n{b.log()[-3000:]}"
            f"\nbalancer connections: {balancer.connections} (A {a.port}, B {b.port})"
        )
        assert call.returncode == 0 and bob_code == 0, report
        ours, theirs = one_json(call_out.read_text()), one_json(listen_out.read_text())
        assert ours["call_id"] == theirs["call_id"], report
        assert ours["duration_s"] >= CALL_S - 0.5, report  # ran to its end
        assert ours["path"] == theirs["path"] == "direct", report
        for name, path in received.items():
            assert rms(path, last_s=2.0) > MIN_RMS, f"{name}: silence at the end\n{report}"
        if reconnected_s is None and call_err.read_text().count("event stream connected") >= 2:
            reconnected_s = time.monotonic() - killed_at
        assert reconnected_s is not None and reconnected_s < RECONNECT_S, report
        assert b.port in balancer.connections, report  # alice's phone reached B
        # her hang-up went through the balancer to B, which ended the call there
        assert re.search(rf"call {ours['call_id']}: caller hangup -> ended", b.log()), report
        deadline = time.monotonic() + READY_TIMEOUT_S
        while LEADER_LINE not in b.log():  # B took over the sweepers
            assert time.monotonic() < deadline, f"B never took over the sweepers\n{report}"
            time.sleep(0.1)
        print(  # noqa: T201
            f"\nnode A killed mid-call: alice's push stream up again on B after"
            f" {reconnected_s:.1f} s; alice's reason {ours.get('reason')!r}, bob's"
            f" {theirs.get('reason')!r}"
        )
    finally:
        for process in (call, listen):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        if balancer is not None:
            balancer.close()
        for node in nodes:
            if node.process.poll() is None:
                node.stop()
