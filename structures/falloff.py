"""Normal-tissue dose fall-off: the maximum dose outside the targets decreasing with distance from them.

What Eclipse's normal tissue objective (NTO) and RayStation's dose fall-off objective do: every
voxel of the External outside the targets at distance x (mm) from the nearest target (CTV/PTV/GTV
with a dose level) is held below

    f(x) = Rx_max · max(F_END, F_START · exp(−K · (x − X_START)))

with Eclipse's manual-NTO defaults (distance from target border 0.3 cm, start dose 105 %, end dose
60 %, fall-off 0.05 mm⁻¹). Without it, modulation is free to put hot spots where no objective looks
(beyond the Ring), and sparing an OAR inside a concave target is paid with them.

The continuous f is applied in shells ``zFalloff_<x>mm`` (planning-only, Role.CONTROL) of
``BAND_MM`` from X_START outwards, each with a maximum-dose objective at f of its inner edge (the
loosest value inside it), until f reaches F_END: the last shell is everything farther. Shells whose
limit is not below the hot-spot aim (the Gap's objective already holds them) get none.
"""

from __future__ import annotations

import math

import numpy as np

from rtautoplan.case import Case, Role, Structure
from rtautoplan.mask import Mask
from rtautoplan.plan import Objective, ObjectiveKind
from rtautoplan.structures.margins import distance_mm

X_START_MM = 3.0  # Eclipse NTO default "distance from target border" 0.3 cm
F_START = 1.05  # × Rx_max at X_START (Eclipse default start dose 105 %)
F_END = 0.60  # × Rx_max far from the targets (Eclipse default end dose 60 %)
K_PER_MM = 0.05  # fall-off (Eclipse default 0.05 mm⁻¹)
BAND_MM = 5.0  # shell width of the piecewise-constant f
FALLOFF_WEIGHT = 1.0  # as an OAR's rule-11 objective
PREFIX = "zFalloff_"


def limit_fraction(x_mm: float) -> float:
    """f(x) / Rx_max at distance ``x_mm`` (mm) from the targets."""
    return max(F_END, F_START * math.exp(-K_PER_MM * (x_mm - X_START_MM)))


def band_edges() -> tuple[float, ...]:
    """Inner edges (mm) of the shells: X_START, X_START + BAND_MM, … up to the first where f = F_END."""
    edges = [X_START_MM]
    while limit_fraction(edges[-1]) > F_END + 1e-9:
        edges.append(edges[-1] + BAND_MM)
    return tuple(edges)


def falloff_regions(case: Case, aim: float) -> Case:
    """``case`` with the fall-off shells (module docstring) of those edges whose f is below ``aim`` × Rx_max
    (the hot-spot aim: nearer shells are the Gap's). A case without an External or targets is returned
    as it is; a previous run's shells (read back as z-structures) are replaced."""
    targets = [s.mask.to_full() for s in case.by_role(Role.CTV, Role.PTV, Role.GTV)
               if s.rx_gy is not None and s.mask.any()]
    kept = tuple(s for s in case.structures if not s.name.startswith(PREFIX))
    if not targets or not case.by_role(Role.EXTERNAL):
        return case.with_structures(kept)
    inside = np.logical_or.reduce(targets)
    body = case.external.mask.to_full() & ~inside
    distance = distance_mm(inside, case.grid.spacing, within_mm=band_edges()[-1])
    edges = band_edges()
    shells = []
    for lo, hi in zip(edges, edges[1:] + (np.inf,)):
        if limit_fraction(lo) >= aim:
            continue
        region = body & (distance > lo) & (distance <= hi)
        if region.any():
            mask = Mask.from_full(region)
            shells.append(Structure(_name(lo), mask, Role.CONTROL, level=None, rx_gy=None, color=(200, 200, 120),
                                    planning_mask=mask))
    return case.with_structures(kept + tuple(shells))


def _name(lo: float) -> str:
    return f"{PREFIX}{lo:g}mm"


def falloff_objectives(case: Case) -> tuple[Objective, ...]:
    """One fixed maximum-dose objective per fall-off shell of ``case`` (``falloff_regions``) at
    f(inner edge) (Gy)."""
    rx_max = case.prescription.rx_max
    out = []
    for lo in band_edges():
        s = next((s for s in case.structures if s.name == _name(lo)), None)
        if s is not None and s.voxels.any():
            out.append(Objective(s.name, ObjectiveKind.DMAX, limit_fraction(lo) * rx_max, FALLOFF_WEIGHT,
                                 adjustable=False))
    return tuple(out)
