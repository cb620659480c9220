"""A second reader that shares no code with ours: dcmdump (dcmtk) parses the auxiliary RTSTRUCT,
scikit-image's scanline polygon fill turns its contours back into masks, and they must match
our masks with Dice ≥ 0.98 for every ROI."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import polygon

from rtautoplan.dicom.read import read_case
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.structures.rules import apply_rules

SAMPLE = Path(__file__).parent.parent / "sample_data" / "hn01"
LINE = re.compile(r"^\s*\((3006,00(?:22|26|50|84))\) \w\w \[(.*)\]")


def dcmdump_rois(path: Path, dcmdump: str) -> dict[str, list[np.ndarray]]:
    """ROI name → list of (n, 3) contour point arrays (mm), from dcmdump's text output alone."""
    text = subprocess.run([dcmdump, "+L", "-q", str(path)], capture_output=True, text=True, check=True).stdout
    names, contours, pending = {}, {}, []
    number = None
    for line in text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        tag, value = match.groups()
        if tag == "3006,0022":  # ROINumber (StructureSetROISequence)
            number = value
        elif tag == "3006,0026":  # ROIName
            names[number] = value
        elif tag == "3006,0050":  # ContourData
            pending.append(np.array(value.split("\\"), float).reshape(-1, 3))
        elif tag == "3006,0084" and pending:  # ReferencedROINumber closes an ROIContourSequence item
            contours[value], pending = pending, []
    return {names[n]: c for n, c in contours.items()}


def rasterise(contours: list[np.ndarray], grid) -> np.ndarray:
    """Even-odd fill of each contour on its slice with skimage (HFS axis-aligned grids)."""
    mask = np.zeros(grid.shape, bool)
    (z0, y0, x0), (dz, dy, dx) = (grid.origin[2], grid.origin[1], grid.origin[0]), grid.spacing
    for points in contours:
        k = int(round((points[0, 2] - z0) / dz))
        rows, cols = polygon((points[:, 1] - y0) / dy, (points[:, 0] - x0) / dx, grid.shape[1:])
        mask[k, rows, cols] ^= True
    return mask


@pytest.mark.tools
def test_dcmdump_contours_match_our_masks(tmp_path, tool):
    dcmdump = tool("/usr/bin/dcmdump")
    case = apply_rules(read_case(SAMPLE), site="hn")
    path = write_rtstruct(case, tmp_path / "RS_aux.dcm")
    theirs = dcmdump_rois(path, dcmdump)
    assert set(theirs) == {s.name for s in case.structures}
    for s in case.structures:
        other = rasterise(theirs[s.name], case.grid)
        dice = 2 * np.count_nonzero(other & s.mask) / (np.count_nonzero(other) + np.count_nonzero(s.mask))
        assert dice >= 0.98, f"{s.name}: Dice {dice:.3f} between dcmdump+skimage and rtautoplan"
