"""Proximal operators of the plan objective's penalties, the z-step of the ADMM solver (``admm``):
of one block (:func:`prox`) and of all the blocks of a stacked dose at once (:class:`StackedProx`).

Prox steps (closed form; argmin_z w·P(z) + (ρ c/2)‖z − v‖², c = 2/N, θ = w/(w + ρ))
-----------------------------------------------------------------------------------
    DMAX      z = v − θ·(v − D)₊              DMIN     z = v − θ·(v − D)₋
    UNIFORM   z = v − θ·(v − D)               DMEAN    z = v − θ·(mean(v) − D)₊·1
    DVH_MIN   on H = the ⌈V·N⌉ hottest voxels of v: z_H = v_H − θ·(v_H − D)₋, others unchanged
    DVH_MAX   outside the ⌊V·N⌋ hottest voxels of v: z = v − θ·(v − D)₊, the hottest unchanged
    DV_MAX    on H (as above): z_H = v_H − θ·(v_H − D)₊, others unchanged; if that moves a voxel of
              H below an unselected one, the crossing voxels are pooled at the level c solving
              Σ_{i∈H, p_i<c} (c − p_i) + (1 − θ)·Σ_{i∉H, v_i>c} (c − v_i) = 0 (p = the shrunk v_H):
              z_H = max(p, c), z_rest = min(v, c).

DMEAN is the prox of a one-sided quadratic of the mean: a shift along the all-ones vector.
DV_MAX (the sum of the n largest (z_i − D)₊², hence convex) and DVH_MIN are permutation-invariant,
so their prox preserves the order of v; on the set H of v's hottest voxels they are the prox of
the one-sided quadratic on that fixed set — the standard majorisation of a dose-volume term by the
quadratic on the currently selected voxels (Wu & Mohan 2000). For DVH_MIN (a minimum over sets,
non-convex) that majoriser touches at v and its prox preserves the order, so the step is an exact
prox; for DV_MAX the fixed set is exact unless shrinking crosses the order, which the pooling
above repairs (isotonic/PAV argument), so both are exact (:func:`prox`). Inside the solver the
DVH_MIN set is frozen between refreshes instead (``admm`` module docstring; ``StackedProx.select``).
The non-convex DVH_MIN makes ADMM a local method there, as any solver is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from rtautoplan.plan import ObjectiveKind

if TYPE_CHECKING:
    from rtautoplan.optimize.admm_workspace import ADMMWorkspace

_ELEMENTWISE = (ObjectiveKind.DMAX, ObjectiveKind.DMIN, ObjectiveKind.UNIFORM)


def _n_hottest(size: int, volume: float | None) -> int:
    if volume is None or not 0.0 <= volume <= 1.0:
        raise ValueError(f"a dose-volume objective needs a volume fraction in [0, 1], got {volume!r}")
    return min(size, math.ceil(volume * size - 1e-9))


def _prox_dv_max(v: np.ndarray, dose: float, n: int, theta: float) -> np.ndarray:
    if n == 0 or theta == 0.0:
        return v.copy()
    order = np.argsort(-v, kind="stable")
    s = v[order]
    p = s[:n] - theta * np.maximum(s[:n] - dose, 0.0)
    out = s.copy()
    out[:n] = p
    if n < s.size and p[-1] < s[n]:  # shrinking crossed the order: pool at level c
        bottom = s[n:]
        lo, hi = p[-1], s[n]
        pa, ba = p[::-1], bottom[::-1]  # ascending
        cpa = np.concatenate([[0.0], np.cumsum(pa)])
        cba = np.concatenate([[0.0], np.cumsum(ba)])

        def parts(c):
            k = np.searchsorted(pa, c, "left")  # #{p < c}
            jb = np.searchsorted(ba, c, "right")  # #{bottom ≤ c}
            j = ba.size - jb
            return k, cpa[k], j, cba[-1] - cba[jb]

        cand = np.unique(np.concatenate([[lo, hi], p[(p > lo) & (p < hi)], bottom[(bottom > lo) & (bottom < hi)]]))
        k, sp, j, sb = parts(cand)
        phi = (k * cand - sp) + (1.0 - theta) * (j * cand - sb)
        i = int(np.flatnonzero(phi <= 0.0)[-1])
        if phi[i] == 0.0 or i == cand.size - 1:
            c = cand[i]
        else:
            k, sp, j, sb = parts(0.5 * (cand[i] + cand[i + 1]))
            c = (sp + (1.0 - theta) * sb) / (k + (1.0 - theta) * j)
        out[:n] = np.maximum(p, c)
        out[n:] = np.minimum(bottom, c)
    z = np.empty_like(v)
    z[order] = out
    return z


def prox(kind: ObjectiveKind, v: np.ndarray, dose_gy: float, volume: float | None, weight: float,
         rho: float) -> np.ndarray:
    """argmin_z weight·P(z) + (ρ/N)·‖z − v‖², P = ``PENALTIES[kind]`` on N voxels (module docstring).

    (ρ/N = ρc/2 with the block weight c = 2/N.)"""
    v = np.asarray(v, np.float64)
    theta = weight / (weight + rho)
    if kind is ObjectiveKind.DMAX:
        return v - theta * np.maximum(v - dose_gy, 0.0)
    if kind is ObjectiveKind.DMIN:
        return v - theta * np.minimum(v - dose_gy, 0.0)
    if kind is ObjectiveKind.UNIFORM:
        return v - theta * (v - dose_gy)
    if kind is ObjectiveKind.DMEAN:
        return v - theta * max(float(np.mean(v)) - dose_gy, 0.0)
    n = _n_hottest(v.size, volume)
    if kind is ObjectiveKind.DVH_MIN:
        z = v.copy()
        if n:
            hot = np.argpartition(v, v.size - n)[v.size - n:]
            z[hot] -= theta * np.minimum(v[hot] - dose_gy, 0.0)
        return z
    if kind is ObjectiveKind.DV_MAX:
        return _prox_dv_max(v, dose_gy, n, theta)
    if kind is ObjectiveKind.DVH_MAX:  # as DMAX outside the ⌊V·N⌋ hottest voxels of v, which may stay above D
        z = v - theta * np.maximum(v - dose_gy, 0.0)
        allowed = math.floor(volume * v.size + 1e-9)
        if allowed:
            hot = np.argpartition(v, v.size - allowed)[v.size - allowed:]
            z[hot] = v[hot]
        return z
    raise ValueError(f"no prox for {kind!r}")


class StackedProx:
    """The z-update of all blocks, vectorised over the voxel-wise kinds."""

    def __init__(self, f, ws: ADMMWorkspace):
        self.objectives = f.objectives
        self.block = ws.block
        self.bounds = np.concatenate([[0], np.cumsum([len(r) for r in f.local_rows])])
        kinds = [o.kind for o in f.objectives]
        self.dose = np.array([o.dose_gy for o in f.objectives], float)[ws.block]
        code = {ObjectiveKind.DMAX: 0, ObjectiveKind.DMIN: 1, ObjectiveKind.UNIFORM: 2}
        self.elem = np.flatnonzero(np.isin(ws.block, [m for m, k in enumerate(kinds) if k in _ELEMENTWISE]))
        self.code = np.array([code.get(k, -1) for k in kinds])[ws.block[self.elem]]
        self.mean_blocks = [m for m, k in enumerate(kinds) if k is ObjectiveKind.DMEAN]
        self.dv_max_blocks = [m for m, k in enumerate(kinds) if k is ObjectiveKind.DV_MAX]
        self.dvh_min_blocks = [m for m, k in enumerate(kinds) if k is ObjectiveKind.DVH_MIN]
        self.selected: dict[int, np.ndarray] = {}

    def select(self, dose: np.ndarray) -> bool:
        """Freeze the voxel set H of every DVH_MIN block at the stacked ``dose`` (the MM step);
        True if some set changed."""
        changed = False
        for m in self.dvh_min_blocks:
            o, s = self.objectives[m], slice(self.bounds[m], self.bounds[m + 1])
            d = dose[s]
            n = _n_hottest(d.size, o.volume)
            sel = np.zeros(d.size, bool)
            if n:
                sel[np.argpartition(d, d.size - n)[d.size - n:]] = True
            old = self.selected.get(m)
            changed |= old is None or not np.array_equal(old, sel)
            self.selected[m] = sel
        return changed

    def __call__(self, v: np.ndarray, weights: np.ndarray, rho: float) -> np.ndarray:
        theta = weights / (weights + rho)
        z = v.copy()
        e = self.elem
        r = v[e] - self.dose[e]
        r = np.where(self.code == 0, np.maximum(r, 0.0), np.where(self.code == 1, np.minimum(r, 0.0), r))
        z[e] -= theta[self.block[e]] * r
        for m in self.mean_blocks:
            s = slice(self.bounds[m], self.bounds[m + 1])
            z[s] -= theta[m] * max(float(np.mean(v[s])) - self.objectives[m].dose_gy, 0.0)
        for m in self.dv_max_blocks:
            o, s = self.objectives[m], slice(self.bounds[m], self.bounds[m + 1])
            z[s] = prox(o.kind, v[s], o.dose_gy, o.volume, weights[m], rho)
        for m in self.dvh_min_blocks:  # DMIN on the frozen set H
            o, s = self.objectives[m], slice(self.bounds[m], self.bounds[m + 1])
            z[s] -= theta[m] * np.minimum(v[s] - o.dose_gy, 0.0) * self.selected[m]
        return z
