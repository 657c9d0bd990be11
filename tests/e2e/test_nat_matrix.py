"""The NAT matrix: real calls between phones behind nftables NAT routers, speech checked.

Each cell builds the ``wan`` topology of :mod:`tests.netns` (each phone behind its
own masquerading router, one router hop between them and the server, as on the
internet) with one NAT kind per router, and makes one real call through the CLI
(as :mod:`tests.e2e.test_two_hosts` does): both phones play speech files, the
received audio must follow what the other side sent (envelope correlation). Each
cell prints the path both phones chose and the time to first audio.

Expected paths (``docs/protocol.md#candidates`` says why):

- both cone, routers that drop unsolicited input → **direct**: the server-reflexive
  candidates (STUN) name the mappings, and checks from both sides open the filters;
- both cone, routers that accept it → **direct**: the low-TTL NAT openers map each
  phone towards the other before any check arrives, so no router keeps an entry for
  an early check that would make it map the phone's own checks to another port;
- symmetric + cone (either side first) → **relay**: the symmetric router maps
  the media socket to a new port for the peer, unlike the one STUN saw, and the cone
  router's filter admits only the address its phone sent to; nothing that could
  reveal the new port gets through;
- both symmetric → **relay**.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .helpers import call_record, two_phones
from .test_two_hosts import speech_call

CALL_DURATION_S = 6  # shorter calls tell the two speakers apart less reliably


def run_call(net: Any, processes: Any, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One call from alice to bob on ``net``, audio checked both ways; both JSON records."""
    spoken = speech_call(two_phones(net, processes, tmp_path), tmp_path, CALL_DURATION_S)
    assert spoken.listen.returncode == 0, f"bob's listen failed\n{processes.report()}"
    ours, theirs = call_record(processes, "alice-call"), call_record(processes, "bob-listen")
    try:
        assert ours["path"] == theirs["path"], "the two sides use different paths"
        spoken.check_both_ways()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    return ours, theirs


def first_audio_s(record: dict[str, Any]) -> float:
    """Seconds from the call's start on this phone to the first audio played out."""
    return float(record["first_playout_unix"] - record["started_unix"])


@pytest.mark.parametrize(
    ("alice_nat", "bob_nat", "expected"),
    [
        pytest.param("cone-drop", "cone-drop", "direct", id="cone-drop"),
        pytest.param("cone-accept", "cone-accept", "direct", id="cone-accept"),
        pytest.param("symmetric-drop", "cone-drop", "relay", id="symmetric-cone"),
        pytest.param("cone-accept", "symmetric-accept", "relay", id="cone-symmetric"),
        pytest.param("symmetric-drop", "symmetric-accept", "relay", id="symmetric-symmetric"),
    ],
)
def test_nat_matrix(make_network, processes, tmp_path, alice_nat, bob_nat, expected):
    net = make_network(f"wan:{alice_nat},{bob_nat}")
    ours, theirs = run_call(net, processes, tmp_path)
    print(  # noqa: T201  (pytest -s shows the path and the times)
        f"\nNAT cell alice {alice_nat} / bob {bob_nat}: path {ours['path']}"
        f" (alice -> {ours['path_address']}, bob -> {theirs['path_address']});"
        f" path chosen after {ours['path_setup_ms']} / {theirs['path_setup_ms']} ms;"
        f" first audio {first_audio_s(ours):.2f} s after alice dialled,"
        f" {first_audio_s(theirs):.2f} s after bob's phone rang"
    )
    assert ours["path"] == expected, (
        f"expected {expected} behind {alice_nat} / {bob_nat}, got {ours['path']}"
        f"\n{processes.report()}"
    )
    if expected == "direct":
        # the peer's router, at the port its NAT mapped the peer's media socket to
        assert ours["path_address"].startswith(net.hosts["nat-bob"].address + ":")
        assert theirs["path_address"].startswith(net.hosts["nat-alice"].address + ":")
