"""Cumulative dose-volume histograms and the dose/volume metrics read off them.

Every voxel of a structure counts with equal volume (no partial-volume weighting). The doses of
a structure, sorted once, define everything:

* ``V(d)``: the fraction of voxels with dose **≥ d** (a right-continuous step function);
* ``Dx%``: the minimum dose to the hottest x % of the volume. On the N sorted doses
  ``s_0 ≤ … ≤ s_{N-1}``, voxel k stands for the volume fraction ``(k + ½)/N`` counted from the
  cold end; Dx% is the linear interpolation of the doses at volume fraction ``1 − x/100``
  (the Hazen plotting position), clamped to ``s_0`` and ``s_{N-1}``. So D0% = Dmax, D100% = Dmin,
  D50% is the median, and the error against the continuous DVH of the same dose field is at
  most half a voxel of volume.
* ``Dx cm³``: Dx% with x = 100 · (x cm³ / structure volume); a request larger than the structure
  gives Dmin.

``mask`` is a ``Mask`` (a structure's, read on its bounding box), a bool array of the dose's
shape or the flat voxel indices ``np.flatnonzero(mask)``; a Mask or the indices are the fast forms
for calls repeated every step of a loop, since a full bool array costs a pass over the whole grid. Doses are in Gy, volumes in cm³.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rtautoplan.mask import Mask


@dataclass(frozen=True, eq=False)
class DVH:
    """A cumulative DVH.

    dose_gy: dose bin edges (Gy), 0, bin, 2·bin, …, ending above the highest dose.
    volume: fraction (0–1) of the structure receiving at least ``dose_gy[i]``.
    total_cm3: the structure volume (cm³), None when no voxel volume was given.
    """

    dose_gy: np.ndarray
    volume: np.ndarray
    total_cm3: float | None = None

    @property
    def volume_cm3(self) -> np.ndarray:
        """Absolute cumulative volume (cm³) at each dose edge."""
        if self.total_cm3 is None:
            raise ValueError("this DVH has no absolute volume: pass voxel_volume_cm3 to dvh()")
        return self.volume * self.total_cm3

    @property
    def volume_percent(self) -> np.ndarray:
        return 100.0 * self.volume


def structure_doses(dose_gy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The doses (Gy, 1-D) of the voxels in ``mask`` (Mask, bool array or flat indices)."""
    dose_gy = np.asarray(dose_gy)
    if isinstance(mask, Mask):
        values = mask.take(dose_gy)
    elif (mask := np.asarray(mask)).dtype == bool:
        if mask.shape != dose_gy.shape:
            raise ValueError(f"mask shape {mask.shape} differs from dose shape {dose_gy.shape}: both must be on one grid")
        values = dose_gy[mask]
    else:
        values = dose_gy.ravel()[mask.ravel()]
    if values.size == 0:
        raise ValueError("the structure has no voxels on the dose grid: check its mask (empty after cropping?)")
    return values


def _sorted(dose_gy, mask) -> np.ndarray:
    return np.sort(structure_doses(dose_gy, mask), kind="stable")


def _d_at(s: np.ndarray, fraction: np.ndarray | float) -> np.ndarray:
    """Dose (Gy) received by at least the hottest ``fraction`` (0–1) of sorted doses ``s``."""
    n = s.size
    positions = (np.arange(n) + 0.5) / n
    return np.interp(1.0 - np.asarray(fraction, float), positions, s)


def _v_at(s: np.ndarray, d_gy: np.ndarray | float) -> np.ndarray:
    """Fraction of sorted doses ``s`` that are ≥ ``d_gy``."""
    return (s.size - np.searchsorted(s, np.asarray(d_gy, float), side="left")) / s.size


def dvh(
    dose_gy: np.ndarray,
    mask: np.ndarray,
    bin_gy: float = 0.01,
    max_gy: float | None = None,
    voxel_volume_cm3: float | None = None,
) -> DVH:
    """Cumulative DVH of a structure on edges 0, bin_gy, … up to max_gy (default: its Dmax)."""
    if bin_gy <= 0:
        raise ValueError(f"bin_gy must be > 0, got {bin_gy}")
    s = _sorted(dose_gy, mask)
    top = float(s[-1]) if max_gy is None else float(max_gy)
    edges = np.arange(int(np.floor(max(top, 0.0) / bin_gy)) + 2) * bin_gy
    total = None if voxel_volume_cm3 is None else s.size * float(voxel_volume_cm3)
    return DVH(dose_gy=edges, volume=_v_at(s, edges), total_cm3=total)


def dvh_points(dose_gy: np.ndarray, mask: np.ndarray, rx_gy: float, n: int = 100, max_rel: float = 1.2) -> np.ndarray:
    """Percent volume (0–100) receiving ≥ each of n doses evenly spaced on [0, max_rel·rx_gy].

    The DVH state of an RL planner (SPEC §1.2: 100 points per structure; §2.10: uniform on the
    dose axis, normalised to Rx — the [NOT SPECIFIED] range is our choice, 0–120 % of Rx).
    """
    s = _sorted(dose_gy, mask)
    return 100.0 * _v_at(s, np.linspace(0.0, max_rel * rx_gy, n))


# --- single metrics ------------------------------------------------------------------------


def d_percent(dose_gy: np.ndarray, mask: np.ndarray, x: float) -> float:
    """Dx% (Gy): the minimum dose to the hottest x % of the structure (module docstring)."""
    return float(_d_at(_sorted(dose_gy, mask), x / 100.0))


def d_cc(dose_gy: np.ndarray, mask: np.ndarray, x: float, voxel_volume_cm3: float) -> float:
    """Dx cm³ (Gy): the minimum dose to the hottest x cm³ (e.g. D0.03cm³, a near-maximum)."""
    s = _sorted(dose_gy, mask)
    return float(_d_at(s, min(x / (s.size * voxel_volume_cm3), 1.0)))


def v_gy(dose_gy: np.ndarray, mask: np.ndarray, x: float) -> float:
    """Vx Gy: the fraction (0–1) of the structure receiving ≥ x Gy."""
    return float(_v_at(_sorted(dose_gy, mask), x))


def v_gy_cc(dose_gy: np.ndarray, mask: np.ndarray, x: float, voxel_volume_cm3: float) -> float:
    """Vx Gy in cm³: the volume receiving ≥ x Gy."""
    doses = structure_doses(dose_gy, mask)
    return float(np.count_nonzero(doses >= x)) * voxel_volume_cm3


def v_percent(dose_gy: np.ndarray, mask: np.ndarray, x: float, rx_gy: float) -> float:
    """Vx%: the fraction (0–1) of the structure receiving ≥ x % of the prescription rx_gy."""
    return v_gy(dose_gy, mask, x / 100.0 * rx_gy)


def dmean(dose_gy: np.ndarray, mask: np.ndarray) -> float:
    """Mean dose (Gy)."""
    return float(np.mean(structure_doses(dose_gy, mask), dtype=np.float64))


def dmax(dose_gy: np.ndarray, mask: np.ndarray) -> float:
    """Maximum voxel dose (Gy); for the clinical near-maximum use ``d_cc(…, 0.03, …)`` or D2."""
    return float(np.max(structure_doses(dose_gy, mask)))


def dmin(dose_gy: np.ndarray, mask: np.ndarray) -> float:
    """Minimum voxel dose (Gy)."""
    return float(np.min(structure_doses(dose_gy, mask)))


def d2(dose_gy: np.ndarray, mask: np.ndarray) -> float:
    """D2% (Gy), the ICRU 83 near-maximum."""
    return d_percent(dose_gy, mask, 2.0)


def d95(dose_gy: np.ndarray, mask: np.ndarray) -> float:
    """D95% (Gy), the usual coverage metric."""
    return d_percent(dose_gy, mask, 95.0)


def d98(dose_gy: np.ndarray, mask: np.ndarray) -> float:
    """D98% (Gy), the ICRU 83 near-minimum."""
    return d_percent(dose_gy, mask, 98.0)


# --- all at once ---------------------------------------------------------------------------

D_PERCENTS = (2.0, 50.0, 95.0, 98.0)
D_CCS = (0.03,)
V_PERCENTS = (95.0, 100.0, 107.0)


def metrics(
    dose_gy: np.ndarray,
    mask: np.ndarray,
    voxel_volume_cm3: float,
    rx_gy: float | None = None,
    d_percents: Sequence[float] = D_PERCENTS,
    d_ccs: Sequence[float] = D_CCS,
    v_gys: Sequence[float] = (),
    v_percents: Sequence[float] = V_PERCENTS,
) -> dict[str, float]:
    """All the usual metrics of one structure from a single sort.

    Keys: ``volume_cm3``, ``Dmean``, ``Dmin``, ``Dmax`` (Gy); ``HI`` = (D2 − D98)/D50 (ICRU 83);
    ``D{x}`` for x in d_percents (Gy, x in %; e.g. ``D95``); ``D{x}cc`` for x in d_ccs (Gy, e.g.
    ``D0.03cc``); ``V{x}Gy`` for x in v_gys (fraction 0–1); with rx_gy, also ``V{x}%`` for x in
    v_percents (fraction 0–1 receiving ≥ x % of rx_gy). Numbers are written with ``{x:g}``.
    """
    s = _sorted(dose_gy, mask)
    n = s.size
    volume = n * float(voxel_volume_cm3)
    out = {"volume_cm3": volume, "Dmean": float(np.mean(s, dtype=np.float64)), "Dmin": float(s[0]), "Dmax": float(s[-1])}
    pcts = sorted(set(d_percents) | {2.0, 50.0, 98.0})
    fractions = [p / 100.0 for p in pcts] + [min(c / volume, 1.0) for c in d_ccs]
    doses = _d_at(s, np.asarray(fractions))
    dp = dict(zip(pcts, doses[: len(pcts)]))
    out.update({f"D{p:g}": float(dp[p]) for p in d_percents})
    out.update({f"D{c:g}cc": float(d) for c, d in zip(d_ccs, doses[len(pcts) :])})
    out["HI"] = float((dp[2.0] - dp[98.0]) / dp[50.0]) if dp[50.0] > 0 else float("nan")
    out.update({f"V{x:g}Gy": float(v) for x, v in zip(v_gys, np.atleast_1d(_v_at(s, list(v_gys))))})
    if rx_gy is not None:
        vs = np.atleast_1d(_v_at(s, [x / 100.0 * rx_gy for x in v_percents]))
        out.update({f"V{x:g}%": float(v) for x, v in zip(v_percents, vs)})
    return out
