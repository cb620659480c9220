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
from scipy import sparse

from rtautoplan.optimize.objectives import PlanObjective, PointObjective, _view


def segment_objective(f: PlanObjective | PointObjective, a) -> PlanObjective | PointObjective:
    """f(A w) as an objective of w (``a``: beamlets × segments, dense or sparse), on M A (module docstring)."""
    a = sparse.csr_matrix(a)
    if a.shape[0] != f.view.shape[1]:
        raise ValueError(f"apertures for {a.shape[0]} beamlets, the objective has {f.view.shape[1]}")
    influence = sparse.csr_matrix(f.view.matmat_sparse(a))
    view = _view(influence, np.arange(influence.shape[0]), f.view.threads)
    if isinstance(f, PointObjective):
        return PointObjective(view, f.interp, f.objectives, f.local_points, f.weights.copy())
    return PlanObjective(view, f.objectives, f.local_rows, f.weights.copy())
