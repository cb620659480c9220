"""Independent checkers the DICOM tests share: dicom3tools ``dciodvfy`` and a 16-bit RTDOSE copy for it."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom

from rtautoplan.dicom.rtdose import dose_grid_scaling, quantise


def to_16_bit(path, out):
    """A copy of the RTDOSE re-encoded with 16-bit pixels (DoseGridScaling rescaled to keep the dose):
    dciodvfy aborts on 32-bit pixel data before checking anything (see test_rtdose.py)."""
    ds = pydicom.dcmread(path)
    gy = ds.pixel_array * float(ds.DoseGridScaling)
    scaling = dose_grid_scaling(float(gy.max()), np.iinfo(np.uint16).max)
    ds.DoseGridScaling = scaling
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = quantise(gy, float(scaling), np.uint16).astype("<u2").tobytes()
    ds.save_as(out, enforce_file_format=True)
    return out


def dciodvfy(tool, path) -> tuple[list[str], str]:
    """(error lines, whole output) of ``dciodvfy path``; ``tool`` is the conftest fixture."""
    result = subprocess.run([tool("/usr/bin/dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output


def dcmdump(tool, path) -> str:
    """dcmtk's dump of ``path`` (``-E``: errors to stderr); fails the test unless dcmdump parses it."""
    result = subprocess.run([tool("/usr/bin/dcmdump"), "-E", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout
