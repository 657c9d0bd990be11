"""``--voice-disguise PRESET`` on ``call`` and ``listen`` reaches the call's MediaOptions."""

from __future__ import annotations

import pytest

from pqcall.cli import build_parser
from pqcall.cli.options import VOICE_DISGUISE_PRESETS, media_options
from pqcall.media.disguise import PRESETS


def test_cli_choices_are_the_stage_presets():
    assert set(VOICE_DISGUISE_PRESETS) == set(PRESETS)


@pytest.mark.parametrize("argv", [["call", "bob"], ["listen"]])
def test_flag_reaches_media_options(argv):
    parser = build_parser()
    assert media_options(parser.parse_args(argv)).voice_disguise is None
    for preset in VOICE_DISGUISE_PRESETS:
        args = parser.parse_args([*argv, "--voice-disguise", preset])
        assert media_options(args).voice_disguise == preset


def test_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["listen", "--voice-disguise", "whisper"])
    assert exc.value.code == 2
    assert "--voice-disguise" in capsys.readouterr().err
