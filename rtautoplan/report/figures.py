"""The report's pictures (PNG): contour slices, dose colour-wash slices, cumulative DVHs, score per step.

Slices are axial, in patient mm (x across, y down the page as DICOM's +y is posterior). DVHs are
computed with ``rtautoplan.dvh.dvh`` on each structure's drawn ``mask`` (the contour as delineated,
not the planning mask the overlap rules leave), in Gy and % of the structure's volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rtautoplan.case import Case, Role, Structure  # noqa: E402
from rtautoplan.dvh import dvh  # noqa: E402
from rtautoplan.plan import Dose  # noqa: E402

# How each role is drawn in a DVH; roles not listed (OTHER: couch, markers, z-structures) are left out.
LINESTYLES = {Role.GTV: "-", Role.CTV: "-", Role.PTV: "-", Role.OAR: "--",
              Role.EXTERNAL: ":", Role.GAP: ":", Role.RING: ":", Role.CONTROL: ":"}
WASH_THRESHOLD = 0.10  # the colour wash starts at this fraction of Rx_max
WASH_ALPHA = 0.5
DPI = 110


class Curve(NamedTuple):
    """One cumulative DVH as drawn: dose edges (Gy) and the % of the structure receiving at least each."""

    name: str
    role: Role
    dose_gy: np.ndarray
    volume_percent: np.ndarray
    color: tuple[float, float, float]
    linestyle: str


def check_same_grid(case: Case, dose: Dose) -> None:
    """Raise ValueError unless ``dose`` is on the case's grid (the masks index the dose voxels directly)."""
    a, b = case.grid, dose.grid
    if (tuple(a.shape) != tuple(b.shape) or not np.allclose(a.origin, b.origin, atol=0.01)
            or not np.allclose(a.spacing, b.spacing, atol=1e-3)):
        raise ValueError(f"dose grid (shape {b.shape}, origin {b.origin}, spacing {b.spacing}) is not the case grid "
                         f"(shape {a.shape}, origin {a.origin}, spacing {a.spacing}): resample the dose onto the CT")


def drawn_structures(case: Case, structures: Sequence[Structure] | None = None) -> list[Structure]:
    """The structures a DVH shows: non-empty, and of a role in LINESTYLES."""
    chosen = case.structures if structures is None else structures
    return [s for s in chosen if s.role in LINESTYLES and s.mask.any()]


def dvh_curves(case: Case, dose: Dose, structures: Sequence[Structure] | None = None,
               bin_gy: float | None = None) -> list[Curve]:
    """The DVH curves ``dvh_plot`` draws, one per structure, on common dose edges 0 … Dmax (Gy).

    bin_gy: dose bin (Gy), default max(0.01, Dmax / 5000).
    """
    check_same_grid(case, dose)
    top = float(np.max(dose.gy, initial=0.0))
    bin_gy = max(0.01, top / 5000) if bin_gy is None else bin_gy
    curves = []
    for s in drawn_structures(case, structures):
        h = dvh(dose.gy, s.mask, bin_gy=bin_gy, max_gy=top)
        curves.append(Curve(s.name, s.role, h.dose_gy, h.volume_percent, tuple(np.asarray(s.color) / 255.0),
                            LINESTYLES[s.role]))
    return curves


def dvh_plot(case: Case, dose: Dose, path: str | Path, structures: Sequence[Structure] | None = None) -> Path:
    """PNG of the cumulative DVHs: targets solid, OARs dashed, External/Gap/Ring dotted; x Gy, y %."""
    curves = dvh_curves(case, dose, structures)
    fig, ax = plt.subplots(figsize=(9.5, 5.5), layout="constrained")
    for c in curves:
        ax.plot(c.dose_gy, c.volume_percent, color=c.color, linestyle=c.linestyle, linewidth=1.6, label=c.name)
    for level in case.prescription.levels:
        ax.axvline(level.dose_gy, color="0.6", linewidth=0.8, zorder=0)
    top = max([float(c.dose_gy[-1]) for c in curves] + [case.prescription.rx_max])
    ax.set_xlim(0, 1.05 * top)
    ax.set_ylim(0, 102)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{case.case_id}: cumulative DVH ({dose.kind.lower()} dose, drawn contours)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _slice_choice(case: Case, n: int) -> list[int]:
    """Up to ``n`` axial slices: through the centres of (at most n/2) targets, then evenly over the OARs' extent."""
    picks = [int(np.mean(np.nonzero(s.mask.slice_any())[0]))
             for s in case.structures if s.role.is_target and s.mask.any()][: n // 2]
    organs = [s.mask.slice_any() for s in case.by_role(Role.OAR) if s.name != "Skin"]
    occupied = np.nonzero(np.any(organs, axis=0))[0] if organs else np.zeros(0, int)
    while occupied.size and len(picks) < n:  # add the OAR slice farthest from those already shown
        gaps = np.min(np.abs(occupied[:, None] - np.asarray(picks or [-999])[None, :]), axis=1)
        if gaps.max() <= 2:
            break
        picks.append(int(occupied[np.argmax(gaps)]))
    return sorted(set(picks))[:n] or [case.grid.shape[0] // 2]


def _extent(case: Case) -> tuple[float, float, float, float]:
    """imshow extent (mm) of one axial slice: voxel edges, y downwards."""
    x0, y0 = case.grid.origin[0], case.grid.origin[1]
    dy, dx = case.grid.spacing[1], case.grid.spacing[2]
    ny, nx = case.grid.shape[1:]
    return (x0 - dx / 2, x0 + dx * (nx - 0.5), y0 + dy * (ny - 0.5), y0 - dy / 2)


def _slices(case: Case, path: str | Path, n: int, structures, title: str, overlay=None) -> Path:
    """PNG of ``n`` axial CT slices with contours; ``overlay(ax, k, extent)`` draws more on slice k and may
    return an image for a shared colour bar."""
    structures = case.structures if structures is None else structures
    slices = _slice_choice(case, n)
    cols = min(3, len(slices))
    rows = -(-len(slices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols + 1.0, 4.4 * rows + 0.8), squeeze=False,
                             layout="constrained")
    extent = _extent(case)
    x0, y0 = case.grid.origin[0], case.grid.origin[1]
    xs = x0 + case.grid.spacing[2] * np.arange(case.grid.shape[2])
    ys = y0 + case.grid.spacing[1] * np.arange(case.grid.shape[1])
    shown, image = {}, None
    for ax in axes.flat[len(slices):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, slices):
        ax.imshow(case.hu[k], cmap="gray", vmin=-400, vmax=600, extent=extent)
        if overlay is not None:
            image = overlay(ax, k, extent)
        for s in structures:
            plane = s.mask.window((slice(k, k + 1), slice(0, s.mask.shape[1]), slice(0, s.mask.shape[2])))[0]
            if s.role is Role.OTHER or not plane.any():
                continue
            color = np.asarray(s.color) / 255.0
            ax.contour(xs, ys, plane.astype(float), levels=[0.5], colors=[color], linewidths=0.9,
                       linestyles="--" if s.role in (Role.GAP, Role.RING) else "-")
            shown[s.name] = color
        ax.set_title(f"z = {case.grid.index_to_patient([k, 0, 0])[2]:.1f} mm")
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="Dose (Gy)")
    handles = [plt.Line2D([], [], color=c, label=name) for name, c in shown.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(8, len(handles)), fontsize=7,
                   frameon=False)
    fig.suptitle(title)
    return _save(fig, path)


def contour_slices(case: Case, path: str | Path, n: int = 6, structures=None) -> Path:
    """PNG of ``n`` axial CT slices with every structure's contour in its display colour."""
    return _slices(case, path, n, structures, f"{case.case_id}: structures")


def dose_wash(case: Case, dose: Dose, path: str | Path, n: int = 6, structures=None) -> Path:
    """PNG of ``n`` axial slices: the dose (Gy) as a turbo colour wash over the CT where it is at least
    10 % of Rx_max, with the contours."""
    check_same_grid(case, dose)
    low = WASH_THRESHOLD * case.prescription.rx_max
    high = max(float(np.max(dose.gy, initial=0.0)), case.prescription.rx_max)

    def wash(ax, k, extent):
        return ax.imshow(np.ma.masked_less(dose.gy[k], low), cmap="turbo", alpha=WASH_ALPHA, vmin=low, vmax=high,
                         extent=extent, interpolation="nearest")

    return _slices(case, path, n, structures, f"{case.case_id}: dose ≥ {low:.3g} Gy", overlay=wash)


def score_plot(steps: Sequence[Mapping], path: str | Path, system: str = "") -> Path:
    """PNG of the score after each closed-loop step: accepted steps as filled dots, rejected as red crosses."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    x = np.array([int(s["step"]) for s in steps])
    y = np.array([float(s["score"]) for s in steps])
    accepted = np.array([bool(s.get("accepted", True)) for s in steps])
    ax.plot(x, y, color="0.6", linewidth=1.0)
    ax.plot(x[accepted], y[accepted], "o", color="tab:blue", label="accepted")
    if (~accepted).any():
        ax.plot(x[~accepted], y[~accepted], "x", color="tab:red", markersize=8, label="rejected")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Step")
    ax.set_ylabel(f"Score{f' ({system})' if system else ''}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)
