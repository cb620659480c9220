"""Dose-distribution score of seed 002 (SPEC §2.12, Eqs. 8–9): ≤ 0, 0 ideal.

Per structure (Eq. 8), with x = d/Rx binned by ``bin_width`` (0.002) and d_i the bin **centre**
(SPEC [NOT SPECIFIED], centre preferred):

    penalty = Σ_{d_i < l} e^{c(l − d_i)} (n_i/N)(l − d_i) + Σ_{d_i > h} e^{c(d_i − h)} (n_i/N)(d_i − h)
    score   = −penalty

computed per voxel (each voxel carries its bin centre, so the mean over voxels is the sum over bins
weighted by n_i/N): vectorised, no histogram loop. Classes (SPEC §2.12 table):

| class | [l, h] (× Rx) | Rx used | c | sums | set |
|---|---|---|---|---|---|
| CTV | [1.0, 1.05 · Rx_max/Rx] | its own | 20 | under and over | S1 |
| PTV | [0.95, 1.03 · Rx_max/Rx] | its own | 10 | under and over | S1 |
| Ring | [0, 0.5] | ``ring_rx``: generating target's (default) or Rx_min | 0.5 | over | S1 |
| level-1 OAR | [0, 10 Gy/Rx_min] | Rx_min | 2 | over | S1 |
| level-3 OAR | [0, 10 Gy/Rx_min] | Rx_min | 1 | over | S2 |
| lens (Lens, Lens_L/R) | [0, 0] | Rx_min | by its level | over | by its level |

Plan score (Eq. 9): Σ_{S1} score + mean_{S2} score + mean_{S3} uniform, S3 = CTVs,
uniform = −(D2% − D98%)/Rx, read on the CTV without higher-Rx CTVs/PTVs (``own_level_mask``; the
whole CTV if nothing is left). An empty set contributes 0. An OAR without a level counts as level 3.
GTVs, Gaps (no objective, SPEC §2.3), the External and non-anatomical structures are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rtautoplan import dvh
from rtautoplan.case import Case, Role, Structure
from rtautoplan.mask import Mask
from rtautoplan.scoring.base import (Criterion, Score, check_dose, evaluation_mask, make_score, not_scored,
                                     rx_of)

SYSTEM = "dose_distribution"
BIN_WIDTH = 0.002  # d/Rx bin size (SPEC §2.12)
OAR_THRESHOLD_GY = 10.0  # OAR no-penalty limit, absolute Gy (SPEC §2.12)
LENSES = frozenset({"Lens", "Lens_L", "Lens_R"})  # interval [0, 0] (SPEC §2.12)
_SNAP = 1e-9  # bins: a d/Rx within 1e-9 bin below an edge belongs to the bin above (floating point)


@dataclass(frozen=True)
class Band:
    """How one structure is scored: no-penalty interval [lower, upper] in units of rx_gy (Gy),
    exponent slope c of φ(x) = c·x, whether the under-dose sum applies, and its set (S1 or S2)."""

    lower: float
    upper: float
    rx_gy: float
    c: float
    two_sided: bool
    group: str


# SPEC §2.12: (l, h / (Rx_max/Rx), c) of the targets.
_TARGETS = {Role.CTV: (1.0, 1.05, 20.0), Role.PTV: (0.95, 1.03, 10.0)}
RING_UPPER, RING_C = 0.5, 0.5  # SPEC §2.12
_OAR_C_AND_SET = {1: (2.0, "S1"), 3: (1.0, "S2")}  # level → (c, set), SPEC §2.12

# Ring normalisation, SPEC §2.12 [AMBIGUOUS]: the generating target's Rx (preferred) or Rx_min.
RING_RX: dict[str, Callable[[Structure, Case], float]] = {
    "generating": lambda s, case: float(s.rx_gy) if s.rx_gy is not None else case.prescription.rx_min,
    "rx_min": lambda s, case: case.prescription.rx_min,
}


def _target_band(s: Structure, case: Case, ring_rx: str) -> Band:
    lower, upper, c = _TARGETS[s.role]
    rx = rx_of(s, case)
    return Band(lower, upper * case.prescription.rx_max / rx, rx, c, True, "S1")


def _ring_band(s: Structure, case: Case, ring_rx: str) -> Band:
    return Band(0.0, RING_UPPER, RING_RX[ring_rx](s, case), RING_C, False, "S1")


def _oar_band(s: Structure, case: Case, ring_rx: str) -> Band:
    rx_min = case.prescription.rx_min
    c, group = _OAR_C_AND_SET[1 if s.level == 1 else 3]
    upper = 0.0 if s.name in LENSES else OAR_THRESHOLD_GY / rx_min
    return Band(0.0, upper, rx_min, c, False, group)


BANDS: dict[Role, Callable[[Structure, Case, str], Band]] = {
    Role.CTV: _target_band,
    Role.PTV: _target_band,
    Role.RING: _ring_band,
    Role.OAR: _oar_band,
}


def penalty(doses_gy: np.ndarray, band: Band, bin_width: float = BIN_WIDTH) -> float:
    """Eq. 8 penalty (≥ 0, dimensionless) of one structure's voxel doses (Gy, 1-D) under ``band``."""
    x = np.asarray(doses_gy, float) / band.rx_gy
    centre = (np.floor(x / bin_width + _SNAP) + 0.5) * bin_width
    over = np.maximum(centre - band.upper, 0.0)
    total = np.mean(np.exp(band.c * over) * over)
    if band.two_sided:
        under = np.maximum(band.lower - centre, 0.0)
        total += np.mean(np.exp(band.c * under) * under)
    return float(total)


def uniformity(dose_gy: np.ndarray, mask: Mask | np.ndarray, rx_gy: float) -> float:
    """uniform = −(D2% − D98%)/Rx (≤ 0, 0 perfectly uniform), SPEC §2.12; the doses read in float64."""
    doses = _float64(dose_gy, mask)
    every = np.ones(doses.shape, bool)
    return -(dvh.d2(doses, every) - dvh.d98(doses, every)) / rx_gy


def _float64(dose_gy: np.ndarray, mask: Mask | np.ndarray) -> np.ndarray:
    """The structure's doses as float64: only its voxels are converted, not the whole grid."""
    return dvh.structure_doses(dose_gy, mask).astype(np.float64)


def own_level_mask(s: Structure, case: Case) -> Mask:
    """A CTV as drawn without the CTVs and PTVs of higher prescriptions: the voxels its uniformity is read on.

    Nested targets are drawn overlapping (SPEC §2.5 rule 3 exists because they do); a CTV_6000 drawn
    around a CTV_7000 boost would otherwise score D2% − D98% = 10 Gy on a perfect SIB plan.
    """
    rx = rx_of(s, case)
    higher = [t.mask for t in case.by_role(Role.CTV, Role.PTV) if t.rx_gy is not None and t.rx_gy > rx]
    if not higher:
        return s.mask
    box = s.mask.box
    return Mask(s.mask.shape, s.mask.start, s.mask.crop & ~np.logical_or.reduce([t.window(box) for t in higher]))


def _check(ring_rx: str, bin_width: float) -> None:
    if ring_rx not in RING_RX:
        raise ValueError(f"ring_rx must be one of {sorted(RING_RX)}, got {ring_rx!r}")
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0 (a fraction of Rx), got {bin_width}")


def _penalties(dose: np.ndarray, case: Case, ring_rx: str,
               bin_width: float) -> list[tuple[Structure, Band, float | None]]:
    """(structure, band, Eq. 8 penalty) of every scored structure in case order; penalty None when it is empty."""
    rows = []
    for s in (t for t in case.structures if t.role in BANDS):
        mask, band = evaluation_mask(s), BANDS[s.role](s, case, ring_rx)
        rows.append((s, band, penalty(_float64(dose, mask), band, bin_width) if mask.any() else None))
    return rows


def structure_scores(dose_gy: np.ndarray, case: Case, ring_rx: str = "generating",
                     bin_width: float = BIN_WIDTH) -> dict[str, float]:
    """Eq. 8 score (−penalty, ≤ 0) of every scored, non-empty structure, by name in case order.

    The 4th PPO state column and the feature-selection signal of seed 002 (SPEC §2.12).
    """
    _check(ring_rx, bin_width)
    rows = _penalties(check_dose(dose_gy, case, None), case, ring_rx, bin_width)
    return {s.name: -p for s, _, p in rows if p is not None}


def _interval(band: Band) -> str:
    return f"d/Rx in [{band.lower:g}, {band.upper:.4g}] (Rx {band.rx_gy:g} Gy)"


def score(dose_gy: np.ndarray, case: Case, ring_rx: str = "generating", bin_width: float = BIN_WIDTH) -> Score:
    """score_plan of Eq. 9 for a dose (Gy, on case.grid); ring_rx: "generating" or "rx_min".

    One criterion per scored structure (metric "penalty", value = Eq. 8 penalty, score = its
    contribution −penalty · weight, weight 1 in S1 and 1/|S2| in S2) and one per CTV (metric
    "uniformity", weight 1/|S3|), so total = Σ criterion scores. Empty structures are listed, not scored.
    """
    _check(ring_rx, bin_width)
    dose = check_dose(dose_gy, case, None)
    everything = _penalties(dose, case, ring_rx, bin_width)
    rows = [(s, band, p) for s, band, p in everything if p is not None]
    criteria = [not_scored(f"{s.name} penalty", s.name, "penalty", "", _interval(band), "empty")
                for s, band, p in everything if p is None]
    n_s2 = sum(band.group == "S2" for _, band, _ in rows)
    ctvs = [s for s, _, _ in rows if s.role == Role.CTV]
    weights = {"S1": 1.0, "S2": 1.0 / max(n_s2, 1)}
    for s, band, p in rows:
        how = "summed (S1)" if band.group == "S1" else f"averaged over {n_s2} level-3 OARs (S2)"
        criteria.append(Criterion(f"{s.name} penalty", s.name, "penalty", p, "", f"{_interval(band)}; {how}",
                                  -p * weights[band.group], 0.0, p == 0.0))
    for s in ctvs:
        own = own_level_mask(s, case)
        u = uniformity(dose, own if own.any() else s.mask, rx_of(s, case))
        criteria.append(Criterion(f"{s.name} uniformity", s.name, "uniformity", u, "",
                                  f"−(D2% − D98%)/Rx = 0; averaged over {len(ctvs)} CTVs (S3)",
                                  u / len(ctvs), 0.0, None))
    return make_score(SYSTEM, criteria)
