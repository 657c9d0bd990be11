"""The two-host rig itself: who reaches whom in each topology, a server in it, teardown.

Datagrams are sent and answered by ``python -c`` one-liners run inside the
namespaces, as the phones will be: what they see is what a process sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.harness import TIMEOUT_SCALE
from tests.netns import NAMESPACE_PREFIX, Host, Network

from .conftest import PYTHON, SERVER_NAME, network_or_skip, start_server

ECHO_PORT = 9999
REPLY_TIMEOUT_S = 3.0 * TIMEOUT_SCALE
LOST_TIMEOUT_S = 1.0  # how long a datagram that must not arrive is waited for

# answers every datagram with b"pong:" + datagram; prints "ready", then "from HOST" per datagram
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print("from", peer[0], flush=True)
    s.sendto(b"pong:" + data, peer)
"""

# sends one datagram, prints the reply as JSON {"reply", "from"}, or {"timeout": true} when
# nothing came back (or the sender has no route at all)
PING = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
try:
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    data, peer = s.recvfrom(2048)
except (TimeoutError, OSError) as exc:
    print(json.dumps({"timeout": True, "error": str(exc)}))
else:
    print(json.dumps({"reply": data.decode(), "from": peer[0]}))
"""

# GET a URL with httpx, print the status and the body
HTTP_GET = """
import sys, httpx
r = httpx.get(sys.argv[1], timeout=float(sys.argv[2]))
print(r.status_code)
print(r.text)
"""


def start_echo(host: Host) -> subprocess.Popen[str]:
    """A UDP echo one-liner on ``host``, returned once its socket is bound."""
    process = host.popen(
        [PYTHON, "-c", ECHO, str(ECHO_PORT)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", f"echo on {host.name} did not start"
    return process


def ping(source: Host, address: str, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, object]:
    """Send a datagram from ``source`` to the echo at ``address``; what came back."""
    done = source.run(
        [PYTHON, "-c", PING, address, str(ECHO_PORT), str(timeout_s)],
        capture_output=True,
        text=True,
        timeout=timeout_s + 10 * TIMEOUT_SCALE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def senders_seen(echo: subprocess.Popen[str], count: int) -> list[str]:
    """The sources of the first ``count`` datagrams ``echo`` got."""
    assert echo.stdout is not None
    return [echo.stdout.readline().split()[1] for _ in range(count)]


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split(" ", 1)[0] for line in listing.stdout.splitlines()}


# ---------------------------------------------------------------- reachability


def test_lan_phones_reach_each_other_and_the_server(make_network):
    net = make_network("lan")
    echo_bob = start_echo(net.bob)
    echo_server = start_echo(net.server)
    assert ping(net.alice, net.bob.address) == {"reply": "pong:ping", "from": net.bob.address}
    assert ping(net.alice, net.server.address) == {
        "reply": "pong:ping",
        "from": net.server.address,
    }
    assert ping(net.bob, net.server.address)["reply"] == "pong:ping"
    # each side sees the other's own address: no NAT on a LAN
    assert senders_seen(echo_bob, 1) == [net.alice.address]
    assert senders_seen(echo_server, 2) == [net.alice.address, net.bob.address]


def test_isolated_phones_reach_only_the_server(make_network):
    net = make_network("isolated")
    start_echo(net.server)
    echo_alice = start_echo(net.alice)
    echo_bob = start_echo(net.bob)
    server_for_alice = net.address_of(net.server, net.alice)
    server_for_bob = net.address_of(net.server, net.bob)
    assert server_for_alice != server_for_bob
    assert ping(net.alice, server_for_alice) == {"reply": "pong:ping", "from": server_for_alice}
    assert ping(net.bob, server_for_bob) == {"reply": "pong:ping", "from": server_for_bob}
    # dropped silently at the server (no forwarding), as on a WiFi with client isolation
    dropped = {"timeout": True, "error": "timed out"}  # no "network unreachable": sent, then lost
    assert ping(net.alice, net.bob.address, LOST_TIMEOUT_S) == dropped
    assert ping(net.bob, net.alice.address, LOST_TIMEOUT_S) == dropped
    # the server itself does reach both
    assert ping(net.server, net.alice.address)["reply"] == "pong:ping"
    assert ping(net.server, net.bob.address)["reply"] == "pong:ping"
    assert senders_seen(echo_alice, 1) == [server_for_alice]
    assert senders_seen(echo_bob, 1) == [server_for_bob]


def test_nat_phones_reach_the_server_from_their_routers_address(make_network):
    net = make_network("nat")
    echo_server = start_echo(net.server)
    start_echo(net.bob)
    start_echo(net.alice)
    assert ping(net.alice, net.server.address)["reply"] == "pong:ping"
    assert ping(net.bob, net.server.address)["reply"] == "pong:ping"
    routers = [net.hosts["nat-alice"].address, net.hosts["nat-bob"].address]
    assert senders_seen(echo_server, 2) == routers
    # a phone's private address is not reachable from outside its router
    assert ping(net.alice, net.bob.address, LOST_TIMEOUT_S)["timeout"] is True
    assert ping(net.server, net.alice.address, LOST_TIMEOUT_S)["timeout"] is True
    # nor is the router's public address without a mapping (nothing was sent out yet)
    assert ping(net.bob, routers[0], LOST_TIMEOUT_S)["timeout"] is True


@pytest.mark.parametrize("topology", ["lan", "isolated", "nat"])
def test_server_health_answers_both_phones(make_network, processes, tmp_path, topology):
    net = make_network(topology)
    server = start_server(net, processes, tmp_path / "server")
    for phone in net.phones:
        done = phone.run(
            [PYTHON, "-c", HTTP_GET, f"{server.url_for(phone)}/health", str(REPLY_TIMEOUT_S)],
            capture_output=True,
            text=True,
            timeout=30 * TIMEOUT_SCALE,
            check=False,
        )
        assert done.returncode == 0, f"{done.stderr}\n{processes.report()}"
        status, body = done.stdout.split("\n", 1)
        assert status == "200"
        assert json.loads(body)["server_name"] == SERVER_NAME
    assert server.metric("pqcall_relay_forwarded_packets_total") == 0


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("topology", ["lan", "isolated", "nat"])
def test_setup_is_fast_and_teardown_leaves_nothing(topology):
    start = time.monotonic()
    net = network_or_skip(topology)
    setup_s = time.monotonic() - start
    with net:
        sleeper = net.alice.popen(["sleep", "60"])
        stray = net.bob.run(  # a process the rig did not start: still ends with the network
            ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        names = {host.ns for host in net.hosts.values()}
        assert names <= namespaces()
        assert all(name.startswith(f"{NAMESPACE_PREFIX}{os.getpid()}-") for name in names)
    assert setup_s < 1.0 * TIMEOUT_SCALE
    assert not names & namespaces()
    assert sleeper.poll() is not None
    stray_pid = int(stray.stdout)
    deadline = time.monotonic() + 5 * TIMEOUT_SCALE
    while not is_gone(stray_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_gone(stray_pid)


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: PID 1 of a container may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_teardown_on_failure(make_network):
    with pytest.raises(RuntimeError, match="boom"):
        with network_or_skip("lan") as net:
            names = {host.ns for host in net.hosts.values()}
            raise RuntimeError("boom")
    assert not names & namespaces()


def test_stale_namespaces_of_dead_runs_are_removed(make_network):
    make_network("lan")  # skips where namespaces cannot be made
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now: a run that was killed
    stale = f"{NAMESPACE_PREFIX}{gone.pid}-dead-alice"
    alive = f"{NAMESPACE_PREFIX}{os.getpid()}-live-alice"  # ours: a parallel run's look
    for name in (stale, alive):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with network_or_skip("isolated"):
            present = namespaces()
            assert stale not in present
            assert alive in present
    finally:
        for name in (stale, alive):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


# ---------------------------------------------------------------- skip or fail


@pytest.mark.parametrize(
    ("env", "required"),
    [
        pytest.param({}, False, id="plain"),
        pytest.param({"PQCALL_TEST_NETNS": "1"}, True, id="PQCALL_TEST_NETNS"),
        pytest.param({"CI": "true"}, True, id="CI"),
        pytest.param({"CI": "false"}, False, id="CI-false"),
    ],
)
def test_unavailable_skips_unless_required(monkeypatch, env, required):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PQCALL_TEST_NETNS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match=r"not running as root: .*root and ip netns"):
        network_or_skip("lan")


def test_unknown_topology():
    with pytest.raises(ValueError, match="unknown topology 'mesh'"):
        Network.create("mesh")
    with pytest.raises(ValueError, match="expected wan:ALICE,BOB"):
        Network.create("wan:cone-accept")
