"""Clinical protocols: the goals a plan is held to when the prescription states none, per site.

``goals_for(case, site)`` gives, for a planned case (after ``apply_rules``):

1. the prescription's own goals (``prescription.json`` ``goals``), as written;
2. coverage of every prescription level (ICRU Report 83, 2010): each CTV D98% ≥ 95 % Rx and each
   PTV D95% ≥ 95 % Rx, unless the prescription already states that metric for that ROI;
3. the site protocol's OAR goals (``PROTOCOLS``) for every OAR the case has and the prescription's
   goals do not mention (a clinic that names an organ's goals replaces the protocol's for it).

OAR limits are for conventional fractionation (1.8–2.2 Gy per fraction); the report warns when the
course is hypofractionated (``fractionation_note``), where physical-dose limits do not transfer.
Priority 1 goals must be met for the plan to pass the clinical gate; priority 2 are desired
(missed ones are shown as warnings). Sources: QUANTEC (Marks et al., IJROBP 76(3) Suppl, 2010)
and the RTOG protocols named per row; the choices are in docs/decisions.md.
"""

from __future__ import annotations

from rtautoplan.case import Case, Goal, Role

QUANTEC = "QUANTEC 2010"
ICRU83 = "ICRU Report 83"
COVERAGE = {Role.CTV: ("D98%", 0.95), Role.PTV: ("D95%", 0.95)}


def _g(roi: str, metric: str, upper: float, priority: int, source: str, unit: str = "Gy") -> Goal:
    return Goal(roi, metric, unit, None, upper, priority, source)


# Serial organs whose limit is a hard constraint (priority 1); the rest are desired (priority 2).
_CNS = (
    _g("SpinalCord", "D0.03cc", 50.0, 1, f"{QUANTEC} (Kirkpatrick): Dmax 50 Gy, 0.2 % myelopathy"),
    _g("Brainstem", "D0.03cc", 54.0, 1, f"{QUANTEC} (Mayo): Dmax < 54 Gy"),
    _g("OpticChiasm", "D0.03cc", 55.0, 1, f"{QUANTEC} (Mayo): Dmax < 55 Gy"),
    _g("OpticNrv_L", "D0.03cc", 55.0, 1, f"{QUANTEC} (Mayo): Dmax < 55 Gy"),
    _g("OpticNrv_R", "D0.03cc", 55.0, 1, f"{QUANTEC} (Mayo): Dmax < 55 Gy"),
)
_HN = (
    _g("Parotid_L", "Dmean", 25.0, 2, f"{QUANTEC} (Deasy): mean < 25 Gy"),
    _g("Parotid_R", "Dmean", 25.0, 2, f"{QUANTEC} (Deasy): mean < 25 Gy"),
    _g("Cochlea_L", "Dmean", 45.0, 2, f"{QUANTEC} (Bhandare): mean ≤ 45 Gy"),
    _g("Cochlea_R", "Dmean", 45.0, 2, f"{QUANTEC} (Bhandare): mean ≤ 45 Gy"),
    _g("Larynx", "Dmean", 44.0, 2, f"{QUANTEC} (Rancati): mean < 44 Gy"),
    _g("Musc_Constrict", "Dmean", 50.0, 2, f"{QUANTEC} (Rancati): pharyngeal constrictors mean < 50 Gy"),
    _g("Esophagus", "Dmean", 34.0, 2, f"{QUANTEC} (Werner-Wasik): mean < 34 Gy"),
    _g("Bone_Mandible", "D1cc", 75.0, 2, "RTOG 0522: mandible ≤ 1 cm³ above 75 Gy"),
    _g("Glnd_Submand_L", "Dmean", 39.0, 2, "Murdoch-Kinch 2008: mean < 39 Gy"),
    _g("Glnd_Submand_R", "Dmean", 39.0, 2, "Murdoch-Kinch 2008: mean < 39 Gy"),
    _g("BrachialPlex_L", "D0.03cc", 66.0, 2, "RTOG 0619: Dmax ≤ 66 Gy"),
    _g("BrachialPlex_R", "D0.03cc", 66.0, 2, "RTOG 0619: Dmax ≤ 66 Gy"),
    _g("Lens_L", "D0.03cc", 10.0, 2, "Emami 1991: lens TD5/5 10 Gy"),
    _g("Lens_R", "D0.03cc", 10.0, 2, "Emami 1991: lens TD5/5 10 Gy"),
)
_PELVIS = (
    _g("Rectum", "V50Gy", 50.0, 2, f"{QUANTEC} (Michalski): V50 < 50 %", "%"),
    _g("Rectum", "V60Gy", 35.0, 2, f"{QUANTEC} (Michalski): V60 < 35 %", "%"),
    _g("Rectum", "V65Gy", 25.0, 1, f"{QUANTEC} (Michalski): V65 < 25 %", "%"),
    _g("Rectum", "V70Gy", 20.0, 1, f"{QUANTEC} (Michalski): V70 < 20 %", "%"),
    _g("Rectum", "V75Gy", 15.0, 1, f"{QUANTEC} (Michalski): V75 < 15 %", "%"),
    _g("Bladder", "V65Gy", 50.0, 2, f"{QUANTEC} (Viswanathan, RTOG 0415): V65 ≤ 50 %", "%"),
    _g("Bladder", "V70Gy", 35.0, 2, f"{QUANTEC} (Viswanathan, RTOG 0415): V70 ≤ 35 %", "%"),
    _g("Bladder", "V75Gy", 25.0, 2, f"{QUANTEC} (Viswanathan, RTOG 0415): V75 ≤ 25 %", "%"),
    _g("Bladder", "V80Gy", 15.0, 1, f"{QUANTEC} (Viswanathan, RTOG 0415): V80 ≤ 15 %", "%"),
    _g("Femur_Head_L", "V50Gy", 5.0, 2, "RTOG 0415: femoral head V50 ≤ 5 %", "%"),
    _g("Femur_Head_R", "V50Gy", 5.0, 2, "RTOG 0415: femoral head V50 ≤ 5 %", "%"),
    _g("Bowel", "V45Gy", 195.0, 2, f"{QUANTEC} (Kavanagh): small bowel V45 < 195 cm³", "cc"),
)
_TRUNK = (
    _g("Heart", "Dmean", 26.0, 2, f"{QUANTEC} (Gagliardi): pericarditis, mean < 26 Gy"),
    _g("Lungs", "V20Gy", 30.0, 2, f"{QUANTEC} (Marks): V20 ≤ 30 %", "%"),
    _g("Lungs", "Dmean", 20.0, 2, f"{QUANTEC} (Marks): mean ≤ 20 Gy"),
    _g("Liver", "Dmean", 30.0, 2, f"{QUANTEC} (Pan): mean < 30–32 Gy"),
    _g("Kidney_L", "Dmean", 18.0, 2, f"{QUANTEC} (Dawson): mean < 18 Gy"),
    _g("Kidney_R", "Dmean", 18.0, 2, f"{QUANTEC} (Dawson): mean < 18 Gy"),
)

# Every site's table holds every organ: an organ that a site's template does not expect (a
# heart in a case planned as generic) is still held to its limit.
_ALL = _CNS + _HN + _PELVIS + _TRUNK
PROTOCOLS: dict[str, tuple[Goal, ...]] = {"hn": _ALL, "prostate": _ALL, "liver": _ALL, "generic": _ALL}


def coverage_goals(case: Case) -> tuple[Goal, ...]:
    """ICRU 83 coverage of every planned CTV and PTV at its level's Rx (priority 1)."""
    goals = []
    for s in case.by_role(Role.CTV, Role.PTV):
        if s.rx_gy is None or not s.mask.any():
            continue
        metric, fraction = COVERAGE[s.role]
        goals.append(Goal(s.name, metric, "Gy", round(fraction * s.rx_gy, 3), None, 1,
                          f"{ICRU83}: {metric} ≥ {fraction:.0%} of Rx {s.rx_gy:g} Gy"))
    return tuple(goals)


def goals_for(case: Case, site: str) -> tuple[Goal, ...]:
    """The goals the plan of ``case`` (after ``apply_rules``) is held to (module docstring)."""
    from rtautoplan.goals import find_structure

    own = case.prescription.goals

    def named(goal: Goal) -> set[str]:
        s = find_structure(case, goal.roi)
        return {goal.roi} if s is None else {s.name, s.roi_name} - {""}

    stated = {(name, g.metric) for g in own for name in named(g)}
    mentioned = {name for g in own for name in named(g)}
    coverage = tuple(g for g in coverage_goals(case) if (g.roi, g.metric) not in stated)
    oars = {s.name for s in case.by_role(Role.OAR)}
    protocol = tuple(g for g in PROTOCOLS.get(site, PROTOCOLS["generic"]) if g.roi in oars and g.roi not in mentioned)
    return own + coverage + protocol


def fractionation_note(case: Case) -> str:
    """A warning when the dose per fraction leaves the range the protocol limits are stated for."""
    rx = case.prescription
    per_fraction = rx.rx_max / rx.fractions
    if 1.8 <= per_fraction <= 2.2:
        return ""
    return (f"{per_fraction:.2f} Gy per fraction: the protocol's OAR limits are for 1.8–2.2 Gy per fraction; "
            "state this course's goals in prescription.json")

