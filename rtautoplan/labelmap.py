"""Structures as a label map (NIfTI or NRRD) with a label → name table, the form auto-segmentation gives.

TotalSegmentator, nnU-Net and most research pipelines write one integer image where each voxel holds the
label of the structure it belongs to (0: none), with a table naming the labels. A case folder without an
RTSTRUCT may hold one (``find_label_map``), and ``read_case`` then takes its structures from it:

* the image: ``labels.nii.gz`` (or ``.nii``, ``.nrrd``) or ``segmentation.nii.gz`` / ``.nrrd`` /
  ``.seg.nrrd``, at the top of the case folder;
* its table: ``<same stem>.json`` beside it, else ``labels.json``, else ``dataset.json`` (nnU-Net). Accepted
  forms: ``{"1": "Bladder", "2": "Rectum"}``, or the same under a ``"labels"`` key, or nnU-Net v2's
  ``"labels": {"background": 0, "Bladder": 1}`` (name → label). Label 0 / "background" is nothing. An
  optional ``"frame_of_reference_uid"`` is checked against the CT's.

One voxel holds one label, so overlapping structures (a CTV inside its PTV, every organ inside the body)
cannot share one 3D label map. ``write_label_map`` therefore stacks non-overlapping layers along a 4th
axis when it must (a 3D map when the structures do not overlap), as 3D Slicer's segmentation files do;
labels are unique over the layers and ``labels_on`` reads either form.

The map need not be on the CT grid: it is resampled to it with nearest neighbour (labels are never
interpolated), provided it lies in the CT's physical space. Every problem is an InputError naming the
file: an unreadable image or table, a non-integer image, labels in the image the table does not name,
a map that does not overlap the CT or names another frame of reference. A table label absent from the
image is a warning (auto-segmentation tables list every class a model knows).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from rtautoplan.case import Grid
from rtautoplan.errors import InputError
from rtautoplan.imageio import from_sitk, resample, same_grid, to_sitk

log = logging.getLogger(__name__)

IMAGE_NAMES = ("labels.nii.gz", "labels.nii", "labels.nrrd", "segmentation.nii.gz", "segmentation.nii",
               "segmentation.nrrd", "segmentation.seg.nrrd")
TABLE_NAMES = ("labels.json", "dataset.json")
_FIX_EXPORT = "Give the label map made on this CT (same patient coordinates, e.g. converted from this DICOM series)"


def find_label_map(folder: str | Path) -> tuple[Path, Path] | None:
    """(image, table) of the label map at the top of ``folder``; None when there is none. InputError when
    there are several images or an image has no table."""
    folder = Path(folder)
    images = [folder / name for name in IMAGE_NAMES if (folder / name).is_file()]
    if not images:
        return None
    if len(images) > 1:
        raise InputError(str(folder), f"holds {len(images)} label maps ({', '.join(p.name for p in images)})",
                         "Keep only the label map to plan on in the case folder")
    image = images[0]
    stem = image.name.split(".")[0]
    for name in (f"{stem}.json", *TABLE_NAMES):
        if (folder / name).is_file():
            return image, folder / name
    raise InputError(str(image), "has no label table (label → structure name)",
                     f'Put {stem}.json beside it: {{"labels": {{"1": "Bladder", "2": "Rectum"}}}}')


def read_label_table(path: str | Path) -> tuple[dict[int, str], str | None]:
    """(label → name, frame_of_reference_uid or None) from a label table; InputError naming the file and entry."""
    path = Path(path)
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(where, f"cannot be read ({error})", "Write the label table again") from None
    except json.JSONDecodeError as error:
        raise InputError(where, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})",
                         "Correct the label table") from None
    if not isinstance(data, dict):
        raise InputError(where, "is not a JSON object", 'Write it as {"labels": {"1": "Bladder", "2": "Rectum"}}')
    frame = data.get("frame_of_reference_uid")
    entries = data.get("labels", data if "labels" not in data else None)
    if not isinstance(entries, dict) or not entries:
        raise InputError(where, '"labels" is not a non-empty object', 'Write it as {"labels": {"1": "Bladder"}}')
    table: dict[int, str] = {}
    for key, value in entries.items():
        label, name = (value, key) if not isinstance(value, str) else (key, value)  # nnU-Net v2: name → label
        if isinstance(label, list):
            raise InputError(where, f"entry {key!r} is a region (a list of labels), which rtautoplan cannot plan on",
                             "Give every structure its own label")
        try:
            number = int(label)
        except (TypeError, ValueError):
            number = -1
        if isinstance(label, bool) or number < 0 or str(number) != str(label).strip():
            raise InputError(where, f"entry {key!r}: {label!r} is not a label (an integer ≥ 0)",
                             'Write labels as integers: {"1": "Bladder"}')
        if not str(name).strip():
            raise InputError(where, f"label {number} has no name", "Give every label a structure name")
        if number == 0 or str(name).strip().lower() == "background":
            continue
        if number in table:
            raise InputError(where, f"label {number} is named twice ({table[number]!r}, {name!r})",
                             "Give each label one name")
        table[number] = str(name).strip()
    repeated = sorted({n for n in table.values() if list(table.values()).count(n) > 1})
    if repeated:
        raise InputError(where, f"the name {repeated[0]!r} is given to several labels", "Give each structure one label")
    return table, None if frame in (None, "") else str(frame)


def labels_on(image_path: str | Path, grid: Grid) -> list[tuple[np.ndarray, set[int], dict[int, int]]]:
    """The label map's layers (a 3D map is one layer), each as (labels on ``grid``, the labels it holds,
    label → how many of its voxels lie off ``grid``). Resampled with nearest neighbour when the map's grid
    is not ``grid``; InputError when it cannot be read, is not an integer image, or does not overlap ``grid``."""
    where = str(image_path)
    try:
        image = sitk.ReadImage(str(image_path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise InputError(where, f"cannot be read as an image ({reason})",
                         "Write the label map again as NIfTI (.nii.gz) or NRRD") from None
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() not in (3, 4):
        raise InputError(where, f"is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
                         "values per voxel, not a 3D label map", "Write one integer label per voxel")
    layers = [image] if image.GetDimension() == 3 else [image[:, :, :, n] for n in range(image.GetSize()[3])]
    result = []
    for layer in layers:
        try:
            labels, own = from_sitk(layer)
        except ValueError as error:
            raise InputError(where, f"has a geometry rtautoplan cannot use ({error})",
                             "Resample the label map onto the CT") from None
        labels = _integer(labels, where)
        values = _values(labels)
        if same_grid(own, grid):
            result.append((labels, values, {}))
            continue
        _check_overlap(own, grid, where)
        result.append((resample(labels, own, grid, order="nearest", fill=0), values, _off_grid(labels, own, grid)))
    return result


def check_frame(table_path: str | Path, frame: str | None, ct_frame: str, where_ct: str) -> None:
    """InputError when the table names a frame of reference other than the CT's."""
    if frame is not None and ct_frame and frame != ct_frame:
        raise InputError(str(table_path), f"frame_of_reference_uid {frame} is not that of {where_ct} ({ct_frame})",
                         f"{_FIX_EXPORT}, or remove frame_of_reference_uid if the map was registered to this CT")


def label_masks(image_path: str | Path, table: dict[int, str], grid: Grid) -> dict[str, tuple[np.ndarray, int]]:
    """Name → (mask on ``grid``, voxels off ``grid``) of every table label the map holds, in label order.
    InputError for labels in the image the table does not name; a table label absent from the image is a
    warning. The mask may be empty (every voxel off the grid, or too small for it): the caller decides."""
    where = str(image_path)
    masks: dict[int, np.ndarray] = {}
    off: dict[int, int] = {}
    for labels, values, layer_off in labels_on(image_path, grid):
        unnamed = sorted(v for v in values if v not in table)
        if unnamed:
            raise InputError(where, f"has labels the table does not name: {', '.join(map(str, unnamed[:20]))}",
                             "Name them in the label table, or set them to 0 in the image")
        for value in values:
            mask = labels == value
            masks[value] = masks[value] | mask if value in masks else mask
            off[value] = off.get(value, 0) + layer_off.get(value, 0)
    missing = [f"{n} ({table[n]})" for n in sorted(table) if n not in masks]
    if missing:
        log.warning("%s: table labels not in the image: %s", where, ", ".join(missing))
    return {table[n]: (masks[n], off[n]) for n in sorted(masks)}


def write_label_map(masks: list[tuple[str, np.ndarray]], grid: Grid, image_path: str | Path,
                    table_path: str | Path, frame_of_reference_uid: str = "") -> tuple[Path, Path]:
    """Write named masks as a label map (labels 1, 2, … in the given order) and its table. Structures that
    overlap go to separate layers (a 4D image, layer = 4th index); no overlap gives a 3D map."""
    layers: list[np.ndarray] = []
    for label, (_, mask) in enumerate(masks, start=1):
        mask = np.asarray(mask, bool)
        for layer in layers:
            if not np.any(layer[mask]):
                layer[mask] = label
                break
        else:
            layers.append(np.where(mask, label, 0).astype(np.uint16 if len(masks) > 255 else np.uint8))
    if not layers:
        layers.append(np.zeros(grid.shape, np.uint8))
    images = [to_sitk(layer, grid) for layer in layers]
    image = images[0] if len(images) == 1 else sitk.JoinSeries(images)
    image_path, table_path = Path(image_path), Path(table_path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(image_path), useCompression=True)
    table = {"labels": {str(n): name for n, (name, _) in enumerate(masks, start=1)}, "layers": len(layers)}
    if frame_of_reference_uid:
        table["frame_of_reference_uid"] = frame_of_reference_uid
    table_path.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return image_path, table_path


def file_name(name: str) -> str:
    """A structure name as a file name part: anything but letters, digits, ``-``, ``_`` and ``.`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def _integer(labels: np.ndarray, where: str) -> np.ndarray:
    """The labels as integers; InputError for negative or fractional values (not a label map)."""
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError(where, "holds fractional values: a probability or intensity image, not a label map",
                             "Give the label map (argmax of the segmentation), one integer label per voxel")
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise InputError(where, f"holds {labels.dtype} values, not integer labels", "Give an integer label map")
    if labels.size and labels.min() < 0:
        raise InputError(where, f"holds negative labels ({int(labels.min())})", "Labels are integers ≥ 0")
    return labels


def _values(labels: np.ndarray) -> set[int]:
    """The labels (> 0) an integer image holds."""
    top = int(labels.max()) if labels.size else 0
    if top < 2 ** 20:
        counts = np.bincount(labels.ravel().astype(np.int64, copy=False), minlength=1)
        return {int(v) for v in np.flatnonzero(counts) if v != 0}
    return {int(v) for v in np.unique(labels) if v != 0}


def _extent(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Low and high patient corners (mm) of the voxels of ``grid`` (voxel edges, not centres)."""
    n = np.asarray(grid.shape, float)
    corners = np.array([[k, j, i] for k in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5) for i in (-0.5, n[2] - 0.5)])
    xyz = grid.index_to_patient(corners)
    return xyz.min(axis=0), xyz.max(axis=0)


def _span(low: np.ndarray, high: np.ndarray) -> str:
    return ", ".join(f"{a} = {lo:.1f} to {hi:.1f} mm" for a, lo, hi in zip("xyz", low, high))


def _check_overlap(own: Grid, grid: Grid, where: str) -> None:
    low, high = _extent(own)
    ct_low, ct_high = _extent(grid)
    if np.any(np.minimum(high, ct_high) <= np.maximum(low, ct_low)):
        raise InputError(where, f"does not overlap the CT: the label map spans {_span(low, high)}, the CT "
                         f"{_span(ct_low, ct_high)} (another patient position or frame of reference?)", _FIX_EXPORT)


def _off_grid(labels: np.ndarray, own: Grid, grid: Grid) -> dict[int, int]:
    """Label → how many of its voxels have their centre off ``grid``."""
    kji = np.argwhere(labels != 0)
    if kji.size == 0:
        return {}
    index = grid.patient_to_index(own.index_to_patient(kji))
    off = np.any((index < -0.5) | (index > np.asarray(grid.shape) - 0.5), axis=1)
    values, counts = np.unique(labels[tuple(kji[off].T)], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}
