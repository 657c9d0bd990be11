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
