"""Pictures and tables a physicist reads: contour slices (and, with a plan, DVHs and metrics)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rtautoplan.case import Case, Role  # noqa: E402


def _slice_choice(case: Case, n: int) -> list[int]:
    """Up to ``n`` axial slices: through the centres of (at most n/2) targets, then evenly over the OARs' extent."""
    picks = [int(np.mean(np.nonzero(s.mask.any(axis=(1, 2)))[0]))
             for s in case.structures if s.role.is_target and s.mask.any()][: n // 2]
    organs = [s.mask.any(axis=(1, 2)) for s in case.by_role(Role.OAR) if s.name != "Skin"]
    occupied = np.nonzero(np.any(organs, axis=0))[0] if organs else np.zeros(0, int)
    while occupied.size and len(picks) < n:  # add the OAR slice farthest from those already shown
        gaps = np.min(np.abs(occupied[:, None] - np.asarray(picks or [-999])[None, :]), axis=1)
        if gaps.max() <= 2:
            break
        picks.append(int(occupied[np.argmax(gaps)]))
    return sorted(set(picks))[:n]


def contour_slices(case: Case, path: Path, n: int = 6, structures=None) -> Path:
    """PNG of ``n`` axial CT slices with every structure's contour in its display colour."""
    structures = case.structures if structures is None else structures
    slices = _slice_choice(case, n)
    cols = min(3, len(slices))
    rows = -(-len(slices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.4 * rows + 0.8), squeeze=False)
    x0, y0 = case.grid.origin[0], case.grid.origin[1]
    dy, dx = case.grid.spacing[1], case.grid.spacing[2]
    ny, nx = case.grid.shape[1:]
    extent = (x0 - dx / 2, x0 + dx * (nx - 0.5), y0 + dy * (ny - 0.5), y0 - dy / 2)
    xs, ys = x0 + dx * np.arange(nx), y0 + dy * np.arange(ny)
    shown = {}
    for ax in axes.flat[len(slices):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, slices):
        ax.imshow(case.hu[k], cmap="gray", vmin=-400, vmax=600, extent=extent)
        for s in structures:
            if s.role is Role.OTHER or not s.mask[k].any():
                continue
            color = np.asarray(s.color) / 255.0
            ax.contour(xs, ys, s.mask[k].astype(float), levels=[0.5], colors=[color], linewidths=0.9,
                       linestyles="--" if s.role in (Role.GAP, Role.RING) else "-")
            shown[s.name] = color
        z = case.grid.index_to_patient([k, 0, 0])[2]
        ax.set_title(f"z = {z:.1f} mm")
        ax.set_xlabel("x (mm)")
        ax.set_ylabel("y (mm)")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in shown.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"{case.case_id}: structures")
    fig.tight_layout(rect=(0, 0.1 / rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
