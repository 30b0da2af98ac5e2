"""The spot-selection criterion of a tissue map on a legacy ST section (her2st).

The data authors marked, on each array, the spots under the tissue (``selected == 1`` in
``spots/<section>_selection.tsv``). The file lists only those spots, so the other array positions
are rebuilt from the array -> pixel transform fitted on the listed spots (an affine least-squares
fit of ``pixel_x, pixel_y`` on the integer array coordinates ``x, y``; residuals are a few
pixels of the ~290 px pitch). The ST array has 33 x 35 positions (``x`` 1..33, ``y`` 1..35);
positions whose whole spot disc does not lie inside the image are left out.

A position counts as *on the tissue* when the majority of its spot disc (100 um across, the
pixels of the tissue map whose centres fall in it) is tissue. Sensitivity is the fraction of the
selected spots on the tissue, specificity the fraction of the other positions off it. Used by
``tests/pp/test_tissue.py`` and ``benchmarks/bench_tissue.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ARRAY_X = range(1, 34)
ARRAY_Y = range(1, 36)
SPOT_PITCH_UM = 200.0
SPOT_RADIUS_UM = 50.0


@dataclass
class Agreement:
    sensitivity: float
    specificity: float
    n_selected: int
    n_other: int
    missed: list[str]  # selected spots off the tissue
    false: list[str]  # other positions on the tissue


def array_positions(spot_file: str | Path, image_shape_yx: tuple[int, int]) -> pd.DataFrame:
    """Every array position inside the image: ``x, y, pixel_x, pixel_y, selected``, and the
    pixel size ``mpp`` (um/px, from the fitted pitch) in ``.attrs``."""
    spots = pd.read_csv(spot_file, sep="\t")
    spots = spots[spots["selected"] == 1]
    design = np.column_stack([spots["x"], spots["y"], np.ones(len(spots))]).astype(float)
    target = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    pitch_px = float(np.linalg.norm(coef[0]))
    mpp = SPOT_PITCH_UM / pitch_px
    grid = pd.DataFrame([(x, y) for x in ARRAY_X for y in ARRAY_Y], columns=["x", "y"])
    fitted = np.column_stack([grid["x"], grid["y"], np.ones(len(grid))]) @ coef
    grid["pixel_x"], grid["pixel_y"] = fitted[:, 0], fitted[:, 1]
    grid.index = grid["x"].astype(str) + "x" + grid["y"].astype(str)
    listed = spots.set_index(spots["x"].astype(str) + "x" + spots["y"].astype(str))
    grid["selected"] = grid.index.isin(listed.index)
    grid.loc[listed.index, ["pixel_x", "pixel_y"]] = listed[["pixel_x", "pixel_y"]].to_numpy()
    radius_px = SPOT_RADIUS_UM / mpp
    height, width = image_shape_yx
    inside = ((grid["pixel_x"] - radius_px >= 0) & (grid["pixel_x"] + radius_px <= width)
              & (grid["pixel_y"] - radius_px >= 0) & (grid["pixel_y"] + radius_px <= height))
    grid = grid[inside | grid["selected"]].copy()
    grid.attrs["mpp"] = mpp
    grid.attrs["residual_px"] = float(np.abs(design @ coef - target).max())
    return grid


def on_tissue(mask: np.ndarray, mask_mpp: float, positions: pd.DataFrame,
              image_mpp: float, offset_um: tuple[float, float] = (0.0, 0.0),
              rule: str = "disc") -> np.ndarray:
    """For each position, whether most of its spot disc (``rule="disc"``), or its centre
    (``rule="centre"``), lies on the tissue map ``mask`` (pixel size ``mask_mpp`` um, top-left
    corner at ``offset_um``)."""
    mask = np.asarray(mask) > 0
    xs_um = positions["pixel_x"].to_numpy(dtype=float) * image_mpp - offset_um[0]
    ys_um = positions["pixel_y"].to_numpy(dtype=float) * image_mpp - offset_um[1]
    if rule == "centre":
        rows = np.clip((ys_um / mask_mpp).astype(int), 0, mask.shape[0] - 1)
        cols = np.clip((xs_um / mask_mpp).astype(int), 0, mask.shape[1] - 1)
        return mask[rows, cols]
    r = int(np.ceil(SPOT_RADIUS_UM / mask_mpp)) + 1
    result = np.zeros(len(positions), dtype=bool)
    for i, (cx, cy) in enumerate(zip(xs_um, ys_um, strict=True)):
        col, row = int(cx / mask_mpp), int(cy / mask_mpp)
        rows = np.arange(row - r, row + r + 1)
        cols = np.arange(col - r, col + r + 1)
        yy, xx = np.meshgrid((rows + 0.5) * mask_mpp, (cols + 0.5) * mask_mpp, indexing="ij")
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= SPOT_RADIUS_UM**2
        inside = (rows[:, None] >= 0) & (rows[:, None] < mask.shape[0]) & \
                 (cols[None, :] >= 0) & (cols[None, :] < mask.shape[1])
        values = np.zeros(disc.shape, dtype=bool)
        rr, cc = np.nonzero(inside & disc)
        values[rr, cc] = mask[rows[rr], cols[cc]]
        result[i] = values[disc].mean() >= 0.5 if disc.any() else False
    return result


def agreement(mask: np.ndarray, mask_mpp: float, positions: pd.DataFrame, image_mpp: float,
              offset_um: tuple[float, float] = (0.0, 0.0), rule: str = "disc") -> Agreement:
    """Sensitivity and specificity of a tissue map against the authors' selection."""
    hit = on_tissue(mask, mask_mpp, positions, image_mpp, offset_um, rule)
    selected = positions["selected"].to_numpy(dtype=bool)
    names = positions.index.to_numpy()
    return Agreement(sensitivity=float(hit[selected].mean()),
                     specificity=float((~hit[~selected]).mean()),
                     n_selected=int(selected.sum()), n_other=int((~selected).sum()),
                     missed=list(names[selected & ~hit]), false=list(names[~selected & hit]))


def section_agreement(sdata, positions: pd.DataFrame, image_key: str = "he",
                      tissue_key: str | None = None, rule: str = "disc") -> Agreement:
    """:func:`agreement` of the tissue map ``tissue_key`` stored in ``sdata``."""
    import histoexpr as hx

    tissue_key = f"{image_key}_tissue" if tissue_key is None else tissue_key
    image = hx.io.image_levels(sdata, image_key)[0]
    level = hx.io.image_levels(sdata, tissue_key)[0]
    offset = (level.offset[0] - image.offset[0], level.offset[1] - image.offset[1])
    return agreement(np.asarray(sdata.labels[tissue_key]), level.mpp, positions, image.mpp,
                     offset, rule)


#: simulated changes of staining and scanning (what another lab, scanner or batch brings), each
#: applied to every pixel of an RGB uint8 ``(c, y, x)`` image by :func:`changed`
CHANGES = {
    "none": "the image as scanned",
    "stain x0.3": "optical density of every channel times 0.3 (very faint staining)",
    "stain x0.5": "optical density times 0.5 (faint staining)",
    "stain x1.5": "optical density times 1.5 (heavy staining)",
    "stain x2": "optical density times 2",
    "more haematoxylin": "haematoxylin x1.5, eosin x0.7 (colour deconvolution, Ruifrok-Johnston)",
    "more eosin": "haematoxylin x0.7, eosin x1.5",
    "yellow light": "channels times (1, 0.96, 0.82): a warm lamp or aged mounting medium",
    "dim": "every channel times 0.75 (an under-exposed scan)",
    "faint, yellow, dim": "stain x0.5, then yellow light, then every channel times 0.8",
    "blur": "a Gaussian blur of 2 px (out of focus)",
}


def changed(image: np.ndarray, change: str) -> np.ndarray:
    """``image`` (RGB uint8, ``(c, y, x)``) as another lab or scanner might have made it."""
    from scipy import ndimage
    from skimage.color import hed2rgb, rgb2hed

    if change not in CHANGES:
        raise ValueError(f"Unknown change {change!r}; one of {list(CHANGES)}.")
    x = np.asarray(image, dtype=np.float32)
    glass = np.percentile(x.reshape(x.shape[0], -1), 99, axis=1)[:, None, None]

    def stain(k: float) -> np.ndarray:  # Beer-Lambert: optical density scales with the stain
        return glass * np.clip(x / glass, 1e-3, 1) ** k

    yellow = np.array([1.0, 0.96, 0.82], dtype=np.float32)[:, None, None]
    if change == "none":
        y = x
    elif change.startswith("stain x"):
        y = stain(float(change.removeprefix("stain x")))
    elif change in ("more haematoxylin", "more eosin"):
        h, e = (1.5, 0.7) if change == "more haematoxylin" else (0.7, 1.5)
        hed = rgb2hed(np.moveaxis(x / 255, 0, -1))
        hed[..., 0] *= h
        hed[..., 1] *= e
        y = np.moveaxis(hed2rgb(hed), -1, 0) * 255
    elif change == "yellow light":
        y = x * yellow
    elif change == "dim":
        y = x * 0.75
    elif change == "faint, yellow, dim":
        y = stain(0.5) * yellow * 0.8
    else:  # blur
        y = ndimage.gaussian_filter(x, (0, 2, 2))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)
