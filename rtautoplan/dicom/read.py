"""A case folder (CT series + RTSTRUCT + optional prescription.json) to a Case, and back.

``read_case`` scans the folder recursively, picks the RTSTRUCT and the CT series it was drawn on,
checks that they form one regular grid on one frame of reference, and turns every ROI into a
Structure with its TG-263 name. A folder without an RTSTRUCT may instead hold a label map with a label
table (``rtautoplan.labelmap``, as auto-segmentation writes): its labels become the structures, through the
same name handling. Anything it cannot plan on is an InputError saying which file, ROI or tag is wrong and
what to do.
"""

from __future__ import annotations

import json
import logging
import struct
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import RTStructureSetStorage

from rtautoplan.case import Case, Grid, Prescription, Role, Structure, UnplannedRoi
from rtautoplan.dicom.contours import roi_mask
from rtautoplan.dicom.ct import write_ct
from rtautoplan.dicom.prescription import (PRESCRIPTION_FILE, PrescriptionFile, Target, prescribe,
                                           read_prescription_file, write_prescription)
from rtautoplan.dicom.rtplan_prescription import PLAN_MODALITIES, complete_from_plan
from rtautoplan.dicom.rtstruct import RoiContours, StructureSet, read_rtstruct, write_rtstruct
from rtautoplan.dicom.series import Slice, describe, grid_of, read_hu, refs_of
from rtautoplan.dicom.uid import complete_refs
from rtautoplan.errors import InputError
from rtautoplan.mask import Mask
from rtautoplan.structures import names
from rtautoplan.structures.names import ParsedName

log = logging.getLogger(__name__)

# what pydicom raises on a corrupt file (it has no single exception type for that)
_PARSE_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError, OverflowError,
                 NotImplementedError, struct.error)


class _Source(NamedTuple):
    """How messages name where the structures come from: one ROI (``kind`` 'name'), and the fixes."""

    kind: str
    rename: str
    body: str


_RTSTRUCT = _Source("RTSTRUCT ROI", "Rename the ROI in the TPS",
                    "Contour the body outline as External or Body in the TPS and re-export")


def read_case(folder: str | Path, case_id: str | None = None, unknown_rois: str = "error") -> Case:
    """Read the case in ``folder``; ``case_id`` defaults to the folder name.

    unknown_rois: what a ROI name that maps to no TG-263 structure does — "error" (default: stop
    with the fix, and the TG-263 name when it is a misspelling of one, since an OAR silently left out
    of the optimisation is an unsafe plan) or "keep" (keep it, written back but never planned on, with a warning; for
    a batch over cases whose naming is not under your control)."""
    if unknown_rois not in ("error", "keep"):
        raise ValueError(f"unknown_rois must be 'error' or 'keep', not {unknown_rois!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(str(folder), "is not a folder", "Give the folder that holds the CT series and the RTSTRUCT")
    rtstructs, series, plans = _scan(folder)
    if not rtstructs:
        from rtautoplan.labelmap import find_label_map  # SimpleITK is imported only for a label-map case

        label_map = find_label_map(folder)
        if label_map is not None:
            return _read_label_map_case(folder, series, *label_map, case_id, unknown_rois)
    rtstruct_path, structure_set = _choose_rtstruct(rtstructs, series, folder)
    series_uid = _choose_series(structure_set, series, rtstruct_path, folder)
    where = describe(series_uid, series[series_uid])
    grid, slices = grid_of(series_uid, series[series_uid])
    refs = refs_of(series_uid, slices)
    if structure_set.frame_of_reference_uid != refs.frame_of_reference_uid:
        raise InputError(f"RTSTRUCT {rtstruct_path}", f"FrameOfReferenceUID {structure_set.frame_of_reference_uid} "
                         f"is not that of {where} ({refs.frame_of_reference_uid})",
                         "Export the RTSTRUCT drawn on this CT, or register and re-contour in the TPS")
    rx_path = folder / PRESCRIPTION_FILE
    rx_file = read_prescription_file(rx_path) if rx_path.is_file() else PrescriptionFile()
    rx_file, rx_source = complete_from_plan(rx_file, plans, rtstructs[rtstruct_path],
                                              structure_set.frame_of_reference_uid)
    structures, prescription = _structures(structure_set, grid, rx_file, f"RTSTRUCT {rtstruct_path}", unknown_rois)
    return Case(case_id=case_id or folder.resolve().name, grid=grid, hu=read_hu(slices, where),
                structures=structures, prescription=replace(prescription, source=rx_source), refs=refs,
                unplanned=_unplanned(structure_set, structures, rx_file))


def _unplanned(structure_set: StructureSet, structures: tuple[Structure, ...],
               rx_file: PrescriptionFile) -> tuple[UnplannedRoi, ...]:
    """The ROIs of ``structure_set`` that no structure plans on, with their contours as read: they leave in
    the output RTSTRUCT unchanged (an ignored or empty ROI is never dropped from the patient's record)."""
    planned = {s.roi_name for s in structures}
    return tuple(UnplannedRoi(roi.name, tuple(roi.contours), roi.color, structure_set.interpreted_type(n),
                              f"ignored in {rx_file.path}" if roi.name in rx_file.ignore
                              else "empty or outside the CT")
                 for n, roi in enumerate(structure_set.rois) if roi.name not in planned)


def _read_label_map_case(folder: Path, series: dict[str, list[Slice]], image: Path, table_path: Path,
                         case_id: str | None, unknown_rois: str) -> Case:
    """The case of a folder holding the CT series and a label map with its table (no RTSTRUCT): the one CT
    series, the labels resampled onto it (nearest neighbour), each name through the RTSTRUCT's name handling."""
    from rtautoplan.labelmap import check_frame, label_masks, read_label_table

    table, frame = read_label_table(table_path)
    cts = [uid for uid, slices in series.items() if slices[0].ds.get("Modality") == "CT"]
    if len(cts) != 1:
        found = ", ".join(describe(uid, series[uid]) for uid in cts) or "none"
        raise InputError(f"label map {image}", f"needs exactly one CT series in {folder} to lie on (found: {found})",
                         "Put the label map in a folder with the one CT series it was made on")
    where = describe(cts[0], series[cts[0]])
    grid, slices = grid_of(cts[0], series[cts[0]])
    refs = refs_of(cts[0], slices)
    check_frame(table_path, frame, refs.frame_of_reference_uid, where)
    labelled = label_masks(image, table, grid)
    structure_set = StructureSet(tuple(RoiContours(name, [], None) for name in labelled), refs.frame_of_reference_uid,
                                 cts[0], frozenset())
    source = _Source(f"label map {image} label", f"Rename the label in {table_path}",
                     f"Add the body outline to the label map, named External or Body in {table_path}")
    rx_path = folder / PRESCRIPTION_FILE
    rx_file = read_prescription_file(rx_path) if rx_path.is_file() else PrescriptionFile()
    structures, prescription = _structures(structure_set, grid, rx_file, f"label map {image}", unknown_rois, source,
                                           lambda interpreted: _label_masks(interpreted, labelled, source))
    return Case(case_id=case_id or folder.resolve().name, grid=grid, hu=read_hu(slices, where),
                structures=structures, prescription=prescription, refs=refs)


def _label_masks(interpreted: list[tuple[RoiContours, str, ParsedName]], labelled: dict[str, tuple[np.ndarray, int]],
                 source: _Source) -> dict[str, np.ndarray]:
    """The mask of every label on the CT, by label name, with ``_masks``' rules: a label with no voxel on the
    CT is an InputError unless it is not anatomy (dropped); one partly off it keeps its part with a warning,
    except a target."""
    masks = {}
    for roi, _, meaning in interpreted:
        where = f"{source.kind} '{roi.name}'"
        mask, off = labelled[roi.name]
        if not mask.any():
            if meaning.role is Role.OTHER:
                log.warning("%s has no voxel on the CT; dropped", where)
                continue
            if off:
                raise InputError(where, f"lies outside the CT (all its {off} voxels)",
                                 "Give the label map made on this CT, or a CT that covers the structure")
            raise InputError(where, "has no voxel on this CT (it is smaller than a CT voxel)",
                             f'Add it to "ignore" in {PRESCRIPTION_FILE} if it is not needed for planning')
        if off and meaning.role.is_target:
            raise InputError(where, f"{off} of its voxels lie outside the CT; a target must lie wholly on the CT to "
                                    "be covered", "Give a CT that covers the whole target, with the label map on it")
        if off:
            log.warning("%s: %d of its voxels lie outside the CT; only its part on the CT is kept", where, off)
        masks[roi.name] = mask
    return masks


def _scan(folder: Path) -> tuple[dict[Path, pydicom.Dataset], dict[str, list[Slice]], dict[Path, pydicom.Dataset]]:
    """Every RTSTRUCT, every image series (by SeriesInstanceUID) and every RTPLAN under ``folder``."""
    rtstructs: dict[Path, pydicom.Dataset] = {}
    plans: dict[Path, pydicom.Dataset] = {}
    series: dict[str, list[Slice]] = {}
    seen: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None:
            continue
        modality = str(ds.get("Modality", ""))
        if ds.get("SOPClassUID") == RTStructureSetStorage or modality == "RTSTRUCT":
            rtstructs[path] = ds
        elif modality in PLAN_MODALITIES:
            plans[path] = ds
        elif "ImagePositionPatient" in ds and not modality.startswith("RT") and "SeriesInstanceUID" in ds:
            sop = str(ds.get("SOPInstanceUID", path))
            if sop in seen:  # the same instance twice (a copied file) is one slice
                _check_same_instance(seen[sop], path, sop)
                log.info("%s: SOP instance %s already read from %s; skipped", path, sop, seen[sop])
                continue
            seen[sop] = path
            series.setdefault(str(ds.SeriesInstanceUID), []).append(Slice(path, ds))
    return rtstructs, series, plans


def _check_same_instance(first: Path, second: Path, sop: str) -> None:
    """Two files with one SOPInstanceUID must hold the same object (a copy); InputError naming both when
    their content differs, since either could be the image the RTSTRUCT was drawn on."""
    if first.read_bytes() == second.read_bytes():
        return
    try:
        same = pydicom.dcmread(first, force=True) == pydicom.dcmread(second, force=True)
    except _PARSE_ERRORS:
        same = False
    if not same:
        raise InputError(f"{first} and {second}", f"both have SOPInstanceUID {sop} but different content",
                         "Keep the right one of the two files (or export the series again): one UID names one image")


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM object; None for a file that is not one, unless it is named *.dcm
    (those are read even without the PS3.10 preamble, and must parse)."""
    dcm = path.suffix.lower() == ".dcm"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=dcm)
    except InvalidDicomError:
        return None  # no DICM preamble: not DICOM (only raised without force, i.e. not *.dcm)
    except _PARSE_ERRORS as error:
        raise InputError(str(path), f"cannot be read as DICOM ({type(error).__name__}: {error})",
                         "Export the file again or remove it from the case folder") from None
    if "SOPClassUID" in ds:
        return ds
    if dcm:
        raise InputError(str(path), "is named .dcm but is not a readable DICOM object (no SOPClassUID)",
                         "Export the file again or remove it from the case folder")
    return None


def _choose_rtstruct(rtstructs: dict[Path, pydicom.Dataset], series: dict[str, list[Slice]],
                     folder: Path) -> tuple[Path, StructureSet]:
    """The one RTSTRUCT, or the one among several that references a CT series in the folder."""
    if not rtstructs:
        raise InputError(str(folder), "no RTSTRUCT found", "Export the structure set together with the CT series "
                         "(or put a label map beside it: labels.nii.gz with labels.json, rtautoplan.labelmap)")
    sets = {path: read_rtstruct(ds) for path, ds in rtstructs.items()}
    if len(sets) == 1:
        return next(iter(sets.items()))
    ct_sops = {str(s.ds.SOPInstanceUID): uid for uid, slices in series.items() for s in slices
               if s.ds.get("Modality") == "CT"}
    ct_series = set(ct_sops.values())
    matching = [(path, ss) for path, ss in sets.items()
                if ss.referenced_series_uid in ct_series or ss.referenced_sop_instance_uids & ct_sops.keys()]
    if len(matching) == 1:
        return matching[0]
    listed = ", ".join(str(p.relative_to(folder)) for p in (dict(matching) or sets))
    which = "reference the CT series here" if matching else "found, none referencing a CT series here"
    raise InputError(str(folder), f"{len(matching) or len(sets)} RTSTRUCTs {which} ({listed})",
                     "Keep only the RTSTRUCT to plan on in the case folder")


def _choose_series(structure_set: StructureSet, series: dict[str, list[Slice]], rtstruct_path: Path,
                   folder: Path) -> str:
    """The UID of the CT series the RTSTRUCT references, else of the only CT series."""
    chosen = structure_set.referenced_series_uid if structure_set.referenced_series_uid in series else None
    if chosen is None:
        by_sop = [uid for uid, slices in series.items()
                  if any(str(s.ds.SOPInstanceUID) in structure_set.referenced_sop_instance_uids for s in slices)]
        chosen = by_sop[0] if len(by_sop) == 1 else None
    if chosen is None:
        cts = [uid for uid, slices in series.items() if slices[0].ds.get("Modality") == "CT"]
        candidates = cts or list(series)
        if len(candidates) != 1:
            found = ", ".join(describe(uid, series[uid]) for uid in candidates) or "none"
            raise InputError(f"RTSTRUCT {rtstruct_path}", f"references no image series in {folder} and there is not "
                             f"exactly one CT series to fall back on (found: {found})",
                             "Export the RTSTRUCT together with the one CT series it was drawn on")
        chosen = candidates[0]
    modality = series[chosen][0].ds.get("Modality", "")
    if modality != "CT":
        raise InputError(describe(chosen, series[chosen]), f"the RTSTRUCT's image series is {modality or 'not CT'}; "
                         "rtautoplan plans on CT (it needs HU for the dose calculation)",
                         "Export the planning CT and an RTSTRUCT drawn on it (register other images to it in the TPS)")
    return chosen


def _interpret(structure_set: StructureSet, rx_file: PrescriptionFile, unknown_rois: str = "error",
               source: _Source = _RTSTRUCT) -> list[tuple[RoiContours, str, ParsedName]]:
    """(ROI, the name it maps to, what it is) for every ROI not ignored; InputError for repeated names,
    and for unknown ones (with the fix) unless ``unknown_rois`` is "keep". ``source``: how messages name them."""
    counts = Counter(roi.name for roi in structure_set.rois)
    repeated = [name for name, n in counts.items() if n > 1]
    if repeated:
        raise InputError(f"RTSTRUCT ROI '{repeated[0]}'", f"{counts[repeated[0]]} ROIs have this ROIName",
                         "Rename or delete the copies in the TPS and re-export")
    level_targets = {target for target, _ in rx_file.levels}
    goal_rois = {goal.roi.lower() for goal in rx_file.goals}
    interpreted, unknown = [], []
    for n, roi in enumerate(structure_set.rois):
        if roi.name in rx_file.ignore:
            log.info("RTSTRUCT ROI '%s' ignored (%s)", roi.name, rx_file.path)
            continue
        mapped = rx_file.structure_names.get(roi.name)
        name = mapped or roi.name
        meaning = _meaning(roi.name, name, structure_set.interpreted_type(n), level_targets,
                           mapped is not None or roi.name.strip().lower() in goal_rois, source.kind)
        if meaning is None:
            unknown.append(roi.name)
        interpreted.append((roi, name, meaning))
    for key in sorted((set(rx_file.structure_names) | rx_file.ignore) - set(counts)):
        log.warning("%s names %s '%s', which is not there", rx_file.path, source.kind, key)
    if unknown and unknown_rois == "keep":
        log.warning("%ss %s match no TG-263 name: kept, never planned on", source.kind, ", ".join(map(repr, unknown)))
        return [(roi, name, meaning or names.ParsedName(name, Role.OTHER)) for roi, name, meaning in interpreted]
    if unknown:
        empty = {roi.name for roi in structure_set.rois if not roi.contours} if source is _RTSTRUCT else set()
        raise _unknown_names(unknown, source, empty)
    return interpreted


def _meaning(roi_name: str, name: str, interpreted_type: str, level_targets: set[str],
             named: bool, kind: str = _RTSTRUCT.kind) -> ParsedName | None:
    """What a ROI is: its role from RTROIInterpretedType first, then from its name (``name``: the ROIName
    or its ``structure_names`` mapping). ``level_targets``: the ROIs prescription.json gives a dose level
    (by ROIName, mapped or TG-263 name), which are targets; ``named``: mapped or named in "goals", so an
    unknown name is kept as it is (role from the type, else OAR). None: an unknown name with nothing else
    to go on. The rules are in docs/decisions.md, "ROI roles from RTROIInterpretedType"."""
    where = f"{kind} '{roi_name}'"
    parsed = names.parse(name)
    typed = names.role_of_type(interpreted_type)
    said = f"its RTROIInterpretedType is {interpreted_type}"
    if parsed and typed and parsed.role.is_target and typed.is_target and parsed.role is not typed:
        if not names.is_itv(name):
            raise InputError(where, f"is named as a {parsed.role.value} but {said}",
                             "Correct the name or the type in the TPS and re-export")
        parsed = names.ParsedName(names.target_name(typed, parsed.dose_gy), typed, parsed.dose_gy)
    if {roi_name, name, parsed.name if parsed else name} & level_targets:
        role = typed if typed and typed.is_target else parsed.role if parsed and parsed.role.is_target else Role.PTV
        return parsed if parsed and parsed.role is role else names.ParsedName(name, role)
    if parsed and parsed.role is Role.OTHER:
        return parsed  # z/_ planning structures, couch, markers: not anatomy, whatever the type
    if typed is Role.OTHER:
        if parsed and parsed.role.is_target:
            raise InputError(where, f"is named as a target but {said}",
                             f'Set its type to PTV, CTV or GTV in the TPS, give it a dose in "levels" in '
                             f'{PRESCRIPTION_FILE}, or add it to "ignore" if it is not a target')
        if parsed:
            log.warning("%s: named as %s but %s: kept, never planned on", where, parsed.name, said)
        return names.ParsedName(name, Role.OTHER)
    if typed is Role.EXTERNAL or (typed and typed.is_target):
        if parsed is None or parsed.role is typed:
            return parsed or names.ParsedName(names.EXTERNAL if typed is Role.EXTERNAL else name, typed)
        if typed is Role.EXTERNAL and parsed.role is Role.OAR:
            log.info("%s: %s is the body outline", where, said)
            return names.ParsedName(names.EXTERNAL, Role.EXTERNAL)
        raise InputError(where, f"is named as {parsed.name} ({parsed.role.value}) but {said}",
                         "Correct the name or the type in the TPS and re-export")
    if parsed:
        if parsed.role.is_target and typed is Role.OAR:
            log.warning("%s: named as a target but %s: planned as the target %s", where, said, parsed.name)
        return parsed
    return names.ParsedName(name, Role.OAR) if named else None


def _unknown_names(unknown: list[str], source: _Source = _RTSTRUCT, empty: set[str] = frozenset()) -> InputError:
    """The error for ROI names that match nothing: a suggestion only for a misspelt TG-263 name, else
    the explicit fixes (a guessed organ, once followed, would plan on the wrong structure). ``empty``: ROIs
    without a contour (a TPS template's placeholders), marked so."""
    hints = ", ".join(f"'{n}'" + (f" (did you mean {names.suggest(n)}?)" if names.suggest(n) else "")
                      + (" (no contour)" if n in empty else "") for n in unknown)
    first, guess = unknown[0], names.suggest(unknown[0])
    ignore = f'or, if it is not needed for planning, "ignore": ["{first}"]'
    if guess:
        fix = f'{source.rename}, or add to {PRESCRIPTION_FILE}: "structure_names": {{"{first}": "{guess}"}}, '
    elif names.looks_like_target(first):
        fix = (f"{source.rename} with its dose (e.g. PTV_7000), or give it one in {PRESCRIPTION_FILE}: "
               f'"levels": [{{"target": "{first}", "dose_gy": ...}}], map it in "structure_names", ')
    else:
        fix = (f"{source.rename}, or in {PRESCRIPTION_FILE} map it explicitly: "
               f'"structure_names": {{"{first}": "<TG-263 name>"}}, name it in "goals" to plan it as an OAR under '
               f"its own name, ")
    return InputError(f"{source.kind}{'s' if len(unknown) > 1 else ''} {hints}", "unknown structure name", fix + ignore)


def _masks(interpreted: list[tuple[RoiContours, str, ParsedName]], grid: Grid) -> dict[str, Mask]:
    """The mask of every ROI on the CT by ROIName. An empty ROI, or one wholly outside the CT, is an
    InputError unless it is not anatomy (then dropped); one partly outside keeps its part on the CT
    with a warning, except a target, which could not be covered."""
    masks, empty = {}, []
    for roi, _, meaning in interpreted:
        where = f"RTSTRUCT ROI '{roi.name}'"
        mask, outside = roi_mask(roi.contours, grid, roi.name)
        if not mask.any():
            if meaning.role is Role.OTHER:
                log.warning("%s is %s: not planned on, written back unchanged", where,
                            "outside the CT" if outside else "empty on this CT")
                continue
            if outside:
                raise InputError(where, f"lies outside the CT: the ROI spans {outside.roi_extent}, the CT "
                                        f"{outside.ct_extent}",
                                 "Export the RTSTRUCT together with the CT it was drawn on (same FrameOfReferenceUID "
                                 "and patient position), or a CT that covers the ROI")
            empty.append(roi.name)
            continue
        if outside and meaning.role.is_target:
            raise InputError(where, f"extends outside the CT ({outside}); a target must lie wholly on the CT to be "
                                    "covered", "Export a CT that covers the whole target (longer scan, larger "
                                               "reconstruction diameter) with the RTSTRUCT drawn on it")
        if outside:
            log.warning("%s: %s; only its part on the CT is kept", where, outside)
        masks[roi.name] = Mask.from_full(mask)
    if empty:  # all at once: a TPS template leaves many placeholder ROIs without contours
        them = "it" if len(empty) == 1 else "them"
        raise InputError(f"RTSTRUCT ROI{'s' if len(empty) > 1 else ''} {', '.join(repr(n) for n in empty)}",
                         f"{'is' if len(empty) == 1 else 'are'} empty (no closed contour on this CT)",
                         f"Contour {them} on this CT in the TPS and re-export, or, if not needed for planning, add to "
                         f"{PRESCRIPTION_FILE}: \"ignore\": {json.dumps(empty)}")
    return masks


def _structures(structure_set: StructureSet, grid: Grid, rx_file: PrescriptionFile, where: str,
                unknown_rois: str = "error", source: _Source = _RTSTRUCT,
                masks_of: Callable[[list], dict[str, np.ndarray]] | None = None
                ) -> tuple[tuple[Structure, ...], Prescription]:
    """Structures (in RTSTRUCT order) and the prescription from the ROIs, prescription.json applied. ``where``
    names the structure set in messages; ``masks_of`` gives the masks by ROI name (default: from the contours)."""
    interpreted = _interpret(structure_set, rx_file, unknown_rois, source)
    masks = masks_of(interpreted) if masks_of is not None else _masks(interpreted, grid)
    kept = [(roi, mapped, meaning) for roi, mapped, meaning in interpreted if roi.name in masks]
    prescription, resolved = prescribe([Target(roi.name, mapped, meaning) for roi, mapped, meaning in kept
                                        if meaning.role.is_target], rx_file)
    structures, owner = [], {}
    for roi, _, meaning in kept:
        name, dose = resolved.get(roi.name, (meaning.name, None))
        if name in owner:
            raise InputError(f"{source.kind}s '{owner[name]}' and '{roi.name}'", f"both mean {name}",
                             f'Rename or delete one in the TPS, or add one to "ignore" in {PRESCRIPTION_FILE}')
        owner[name] = roi.name
        level = names.priority_level(name, meaning.role)
        color = {"color": roi.color} if roi.color is not None else {}
        structures.append(Structure(name=name, mask=masks[roi.name], role=meaning.role, level=level, rx_gy=dose,
                                    roi_name=roi.name, **color))
    if names.EXTERNAL not in owner:
        raise InputError(where, "has no External (body outline) ROI", source.body)
    return tuple(structures), prescription


def write_case(case: Case, folder: str | Path, uid_seed: str | None = None,
               structure_names: dict[str, str] | None = None) -> list[Path]:
    """Write ``case`` as a case folder ``read_case`` reads: CT_<k>.dcm, RTSTRUCT.dcm (the input
    structures, those with a roi_name) and prescription.json (with ``structure_names``: ROIName →
    TG-263 name, for ROI names rtautoplan does not recognise). Missing UIDs in ``case.refs`` are
    filled in (reproducibly with ``uid_seed``)."""
    folder = Path(folder)
    case = replace(case, refs=complete_refs(case.refs, case.grid.shape[0], uid_seed))
    paths = write_ct(case, folder)
    inputs = [s for s in case.structures if s.roi_name]
    paths.append(write_rtstruct(case, folder / "RTSTRUCT.dcm", inputs, uid_seed=uid_seed))
    paths.append(write_prescription(case.prescription, folder / PRESCRIPTION_FILE, structure_names=structure_names))
    return paths
