"""Dose influence of the spots on the dose grid (stage 2 of ``engine``): the sparse matrices D and
H = D∘h per patient, target and field set, and the content-addressed store they are kept in.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rtautoplan.adapters.phoenix_api.dose_grid import DoseGridModel
from rtautoplan.physics import ion_dose, rbe
from rtautoplan.physics.geometry import beam_frame, radiological_depth
from rtautoplan.physics.ion_range import csda_range, hu_to_spr
from rtautoplan.plan import Beam, Modality

IONS_PER_UNIT = 1.0e6  # one unit of spot weight = 10⁶ carbon ions (per fraction)
LATERAL_CUT_SIGMA = 3.0
_UNIT = rbe.Tissue(1.0, 1.0, 2.0)  # α_x = 1, R_max − 1 = 1: carbon_alpha − 1 is the LET factor h


@dataclass(frozen=True, eq=False)
class Influence:
    """Dose influence of all spots on the dose grid: D (Gy per 10⁶ ions), H = D∘h, spots per field."""

    d: sp.csr_matrix
    h: sp.csr_matrix
    spots: tuple[np.ndarray, ...]  # per field: (n, 3) x_b, y_b (mm at the isocentre plane), MeV/u

    @property
    def field_slices(self) -> tuple[slice, ...]:
        out, start = [], 0
        for s in self.spots:
            out.append(slice(start, start + len(s)))
            start += len(s)
        return tuple(out)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npz")  # concurrent create_plan calls
        np.savez(tmp, d_data=self.d.data, h_data=self.h.data, indices=self.d.indices, indptr=self.d.indptr,
                 shape=np.array(self.d.shape), sizes=np.array([len(s) for s in self.spots]),
                 spots=np.concatenate(self.spots) if self.spots else np.zeros((0, 3)))
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    @staticmethod
    def load(path: Path) -> "Influence":
        with np.load(path) as z:
            shape = tuple(z["shape"])
            d = sp.csr_matrix((z["d_data"], z["indices"], z["indptr"]), shape=shape)
            h = sp.csr_matrix((z["h_data"], z["indices"], z["indptr"]), shape=shape)
            spots = tuple(np.split(z["spots"], np.cumsum(z["sizes"])[:-1]))
        return Influence(d, h, spots)


def build_influence(model: DoseGridModel, fields, spot_spacing_mm: float = 5.0, layer_spacing_mm: float = 3.0,
                    margin_mm: float = 4.0) -> Influence:
    """D and H of every spot of ``fields`` ((gantry°, couch°) pairs) on the model's dose grid."""
    grid = model.grid
    spr = hu_to_spr(model.hu)
    body_flat = np.flatnonzero(model.body)
    kji = np.stack(np.unravel_index(body_flat, grid.shape), axis=-1)
    xyz = grid.index_to_patient(kji)
    rows, cols, dvals, hvals, all_spots = [], [], [], [], []
    offset = 0
    for gantry, couch in fields:
        frame = beam_frame(Beam("F", float(gantry), model.isocenter, float(couch), modality=Modality.CARBON),
                           model.patient_position)
        wet_grid = radiological_depth(spr, grid, frame, voxels=model.body)
        spots = ion_dose.spots_for(model.target, grid, frame, wet_grid, "carbon", spot_spacing_mm=spot_spacing_mm,
                                   layer_spacing_mm=layer_spacing_mm, margin_mm=margin_mm)
        wet = wet_grid.ravel()[body_flat].astype(float)
        px, py, t = frame.to_beam(xyz)
        # voxel thickness along the beam, in water: the IDD is averaged over it (3 points)
        steps = np.abs(grid.axes @ frame.direction) * np.asarray(grid.spacing)
        half = 0.5 * float(np.linalg.norm(steps)) * spr.ravel()[body_flat] / 3.0
        for energy in np.unique(spots[:, 2])[::-1]:
            layer = np.flatnonzero(spots[:, 2] == energy)
            r0 = float(csda_range(energy, "carbon"))
            sxy = spots[layer, :2]
            sig_max = float(ion_dose.lateral_sigma(2.0 * r0, energy, "carbon")) * frame.sad_mm / t.min()
            reach = LATERAL_CUT_SIGMA * sig_max
            near = np.flatnonzero((px >= sxy[:, 0].min() - reach) & (px <= sxy[:, 0].max() + reach)
                                  & (py >= sxy[:, 1].min() - reach) & (py <= sxy[:, 1].max() + reach)
                                  & np.isfinite(wet))
            if near.size == 0:
                continue
            w_near = wet[near]
            dd = sum(ion_dose.carbon_idd(np.maximum(w_near + s * half[near], 0.0), energy) for s in (-1.0, 0.0, 1.0)) / 3.0
            live = dd > 0
            near, w_near, dd = near[live], w_near[live], dd[live]
            h_near = rbe.carbon_alpha(w_near, energy, _UNIT) - 1.0
            sigma = ion_dose.lateral_sigma(w_near, energy, "carbon")  # mm at depth
            scale = frame.sad_mm / t[near]  # depth → isocentre plane
            sig_iso = sigma * scale
            norm = dd * IONS_PER_UNIT / (2.0 * np.pi * sigma**2)
            # spots of the layer on their lattice: cell (ix, iy) → spot
            cell = np.rint(sxy / spot_spacing_mm - 0.5).astype(np.int64)
            c0 = cell.min(axis=0)
            lut = -np.ones(tuple(cell.max(axis=0) - c0 + 1), np.int64)
            lut[cell[:, 0] - c0[0], cell[:, 1] - c0[1]] = np.arange(len(layer))
            vx = np.floor(px[near] / spot_spacing_mm).astype(np.int64) - c0[0]
            vy = np.floor(py[near] / spot_spacing_mm).astype(np.int64) - c0[1]
            k = int(np.ceil(LATERAL_CUT_SIGMA * sig_iso.max() / spot_spacing_mm)) + 1
            for dx in range(-k, k + 1):
                for dy in range(-k, k + 1):
                    cx, cy = vx + dx, vy + dy
                    ok = (cx >= 0) & (cx < lut.shape[0]) & (cy >= 0) & (cy < lut.shape[1])
                    sel = np.flatnonzero(ok)
                    s_local = lut[cx[sel], cy[sel]]
                    sel, s_local = sel[s_local >= 0], s_local[s_local >= 0]
                    if sel.size == 0:
                        continue
                    r2 = (px[near[sel]] - sxy[s_local, 0]) ** 2 + (py[near[sel]] - sxy[s_local, 1]) ** 2
                    inside = r2 <= (LATERAL_CUT_SIGMA * sig_iso[sel]) ** 2
                    sel, s_local, r2 = sel[inside], s_local[inside], r2[inside]
                    val = norm[sel] * np.exp(-0.5 * r2 / sig_iso[sel] ** 2)
                    rows.append(body_flat[near[sel]])
                    cols.append(offset + layer[s_local])
                    dvals.append(val)
                    hvals.append(val * h_near[sel])
        all_spots.append(spots)
        offset += len(spots)
    shape = (int(np.prod(grid.shape)), offset)
    r, c = np.concatenate(rows), np.concatenate(cols)
    d = sp.csr_matrix((np.concatenate(dvals).astype(np.float32), (r, c)), shape=shape)
    h = sp.csr_matrix((np.concatenate(hvals).astype(np.float32), (r, c)), shape=shape)
    d.sort_indices()
    h.sort_indices()
    assert np.array_equal(d.indices, h.indices) and np.array_equal(d.indptr, h.indptr)
    return Influence(d, h, tuple(all_spots))


def influence_cached(model: DoseGridModel, fields, store: Path, **options) -> tuple[Path, Influence | None]:
    """Path of the (content-addressed) influence file, building and saving it when absent."""
    path = Path(store) / f"dij-{model.key(fields, options)}.npz"
    if path.is_file():
        return path, None
    influence = build_influence(model, fields, **options)
    influence.save(path)
    return path, influence


def scratch_store() -> Path:
    return Path(tempfile.mkdtemp(prefix="phoenix-store-"))
