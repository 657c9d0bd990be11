"""The files benchmark runs end to end on a tiny file and reports sane figures (no timing)."""

import json
import math

import pytest

from pqcall.bench import files
from pqcall.cli import main

NAMES = (
    "1 MiB send (encrypt + sign + upload)",
    "1 MiB receive (download + verify + decrypt)",
    "1 MiB round trip",
    "1 MiB round trip vs cp",
    "1 MiB round trip CPU (client + server)",
)


def test_one_mib_run_has_every_figure(tmp_path, capsys):
    out = tmp_path / "files.json"
    assert main(["bench", "files", "--sizes", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "pqcall / plain HTTP" in table and "\n1 MiB " in table
    figures = {figure["name"]: figure for figure in json.loads(out.read_text())}
    assert set(figures) == set(NAMES)
    for name, figure in figures.items():
        assert figure["unit"] == ("s" if "CPU" in name else "MB/s"), name
        assert set(figure) == {"name", "value", "unit", "baseline_name", "baseline", "ratio"}
        assert figure["value"] > 0 and math.isfinite(figure["value"]), name
        assert figure["baseline"] > 0 and math.isfinite(figure["baseline"]), name
        assert math.isclose(figure["ratio"], figure["value"] / figure["baseline"]), name
    assert figures["1 MiB round trip vs cp"]["baseline_name"] == files.CP
    # the table's ratio is the median of each run's ratio, and the CPU seconds are shown
    row = next(line for line in table.splitlines() if line.startswith("1 MiB "))
    pair_ratio = float(row.split()[-4].removesuffix("x"))
    assert 0 < pair_ratio < 10
    cpu = figures["1 MiB round trip CPU (client + server)"]
    assert f"{cpu['value']:.2f} / {cpu['baseline']:.2f}" in row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["bench", "crypto", "--sizes", "1"],
            "pqcall: --sizes applies only to the files benchmark",
            id="other-bench",
        ),
        pytest.param(
            ["bench", "files", "--sizes", "1,0"],
            "pqcall: --sizes takes whole MiB counts separated by commas, like 1,100 (got 1,0)",
            id="zero",
        ),
        pytest.param(
            ["bench", "files", "--sizes", "big"],
            "pqcall: --sizes takes whole MiB counts separated by commas, like 1,100 (got big)",
            id="not-a-number",
        ),
    ],
)
def test_bad_sizes_are_one_line(capsys, argv, message):
    assert main(argv) == 1
    assert capsys.readouterr().err == message + "\n"


def test_default_and_quick_sizes():
    assert files.parse_sizes(None, quick=False) == [1, 100, 1024]
    assert files.parse_sizes(None, quick=True) == [1, 100]
    assert files.parse_sizes("5,2", quick=True) == [5, 2]
