"""The command line: the demo writes a complete report; bad input exits with a message."""

from __future__ import annotations

import json
import subprocess
import sys

import spatialdata as sd

from histoexpr._cli import EXIT_BAD_INPUT, main


def test_demo_writes_a_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--seed", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3
    assert metrics["n_tiles"] > 10
    assert metrics["n_spot_tiles"] == metrics["n_spots"]
    for name in ("tiles.png", "spots.png", "dapi_spots.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    assert "tiles.png" in (out / "summary.md").read_text()
    section = sd.read_zarr(out / "section.zarr")
    assert section.tables["he_tiles_table"].n_obs == metrics["n_tiles"]
    assert "he_tissue" in section.labels

    # running again must not overwrite silently
    assert main(["demo", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "--overwrite" in capsys.readouterr().err


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "histoexpr", "demo", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert "--out" in result.stdout


def test_unknown_command_fails():
    result = subprocess.run([sys.executable, "-m", "histoexpr", "frobnicate"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
