"""Objective points: where the optimiser reads the dose of a structure.

The dose influence matrix has one row per dose-grid voxel; the plan's dose is reported (DVHs, the
clinical gate, RTDOSE) on the CT grid, trilinear from the dose grid (``dij.dose_to_grid``). An
objective read at dose-grid voxel centres can be met there while the reported DVH fails: the edge
of a target falls between centres (on hn01's 5 mm dose grid, PTV D95 read on the CT voxels was
2 Gy below the optimiser's). So the objectives read the dose at the structure's **CT voxels**,
with the same trilinear weights as ``dose_to_grid`` (nearest edge value outside the dose grid):
``interpolation(dij, ct_grid, flat)`` is the sparse P with d_points = P · (dose-grid rows).

A structure of more than ``MAX_POINTS`` CT voxels is read at an even stride of them (a DVH
objective on 200 000 voxels is not better conditioned than on 60 000, and P stays small).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from rtautoplan.case import Grid

MAX_POINTS = 60_000


def sample(flat: np.ndarray, limit: int = MAX_POINTS) -> np.ndarray:
    """``flat`` (sorted CT voxel indices) at an even stride when there are more than ``limit``."""
    flat = np.asarray(flat, np.int64)
    if flat.size <= limit:
        return flat
    return flat[np.linspace(0, flat.size - 1, limit).round().astype(np.int64)]


def interpolation(dose_grid: Grid, row_lookup: np.ndarray, ct_grid: Grid, flat: np.ndarray) -> sparse.csr_matrix:
    """(len(flat), n_rows) trilinear weights from the dose-grid rows to the CT voxels ``flat``.

    row_lookup: flat dose-grid index → row (−1: not a row, dose 0 there). Coordinates as
    ``dose_to_grid``: clamped to the dose grid (the nearest edge value outside it)."""
    flat = np.asarray(flat, np.int64)
    kji = np.stack(np.unravel_index(flat, ct_grid.shape), axis=-1).astype(float)
    shape = np.asarray(dose_grid.shape)
    f = np.clip(np.asarray(dose_grid.patient_to_index(ct_grid.index_to_patient(kji))), 0.0, shape - 1)
    lo = np.minimum(np.floor(f).astype(np.int64), np.maximum(shape - 2, 0))
    t = f - lo
    n_rows = int(row_lookup.max(initial=-1)) + 1
    rows, cols, vals = [], [], []
    for corner in np.ndindex(2, 2, 2):
        w = np.prod([t[:, a] if corner[a] else 1.0 - t[:, a] for a in range(3)], axis=0)
        index = [np.minimum(lo[:, a] + corner[a], shape[a] - 1) for a in range(3)]
        r = row_lookup[np.ravel_multi_index(tuple(index), tuple(shape))]
        ok = (r >= 0) & (w > 0)
        rows.append(np.flatnonzero(ok))
        cols.append(r[ok])
        vals.append(w[ok])
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(flat.size, n_rows))


def structure_points(dij, case, name: str) -> sparse.csr_matrix:
    """The objective points of structure ``name`` of ``case`` on ``dij`` (a ``physics.dij.Dij``): its
    planning voxels on the CT grid (``sample``d), trilinear from the dose-grid rows."""
    flat = sample(case.structure(name).voxels.indices)
    return interpolation(dij.dose_grid, dij.row_lookup(), case.grid, flat)
