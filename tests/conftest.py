"""The test suite's lanes: markers by place, so ``make test-fast`` can leave the slow ones out.

Markers (registered in ``pyproject.toml``, ``--strict-markers``):

- ``e2e``: real ``pqcall`` processes talking to each other (tests/e2e, and the
  CLI tests that run whole calls and transfers as child processes);
- ``netns``: needs root and network namespaces (tests/e2e);
- ``browser``: drives Chromium (tests/ui/test_browser.py, test_accessibility.py);
- ``pulse``: needs the virtual PulseAudio card (tests/media/test_devices_pulse.py);
- ``postgres``: the PostgreSQL variant of a test parametrized by ``db_url``;
- ``slow``: takes seconds of wall clock on its own (calls in real time,
  benchmarks, process start-ups). Listed below by test file, or by test where
  the rest of a file is quick; ``--durations=50`` finds new ones.

``make test`` runs everything; ``make test-fast`` runs
``-m "not slow and not e2e and not browser and not netns and not pulse"``.
The shared helpers (timeouts scaled by ``PQCALL_TEST_TIMEOUT_SCALE``, async
tests, polling, ports, UDP peers) are plain functions in ``tests/harness.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# path under tests/ (a directory, a file, file::test name prefix, or any prefix* ) -> markers
MARKERS_BY_PLACE: dict[str, tuple[str, ...]] = {
    "e2e/": ("e2e", "netns", "slow"),
    "ui/test_browser.py": ("browser", "slow"),
    "ui/test_accessibility.py": ("browser", "slow"),
    "media/test_devices_pulse.py": ("pulse", "slow"),
    "media/test_echo_pulse.py": ("pulse", "slow"),
    "cli/test_devices_pulse.py": ("pulse", "slow"),
    "ui/test_browser_devices.py": ("browser", "slow"),
    "ui/test_browser_callscreen.py": ("browser", "slow"),
    "ui/test_screenshots.py": ("browser", "slow"),
    "ui/test_browser_group*": ("browser", "slow"),
    "cli/test_end_to_end.py": ("e2e", "slow"),
    "cli/test_files_processes.py": ("e2e", "slow"),
    "client/test_missed_calls.py::test_listen_prints_the_missed_call_on_connect": ("e2e", "slow"),
    "client/test_missed_calls.py::test_cli_shows_a_failure_reason_on_both_sides": ("e2e", "slow"),
    "cli/test_call_screen.py::test_pty_": ("e2e", "slow"),
    # slow: benchmarks, real-time calls, restarts, mDNS, child processes, the real KDF,
    # long property runs (seconds each in `--durations=120` of a full run)
    "test_bench*": ("slow",),  # every tests/test_bench*.py
    "security/test_ui_browser.py": ("browser", "slow"),
    "security/test_ui_link.py": ("e2e", "slow"),
    "security/test_server_ops_tls.py::test_a_self_signed_certificate_is_pinned": ("slow",),
    "ui/test_app.py": ("slow",),  # real calls between two in-process UIs
    "group/test_group_phones.py": ("slow",),  # real-time group calls, 3-8 in-process phones
    "client/test_phone.py": ("slow",),
    "client/test_account_devices_call.py": ("slow",),  # a real call between devices
    "client/test_account_devices_cli.py": ("slow",),  # the real KDF, several times
    "transport/test_session.py": ("slow",),
    "server/test_restart.py": ("slow",),
    "server/test_bus.py::test_nodes_go_on_alone_while_redis_is_away": ("slow",),  # redis-server
    "server/test_discovery.py": ("slow",),
    "server/test_app.py::test_no_input_causes_a_server_error": ("slow",),
    "server/test_runner.py::test_serves_and_stops_cleanly": ("slow",),
    "server/test_runner.py::test_tls_with_a_pinned_self_signed_certificate": ("slow",),
    "server/test_ops.py::test_command_line_relay_flags_over_tls": ("slow",),
    "server/test_calls.py::test_concurrent_actions_have_one_winner": ("slow",),
    "server/test_ratelimit.py::test_never_allows_more_than_burst_plus_rate": ("slow",),
    "server/test_relay.py::test_forwarding_only_ever_joins_the_two_bound_parties": ("slow",),
    "server/test_events.py::test_unacknowledged_events_expire_after_a_week": ("slow",),
    "client/test_home.py::test_create_account_with_default_kdf_params": ("slow",),
    "client/test_api.py::test_rate_limit_says_when_to_retry": ("slow",),
    "client/test_contacts.py::test_concurrent_writers_lose_no_pin": ("slow",),
    "client/test_history.py::test_concurrent_appends_from_two_processes": ("slow",),
    "cli/test_account_server.py::test_verify_of_a_stranger_pins_their_key": ("slow",),
    "cli/test_files.py::test_send_inbox_receive": ("slow",),
    "cli/test_account_server.py::test_register_runs_the_passphrase_kdf_once": ("slow",),
    "cli/test_first_use.py::test_register_of_a_taken_name_leaves_no_key": ("slow",),
    "server/test_storage_faults.py::test_second_server_on_one_data_dir_is_refused": ("slow",),
    "security/test_server_ops_files.py": ("slow",),  # a `pqcall server` process each
    "security/test_server_ops_tls.py::test_register_prints_the_fingerprint": ("slow",),
    "crypto/test_keystore.py::test_default_params_are_strong_and_work": ("slow",),
    "crypto/test_filecrypt.py::test_any_byte_change_is_caught": ("slow",),
    "media/test_jitter.py::test_property_": ("slow",),
    "media/test_delay.py::test_incremental_estimator_matches_its_definition": ("slow",),
    "netem/test_model.py::test_gilbert_elliott_gives_the_target_loss": ("slow",),
}


def _place(item: pytest.Item) -> str:
    path = Path(str(item.path))
    relative = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else path.name
    return f"{relative}::{item.name}"


def _markers_for(place: str) -> set[str]:
    names: set[str] = set()
    for prefix, markers in MARKERS_BY_PLACE.items():
        if prefix.endswith("*"):
            prefix = prefix[:-1]
        elif not prefix.endswith("/") and "::" not in prefix:
            prefix += "::"  # a whole file
        if place.startswith(prefix):
            names.update(markers)
    return names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by where it lives, and PostgreSQL variants as ``postgres``."""
    for item in items:
        names = _markers_for(_place(item))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_url") == "postgresql":
            names.add("postgres")
        for name in sorted(names):
            item.add_marker(name)
