"""What goes out: beams, objectives, dose and the plan."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from rtautoplan.case import Grid
from rtautoplan.threads import for_each, slabs


class Modality(str, enum.Enum):
    PHOTON = "photon"
    PROTON = "proton"
    CARBON = "carbon"


@dataclass(frozen=True)
class Beam:
    """One treatment field. Angles in degrees, IEC 61217; isocentre in patient coordinates (mm)."""

    name: str
    gantry_deg: float
    isocenter_mm: tuple[float, float, float]
    couch_deg: float = 0.0
    collimator_deg: float = 0.0
    modality: Modality = Modality.PHOTON


class ObjectiveKind(str, enum.Enum):
    """Penalty kinds; each has one (value, gradient) function in the optimiser.

    DMAX, DMIN, DMEAN: seed 002 eq. 1 (SPEC §2.9); also seed 003's Max and Min (SPEC §3.2).
    UNIFORM, DVH_MIN: seed 003 (SPEC §3.2).
    DV_MAX: seed 000 over-dose on the hottest fraction ``volume`` of the structure (SPEC §1.3).
    DVH_MAX: at most the fraction ``volume`` above the dose (a clinical Vx / Dx% maximum goal).
    """

    DMAX = "Dmax"
    DMIN = "Dmin"
    DMEAN = "Dmean"
    UNIFORM = "Uniform"
    DVH_MIN = "DVHmin"
    DV_MAX = "DVmax"
    DVH_MAX = "DVHmax"


@dataclass(frozen=True)
class Objective:
    """One planning objective on one structure.

    dose_gy: the dose limit (Gy). weight: its weight w. volume: fraction 0–1 for the
    dose-volume kinds (DVH_MIN, DV_MAX), else None. adjustable: False for the fixed target
    objectives of rule 10 (SPEC §2.6), True for those a planner (or policy) may tune.
    """

    structure: str
    kind: ObjectiveKind
    dose_gy: float
    weight: float = 1.0
    volume: float | None = None
    adjustable: bool = True


@dataclass(frozen=True, eq=False)
class Dose:
    """A dose distribution (Gy) on a grid. kind: DICOM DoseType, PHYSICAL or EFFECTIVE (RBE-weighted).

    native: the same dose on the grid the engine computed it on (its dose grid), when ``grid`` is a
    view of it (the CT grid, trilinear: where DVHs, the gate and the report read); the RTDOSE is
    written from it. None: ``gy`` is the dose as computed."""

    grid: Grid
    gy: np.ndarray
    kind: str = "PHYSICAL"
    native: Dose | None = None

    def scaled(self, factor: float) -> Dose:
        """The dose × ``factor`` (dtype kept), its native dose too."""
        native = None if self.native is None else self.native.scaled(factor)
        out = np.empty_like(self.gy)  # one array: the product is cast into it chunk by chunk, no full-size temporary
        for_each(lambda s: np.multiply(self.gy[s], factor, out=out[s], casting="unsafe"), slabs(len(out)), name="dose")
        return Dose(self.grid, out, self.kind, native)

    @property
    def as_computed(self) -> Dose:
        """The dose on the grid it was computed on: ``native``, else itself."""
        return self if self.native is None else self.native


@dataclass(frozen=True, eq=False)
class Plan:
    """An optimised plan: its beams, the objectives it was optimised to, the beamlet/spot
    weights (per beam, in beam order) and the resulting dose.

    positions: per beam, where each weight is delivered — photons: (n, 2) beamlet centres
    (x_b, y_b, mm at the isocentre plane, IEC beam-limiting-device axes); ions: (n, 3) spot
    (x_b, y_b mm at the isocentre plane, energy MeV or MeV/u). Empty when the TPS does not say.
    beamlet_mm: photon beamlet side, or ion lateral spot spacing (mm).
    weights are beamlet fluence (photons, relative) or MU per fraction (ions).
    """

    case_id: str
    modality: Modality
    beams: tuple[Beam, ...]
    objectives: tuple[Objective, ...]
    weights: tuple[np.ndarray, ...]
    dose: Dose
    adapter: str = ""
    positions: tuple[np.ndarray, ...] = ()
    beamlet_mm: float = 0.0


@dataclass(frozen=True)
class Step:
    """One decision of the closed loop, as the log and the report show it.

    step: 1-based index. action: what the policy proposed (human-readable). accepted: whether the
    safety filter let it through; reason: why not. score: the active score after the step (the
    previous score when rejected). alternatives: the policy's top candidates, best first, as
    (action, probability or value). parameters: the planning parameters after the step.

    The audit trail (SPEC §5.5, §5.7): rule: the rule that rejected it (``rtautoplan.safety``);
    action_id: the action as the environment takes it (index, vector or per-agent dict); mu: the
    behaviour probability μ(a|s) of the action taken (1 for a deterministic planner); state: the
    observation s the policy acted on; convergence: the optimiser's report of this step's
    optimisation (empty when the TPS did not run); uncertainty: entropy, margin, ensemble
    disagreement and flags (``rtautoplan.uncertainty``); override: the clinician's decision in
    suggest mode ("accepted", "edited: …", "rejected"; empty in autonomous mode); available: the
    discrete actions that would move a parameter in s (the support μ and π are judged over).
    """

    step: int
    action: str
    accepted: bool
    score: float
    reward: float = 0.0
    reason: str = ""
    alternatives: tuple[tuple[str, float], ...] = ()
    parameters: dict = field(default_factory=dict)
    time_s: float = 0.0
    rule: str = ""
    action_id: object = None
    mu: float = float("nan")
    state: object = None
    convergence: dict = field(default_factory=dict)
    uncertainty: dict = field(default_factory=dict)
    override: str = ""
    available: tuple = ()


@dataclass(frozen=True, eq=False)
class Result:
    """What the closed loop hands to the DICOM writer and the report: the best plan found, its
    score against the initial plan's, and every step. A sequential course (``rtautoplan.phases``)
    holds one Result per phase of ``Prescription.phases`` in ``phases``, in order; its own plan then
    carries the course dose (Gy, the sum of the phases'), its steps those of every phase."""

    plan: Plan
    initial_score: object  # rtautoplan.scoring.Score
    score: object
    steps: tuple[Step, ...]
    policy: str
    best_step: int = 0
    initial_dose: Dose | None = None
    delivery: tuple = ()  # photons: the sequenced beams (physics.sequencing.SequencedBeam) behind plan.dose
    phases: tuple["Result", ...] = ()
    gate: object = None  # rtautoplan.gate.GateResult: goals and hot spots of the final dose
    normalisation: object = None  # rtautoplan.normalisation.Normalised, None when not normalised
    site: str = ""
    audit: dict = field(default_factory=dict)  # weights (file, SHA-256, version), safety metrics (outputs.py)

    @property
    def acceptable(self) -> bool:
        """The clinical gate passed (``rtautoplan.gate``); a plan never checked is not acceptable."""
        return self.gate is not None and self.gate.acceptable

    @property
    def n_steps(self) -> int:
        """Closed-loop steps taken (``steps`` also records each rejected or undone attempt)."""
        return len({s.step for s in self.steps})
