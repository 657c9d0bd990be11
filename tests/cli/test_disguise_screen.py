"""The call screen and ``--json`` say whose voice is disguised (issue 23, decision 0810).

Real ``pqcall`` processes, server and relay on loopback (the end-to-end tests'
world): alice calls with ``--voice-disguise high``; bob's screen says
"alice's voice is disguised", alice's says nothing of bob's, and alice's
``--json`` record has ``voice_disguised`` true and ``peer_voice_disguised`` false.
"""

from __future__ import annotations

import pytest

from tests.cli.helpers import one_json
from tests.cli.test_end_to_end import (  # noqa: F401 (world and listeners are fixtures)
    Listener,
    listeners,
    run_pqcall,
    world,
)

pytestmark = pytest.mark.slow


def test_bob_is_told_alices_voice_is_disguised(world, tmp_path, listeners):  # noqa: F811
    bob = Listener(
        world,
        "bob",
        tmp_path,
        *("--once", "--audio-in", "tone:660", "--audio-out", "null"),
        answer="y\n",
    )
    listeners.append(bob)
    bob.wait_ready()
    alice = run_pqcall(
        world,
        world.homes["alice"],
        *("call", "bob", "--duration", "3", "--json", "--voice-disguise", "high"),
        *("--audio-in", "tone:300", "--audio-out", "null"),
    )
    bob_code = bob.wait()
    report = f"{alice.stdout}{alice.stderr}\n{bob.report()}"
    assert alice.returncode == 0, report
    assert bob_code == 0, report
    assert "alice's voice is disguised" in bob.out, report
    assert "voice is disguised" not in alice.stderr, report  # bob's is not
    record = one_json(alice.stdout)
    assert record["voice_disguised"] is True
    assert record["peer_voice_disguised"] is False
