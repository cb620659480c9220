"""What comes in: the voxel grid, the CT, the structures and the prescription.

Arrays on a grid are indexed ``[k, j, i]`` = ``[slice, row, column]``, the order in which
DICOM stores a CT series, so ``array[k]`` is the k-th slice. Coordinates are DICOM patient
coordinates in mm (for HFS: +x patient left, +y posterior, +z superior).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np

from rtautoplan.mask import Mask

AXIAL_HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in patient coordinates.

    origin: patient position (mm) of the centre of voxel [0, 0, 0] (ImagePositionPatient of the first slice).
    spacing: (slice, row, column) step in mm, i.e. (dz, PixelSpacing[0], PixelSpacing[1]).
    shape: (slices, rows, columns).
    orientation: ImageOrientationPatient: the direction of increasing column index, then of increasing row index.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    orientation: tuple[float, float, float, float, float, float] = AXIAL_HFS

    @property
    def axes(self) -> np.ndarray:
        """3×3 matrix whose rows are the patient directions of the k, j, i index axes."""
        row_dir = np.asarray(self.orientation[:3], float)
        col_dir = np.asarray(self.orientation[3:], float)
        return np.stack([np.cross(row_dir, col_dir), col_dir, row_dir])

    @property
    def voxel_volume_cm3(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def index_to_patient(self, kji: np.ndarray) -> np.ndarray:
        """Patient coordinates (mm, last axis x y z) of (possibly fractional) indices (last axis k j i)."""
        kji = np.asarray(kji, float)
        return np.asarray(self.origin) + (kji * np.asarray(self.spacing)) @ self.axes

    def patient_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Fractional indices (last axis k j i) of patient coordinates (last axis x y z, mm)."""
        xyz = np.asarray(xyz, float) - np.asarray(self.origin)
        return (xyz @ self.axes.T) / np.asarray(self.spacing)

    def centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient x, y, z (mm) of every voxel centre, each broadcastable to ``shape`` (an open grid):
        a coordinate spans only the index axes it changes along, one per coordinate on an axis-aligned
        grid, so the three cost (k + j + i) values, not 3·k·j·i."""
        index = np.ogrid[: self.shape[0], : self.shape[1], : self.shape[2]]
        steps = self.axes * np.asarray(self.spacing)[:, None]
        xyz = []
        for a in range(3):
            value = np.full((1, 1, 1), self.origin[a])
            for n in range(3):
                if steps[n, a] != 0:
                    value = value + index[n] * steps[n, a]
            xyz.append(value)
        return xyz[0], xyz[1], xyz[2]


class Role(str, enum.Enum):
    """What a structure is for; RTROIInterpretedType where DICOM has one."""

    EXTERNAL = "EXTERNAL"
    GTV = "GTV"
    CTV = "CTV"
    PTV = "PTV"
    GAP = "GAP"  # buffer around a PTV: no objective (SPEC §2.3)
    RING = "RING"  # dose fall-off shell around a Gap (SPEC §2.3)
    CONTROL = "CONTROL"  # planning-only region an objective acts on (a lower level's target away from the boost)
    OAR = "OAR"
    OTHER = "OTHER"  # kept and written back, never planned on (couch, markers, z-structures)

    @property
    def is_target(self) -> bool:
        return self in (Role.GTV, Role.CTV, Role.PTV)

    @property
    def dicom_type(self) -> str:
        """RTROIInterpretedType (PS3.3 C.8.8.8)."""
        return {
            Role.EXTERNAL: "EXTERNAL",
            Role.GTV: "GTV",
            Role.CTV: "CTV",
            Role.PTV: "PTV",
            Role.GAP: "CONTROL",
            Role.RING: "AVOIDANCE",
            Role.CONTROL: "CONTROL",
            Role.OAR: "ORGAN",
            Role.OTHER: "CONTROL",
        }[self]


@dataclass(frozen=True, eq=False)
class Structure:
    """One region of interest on the case grid.

    name: TG-263 name (targets: ``CTV_7000`` with the dose in cGy).
    mask: voxels as delineated (input ROIs) or as generated (PTV, Gap, Ring), on their bounding box
        (a full-grid bool [k, j, i] array given here is cropped: see ``rtautoplan.mask``).
    role: what the structure is for.
    level: priority level of SPEC §2.4 (1 highest, 2 targets, 3 other OARs and Rings); None: never optimised.
    rx_gy: targets, Gaps and Rings: the prescription dose (Gy) of the dose level they belong to.
    roi_name: the ROIName in the input RTSTRUCT ("" for generated structures).
    planning_mask: the voxels its objectives act on after the overlap rules (None: not yet resolved, use mask).
    """

    name: str
    mask: Mask
    role: Role
    level: int | None = None
    rx_gy: float | None = None
    roi_name: str = ""
    color: tuple[int, int, int] = (255, 0, 0)
    planning_mask: Mask | None = None

    def __post_init__(self):
        for attribute in ("mask", "planning_mask"):
            value = getattr(self, attribute)
            if value is not None and not isinstance(value, Mask):
                try:
                    object.__setattr__(self, attribute, Mask.from_full(value))
                except ValueError as error:
                    raise ValueError(f"structure {self.name!r}: {error}") from None

    @property
    def voxels(self) -> Mask:
        """The mask objectives and plan evaluation act on: planning_mask once the rules ran, else mask."""
        return self.mask if self.planning_mask is None else self.planning_mask

    def volume_cm3(self, grid: Grid) -> float:
        return self.mask.count * grid.voxel_volume_cm3

    def with_planning_mask(self, planning_mask: Mask | np.ndarray) -> "Structure":
        return replace(self, planning_mask=planning_mask)


@dataclass(frozen=True)
class DoseLevel:
    """One prescription level: the target it is prescribed to and its dose (Gy, whole course)."""

    target: str
    dose_gy: float


@dataclass(frozen=True)
class Goal:
    """One clinical goal as clinics and benchmarks state it: ``{"roi": "Core", "metric": "D10%", "max_gy": 25}``.

    roi: the structure's name in the case (its TG-263 name, or its ROIName as exported).
    metric: ``D95%``, ``D0.03cc``, ``Dmax``, ``Dmin``, ``Dmean`` (Gy), or ``V20Gy`` (volume receiving ≥ 20 Gy).
    unit: of the metric's value: "Gy" for the D metrics, "%" (of the ROI) or "cc" (cm³) for V metrics.
    lower / upper: the bound on the metric, in ``unit``; one or both.
    priority: 1 must be met (the clinical gate fails without it); 2 is desired (reported, a warning).
    source: where the goal comes from (``prescription.json``, a protocol and its citation).
    """

    roi: str
    metric: str
    unit: str = "Gy"
    lower: float | None = None
    upper: float | None = None
    priority: int = 1
    source: str = "prescription.json"

    def __str__(self) -> str:
        unit = {"Gy": " Gy", "%": " %", "cc": " cm³"}[self.unit]
        bounds = [f"≥ {self.lower:g}{unit}" if self.lower is not None else "",
                  f"≤ {self.upper:g}{unit}" if self.upper is not None else ""]
        return f"{self.roi} {self.metric} " + " and ".join(b for b in bounds if b)


@dataclass(frozen=True)
class Phase:
    """One phase of a sequential course (seed 004: primary 44 Gy / 22 fx, then boost 26 Gy / 13 fx)."""

    name: str
    levels: tuple[DoseLevel, ...]
    fractions: int


@dataclass(frozen=True)
class Normalisation:
    """How the final dose is scaled, as a TPS does: ``metric`` of ``roi`` equals ``dose_gy``
    (default: D95% of the highest level's PTV, or of its CTV where no PTV exists, = its Rx).
    roi "" means that default; metric "none" leaves the optimised dose unscaled."""

    roi: str = ""
    metric: str = "D95%"
    dose_gy: float | None = None


@dataclass(frozen=True)
class Prescription:
    """Prescription levels, highest dose first, the number of fractions, and what the plan must meet.

    goals: clinical goals (``prescription.json`` ``goals``, else the site's default protocol).
    normalisation: the final-dose scaling rule. phases: a sequential course, when the prescription
    states one (empty: one simultaneous plan of every level). site: the protocol named in
    ``prescription.json`` (None: chosen from the ROIs). source: where levels and fractions were read
    (prescription.json, an RTPLAN, the target names), printed with the plan.
    """

    levels: tuple[DoseLevel, ...]
    fractions: int
    goals: tuple[Goal, ...] = ()
    normalisation: Normalisation = Normalisation()
    phases: tuple[Phase, ...] = ()
    site: str | None = None
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(sorted(self.levels, key=lambda lv: -lv.dose_gy)))

    @property
    def summary(self) -> str:
        """One line: every level (Gy), the fractions, and where they were read."""
        levels = ", ".join(f"{lv.target} {lv.dose_gy:g} Gy" for lv in self.levels)
        return f"{levels} in {self.fractions} fractions" + (f" (from {self.source})" if self.source else "")

    @property
    def rx_max(self) -> float:
        """The highest prescription dose in the plan (Gy), Rx_max of SPEC §2.6."""
        return self.levels[0].dose_gy

    @property
    def rx_min(self) -> float:
        """The lowest prescription dose in the plan (Gy), Rx_min of SPEC §2.12."""
        return self.levels[-1].dose_gy


@dataclass(frozen=True)
class DicomRefs:
    """The identities that output objects must reference to belong with the input CT."""

    patient_id: str = "ANON"
    patient_name: str = "ANON"
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    ct_series_instance_uid: str = ""
    ct_sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.2"
    ct_sop_instance_uids: tuple[str, ...] = ()  # one per slice, in slice (k) order
    patient_position: str = "HFS"
    extra: dict = field(default_factory=dict)  # StudyID, StudyDate, PatientBirthDate, PatientSex, AccessionNumber …


@dataclass(frozen=True, eq=False)
class UnplannedRoi:
    """An input ROI that is not planned on (ignored in prescription.json, or empty / outside the CT), kept so
    that it leaves in the output RTSTRUCT as it came in.

    contours: its closed planar contours as read, each (n, 3) patient mm. interpreted_type: its
    RTROIInterpretedType ("" when none). why: why it is not planned on, for the log.
    """

    name: str
    contours: tuple[np.ndarray, ...]
    color: tuple[int, int, int] | None
    interpreted_type: str
    why: str


@dataclass(frozen=True, eq=False)
class Case:
    """A patient case ready to plan: CT (HU) on its grid, structures and prescription.
    unplanned: the input ROIs it does not plan on, written back unchanged."""

    case_id: str
    grid: Grid
    hu: np.ndarray
    structures: tuple[Structure, ...]
    prescription: Prescription
    refs: DicomRefs = DicomRefs()
    unplanned: tuple[UnplannedRoi, ...] = ()

    def structure(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(f"case {self.case_id!r} has no structure {name!r}; it has {[s.name for s in self.structures]}")

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.structures)

    def by_role(self, *roles: Role) -> tuple[Structure, ...]:
        return tuple(s for s in self.structures if s.role in roles)

    @property
    def external(self) -> Structure:
        return self.by_role(Role.EXTERNAL)[0]

    def with_structures(self, structures: tuple[Structure, ...]) -> "Case":
        return replace(self, structures=tuple(structures))
