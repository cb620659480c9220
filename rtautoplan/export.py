"""Research formats out: a case folder or a planned output folder as NIfTI files (``rtautoplan export``).

``export_nifti(source, out)`` writes, on the CT's grid and in its patient coordinates (``rtautoplan.imageio``):

* ``ct.nii.gz``: the CT in HU, int16;
* ``mask_<name>.nii.gz``: one uint8 mask (0/1) per structure, named by its TG-263 name;
* ``labels.nii.gz`` + ``labels.json``: all structures as one label map (labels 1, 2, … in structure order)
  and its label → name table (with the CT's FrameOfReferenceUID). Structures overlap (every organ lies in
  the External), so the map has as many non-overlapping layers along a 4th axis as it needs
  (``rtautoplan.labelmap.write_label_map``); ``read_case`` reads it back as the structures;
* from a planned output folder also ``dose.nii.gz``: the dose of ``RD_rtautoplan.dcm`` in Gy, float32, on the
  dose's own grid (``dose_<phase>.nii.gz`` for each phase of a sequential course).

A case folder (CT series + RTSTRUCT, or CT series + label map) is read with ``read_case``. An output folder
(``RS_rtautoplan.dcm``, ``RD_rtautoplan.dcm``, ``plan_log.json``) holds no CT: the CT is that of the case
folder it was planned from, given as ``ct_case``, read with ``read_case``, and the output RTSTRUCT must
reference that CT series (its SeriesInstanceUID and FrameOfReferenceUID), so a dose is never put on another
patient's CT. The structures exported then are the output RTSTRUCT's: every input ROI plus PTV, Gap, Ring.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rtautoplan.case import Case
from rtautoplan.dicom.contours import roi_mask
from rtautoplan.dicom.read import read_case
from rtautoplan.dicom.rtdose import read_rtdose
from rtautoplan.dicom.rtstruct import read_rtstruct
from rtautoplan.dicom.write import DOSE_FILE, RTSTRUCT_FILE
from rtautoplan.errors import InputError
from rtautoplan.imageio import write_image
from rtautoplan.labelmap import file_name, write_label_map
from rtautoplan.outputs import LOG_FILE

log = logging.getLogger(__name__)

CT_FILE, LABELS_FILE, TABLE_FILE, DOSE_NIFTI = "ct.nii.gz", "labels.nii.gz", "labels.json", "dose.nii.gz"


def is_output_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is what ``rtautoplan plan`` writes (its RTSTRUCT, RTDOSE or log), not a case."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in (RTSTRUCT_FILE, DOSE_FILE, LOG_FILE))


def export_nifti(source: str | Path, out: str | Path, ct_case: str | Path | None = None,
                 unknown_rois: str = "error") -> dict[str, Path]:
    """Write ``source`` (a case folder, or an output folder with ``ct_case`` its case folder) as NIfTI into
    ``out``; returns what → path. ``unknown_rois`` as for ``read_case``."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise InputError(str(source), "is not a folder", "Give a case folder or an rtautoplan output folder")
    if not is_output_folder(source):
        case = read_case(source, unknown_rois=unknown_rois)
        return _write_case(case, [(s.name, s.mask.to_full()) for s in case.structures], out)
    if ct_case is None:
        raise InputError(str(source), "is an rtautoplan output folder, which holds no CT",
                         "Give the case folder it was planned from: --ct CASE")
    case = read_case(ct_case, unknown_rois=unknown_rois)
    paths = _write_case(case, _output_masks(source, case), out)
    for rtdose in sorted(source.glob("RD_rtautoplan*.dcm")):
        dose = read_rtdose(rtdose)
        phase = rtdose.stem[len("RD_rtautoplan"):]
        name = DOSE_NIFTI if not phase else f"dose{file_name(phase)}.nii.gz"
        paths[name.split(".")[0]] = write_image(dose.gy.astype(np.float32), dose.grid, out / name)
    return paths


def _write_case(case: Case, masks: list[tuple[str, np.ndarray]], out: Path) -> dict[str, Path]:
    """ct.nii.gz, one mask per structure, the label map and its table."""
    hu = np.asarray(case.hu)
    if hu.min() < np.iinfo(np.int16).min or hu.max() > np.iinfo(np.int16).max:
        raise InputError(f"CT of {case.case_id}", f"HU {hu.min()} to {hu.max()} do not fit int16",
                         "Check the CT's RescaleSlope and RescaleIntercept")
    paths = {"ct": write_image(hu.astype(np.int16), case.grid, out / CT_FILE)}
    used: set[str] = set()
    for label, (name, mask) in enumerate(masks, start=1):
        stem = file_name(name)
        stem = stem if stem not in used else f"{stem}_{label}"
        used.add(stem)
        paths[f"mask {name}"] = write_image(np.asarray(mask, np.uint8), case.grid, out / f"mask_{stem}.nii.gz")
    paths["labels"], paths["labels table"] = write_label_map(masks, case.grid, out / LABELS_FILE, out / TABLE_FILE,
                                                             case.refs.frame_of_reference_uid)
    return paths


def _output_masks(folder: Path, case: Case) -> list[tuple[str, np.ndarray]]:
    """(ROIName, mask on the case's CT) of every ROI of the output RTSTRUCT; InputError when it was not drawn
    on this case's CT."""
    path = folder / RTSTRUCT_FILE
    if not path.is_file():
        raise InputError(str(folder), f"has no {RTSTRUCT_FILE}", "Give a complete rtautoplan output folder")
    structure_set = read_rtstruct(path)
    refs = case.refs
    if (structure_set.frame_of_reference_uid != refs.frame_of_reference_uid
            or structure_set.referenced_series_uid not in (None, refs.ct_series_instance_uid)):
        raise InputError(f"RTSTRUCT {path}", f"references CT series {structure_set.referenced_series_uid} (frame "
                         f"{structure_set.frame_of_reference_uid}), not the CT of {case.case_id} "
                         f"({refs.ct_series_instance_uid}, frame {refs.frame_of_reference_uid})",
                         "Give the case folder this output was planned from as --ct")
    masks = []
    for roi in structure_set.rois:
        mask, outside = roi_mask(roi.contours, case.grid, roi.name)
        if outside:
            log.warning("%s ROI '%s': %s; only its part on the CT is exported", path, roi.name, outside)
        masks.append((roi.name, mask))
    return masks
