"""Seed 000's treatment-planning parameters (TPPs) and their tuning actions (SPEC §1.3–§1.5, §1.12).

Pure functions, shared by the prostate environment, the closed loop and the safety filter:
``Tpp`` (the 9 TPPs), ``apply_action(tpp, a)`` (Table 1 with its clamps), ``objectives(tpp,
case)`` (eq. 1 as planning objectives), ``trivial()`` and ``random_tpp(rng)`` (§1.12).

Action index a = 2·(k − 1) + {0: increase, 1: decrease}, k = 1..9 the TPP row of §1.4
([CONVENTION] SPEC §1.5), so 18 actions. t values are multiples of the prescription d_p, V values
fractions (0–1) of the structure's volume, λ dimensionless weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from rtautoplan.case import Case, Role
from rtautoplan.optimize.objectives import seed000_objectives
from rtautoplan.plan import Objective, ObjectiveKind
from rtautoplan.structures.names import planning_name, target_name

OARS = (("bla", "Bladder"), ("rec", "Rectum"))  # SPEC §1.2: the two OARs, in §1.4 order


@dataclass(frozen=True)
class Tpp:
    """The 9 TPPs of SPEC §1.4, in row order (λ weight, t ×d_p threshold, V fraction)."""

    lam_ptv: float
    t_ptv: float
    v_ptv: float
    lam_bla: float
    t_bla: float
    v_bla: float
    lam_rec: float
    t_rec: float
    v_rec: float

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


NAMES: tuple[str, ...] = tuple(f.name for f in fields(Tpp))


@dataclass(frozen=True)
class Move:
    """new = min(hi, max(lo, factor · old)): one cell of Table 1."""

    factor: float
    lo: float = -math.inf
    hi: float = math.inf

    def __call__(self, old: float) -> float:
        return min(self.hi, max(self.lo, self.factor * old))


# SPEC §1.5 Table 1: (increase, decrease) per TPP kind.
TABLE_1: dict[str, tuple[Move, Move]] = {
    "lam": (Move(1.65), Move(0.6)),
    "t_ptv": (Move(1.01, hi=1.2), Move(0.91, lo=1.0)),
    "v_ptv": (Move(1.25, hi=0.3), Move(0.8)),
    "t_oar": (Move(1.25, hi=1.0), Move(0.6)),
    "v_oar": (Move(1.25, hi=1.0), Move(0.8)),
}

# TPP → its Table-1 row: λ rows are shared by PTV and OARs, t and V rows differ.
KIND: dict[str, str] = {"lam_ptv": "lam", "t_ptv": "t_ptv", "v_ptv": "v_ptv",
                        **{f"{p}_{o}": "lam" if p == "lam" else f"{p}_oar" for o, _ in OARS for p in ("lam", "t", "v")}}

# The safety filter's bounds per TPP kind (SPEC §5.2): Table 1's clamps where it has them; ours
# elsewhere: λ within 10⁻³–10³ of its trivial value 1, thresholds ≥ 5 % of d_p, volumes ≥ 1 %.
BOUNDS: dict[str, tuple[float, float]] = {
    "lam": (1e-3, 1e3),
    "t_ptv": (1.0, 1.2),
    "v_ptv": (0.01, 0.3),
    "t_oar": (0.05, 1.0),
    "v_oar": (0.01, 1.0),
}

N_ACTIONS = 2 * len(NAMES)  # 18 (SPEC §1.4)


def action_name(a: int) -> str:
    """'lam_ptv+' … 'v_rec-': the TPP an action index moves, and the direction."""
    return f"{NAMES[a // 2]}{'+-'[a % 2]}"


def apply_action(tpp: Tpp, a: int) -> Tpp:
    """The TPPs after action ``a`` (0–17): Table 1 on one TPP, the others unchanged."""
    if not 0 <= int(a) < N_ACTIONS:
        raise ValueError(f"seed-000 action must be in 0..{N_ACTIONS - 1}, got {a}")
    name = NAMES[int(a) // 2]
    return replace(tpp, **{name: TABLE_1[KIND[name]][int(a) % 2](getattr(tpp, name))})


def trivial() -> Tpp:
    """SPEC §1.12: every TPP 1, except V_PTV = 0.1."""
    return Tpp(1.0, 1.0, 0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


# [CONVENTION] SPEC §1.12 random TPPs: uniform inside the Table-1 clamp ranges, λ log-uniform.
# Where Table 1 has no lower clamp, the lower end is ours (docs/decisions.md).
RANDOM_RANGES: dict[str, tuple[float, float]] = {
    "lam": (0.1, 10.0),  # log-uniform
    "t_ptv": (1.0, 1.2),
    "v_ptv": (0.05, 0.3),
    "t_oar": (0.3, 1.0),
    "v_oar": (0.1, 1.0),
}


def random_tpp(rng: np.random.Generator) -> Tpp:
    """Random TPPs (RANDOM_RANGES), one draw per TPP in row order."""
    values = {}
    for name in NAMES:
        lo, hi = RANDOM_RANGES[KIND[name]]
        values[name] = float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if KIND[name] == "lam" \
            else float(rng.uniform(lo, hi))
    return Tpp(**values)


INITS = {"trivial": lambda rng: trivial(), "random": random_tpp}


def ptv_of(case: Case) -> tuple[str, float]:
    """(PTV name, d_p Gy) of the highest prescription level: its PTV (drawn, or made by
    ``apply_rules`` from the CTV), else the prescribed target itself."""
    level = case.prescription.levels[0]
    ptv = target_name(Role.PTV, level.dose_gy)
    return (ptv if case.has(ptv) else level.target), level.dose_gy


NTO_FACTOR = 0.93  # normal-tissue objective: Ring Dmax 0.93·d_p, weight 1 (seed 002's rule 10, SPEC §2.6)


def objectives(tpp: Tpp, case: Case) -> tuple[Objective, ...]:
    """Eq. 1 of SPEC §1.3 for ``case`` (the PTV of its highest level, ``ptv_of``; d_p its
    prescription, Gy), plus a fixed normal-tissue objective on the level's Ring when the case has
    one: eq. 1 leaves the tissue around the PTV unconstrained, and the optimiser parks fluence
    there (up to 6 × d_p on the phantoms from random TPPs), as no clinical TPS would (Eclipse's NTO)."""
    ptv, d_p = ptv_of(case)
    oars = [(organ, getattr(tpp, f"lam_{o}"), getattr(tpp, f"t_{o}"), getattr(tpp, f"v_{o}")) for o, organ in OARS]
    terms = seed000_objectives(ptv, d_p, tpp.lam_ptv, tpp.t_ptv, tpp.v_ptv, oars)
    ring = planning_name(Role.RING, d_p)
    if case.has(ring):
        terms += (Objective(ring, ObjectiveKind.DMAX, NTO_FACTOR * d_p, 1.0, adjustable=False),)
    return terms
