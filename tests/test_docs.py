"""The documentation builds without warnings, executing the tutorials."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.realdata  # the tutorials read ../shared/data
@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path, data_dir):
    pytest.importorskip("myst_nb", reason="the docs extra is not installed")
    shutil.rmtree(REPO / "docs" / "generated", ignore_errors=True)  # stale API pages of old names
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         str(REPO / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True,
        env={**_environment(), "HISTOEXPR_SHARED_DATA": str(data_dir)},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    tutorial = (tmp_path / "html" / "tutorials" / "01_read_tile_plot.html").read_text()
    assert "spots x" in tutorial  # an executed cell's output
    assert "<img" in tutorial  # the plots were drawn
    assert (tmp_path / "html" / "generated" / "histoexpr.io.read_wsi.html").exists()


def _environment() -> dict[str, str]:
    import os

    # no MPLBACKEND: the notebooks' kernel must use its inline backend to record the figures
    environment = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    return {**environment, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
