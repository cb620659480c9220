"""The prescription: from an optional ``prescription.json`` in the case folder and from target ROI names.

``prescription.json`` (every key optional)::

    {"fractions": 35,
     "levels": [{"target": "CTV_7000", "dose_gy": 70.0}, {"target": "CTV_High", "dose_gy": 70.0}],
     "structure_names": {"Parotis li": "Parotid_L"},
     "ignore": ["Couch"]}

- ``levels``: dose (Gy, whole course) per target; ``target`` is the ROIName in the RTSTRUCT (or the
  name it maps to). A target named without a dose (``CTV_High``) takes its dose from here and is
  renamed ``CTV_<cGy>`` (``names.target_name``); a dose in both the name and here must agree. A ROI named
  here is a target without a ``structure_names`` mapping: its kind from RTROIInterpretedType, else its
  name, else PTV (planned as drawn, no margin added).
- ``structure_names``: input ROIName → TG-263 name, for names rtautoplan does not recognise.
- ``ignore``: ROINames to drop.
- ``goals``: clinical goals (``rtautoplan.goals``), e.g. ``{"roi": "Core", "metric": "D10%", "max_gy": 25}``;
  without them the site's default protocol applies (``rtautoplan.protocols``).
- ``normalisation``: ``{"roi": "PTV_7000", "metric": "D95%", "dose_gy": 70}`` or ``"none"``; default:
  D95% of the highest level's PTV (its CTV where there is no PTV) = its Rx.
- ``phases``: a sequential course, ``[{"name": "primary", "fractions": 22, "levels": [{"target":
  "CTV_5400", "dose_gy": 44}]}, {"name": "boost", ...}]``; only seed 004's planner plans phases.
- ``site``: the protocol to plan with (``hn``, ``prostate``, ``generic`` …); default: chosen from the ROIs.

The prescription levels are the ``levels`` given here plus every CTV whose name carries a dose
(``CTV_7000``, ``CTV 54Gy``); with neither, every target whose name carries a dose. ``fractions``
defaults to round(Rx_max / 2 Gy), conventional 2 Gy fractions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rtautoplan.case import DoseLevel, Goal, Normalisation, Phase, Prescription, Role
from rtautoplan.errors import InputError
from rtautoplan.structures.names import ParsedName, target_name

PRESCRIPTION_FILE = "prescription.json"
CONVENTIONAL_FRACTION_GY = 2.0  # dose per fraction assumed when prescription.json gives no "fractions"
_KEYS = ("fractions", "levels", "structure_names", "ignore", "goals", "normalisation", "phases", "site")
_PHASE_KEYS = ("name", "fractions", "levels")
_LEVEL_KEYS = ("target", "dose_gy")


@dataclass(frozen=True)
class PrescriptionFile:
    """The validated content of ``prescription.json``; empty when there is none."""

    fractions: int | None = None
    levels: tuple[tuple[str, float], ...] = ()  # (target ROI name, dose Gy)
    structure_names: dict[str, str] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    goals: tuple[Goal, ...] = ()
    normalisation: Normalisation = Normalisation()
    phases: tuple[Phase, ...] = ()
    site: str | None = None
    path: str = PRESCRIPTION_FILE


@dataclass(frozen=True)
class Target:
    """A target ROI: its input ROIName, the name it maps to (``structure_names``), what the name says."""

    roi_name: str
    mapped: str
    parsed: ParsedName


def read_prescription_file(path: str | Path) -> PrescriptionFile:
    """Parse and validate ``prescription.json``; InputError naming the file and the key when it is wrong."""
    path = Path(path)
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(where, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})",
                         "Fix the syntax (a JSON validator shows where)") from None
    if not isinstance(data, dict):
        raise InputError(where, "must be a JSON object {...}", f"Use the keys {', '.join(_KEYS)}")
    for key in data:
        if key not in _KEYS:
            raise InputError(where, f'unknown key "{key}"', f"Use only {', '.join(_KEYS)}")
    fractions = data.get("fractions")
    if fractions is not None and (not _is_int(fractions) or fractions <= 0):
        raise InputError(where, f'"fractions" is {fractions!r}', "Give the number of fractions as a positive integer")
    from rtautoplan.goals import parse_goals

    site = data.get("site")
    if site is not None and (not isinstance(site, str) or not site.strip()):
        raise InputError(where, f'"site" is {site!r}', 'Name the protocol, e.g. "site": "generic"')
    return PrescriptionFile(fractions=fractions, levels=_levels(data.get("levels", []), where),
                            structure_names=_names(data.get("structure_names", {}), where),
                            ignore=frozenset(_strings(data.get("ignore", []), "ignore", where)),
                            goals=parse_goals(data.get("goals", []), where),
                            normalisation=_normalisation(data.get("normalisation"), where),
                            phases=_phases(data.get("phases", []), where), site=site, path=where)


def _normalisation(value, where: str) -> Normalisation:
    if value is None:
        return Normalisation()
    if value == "none":
        return Normalisation(metric="none")
    example = '"normalisation": {"roi": "PTV_7000", "metric": "D95%", "dose_gy": 70} or "none"'
    if not isinstance(value, dict) or set(value) - {"roi", "metric", "dose_gy"}:
        raise InputError(where, f'"normalisation" is {value!r}', f"Write {example}")
    from rtautoplan.goals import canonical_metric

    roi, metric, dose = value.get("roi", ""), value.get("metric", "D95%"), value.get("dose_gy")
    if not isinstance(roi, str):
        raise InputError(where, f'"normalisation"."roi" is {roi!r}', f"Write {example}")
    if not isinstance(metric, str) or canonical_metric(metric) is None or canonical_metric(metric).startswith("V"):
        raise InputError(where, f'"normalisation"."metric" is {metric!r}', "Use a dose metric: D95%, Dmean, D50% …")
    if dose is not None and (isinstance(dose, bool) or not isinstance(dose, (int, float)) or not dose > 0):
        raise InputError(where, f'"normalisation"."dose_gy" is {dose!r}', "Give a positive dose in Gy, or leave it "
                                                                           "out (the ROI's Rx)")
    return Normalisation(roi, canonical_metric(metric), None if dose is None else float(dose))


def _phases(phases, where: str) -> tuple[Phase, ...]:
    example = '"phases": [{"name": "primary", "fractions": 22, "levels": [{"target": "CTV_5400", "dose_gy": 44}]}]'
    if not isinstance(phases, list):
        raise InputError(where, '"phases" must be a list', f"Write {example}")
    out = []
    for n, phase in enumerate(phases):
        key = f'"phases"[{n}]'
        if not isinstance(phase, dict) or set(phase) - set(_PHASE_KEYS) or "levels" not in phase:
            raise InputError(where, f"{key} is not a phase", f"Write {example}")
        name, fractions = phase.get("name", f"phase {n + 1}"), phase.get("fractions")
        if not _is_int(fractions) or fractions <= 0:
            raise InputError(where, f'{key}."fractions" is {fractions!r}', "Give the phase's number of fractions")
        levels = tuple(DoseLevel(t, d) for t, d in _levels(phase["levels"], where))
        out.append(Phase(str(name), levels, fractions))
    return tuple(out)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _levels(levels, where: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(levels, list):
        raise InputError(where, '"levels" must be a list', 'Write "levels": [{"target": "CTV_7000", "dose_gy": 70.0}]')
    out = []
    for n, level in enumerate(levels):
        key = f'"levels"[{n}]'
        if not isinstance(level, dict):
            raise InputError(where, f"{key} is not an object", 'Write {"target": "CTV_7000", "dose_gy": 70.0}')
        for name in _LEVEL_KEYS:
            if name not in level:
                raise InputError(where, f'{key} has no "{name}"', 'Write {"target": "CTV_7000", "dose_gy": 70.0}')
        extra = set(level) - set(_LEVEL_KEYS)
        if extra:
            raise InputError(where, f'{key} has unknown key "{sorted(extra)[0]}"', 'Use only "target" and "dose_gy"')
        target, dose = level["target"], level["dose_gy"]
        if not isinstance(target, str) or not target.strip():
            raise InputError(where, f'{key}."target" is {target!r}', "Give the target's ROIName as in the RTSTRUCT")
        if isinstance(dose, bool) or not isinstance(dose, (int, float)) or not math.isfinite(dose) or dose <= 0:
            raise InputError(where, f'{key}."dose_gy" is {dose!r}',
                             "Give the whole-course dose in Gy, a positive number")
        out.append((target, float(dose)))
    return tuple(out)


def _strings(values, key: str, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InputError(where, f'"{key}" must be a list of ROI names', f'Write "{key}": ["Couch", ...]')
    return values


def _names(mapping, where: str) -> dict[str, str]:
    if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
        raise InputError(where, '"structure_names" must map ROI names to TG-263 names',
                         'Write "structure_names": {"Parotis li": "Parotid_L"}')
    return dict(mapping)


def prescribe(targets: Sequence[Target],
              rx_file: PrescriptionFile) -> tuple[Prescription, dict[str, tuple[str, float | None]]]:
    """The prescription, and for each target ROIName its canonical name and dose (Gy; None for a GTV
    without a dose level). InputError when a level names no target, doses disagree, a CTV/PTV has no
    dose, or there is no dose at all."""
    json_dose: dict[str, float] = {}
    for n, (name, dose_gy) in enumerate(rx_file.levels):
        matches = [t for t in targets if name in (t.roi_name, t.mapped, t.parsed.name)]
        if not matches:
            raise InputError(rx_file.path, f'"levels"[{n}]."target" "{name}" is not a target ROI in the RTSTRUCT '
                                           f"(targets: {', '.join(t.roi_name for t in targets) or 'none'})",
                             "Use the ROIName of a GTV/CTV/PTV as exported")
        for t in matches:
            if t.roi_name in json_dose:
                raise InputError(rx_file.path, f'"levels" gives two doses for target "{t.roi_name}"', "Keep one")
            if t.parsed.dose_gy is not None and abs(t.parsed.dose_gy - dose_gy) > 1e-6:
                raise InputError(rx_file.path, f'"levels"[{n}]."dose_gy" is {dose_gy:g} Gy but the ROI name '
                                               f'"{t.roi_name}" says {t.parsed.dose_gy:g} Gy',
                                 "Make the two agree")
            json_dose[t.roi_name] = dose_gy
    resolved: dict[str, tuple[str, float | None]] = {}
    for t in targets:
        dose = json_dose.get(t.roi_name, t.parsed.dose_gy)
        if dose is None and t.parsed.role is not Role.GTV:
            others = (f", with every level of the {rx_file.path.split()[0]} (" + ", ".join(
                f"{n} {d:g} Gy" for n, d in rx_file.levels) + ")") if rx_file.path.startswith("RTPLAN") else ""
            raise InputError(f"RTSTRUCT ROI '{t.roi_name}'", "this target has no dose level",
                             f'Name it with its dose (e.g. {target_name(t.parsed.role, 70.0)}) or add '
                             f'{{"target": "{t.roi_name}", "dose_gy": ...}} to "levels" in {PRESCRIPTION_FILE}'
                             f'{others} (or, for a helper volume not to plan on, add it to "ignore")')
        name = target_name(t.parsed.role, dose) if t.parsed.dose_gy is None and dose is not None else t.parsed.name
        resolved[t.roi_name] = (name, dose)
    levels = [DoseLevel(resolved[r][0], d) for r, d in json_dose.items()]
    from_names = [t for t in targets if t.roi_name not in json_dose and resolved[t.roi_name][1] is not None]
    ctvs = [t for t in from_names if t.parsed.role is Role.CTV]
    levels += [DoseLevel(*resolved[t.roi_name]) for t in (ctvs if ctvs or levels else from_names)]
    by_dose: dict[float, DoseLevel] = {}  # a level is a dose: its CTV and PTV share it (json first)
    for level in levels:
        by_dose.setdefault(round(level.dose_gy, 4), level)
    levels = list(by_dose.values())
    if not levels:
        raise InputError("RTSTRUCT", "no prescription: no target ROI carries a dose",
                         f'Name the CTV with its dose (e.g. CTV_7000) or write "levels" in {PRESCRIPTION_FILE}')
    rx_max = max(level.dose_gy for level in levels)
    fractions = rx_file.fractions or max(1, round(rx_max / CONVENTIONAL_FRACTION_GY))
    return Prescription(tuple(levels), fractions, goals=rx_file.goals, normalisation=rx_file.normalisation,
                        phases=rx_file.phases, site=rx_file.site), resolved


def write_prescription(prescription: Prescription, path: str | Path, structure_names: dict[str, str] | None = None,
                       ignore: Sequence[str] = ()) -> Path:
    """Write ``prescription.json`` (see module docstring) for ``prescription``."""
    data: dict = {"fractions": prescription.fractions,
                  "levels": [{"target": lv.target, "dose_gy": lv.dose_gy} for lv in prescription.levels]}
    if structure_names:
        data["structure_names"] = dict(structure_names)
    if ignore:
        data["ignore"] = list(ignore)
    if prescription.goals:
        data["goals"] = [goal_json(g) for g in prescription.goals]
    if prescription.site:
        data["site"] = prescription.site
    rule = prescription.normalisation
    if rule != Normalisation():
        data["normalisation"] = "none" if rule.metric == "none" else {
            k: v for k, v in (("roi", rule.roi), ("metric", rule.metric), ("dose_gy", rule.dose_gy)) if v}
    if prescription.phases:
        data["phases"] = [{"name": p.name, "fractions": p.fractions,
                           "levels": [{"target": lv.target, "dose_gy": lv.dose_gy} for lv in p.levels]}
                          for p in prescription.phases]
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def goal_json(goal: Goal) -> dict:
    """A goal as prescription.json writes it."""
    key = {"Gy": "gy", "%": "pct", "cc": "cc"}[goal.unit]
    data: dict = {"roi": goal.roi, "metric": goal.metric}
    if goal.lower is not None:
        data[f"min_{key}"] = goal.lower
    if goal.upper is not None:
        data[f"max_{key}"] = goal.upper
    if goal.priority != 1:
        data["priority"] = goal.priority
    if goal.source != "prescription.json":
        data["source"] = goal.source
    return data
