"""The device panel's API: processing switches for the next call, devices listed again."""

from __future__ import annotations

from pathlib import Path

from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS
from pqcall.ui.controller import Controller
from tests.harness import run_async
from tests.server.conftest import RunningServer
from tests.ui.test_app import registered, running_ui, server  # noqa: F401 (the fixture)


@run_async
async def test_processing_switches_apply_to_the_next_call(tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        devices = (await alice.state())["devices"]
        assert (devices["echo_cancel"], devices["noise_suppression"], devices["auto_gain"]) == (
            True,
            True,
            True,
        )
        response = await alice.post("/devices", {"echo_cancel": False, "auto_gain": False})
        assert response.status_code == 200
        devices = response.json()["devices"]
        assert (devices["echo_cancel"], devices["noise_suppression"], devices["auto_gain"]) == (
            False,
            True,
            False,
        )
        media = alice.controller.media
        assert (media.echo_cancel, media.noise_suppression, media.auto_gain) == (False, True, False)
        assert media.audio_in == "tone:440"  # the devices stay
        response = await alice.post("/devices", {"echo_cancel": True})
        assert response.json()["devices"]["echo_cancel"] is True
        assert (await alice.post("/devices", {"echo_cancel": "yes please"})).status_code == 400


@run_async
async def test_a_headset_plugged_in_shows_after_a_rescan(tmp_path: Path) -> None:
    plugged: list[str] = []

    def lister() -> tuple[list[str], list[str]]:
        return ["mic", *plugged], ["speaker", *plugged]

    controller = Controller(
        Home(tmp_path / "alice"),
        media=MediaOptions(audio_in="tone:440", audio_out="null"),
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        list_devices=lister,
    )
    await controller.start()
    try:
        assert controller.state()["devices"]["outputs"] == ["speaker"]
        plugged.append("pulse:headset")
        await controller.rescan_devices()
        assert controller.state()["devices"]["outputs"] == ["speaker", "pulse:headset"]
        assert controller.state()["devices"]["inputs"] == ["mic", "pulse:headset"]
    finally:
        await controller.close()


@run_async
async def test_rescan_through_the_api(tmp_path: Path) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        response = await alice.post("/devices", {"rescan": True})
        assert response.status_code == 200
        assert response.json()["devices"]["outputs"] == ["speaker"]


@run_async
async def test_voice_disguise_choice_reaches_the_next_calls_options(
    server: RunningServer,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    async with running_ui(tmp_path, "alice") as alice:
        await registered(alice, "alice", server)  # a phone: the choice is its next call's
        devices = (await alice.state())["devices"]
        assert devices["voice_disguise"] is None
        assert [p["name"] for p in devices["voice_disguise_presets"]] == ["low", "high"]
        response = await alice.post("/devices", {"voice_disguise": "high"})
        assert response.status_code == 200
        assert response.json()["devices"]["voice_disguise"] == "high"
        assert alice.controller.media.voice_disguise == "high"
        phone = alice.controller.phone
        assert phone is not None and phone.media.voice_disguise == "high"  # the next call's
        response = await alice.post("/devices", {"echo_cancel": False})  # other switches keep it
        assert alice.controller.media.voice_disguise == "high"
        response = await alice.post("/devices", {"voice_disguise": "whisper"})
        assert response.status_code == 400
        assert alice.controller.media.voice_disguise == "high"
        response = await alice.post("/devices", {"voice_disguise": "off"})
        assert response.json()["devices"]["voice_disguise"] is None
        assert alice.controller.media.voice_disguise is None
