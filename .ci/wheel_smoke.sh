#!/usr/bin/env bash
# The pip route as a user takes it: build the wheel, install it into a fresh virtual environment
# (torch==2.13.0 first, then the wheel held by constraints.txt, as `make` installs) and, outside
# the repository, import it, ask the command line for its version and run a tiny synthetic
# read -> tile -> fit -> predict. pip's cache makes a second run take about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/histoexpr-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
"${pip[@]}" wheel --no-deps -w "$work/dist" "$repo"
wheel=$(ls "$work"/dist/histoexpr-*.whl)
echo "built $(basename "$wheel")"
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -c "$repo/constraints.txt" "$wheel"

cd "$work"
"$work/venv/bin/histoexpr" --version
"$work/venv/bin/python" - <<'PY'
import numpy as np

import histoexpr as hx

assert "site-packages" in hx.__file__, hx.__file__  # the installed wheel, not the source tree
assert hx.__version__ not in ("", "0.0.0"), hx.__version__
print("histoexpr", hx.__version__, "from", hx.__file__)
hx.settings.progress_bar = False
hx.settings.verbosity = 1
try:  # the data-set registry ships in the wheel
    hx.datasets.fetch("her2st/counts/C2.tsv.gz", download=False)
except FileNotFoundError as error:
    assert "github.com/almaan/her2st" in str(error), error
sections = {name: hx.datasets.synthetic_section(seed=seed, size_um=300, spot_pitch_um=40,
                                                spot_diameter_um=35)
            for seed, name in enumerate("ab")}
for sdata in sections.values():
    hx.pp.tile(sdata, "he", size_um=40.0, mpp=1.0, centres="spots", min_tissue=0,
               key_added="spot_tiles")
genes = ["EPCAM", "COL1A1", "PTPRC"]
model = hx.tl.fit({"a": sections["a"]}, model="spot_regressor", genes=genes, size_um=40.0,
                  mpp=1.0, route="ridge")
hx.tl.predict(model, sections["b"], tiles_key="spot_tiles", key_added="pred")
predicted = sections["b"].tables["pred"]
assert predicted.n_obs > 10 and list(predicted.var_names) == genes
assert np.isfinite(np.asarray(predicted.X)).all()
print("smoke test passed:", predicted.n_obs, "spots predicted")
PY
