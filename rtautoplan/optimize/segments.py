"""The plan objective of step-and-shoot segment weights: f(A w) on the segment influence matrix M A.

After leaf sequencing a beam delivers x = A w: A (beamlets × segments, 0/1) says which beamlets each
segment leaves open, w are the segments' MU. Re-weighting the segments minimises f(A w) over w ≥ 0.
Evaluated through the beamlets, every evaluation costs the products with the used rows of M (every
beamlet within the 50 mm kernel cut-off of a voxel: ≈ 10× the entries of M A on hn01, where a voxel sees
at most the segments of 7 beams). ``segment_objective`` builds M A once (``RowView.matmat_sparse``, one
pass over M's entries) and returns the same objective kind on it, so each evaluation, the Jacobi scaling
(the Gauss–Newton curvature of each *segment*, exact, where dropping cross terms between a segment's
beamlets would not be) and the active-row gradient work as for a fluence optimisation. The function is
f(A w) up to rounding (M A is summed in float64, stored in M's dtype).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import sparse

from rtautoplan.optimize.objectives import PlanObjective, PointObjective, _view


def segment_objective(f: PlanObjective | PointObjective, a) -> PlanObjective | PointObjective:
    """f(A w) as an objective of w (``a``: beamlets × segments, dense or sparse), on M A (module docstring)."""
    a = sparse.csr_matrix(a)
    if a.shape[0] != f.view.shape[1]:
        raise ValueError(f"apertures for {a.shape[0]} beamlets, the objective has {f.view.shape[1]}")
    influence = _csr(f.view.matmat_sparse(a))
    view = _view(influence, np.arange(influence.shape[0]), f.view.threads)
    if isinstance(f, PointObjective):
        return PointObjective(view, f.interp, f.objectives, f.local_points, f.weights.copy(), _points=f._points)
    return PlanObjective(view, f.objectives, f.local_rows, f.weights.copy())


@njit(cache=True)
def _compact(dense, indptr, indices, data):
    for k in range(dense.shape[0]):
        p = indptr[k]
        for j in range(dense.shape[1]):
            if dense[k, j] != 0:
                indices[p] = j
                data[p] = dense[k, j]
                p += 1


def _csr(dense: np.ndarray) -> sparse.csr_matrix:
    """The CSR matrix of a dense one's non-zeros, row by row: what ``sparse.csr_matrix(dense)`` gives, in one
    pass (scipy's goes through COO triplets and boolean masks: 27 of the 48 s of building the segment
    objectives on the reduced clinical case)."""
    indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(dense, axis=1))]).astype(np.int64)
    indices = np.empty(indptr[-1], np.int32)
    data = np.empty(indptr[-1], dense.dtype)
    _compact(dense, indptr, indices, data)
    return sparse.csr_matrix((data, indices, indptr), shape=dense.shape)
