"""The benchmarks run end to end and report sane figures (no timing asserts)."""

import json
import math

from pqcall.cli import main


def test_crypto_bench_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "crypto.json"
    assert main(["bench", "crypto", "--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    names = {f["name"] for f in figures}
    assert {"handshake, caller side", "handshake, callee side"} <= names
    for figure in figures:
        assert figure["value"] > 0 and math.isfinite(figure["value"])
        assert figure["baseline"] > 0
        assert math.isclose(figure["ratio"], figure["value"] / figure["baseline"])
    printed = capsys.readouterr().out
    assert "SFrame protect+unprotect, 80 B" in printed


def test_codec_bench_quick_compares_capped_vbr_with_cbr(tmp_path, capsys):
    out = tmp_path / "codec.json"
    assert main(["bench", "codec", "--quick", "--json", str(out)]) == 0
    figures = {f["name"]: f for f in json.loads(out.read_text())}
    for state in ("clean path, complexity 6", "lossy path, complexity 10"):
        cpu = figures[f"encode CPU per frame, {state}"]
        assert cpu["value"] > 0 and cpu["baseline"] > 0
        mean = figures[f"Opus bytes per frame (mean), {state}"]
        largest = figures[f"Opus bytes per frame (largest), {state}"]
        assert mean["baseline"] == largest["baseline"] == 99  # CBR fills every packet
        assert mean["value"] < largest["value"] <= 99  # VBR varies under the same cap
    assert "constant bitrate, same settings" in capsys.readouterr().out
