"""The simulator's own carbon-ion dose engine and optimiser (PBS, LQ RBE).

Three stages, each where it is cheapest, each in its own module (this one gathers their names):

1. ``DoseGridModel.from_case`` (``dose_grid``; session process, block operations only): the dose
   grid is the CT grid in blocks of ``round(dose_grid_mm / spacing)`` voxels per axis; HU are block
   means, the body and the target (the union of the plan's target ROIs) are "any voxel of the
   block". Every ROI gets its *objective points*, with their tissue (target ROIs α/β = 10 Gy,
   everything else α/β = 2 Gy) and the interpolation from the dose grid to them: its CT voxels (at
   most ``MAX_POINTS_PER_ROI``, an even stride beyond that), trilinear from the dose grid, so the
   optimiser sees the dose reported on the CT grid.
2. ``build_influence`` (``influence``; once per patient, fields and grid; the result is
   content-addressed on disk and shared by every plan and worker): per field, water-equivalent depth
   by ray tracing the SPR (``ion_range.hu_to_spr``, ``geometry.radiological_depth``), spots over the
   target (``ion_dose.spots_for``), and for every spot and dose-grid voxel
   ``d = IDD(WET, E) · exp(−r²/2σ²) / (2πσ²)`` (``ion_dose.carbon_idd`` averaged over the voxel's
   depth extent, σ = ``ion_dose.lateral_sigma``, r the distance to the spot axis, cut at 3σ), plus
   ``h = (α − α_x)/(α_x (R_max − 1))``, the tissue-free LET part of the dose-averaged α of
   ``rbe.carbon_alpha``. Two sparse matrices: D (Gy per 10⁶ ions) and H = D∘h.
3. ``optimise`` (``optimiser``, on the objective of ``objectives``; a pool worker): D·w and H·w on
   the dose-grid voxels the objective points interpolate from, trilinear to the points, then per
   point the effect α_x(d + (R_max − 1)h) + β_x d² (Zaider–Rossi mixing with constant β) and the
   RBE-weighted dose, the gradient by the same chain backwards; L-BFGS-B with spot weights ≥ 0,
   warm-started from the plan's previous weights.

Doses are whole-course Gy(RBE) = fractions × the dose of one fraction; the LQ model is applied to
the dose per fraction (that is where it holds), spot weights are per fraction in units of 10⁶ ions.
"""

from rtautoplan.adapters.phoenix_api.dose_grid import (GEOMETRY_VERSION, MAX_POINTS_PER_ROI, NORMAL, TUMOUR,
                                                       DoseGridModel, RoiPoints, interpolation_matrix, resample_to_ct)
from rtautoplan.adapters.phoenix_api.influence import (IONS_PER_UNIT, LATERAL_CUT_SIGMA, Influence, build_influence,
                                                       influence_cached, scratch_store)
from rtautoplan.adapters.phoenix_api.objectives import BOUNDS, CATALOGUE, ObjectiveTerm, Problem
from rtautoplan.adapters.phoenix_api.optimiser import Cancelled, initial_weights, optimise

__all__ = ["BOUNDS", "CATALOGUE", "IONS_PER_UNIT", "LATERAL_CUT_SIGMA", "GEOMETRY_VERSION", "MAX_POINTS_PER_ROI",
           "NORMAL", "TUMOUR", "Cancelled", "DoseGridModel", "Influence", "ObjectiveTerm", "Problem", "RoiPoints",
           "build_influence", "influence_cached", "initial_weights", "interpolation_matrix", "optimise",
           "resample_to_ct", "scratch_store"]
